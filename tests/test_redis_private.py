"""Redis is private: the embedded default's Redis wants a password nobody is shown, its user cannot
administer it, and no URL with a password reaches a log, /status, /metrics or a process list.
deploy/users.acl and deploy/redis.conf are what `python -m deploy.cluster` runs, and the gateway works
through them with nothing refused.

Real `python run_server.py` processes, real redis-server processes, the real default model.
"""
from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys

import pytest
import redis
import requests

from conftest import DATA, ROOT, ServerThread, WorkerThread, children_of, cmdline, config_env, make_config, wait_for
from deploy.cluster import REDIS_CONF, gateway_acl
from image_gateway import embedded, redis_url
from image_gateway.redis_server import RedisServer, free_port
from image_gateway.web.app import create_app

ADMIN = ("--user", "admin", "on", ">admin-pw", "~*", "&*", "+@all")     # the test's own eyes on the ACL log
# What the gateway's user must never run, with arguments Redis would otherwise accept.
ADMINISTRATION = [("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "GET", "requirepass"), ("FLUSHALL",), ("FLUSHDB",),
                  ("DEBUG", "SLEEP", "0"), ("SAVE",), ("BGSAVE",), ("SHUTDOWN", "NOSAVE"), ("REPLICAOF", "NO", "ONE"),
                  ("SLAVEOF", "NO", "ONE"), ("MIGRATE", "127.0.0.1", "1", "k", "0", "100"), ("MODULE", "LIST"),
                  ("ACL", "LIST"), ("KEYS", "*"), ("MONITOR",)]


def raw_command(port: int, line: bytes) -> bytes:
    """What Redis answers a client that sends `line` and nothing else (no AUTH, no HELLO)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line)
        return sock.recv(200)


def test_the_embedded_redis_refuses_strangers_and_shows_no_credentials(tmp_path):
    """`python run_server.py --no-worker`: its redis-server answers NOAUTH to a client without the password,
    and neither its process list, its log, /status nor /metrics shows a URL with a password."""
    port = free_port()
    env = {**config_env(make_config(None, log_level="DEBUG")), "PORT": str(port), "DATA_DIR": str(tmp_path / "data")}
    env.pop("REDIS_URL", None)
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        gateway = subprocess.Popen([sys.executable, str(ROOT / "run_server.py"), "--no-worker"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert gateway.poll() is None, log_path.read_text()
            try:
                return requests.get(url + "/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(up, 60, 0.1, "the gateway")
        [redis_pid] = [pid for pid in children_of(gateway.pid) if "redis-server" in cmdline(pid)]
        redis_port = int(re.search(r":(\d+)", cmdline(redis_pid)).group(1))
        assert raw_command(redis_port, b"PING\r\n").startswith(b"-NOAUTH")
        assert raw_command(redis_port, b"CONFIG GET requirepass\r\n").startswith(b"-NOAUTH")
        assert raw_command(redis_port, b"AUTH default guess\r\n").startswith(b"-WRONGPASS")
        status = requests.get(url + "/status", timeout=10)
        metrics = requests.get(url + "/metrics", timeout=10)
        assert status.status_code == 200 and metrics.status_code == 200
        assert status.json()["redis_memory"]                           # memory is shown, by host:port
        for pid in [gateway.pid, *children_of(gateway.pid)]:
            assert "redis://" not in cmdline(pid) and ">" not in cmdline(pid), cmdline(pid)
    finally:
        gateway.terminate()
        gateway.wait(60)
    output = log_path.read_text()
    for text in (status.text, metrics.text, output):
        assert not re.search(r"redis://[^/\s\"]*@", text), text[:2000]     # no URL with credentials
        assert not re.search(r"[0-9a-f]{48}", text)                        # the password's shape (token_hex(24))
    assert "embedded redis-server started on 127.0.0.1:" in output


def test_the_gateway_user_may_not_administer_the_embedded_redis(tmp_path, classifier, caplog):
    """The embedded Redis as run_server.py starts it: the gateway's own credentials cannot reconfigure,
    flush, save, stop or replicate it, nor touch keys outside KEY_PREFIX; the gateway works through it, and
    the password appears in no log line, /status or /metrics."""
    caplog.set_level(logging.DEBUG)
    server, config = embedded.start_redis(make_config(None, data_dir=str(tmp_path / "data"), cache_ttl=60))
    config = make_config(config.redis_url, cache_ttl=60)
    web = ServerThread(create_app(config), config)
    worker = WorkerThread(config, classifier)
    try:
        client = redis.Redis.from_url(config.redis_url, socket_timeout=5)
        for command in ADMINISTRATION:
            with pytest.raises(redis.ResponseError):                   # NOPERM (DEBUG: not even enabled)
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("not-a-gateway-key", "1")
        assert client.ping() and client.info("memory")["maxmemory_policy"] == "noeviction"
        wait_for(lambda: requests.get(web.url + "/readyz", timeout=5).status_code == 200, 30, message="a worker")
        cat = (DATA / "cat.jpg").read_bytes()
        first = requests.post(web.url + "/predict", files={"image": cat}, timeout=30)
        again = requests.post(web.url + "/predict", files={"image": cat}, timeout=30)   # from the cache
        assert first.status_code == again.status_code == 200
        assert again.json()["predictions"] == first.json()["predictions"]
        task = requests.post(web.url + "/v1/tasks", files=[("image", cat)] * 2, timeout=30).json()
        wait_for(lambda: requests.get(f"{web.url}/v1/tasks/{task['task_id']}", timeout=5).json()["state"] == "DONE",
                 30, message="a task")
        status = requests.get(web.url + "/status", timeout=5).text
        metrics = requests.get(web.url + "/metrics", timeout=5).text
        assert "gateway_redis_used_memory_bytes" in metrics
    finally:
        worker.stop()
        web.stop()
        server.close()
    for text in (status, metrics, caplog.text):
        assert server.password not in text and server.url not in text
    assert redis_url.redact(server.url) == f"redis://gateway:***@{server.address}/0"


def test_redact_and_redis_url_file(tmp_path):
    assert redis_url.redact("rediss://gateway:s3cret@10.0.2.10:6380/0?ssl_ca_certs=/ca.pem") == \
        "rediss://gateway:***@10.0.2.10:6380/0?ssl_ca_certs=/ca.pem"
    assert redis_url.redact("redis://:s3cret@h:1/0") == "redis://:***@h:1/0"
    assert redis_url.redact("redis://h:1/0?password=s3cret") == "redis://h:1/0?password=***"
    assert redis_url.redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redis_url.address("redis://gateway:s3cret@10.0.2.10:6380/0") == "10.0.2.10:6380"
    secret = tmp_path / "redis-url"
    secret.write_text("redis://gateway:s3cret@127.0.0.1:6379/0\n")
    config = make_config(None, redis_url_file=str(secret))
    assert redis_url.resolve(config).redis_url == "redis://gateway:s3cret@127.0.0.1:6379/0"
    assert redis_url.resolve(make_config("redis://other/0", redis_url_file=str(secret))).redis_url == "redis://other/0"
    secret.write_text("")
    with pytest.raises(ValueError, match="REDIS_URL_FILE") as error:
        redis_url.resolve(config)
    assert "s3cret" not in str(error.value)


def test_the_gateway_works_through_deploy_users_acl_and_redis_conf_with_nothing_refused(tmp_path, classifier):
    """The `gateway` user of deploy/users.acl on a Redis started with deploy/redis.conf, as deploy.cluster
    runs them: /predict, the cache, a task, /status, /metrics and a worker's graceful stop; the ACL log
    (read by an admin user of the test's own) stays empty."""
    server = RedisServer(config_file=REDIS_CONF, data_dir=str(tmp_path / "data"), acl=gateway_acl("gw"),
                         extra_args=ADMIN).start()
    admin = redis.Redis(port=server.port, username="admin", password="admin-pw", socket_timeout=5)
    config = make_config(server.url, cache_ttl=60)
    web = ServerThread(create_app(config), config)
    worker = WorkerThread(config, classifier)
    try:
        assert admin.config_get("appendonly") == {"appendonly": "yes"}
        assert admin.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert admin.config_get("save") == {"save": ""}
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        admin.execute_command("ACL", "LOG", "RESET")
        wait_for(lambda: requests.get(web.url + "/readyz", timeout=5).status_code == 200, 30, message="a worker")
        cat = (DATA / "cat.jpg").read_bytes()
        for _ in range(2):
            assert requests.post(web.url + "/predict", files={"image": cat}, timeout=30).status_code == 200
        task = requests.post(web.url + "/v1/tasks", files=[("image", cat)] * 2, timeout=30).json()
        wait_for(lambda: requests.get(f"{web.url}/v1/tasks/{task['task_id']}", timeout=5).json()["state"] == "DONE",
                 30, message="a task")
        assert requests.get(web.url + "/status", timeout=5).json()["redis_memory"]
        assert "gateway_redis_maxmemory_bytes" in requests.get(web.url + "/metrics", timeout=5).text
        worker.stop()                                      # the release script too
        # CLIENT (SETINFO) is the one refusal allowed: redis-py may announce its name on a connection (the
        # gateway asks it not to: redis_url.no_setinfo) and ignores the refusal; the gateway needs no CLIENT.
        denied = [entry for entry in admin.execute_command("ACL", "LOG") if entry[b"object"] != b"client"]
        assert not denied, f"deploy/users.acl refused commands the gateway needs: {denied}"
    finally:
        worker.stop()
        web.stop()
        admin.close()
        server.close()
