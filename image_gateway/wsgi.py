"""The WSGI module of the production web tier: `gunicorn image_gateway.wsgi:app` (or `run_server:app`).

Importing it builds the app from the environment (REDIS_URL must be set) and sets up logging, once
per process (image_gateway.startup).
gunicorn's `post_worker_init` hook (deploy/gunicorn.conf.py) starts the task feeder.
"""
from __future__ import annotations

from image_gateway import settings as settings_module
from image_gateway import startup
from image_gateway.protocol import memory
from image_gateway.web.app import create_app

config = settings_module.load()
startup.prepare(config, web=True, worker=False)
app = create_app(config)
memory.warn_if_evicting(app.extensions["gateway"].router.client)   # queue and task keys must never be evicted
