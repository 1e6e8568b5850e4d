"""The web tier: POST /predict -> decode and resize -> Redis queue -> wait for the result -> JSON.

    python run_server.py                # embedded default: own redis-server + worker threads, :5000
    REDIS_URL=redis://host:6379/0 gunicorn -c deploy/gunicorn.conf.py run_server:app   # web tier only

Follow a request from `web/predict.py`; `embedded.py` runs the one-command default.
"""
from __future__ import annotations

from flask import Flask

import logs
import settings as settings_module
from settings import Settings
from web import discovery, envelope, openapi, ops, pipelines, predict, resources, tasks, v2
from web.feeder import Feeder


def create_app(config: Settings | None = None) -> Flask:
    """The Flask app of the web tier; it never loads the model (only its cheap spec)."""
    config = config or settings_module.load()
    if not config.redis_url:
        raise RuntimeError("REDIS_URL is not set: run `python run_server.py` for the embedded default")
    app = Flask(__name__, static_folder=None)
    resources.init_app(app, config)
    envelope.init_app(app)
    app.register_blueprint(predict.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(discovery.bp)
    app.register_blueprint(pipelines.bp)
    app.register_blueprint(tasks.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(openapi.bp)
    app.extensions["feeder"] = Feeder(app, app.extensions["gateway"].tasks, config.task_window,
                                      config.task_lease_s).start()
    return app


def __getattr__(name: str):
    """`gunicorn run_server:app` builds the app from the environment on first access."""
    if name == "app":
        config = settings_module.load()
        logs.setup(config)
        globals()["app"] = create_app(config)
        return globals()["app"]
    raise AttributeError(name)


if __name__ == "__main__":
    import embedded
    embedded.main()
