"""Request ids in and out, the JSON error envelope, and the handlers that turn errors into it."""
from __future__ import annotations

import logging
import re
import time
import uuid

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from image_gateway import errors, metrics
from image_gateway.errors import GatewayError
from image_gateway.web.jobs import Call
from image_gateway.web.resources import gateway

log = logging.getLogger("gateway.web")
TRACE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
TIMED_ENDPOINTS = frozenset({"predict.predict", "recognize.recognize"})


def init_app(app: Flask) -> None:
    app.before_request(start_request)
    app.after_request(finish_request)
    app.register_error_handler(GatewayError, lambda exc: error_response(exc.error, exc.message, exc.headers))
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(redis.RedisError, redis_error)
    app.register_error_handler(Exception, unexpected_error)


def start_request() -> None:
    g.started = time.perf_counter()
    g.deadline = time.time() + gateway().config.request_timeout    # every deadline starts on arrival
    supplied = request.headers.get("X-Request-ID", "")
    g.trace_id = supplied if TRACE_ID.match(supplied) else uuid.uuid4().hex
    g.job_id = None


def current_call() -> Call:
    """The request's context, built once by its route and passed down the request path."""
    return Call(gateway(), g.trace_id, g.deadline)


def finish_request(response: Response) -> Response:
    config = gateway().config
    response.headers["X-Request-ID"] = g.get("trace_id", "")
    response.headers["X-Served-By"] = config.server_name or f"{config.host}:{config.port}"
    if request.endpoint in TIMED_ENDPOINTS:
        elapsed_s = time.perf_counter() - g.started
        client = g.client.name if "client" in g else "anonymous"
        metrics.count_request(response.status_code, client, elapsed_s)
        log.info("predict %s", response.status_code, extra={
            "trace_id": g.trace_id, "job": g.job_id, "status": response.status_code,
            "ms": round(elapsed_s * 1000, 1), "client": client, "type": g.get("route_type"),
            "model": g.get("model"), "version": g.get("version"), "pipeline": g.get("pipeline")})
    return response


def error_response(error: errors.ErrorCode, message: str, headers: dict | None = None):
    body = {"success": False, "id": g.get("job_id"), "error": {"code": error.code, "message": message}}
    return jsonify(body), error.status, headers or {}


def http_error(exc: HTTPException):
    by_status = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED, 413: errors.PAYLOAD_TOO_LARGE}
    error = by_status.get(exc.code, errors.ErrorCode("HTTP_ERROR", exc.code or 500, exc.name))
    if isinstance(exc, RequestEntityTooLarge):
        limit = gateway().config.max_upload_bytes
        return error_response(error, f"the request body is larger than {limit} bytes")
    return error_response(error, error.description)


def redis_error(exc: redis.RedisError):
    log.warning("redis unavailable: %s", exc, extra={"trace_id": g.get("trace_id")})
    return error_response(errors.QUEUE_UNAVAILABLE, errors.QUEUE_UNAVAILABLE.description,
                          {"Retry-After": str(gateway().config.retry_after)})


def unexpected_error(exc: Exception):
    log.exception("unexpected error", extra={"trace_id": g.get("trace_id")})
    return error_response(errors.INTERNAL_ERROR, errors.INTERNAL_ERROR.description)
