"""GET /openapi.json (OpenAPI 3.1, assembled by apispec) and GET /docs (Swagger UI, offline).

The document is built from the app's own URL map: every route the app serves becomes a path, and
each (method, route) takes its operation from OPERATIONS below, so a route can neither be missing
nor documented at a path the app does not serve (tests/test_openapi.py fails on an undocumented
route). The error codes each operation can answer are listed per status, from errors.py.

Swagger UI's files come from the flask-swagger-ui package (Swagger UI 5: the first major version that
renders OpenAPI 3.1); the page, its initializer script and every file are served from here with
relative URLs and a Content-Security-Policy of 'self', so the page loads nothing from elsewhere.
"""
from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from apispec import APISpec
from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory

from image_gateway.web.resources import gateway

bp = Blueprint("openapi", __name__)
DOCS_FILES = frozenset({"swagger-ui.css", "index.css", "swagger-ui-bundle.js", "favicon-32x32.png",
                        "favicon-16x16.png"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Image-recognition gateway: API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="stylesheet" href="docs/index.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui" data-spec-url="openapi.json"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-initializer.js"></script>
</body>
</html>
"""
INITIALIZER = """window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"), dom_id: "#swagger-ui", deepLinking: true,
    validatorUrl: null, layout: "BaseLayout", presets: [SwaggerUIBundle.presets.apis]
  });
});
"""


@cache
def swagger_ui_dir() -> str:
    return str(files("flask_swagger_ui") / "dist")


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(build_spec(current_app.url_map, gateway()))


@bp.get("/docs")
def docs():
    """The Swagger UI page; its URLs are relative, so it works behind any path prefix."""
    return Response(DOCS_PAGE, content_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP})


@bp.get("/docs/swagger-initializer.js")
def docs_initializer():
    return Response(INITIALIZER, content_type="text/javascript; charset=utf-8")


@bp.get("/docs/<name>")
def docs_file(name: str):
    if name not in DOCS_FILES:
        abort(404)
    return send_from_directory(swagger_ui_dir(), name, max_age=3600)


# ----------------------------------------------------------------------------------- assembly
def build_spec(url_map, gw) -> dict:
    """The OpenAPI document of the routes in `url_map`, for this gateway's settings."""
    from image_gateway.web import openapi_operations as ops

    spec = APISpec(title="Image-recognition gateway", version="2.0.0", openapi_version="3.1.0",
                   info={"description": ops.DESCRIPTION})
    for tag in ops.TAGS:
        spec.tag(tag)
    for name, schema in ops.schemas(gw.config).items():
        spec.components.schema(name, schema)
    spec.components.security_scheme("ApiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                               "description": "required when the server sets API_KEY"})
    paths: dict[str, dict] = {}
    for rule in sorted(url_map.iter_rules(), key=lambda rule: rule.rule):
        path, params = openapi_path(rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            key = (method, re.sub(r"\{[^}]+\}", "{}", path))
            build = ops.OPERATIONS.get(key, ops.undocumented)
            paths.setdefault(path, {})[method.lower()] = ops.finish(build(gw), path, params, gw)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def openapi_path(rule: str) -> tuple[str, list[str]]:
    """Werkzeug's /v1/models/<name> (or <path:name>) -> OpenAPI's /v1/models/{name}, with the names."""
    names = re.findall(r"<(?:[^>:]+:)?([^>]+)>", rule)
    return re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule), names
