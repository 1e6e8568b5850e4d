"""GET /v1/models: which models are served, their kind, input size and versions with their state."""
from __future__ import annotations

from flask import Blueprint, jsonify

from image_gateway.web.resources import gateway

bp = Blueprint("discovery", __name__)


@bp.get("/v1/models")
def list_models():
    router = gateway().router
    return jsonify({"models": [router.describe(name) for name in sorted(router.view())]})


@bp.get("/v1/models/<name>")
def get_model(name: str):
    return jsonify(gateway().router.describe(name))
