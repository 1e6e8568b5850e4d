"""Fixtures that start real services: a redis-server process, the web tier over HTTP, worker processes."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from image_gateway import processes
from image_gateway import settings as settings_module
from image_gateway.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

DATA = ROOT / "tests" / "data"
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session; each test gets it flushed (see `redis_url`)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make_config(redis_url: str, **overrides) -> settings_module.Settings:
    """Settings for a test: quick timeouts and heartbeats, no cache unless asked."""
    values = {"redis_url": redis_url, "request_timeout": 30.0, "heartbeat_interval": 0.2,
              "heartbeat_ttl": 1.0, "cache_ttl": 0, "worker_threads": 1, "log_format": "text", "log_level": "WARNING",
              "litert_cache_dir": str(ARTIFACTS / "litert-cache")}
    values.update(overrides)
    return settings_module.Settings(**values)


def config_env(config: settings_module.Settings) -> dict[str, str]:
    """The environment variables that reproduce `config` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS")}
    for name, value in config.__dict__.items():
        if value is not None:
            env[name.upper()] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def classifier():
    """The real default model, loaded once for the whole session."""
    from image_gateway import models
    return models.load_model()


class ServerThread:
    """The app behind the embedded default's web server (http_front) on a free loopback port, in a thread."""

    def __init__(self, app, config):
        from image_gateway.embedded import make_server
        feeder = getattr(app, "extensions", {}).get("feeder")
        if feeder:
            feeder.start()                   # as the embedded default does: create_app starts no thread
        self.port = free_port()
        self.server = make_server(app, dataclasses.replace(config, host="127.0.0.1", port=self.port))
        self.server.prepare()
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        feeder = getattr(self.server.wsgi_app, "extensions", {}).get("feeder")
        try:
            self.server.stop()
            self.thread.join(10)
        finally:
            if feeder:     # an old test's app must not feed the next test's tasks, nor outlive (and log) its Redis
                feeder.stop(wait_s=5)
            gateway = getattr(self.server.wsgi_app, "extensions", {}).get("gateway")
            if gateway:    # its Redis connections close now, not whenever the garbage collector finds them
                gateway.tasks.client.close()


class WorkerThread:
    """A real `classify_worker.Worker` running in a thread of the test process."""

    def __init__(self, config, classifier, worker_id: str | None = None):
        from image_gateway import protocol
        from image_gateway.worker.loop import Worker
        client = protocol.connect(config.redis_url, config.request_timeout, config.redis_cluster)
        self.worker = Worker(config, client, classifier, worker_id)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(10)


@pytest.fixture
def gateway_factory():
    """Builds (web server, worker threads) for a config; stops everything after the test."""
    started: list = []

    def build(config, classifier=None, workers: int = 1):
        from image_gateway.web.app import create_app
        web = ServerThread(create_app(config), config)
        started.append(web)
        threads = [WorkerThread(config, classifier) for _ in range(workers)] if classifier else []
        started.extend(threads)
        return web, threads

    yield build
    for item in reversed(started):
        item.stop()


def start_worker_process(config, log_path: Path | None = None, extra_env: dict | None = None,
                         args: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python classify_worker.py [args]` as a real child process (it dies with the test run)."""
    env = {**config_env(config), **(extra_env or {})}
    return processes.start([sys.executable, str(ROOT / "classify_worker.py"), *args], log_path=log_path, env=env,
                           cwd=ROOT, die_with_parent=True)


def children_of(pid: int) -> list[int]:
    """The pids of `pid`'s child processes."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in found]


def cmdline(pid: int) -> str:
    """`pid`'s command line, or "" once it has exited (a child listed a moment ago may be reaped by now)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it is truthy (returned) or fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {message}")


# ---------------------------------------------------------------------- REDIS_CLUSTER_TESTS=1
# The same fixtures on a real Redis Cluster (3 masters, 3 replicas on loopback) and REDIS_CLUSTER=1 in
# every make_config: `REDIS_CLUSTER_TESTS=1 pytest tests/test_reliability.py` runs the reliability suite
# through the cluster. Tests that start a single redis-server of their own cannot apply there.
CLUSTER_INAPPLICABLE = {
    "test_redis_restart_under_load_gives_503_then_recovers":
        "starts its own single redis-server (tests/test_redis_cluster.py kills a cluster master instead)",
    "test_password_protected_redis_through_redis_url": "starts its own single redis-server with requirepass",
}
if os.environ.get("REDIS_CLUSTER_TESTS") == "1":
    from redis.cluster import RedisCluster as ClusterClient

    from image_gateway.redis_server import RedisCluster

    _single_redis_config = make_config

    def make_config(redis_url: str, **overrides) -> settings_module.Settings:  # noqa: F811
        return _single_redis_config(redis_url, **{"redis_cluster": 1, **overrides})

    @pytest.fixture(scope="session")
    def redis_server():  # noqa: F811
        with RedisCluster(masters=3) as cluster:
            yield cluster

    @pytest.fixture
    def redis_url(redis_server) -> str:  # noqa: F811
        client = ClusterClient.from_url(redis_server.url)
        client.flushall()                 # on every master
        client.close()
        return redis_server.url

    class EveryMasterClient(ClusterClient):
        """KEYS asks every master (redis-py's cluster client asks one node)."""

        def keys(self, pattern="*", **kwargs):
            return super().keys(pattern, target_nodes=ClusterClient.PRIMARIES, **kwargs)

    @pytest.fixture
    def redis_client(redis_url):  # noqa: F811
        client = EveryMasterClient.from_url(redis_url)
        yield client
        client.close()

    def pytest_collection_modifyitems(items):
        for item in items:
            reason = CLUSTER_INAPPLICABLE.get(getattr(item, "originalname", item.name))
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"REDIS_CLUSTER_TESTS=1: {reason}"))
