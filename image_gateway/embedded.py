"""The one-command default, `python run_server.py`: its own redis-server, a worker process, a web server.

With REDIS_URL (or REDIS_URL_FILE) set it uses that Redis instead; `--no-worker` serves the web tier
alone. The models run in a child process (worker/child.py: two GILs instead of one), which this one
starts, waits for, restarts if it dies, and stops; EMBEDDED_WORKER=thread runs them as threads of this
process instead (one process, less memory, slower on a busy CPU). Its own Redis keeps its data in DATA_DIR
(append-only file, fsync every second), so queued work, tasks and results survive a restart, and is
private: a random password, and a user without the @dangerous commands (CONFIG, FLUSHALL, SHUTDOWN
...); the password reaches only this process and its worker child (through a pipe). The web server is
front.server.Front: an asyncio front that reads each request whole before a thread runs the app, so
slow and idle clients never hold a thread (CLIENT_TIMEOUT, CLIENT_MIN_RATE).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading

from flask import Flask

from image_gateway import metrics, redis_url, startup
from image_gateway import settings as settings_module
from image_gateway.front.server import Front
from image_gateway.settings import Settings
from image_gateway.web.app import create_app
from image_gateway.worker.child import WorkerChild

log = logging.getLogger("gateway.web")


def main(argv: list[str] | None = None) -> None:
    config = settings_module.load()
    parser = argparse.ArgumentParser(description="Image-recognition gateway (embedded default)")
    parser.add_argument("--host", default=config.host, help="bind address (HOST)")
    parser.add_argument("--port", type=int, default=config.port, help="port (PORT)")
    parser.add_argument("--no-worker", action="store_true", help="web tier only: no worker process")
    args = parser.parse_args(argv)
    config = redis_url.resolve(dataclasses.replace(config, host=args.host, port=args.port))
    in_process = not args.no_worker and config.embedded_worker == "thread"
    startup.prepare(config, web=True, worker=in_process)
    embedded_redis = None
    if not config.redis_url:
        embedded_redis, config = start_redis(config)
    check_memory_policy(config)
    workers = app = None
    try:
        workers = None if args.no_worker else start_workers(config, in_process)
        app = create_app(config)
        if isinstance(workers, WorkerChild):
            metrics.include_worker_child(workers.metrics_url)
        app.extensions["feeder"].start()
        serve(app, config)
    finally:
        if app is not None:     # before Redis goes: a feeder mid-task would log "redis unavailable" on the way out
            app.extensions["feeder"].stop(wait_s=5)
        if workers:
            workers.stop(config.request_timeout)
        if embedded_redis:
            embedded_redis.close()


def start_workers(config: Settings, in_process: bool):
    """The models' workers, loaded (`.stop(timeout_s)` ends them): a child process, or threads of this one."""
    if in_process:
        from image_gateway.worker import host  # the runtimes load in this process
        return host.start_workers(config)
    return WorkerChild(config).start()


def data_dir(config: Settings) -> str | None:
    """The embedded Redis' folder: DATA_DIR made absolute; None (a throwaway temp folder) for DATA_DIR=""."""
    return os.path.abspath(os.path.expanduser(config.data_dir)) if config.data_dir else None


def start_redis(config: Settings):
    """The embedded redis-server, private (random password, ACL user without the dangerous commands), in
    DATA_DIR when set; the config whose REDIS_URL carries the password. Exits naming DATA_DIR when another
    gateway uses it."""
    from image_gateway.redis_server import DataDirInUse, RedisServer, private_rules
    folder = data_dir(config)
    try:
        server = RedisServer(config.redis_server_bin, data_dir=folder, acl=private_rules(config.key_prefix)).start()
    except DataDirInUse as error:
        raise SystemExit(f"error: {error}") from None
    where = f"data in {folder} (append-only file, fsync every second)" if folder else "throwaway (DATA_DIR empty)"
    log.info("embedded redis-server started on %s, %s", server.address, where)
    return server, dataclasses.replace(config, redis_url=server.url)


def check_memory_policy(config: Settings) -> None:
    """Warn (log) when the Redis could evict the gateway's keys (protocol.memory)."""
    from image_gateway import protocol
    from image_gateway.protocol import memory
    client = protocol.connect(config.redis_url, config.request_timeout, config.redis_cluster)
    try:
        memory.warn_if_evicting(client)
    finally:
        client.close()


def make_server(app, config: Settings) -> Front:
    """The embedded web server: `.prepare()` binds, `.serve()` runs until `.stop()` (from another thread)."""
    return Front(app, config)


def serve(app: Flask, config: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting and let the requests in flight finish."""
    server = make_server(app, config)
    # stop() waits for the loop that the main thread runs, so it needs a thread of its own.
    stopper = threading.Thread(target=server.stop, name="server-stop")

    def stop(*_):
        if stopper.ident is None:      # the first signal starts the stop; later ones change nothing
            stopper.start()

    server.prepare()                   # binds; the stop below needs a prepared server
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on http://%s:%d", config.host, config.port)
    print(f"Serving on http://{config.host}:{config.port}  (Ctrl-C to stop)", flush=True)
    server.serve()
    stopper.join()
