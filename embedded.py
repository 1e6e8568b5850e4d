"""The one-command default, `python run_server.py`: its own redis-server, worker threads, a web server.

With REDIS_URL set it uses that Redis instead; `--no-worker` serves the web tier alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before TensorFlow loads: no C++ info chatter
import signal
import threading

from flask import Flask

import logs
import settings as settings_module
from run_server import create_app
from settings import Settings

log = logging.getLogger("gateway.web")


def main(argv: list[str] | None = None) -> None:
    config = settings_module.load()
    parser = argparse.ArgumentParser(description="Image-recognition gateway (embedded default)")
    parser.add_argument("--host", default=config.host, help="bind address (HOST)")
    parser.add_argument("--port", type=int, default=config.port, help="port (PORT)")
    parser.add_argument("--no-worker", action="store_true", help="web tier only: no model in this process")
    args = parser.parse_args(argv)
    config = dataclasses.replace(config, host=args.host, port=args.port)
    logs.setup(config)
    embedded_redis = None
    if not config.redis_url:
        from redis_server import RedisServer
        embedded_redis = RedisServer(config.redis_server_bin).start()
        config = dataclasses.replace(config, redis_url=embedded_redis.url)
        log.info("embedded redis-server started at %s", embedded_redis.url)
    workers = None
    if not args.no_worker:
        from model_host import start_workers
        workers = start_workers(config)
    try:
        serve(create_app(config), config)
    finally:
        if workers:
            workers.stop(config.request_timeout)
        if embedded_redis:
            embedded_redis.close()


def make_server(app, config: Settings):
    """cheroot, CherryPy's production WSGI server: WEB_THREADS threads and HTTP/1.1 keep-alive.

    Its stop() closes the listening socket and idle connections, then waits up to REQUEST_TIMEOUT + 1 s
    for every request being handled to get its answer.
    """
    from cheroot import wsgi
    server = wsgi.Server((config.host, config.port), app, numthreads=config.web_threads,
                         request_queue_size=1024, shutdown_timeout=config.request_timeout + 1)
    server.max_request_header_size = 64 * 1024
    return server


def serve(app: Flask, config: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting and let the requests in flight finish."""
    server = make_server(app, config)
    # stop() waits for the connection loop that the main thread runs, so it needs a thread of its own.
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
