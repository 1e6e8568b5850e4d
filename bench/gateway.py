"""The gateway under test as a child process: `python run_server.py` exactly as a user starts it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.system import process_tree, read_stat
from image_gateway import processes
from image_gateway.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
# Every client of a bench run comes from 127.0.0.1: MAX_CONNECTIONS_PER_PEER would refuse its 64-client
# levels. A throwaway Redis: a bench leaves no data folder behind.
BENCH_ENV = {"MAX_CONNECTIONS_PER_PEER": "0", "DATA_DIR": ""}


class Gateway:
    """`python run_server.py --port P` (embedded Redis + worker thread) as a child process."""

    def __init__(self, log_path: Path, env: dict | None = None):
        self.env = env or {}                  # on top of this process's environment (RUNTIME=tensorflow ...)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.descendants: list[int] = []

    def start(self, timeout_s: float = 300.0) -> Gateway:
        """Start it and wait until GET /readyz is 200; SystemExit with its log if it exits or never gets ready."""
        command = [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = processes.start(command, log_path=self.log_path, cwd=ROOT,
                                       env={**os.environ, **BENCH_ENV, **self.env, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the gateway exited ({self.process.returncode}); its log:\n{self.log_tail()}")
            if processes.http_get(self.url + "/readyz", timeout_s=5)[0] == 200:
                self.descendants = process_tree(self.process.pid)[1:]
                return self
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"the gateway was not ready within {timeout_s:.0f} s; its log:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM (the gateway finishes requests in flight and stops its Redis), wait, then SIGKILL."""
        exit_code = processes.stop(self.process, timeout_s=30)
        for pid in self.descendants:          # an embedded redis-server orphaned by a kill
            if read_stat(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        return exit_code

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
