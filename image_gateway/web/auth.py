"""Who may call what: with API_KEY set, every route needs `X-API-Key` except liveness, readiness and the
page's static files. /metrics also takes METRICS_KEY (header `X-API-Key` or `Authorization: Bearer`), so a
scraper need not hold the key that runs inference. Keys are compared in constant time.

The embedded front checks the same rule from the headers alone, before `100 Continue` and before it
reads a body (front/admission.py); this hook is what holds behind gunicorn and in tests.
"""
from __future__ import annotations

import hmac

from flask import Flask, request

from image_gateway import errors
from image_gateway.errors import GatewayError
from image_gateway.settings import Settings
from image_gateway.web.resources import gateway

PUBLIC_PATHS = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/", "/docs")       # the page's and Swagger UI's files: no data, no internals


def init_app(app: Flask) -> None:
    app.before_request(require_key)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def key_matches(supplied: str, *keys: str | None) -> bool:
    """Whether `supplied` equals one of the configured keys (constant time; an unset key never matches)."""
    found = False
    for key in keys:
        if key:
            found |= hmac.compare_digest(supplied.encode(), key.encode())
    return found


def allowed(config: Settings, path: str, headers) -> bool:
    """The rule itself, from the path and headers only (the front calls it before reading a body)."""
    if not config.api_key or is_public(path):
        return True
    supplied = headers.get("X-API-Key", "")
    if path == "/metrics":
        bearer = headers.get("Authorization", "")
        token = bearer[7:] if bearer[:7].lower() == "bearer " else ""
        return key_matches(supplied, config.api_key, config.metrics_key) or key_matches(token, config.metrics_key)
    return key_matches(supplied, config.api_key)


def require_key() -> None:
    if not allowed(gateway().config, request.path, request.headers):
        raise GatewayError(errors.UNAUTHORIZED)
