"""Operations endpoints: liveness, readiness, status, Prometheus metrics, and the web page."""
from __future__ import annotations

import os

import redis
from flask import Blueprint, Response, jsonify, send_from_directory

import metrics
from web.resources import gateway

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    gw = gateway()
    try:
        gw.queue.client.ping()
        live = gw.queue.live_workers(gw.config.heartbeat_ttl)
    except redis.RedisError:
        return jsonify({"ready": False, "reason": "redis unreachable"}), 503
    body = {"ready": bool(live), "model": gw.spec.name, "live_workers": len(live)}
    return jsonify(body), (200 if live else 503)


@bp.get("/status")
def status():
    gw = gateway()
    live = gw.queue.live_workers(gw.config.heartbeat_ttl)
    return jsonify({"model": gw.spec.name, "queue_depth": gw.queue.depth(), "stats": gw.queue.stats(),
                    "workers": [{"id": w, **gw.queue.worker_info(w)} for w in live]})


@bp.get("/metrics")
def prometheus():
    body, content_type = metrics.render(gateway().collector)
    return Response(body, content_type=content_type)


@bp.get("/")
def index():
    return send_from_directory(STATIC_DIR, "index.html")


@bp.get("/static/<path:name>")
def static_file(name: str):
    return send_from_directory(STATIC_DIR, name)
