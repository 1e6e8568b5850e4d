"""POST /v1/recognize/<type>: the calling client's routes (CLIENTS) decide what serves a recognition type.

A route names a model (its newest ready version, a pinned version, or a canary split over versions, the
version picked from the image's bytes) or a pipeline; the request then runs exactly as /predict or
/v1/pipelines/<name>/predict would, and the answer adds `type` and `client`.
"""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from image_gateway import errors, protocol
from image_gateway.clients import Client, Route
from image_gateway.errors import GatewayError
from image_gateway.web import access
from image_gateway.web.envelope import current_call
from image_gateway.web.pipelines import pipeline_body
from image_gateway.web.predict import predict_body
from image_gateway.web.uploads import read_upload

bp = Blueprint("recognize", __name__)


@bp.post("/v1/recognize/<type_name>")
def recognize(type_name: str):
    call = current_call()
    g.job_id = protocol.new_job_id()
    client = access.caller()
    route = route_of(client, type_name)
    g.route_type = type_name
    upload = read_upload(call.config)
    if route.pipeline:
        body = pipeline_body(call, route.pipeline, upload)
    else:
        body = predict_body(call, upload, call.gw.router.resolve(route.model, route.version_for(upload.data)))
    return jsonify({**body, "type": type_name, "client": client.name})


def route_of(client: Client, type_name: str) -> Route:
    """The client's route for a type, else 404 TYPE_NOT_FOUND listing its types."""
    route = client.routes.get(type_name)
    if route is None:
        types = ", ".join(sorted(client.routes)) or "none (routes are set in the CLIENTS file)"
        raise GatewayError(errors.TYPE_NOT_FOUND, f"client {client.name!r} has no type {type_name[:64]!r}; "
                           f"its types: {types}")
    return route
