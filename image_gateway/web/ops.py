"""Operations endpoints: liveness, readiness, status, Prometheus metrics, and the web page."""
from __future__ import annotations

import os

import redis
from flask import Blueprint, Response, jsonify, send_from_directory

from image_gateway import metrics
from image_gateway.errors import GatewayError
from image_gateway.protocol import memory
from image_gateway.web.resources import gateway

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")   # package data
bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and the default model has a live worker (read now, not from the view)."""
    gw = gateway()
    try:
        served = gw.router.resolve(None, None)
        live = len(served.queue.live_workers(gw.config.heartbeat_ttl))
    except redis.RedisError:
        return jsonify({"ready": False, "reason": "redis unreachable"}), 503
    except GatewayError as exc:
        return jsonify({"ready": False, "reason": exc.message}), 503
    body = {"ready": bool(live), "model": served.name, "version": served.version, "live_workers": live}
    return jsonify(body), (200 if live else 503)


@bp.get("/status")
def status():
    """The default model's queue, counters and workers (GET /v1/models lists every model)."""
    gw = gateway()
    served = gw.router.resolve(None, None)
    live = served.queue.live_workers(gw.config.heartbeat_ttl)
    return jsonify({"model": served.name, "version": served.version, "queue_depth": served.queue.depth(),
                    "shard": served.queue.shard(), "stats": served.queue.stats(),
                    "workers": [{"id": w, **served.queue.worker_info(w)} for w in live],
                    "redis_memory": redis_memory(gw.router.client)})


def redis_memory(client) -> dict | None:
    """host:port of each Redis master -> used_memory, maxmemory (0: no limit) and maxmemory_policy;
    None when INFO is refused (an ACL without +info) or fails. Never the URL: it may carry a password."""
    try:
        return memory.usage(client)
    except redis.RedisError:
        return None


@bp.get("/metrics")
def prometheus():
    body, content_type = metrics.render(gateway().collector, gateway().config.prometheus_multiproc_dir)
    return Response(body, content_type=content_type)


@bp.get("/")
def index():
    return send_from_directory(STATIC_DIR, "index.html")


@bp.get("/static/<path:name>")
def static_file(name: str):
    return send_from_directory(STATIC_DIR, name)
