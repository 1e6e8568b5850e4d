"""What every request handler shares, attached once to the app by `init_app`."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from image_gateway import metrics, protocol
from image_gateway.clients import ClientRegistry
from image_gateway.protocol.ratelimit import RateLimiter
from image_gateway.settings import Settings
from image_gateway.web.plans import Plan, load_plans
from image_gateway.web.routing import Router


@dataclass(frozen=True)
class Gateway:
    config: Settings
    router: Router                  # model versions and their queues (no model is loaded here)
    collector: metrics.QueueCollector
    plans: dict[str, Plan]          # the pipelines of the PIPELINES file
    tasks: protocol.TaskStore       # image sets fed to the queues by web/feeder.py
    clients: ClientRegistry | None = None     # who may call, and their routes (API_KEY, CLIENTS)
    limiter: RateLimiter | None = None        # per-client quotas in Redis


def init_app(app: Flask, config: Settings) -> None:
    client = protocol.connect(config.redis_url, config.request_timeout, config.redis_cluster)
    router = Router(config, client)
    app.extensions["gateway"] = Gateway(config, router, metrics.QueueCollector(router), load_plans(config.pipelines),
                                        protocol.TaskStore(client, config.key_prefix),
                                        ClientRegistry(config.clients, config.api_key, config.repository_poll_s),
                                        RateLimiter(client, config.key_prefix))
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes


def gateway() -> Gateway:
    return current_app.extensions["gateway"]
