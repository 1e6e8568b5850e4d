"""The web tier's app factory: POST /predict -> decode and resize -> Redis queue -> wait -> JSON.

`create_app` only builds the app: it loads no model and starts no thread. Whoever serves it starts
the task feeder (`app.extensions["feeder"].start()`): the embedded default (image_gateway.embedded)
and gunicorn's `post_worker_init` hook (deploy/gunicorn.conf.py). Follow a request from
web/predict.py.
"""
from __future__ import annotations

from flask import Flask

from image_gateway import settings as settings_module
from image_gateway.settings import Settings
from image_gateway.web import (
    access,
    auth,
    discovery,
    envelope,
    openapi,
    ops,
    pipelines,
    predict,
    recognize,
    resources,
    tasks,
    v2,
)
from image_gateway.web.feeder import Feeder


def create_app(config: Settings | None = None) -> Flask:
    """The Flask app of the web tier; it never loads the model (only its cheap spec)."""
    config = config or settings_module.load()
    if not config.redis_url:
        raise RuntimeError("REDIS_URL is not set: run `python run_server.py` for the embedded default")
    app = Flask(__name__, static_folder=None)
    resources.init_app(app, config)
    envelope.init_app(app)
    auth.init_app(app)
    access.init_app(app)                # after auth: the quota of the client it named
    for module in (predict, ops, discovery, pipelines, recognize, access, tasks, v2, openapi):
        app.register_blueprint(module.bp)
    app.extensions["feeder"] = Feeder(app, app.extensions["gateway"].tasks, config.task_window, config.task_lease_s)
    return app
