"""The model worker process: serves the configured models until SIGTERM.

Run one process per model replica, on any machine that reaches Redis:

    REDIS_URL=redis://127.0.0.1:6379/0 python classify_worker.py                  # every configured model
    REDIS_URL=redis://127.0.0.1:6379/0 python classify_worker.py --model resnet50  # one model

`python run_server.py` runs the same process as its child (image_gateway/worker/child.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import threading

import prometheus_client

from image_gateway import settings as settings_module
from image_gateway import startup
from image_gateway.worker.child import READY_FD


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="overrides REDIS_URL (it shows in the process list: prefer REDIS_URL "
                        "or REDIS_URL_FILE)")
    parser.add_argument("--model", help="serve only this model (a built-in or a repository model)")
    args = parser.parse_args(argv)
    config = settings_module.load()
    if args.redis_url:
        config = dataclasses.replace(config, redis_url=args.redis_url)
    if args.model:
        config = dataclasses.replace(config, model=args.model, models="")
    startup.prepare(config, web=False, worker=True)
    if not config.redis_url:
        parser.error("set REDIS_URL (or --redis-url): a standalone worker needs a Redis to serve")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    from image_gateway.worker.host import start_workers  # heavy: TensorFlow loads with the models
    host = start_workers(config, only=args.model)
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port, addr=config.host)
    tell_parent_ready()
    while not stopping.wait(0.5) and (any(thread.is_alive() for thread in host.threads) or config.model_repository):
        pass
    host.stop(config.request_timeout)


def tell_parent_ready() -> None:
    """Under the embedded default (worker/child.py): one byte on the pipe the parent waits on."""
    fd = os.environ.pop(READY_FD, None)
    if fd:
        os.write(int(fd), b"1")
        os.close(int(fd))


if __name__ == "__main__":
    main()
