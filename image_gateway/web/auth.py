"""Who is calling: with API_KEY or CLIENTS set, every route needs `X-API-Key` except liveness, readiness and
the page's static files; the key names the client (API_KEY is the client `default`; the CLIENTS file's keys
are looked up by their SHA-256, image_gateway/clients.py). /metrics also takes METRICS_KEY (header
`X-API-Key` or `Authorization: Bearer`), so a scraper need not hold the key that runs inference. Keys are
compared in constant time. Without either setting every caller is the client `anonymous`, allowed all.

The embedded front checks the same rule from the headers alone, before `100 Continue` and before it
reads a body (front/admission.py); this hook is what holds behind gunicorn and in tests.
"""
from __future__ import annotations

import hmac

from flask import Flask, g, request

from image_gateway import errors
from image_gateway.clients import ANONYMOUS, Client, ClientRegistry
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


def identify(config: Settings, registry: ClientRegistry | None, path: str, headers) -> Client | None:
    """The calling client, from the path and headers only (the front calls it before reading a body); None
    when the key is missing or unknown on a route that needs one. Public routes are `anonymous`'s."""
    if registry is None or not registry.required or is_public(path):
        return ANONYMOUS
    supplied = headers.get("X-API-Key", "")
    client = registry.current().by_key(supplied)
    if path == "/metrics" and client is None:
        bearer = headers.get("Authorization", "")
        token = bearer[7:] if bearer[:7].lower() == "bearer " else ""
        return ANONYMOUS if key_matches(supplied, config.metrics_key) or key_matches(token, config.metrics_key) \
            else None
    return client


def allowed(config: Settings, path: str, headers, registry: ClientRegistry | None = None) -> bool:
    """The rule itself, from the path and headers only; without a registry, API_KEY's alone."""
    if registry is None:
        registry = ClientRegistry(None, config.api_key, 0.0)
    return identify(config, registry, path, headers) is not None


def require_key() -> None:
    client = identify(gateway().config, gateway().clients, request.path, request.headers)
    if client is None:
        raise GatewayError(errors.UNAUTHORIZED)
    g.client = client
