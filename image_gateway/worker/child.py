"""The embedded default's model worker: `python -m image_gateway.worker.main` as a child process.

Why a process and not threads of the web process: the web tier's Python (front, Flask, multipart,
Redis replies) and the worker's (claims, stacking, top-k, publishing) then hold two GILs, not one.
Measured on 2 vCPUs at 16 clients (README "Performance"): efficientnet_lite0_int8 went from 139 to 179
images/s, fp32 from 112 to 125, because the cores no longer sit idle while one thread waits for the GIL.

The child gets the Redis URL through a pipe (REDIS_URL_FILE=/dev/fd/N), so the password shows in no
process list and no environment; it writes one byte on a second pipe once its models are loaded (the
parent opens its port only then, as before); it serves its metrics on a private loopback port, which
the web process' /metrics includes. A child that exits on its own is started again (the jobs it held
are recovered by the heartbeat, as for any dead worker). It runs in its own session, so a terminal's
Ctrl-C reaches only the parent, which stops it in order; it dies with its parent.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from image_gateway import processes
from image_gateway.redis_server import free_port
from image_gateway.settings import Settings

log = logging.getLogger("gateway.worker")
READY_FD = "GATEWAY_WORKER_READY_FD"      # the child writes one byte here once its models are loaded
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
STEADY_S = 60.0                           # a child that ran this long restarts at once after a crash


class WorkerChild:
    def __init__(self, config: Settings):
        self.config = config
        self.metrics_port = free_port()
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> WorkerChild:
        """Start the child and wait until its models are loaded; SystemExit when it dies first."""
        if not self._spawn():
            code = processes.wait_or_kill(self.process, 5)
            raise SystemExit(f"error: the model worker process exited with code {code} while loading (log above)")
        threading.Thread(target=self._supervise, name="worker-child", daemon=True).start()
        return self

    def _spawn(self) -> bool:
        """One child; whether it said it is ready (False: it exited before)."""
        url_read, url_write = os.pipe()
        ready_read, ready_write = os.pipe()
        env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        env.update(REDIS_URL_FILE=f"/dev/fd/{url_read}", HOST="127.0.0.1", METRICS_PORT=str(self.metrics_port),
                   PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        env[READY_FD] = str(ready_write)
        try:
            os.write(url_write, self.config.redis_url.encode() + b"\n")   # far below a pipe's buffer
            os.close(url_write)
            self.process = processes.start([sys.executable, "-m", "image_gateway.worker.main"], env=env,
                                           inherit_output=True, pass_fds=(url_read, ready_write),
                                           new_session=True, die_with_parent=True)
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(url_read)
            os.close(ready_write)
        with os.fdopen(ready_read, "rb") as ready:
            return ready.read(1) == b"1"       # b"": the child closed the pipe by exiting

    def _supervise(self) -> None:
        """Start the child again whenever it exits while the gateway is not stopping."""
        backoff = 0.5
        while True:
            started = time.monotonic()
            code = self.process.wait()
            if self.stopping.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > STEADY_S else min(backoff * 2, 30.0)
            log.error("the model worker process exited with code %s; starting it again in %.0f s", code, backoff)
            if self.stopping.wait(backoff) or not self._restart():
                return

    def _restart(self) -> bool:
        try:
            self._spawn()
        except OSError as error:
            log.error("could not start the model worker process: %s", error)
        return not self.stopping.is_set()

    def stop(self, timeout_s: float) -> None:
        """SIGTERM: the child finishes its batches and returns what else it claimed; SIGKILL after timeout_s."""
        self.stopping.set()
        processes.stop(self.process, timeout_s, signal.SIGTERM)
