"""What the calling client may do, and how much: model permissions, quotas, and GET /v1/clients/me.

web/auth.py names the client (g.client); here, before the route runs, a client with a `rate` spends one
request of its quota on every inference route (the limiter in Redis is shared by every web server), and
routes ask `permit` before they serve a model or pipeline named in the request.
"""
from __future__ import annotations

import math

from flask import Blueprint, Flask, g, jsonify, request

from image_gateway import errors, metrics
from image_gateway.clients import ANONYMOUS, Client
from image_gateway.errors import GatewayError
from image_gateway.web.resources import gateway

bp = Blueprint("access", __name__)
METERED = frozenset({"predict.predict", "pipelines.run_pipeline", "recognize.recognize", "tasks.create_task",
                     "v2.infer"})


def init_app(app: Flask) -> None:
    app.before_request(spend_quota)       # after auth's hook: the client is known


def caller() -> Client:
    return g.get("client") or ANONYMOUS


def permit(kind: str, name: str) -> None:
    """403 MODEL_NOT_ALLOWED unless the caller may name this model or pipeline directly."""
    client = caller()
    if not client.may_call(name):
        types = ", ".join(sorted(client.routes)) or "none"
        raise GatewayError(errors.MODEL_NOT_ALLOWED, f"client {client.name!r} may not call {kind} {name!r} directly; "
                           f"its types (POST /v1/recognize/<type>): {types}")


def spend_quota() -> None:
    """429 RATE_LIMITED with Retry-After when the caller is over its rate (inference routes only)."""
    client = caller()
    if not client.rate or request.endpoint not in METERED:
        return
    decision = gateway().limiter.take(client.name, client.rate, client.bucket)
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(client.name).inc()
        raise GatewayError(errors.RATE_LIMITED, f"client {client.name!r} is limited to {client.rate:g} requests/s "
                           f"(burst {client.bucket}); retry in {decision.retry_after_s:.3f} s",
                           {"Retry-After": str(max(1, math.ceil(decision.retry_after_s)))})


@bp.get("/v1/clients/me")
def me():
    """The caller's name, routes, what it may call directly, and its quota now."""
    client = caller()
    body = {"success": True, **client.describe(), "quota": None}
    if client.rate:
        now = gateway().limiter.take(client.name, client.rate, client.bucket, cost=0)
        body["quota"] = {"remaining": now.remaining, "full_in_s": now.full_after_s}
    return jsonify(body)
