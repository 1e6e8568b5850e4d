"""The web tier: POST /predict -> decode and resize -> Redis queue -> wait for the result -> JSON.

    python run_server.py                # embedded default: own redis-server + worker threads, :5000
    REDIS_URL=redis://host:6379/0 gunicorn -c deploy/gunicorn.conf.py run_server:app   # web tier only
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import logging
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # before TensorFlow loads: no C++ info chatter
import signal
import threading
import time
import uuid

import numpy as np
import redis
from flask import Flask, Response, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import errors
import imaging
import logs
import metrics
import models
import protocol
import settings as settings_module
from errors import GatewayError
from settings import Settings

log = logging.getLogger("gateway.web")
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TRACE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(config: Settings | None = None) -> Flask:
    """The Flask app of the web tier; it never loads the model (only its cheap spec)."""
    config = config or settings_module.load()
    if not config.redis_url:
        raise RuntimeError("REDIS_URL is not set: run `python run_server.py` for the embedded default")
    spec = models.get_spec(config.model, weights_path=config.model_weights, labels_path=config.model_labels)
    queue = protocol.JobQueue(protocol.connect(config.redis_url, config.request_timeout), spec.name,
                              config.key_prefix)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.extensions["gateway"] = {"config": config, "spec": spec, "queue": queue,
                                 "collector": metrics.QueueCollector(queue, config.heartbeat_ttl)}
    served_by = config.server_name or f"{config.host}:{config.port}"

    @app.before_request
    def start_request():
        g.started = time.perf_counter()
        supplied = request.headers.get("X-Request-ID", "")
        g.trace_id = supplied if TRACE_ID.match(supplied) else uuid.uuid4().hex
        g.job_id = None

    @app.after_request
    def finish_request(response: Response):
        response.headers["X-Request-ID"] = g.get("trace_id", "")
        response.headers["X-Served-By"] = served_by
        if request.endpoint == "predict":
            elapsed_s = time.perf_counter() - g.started
            metrics.REQUESTS.labels(str(response.status_code)).inc()
            metrics.LATENCY.observe(elapsed_s)
            log.info("predict %s", response.status_code, extra={
                "trace_id": g.trace_id, "job": g.job_id, "status": response.status_code,
                "ms": round(elapsed_s * 1000, 1)})
        return response

    @app.errorhandler(GatewayError)
    def gateway_error(exc: GatewayError):
        return error_response(exc.error, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        by_status = {404: errors.NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED, 413: errors.PAYLOAD_TOO_LARGE}
        error = by_status.get(exc.code, errors.ErrorCode("HTTP_ERROR", exc.code or 500, exc.name))
        if isinstance(exc, RequestEntityTooLarge):
            return error_response(error, f"the request body is larger than {config.max_upload_bytes} bytes")
        return error_response(error, error.description)

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError):
        log.warning("redis unavailable: %s", exc, extra={"trace_id": g.get("trace_id")})
        return error_response(errors.QUEUE_UNAVAILABLE, errors.QUEUE_UNAVAILABLE.description,
                              {"Retry-After": str(config.retry_after)})

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.exception("unexpected error", extra={"trace_id": g.get("trace_id")})
        return error_response(errors.INTERNAL_ERROR, errors.INTERNAL_ERROR.description)

    @app.post("/predict")
    def predict():
        g.job_id = protocol.new_job_id()       # every answer, cached or failed, carries its own id
        check_api_key(config)
        data, top_k = read_upload(config)
        digest = cache_digest(data, top_k) if config.cache_ttl > 0 else None
        cached = queue.cached(digest) if digest else None
        if cached:
            metrics.CACHE_HITS.inc()
            return answer(cached, spec.name)
        array = imaging.prepare_image(data, size=spec.input_size, crop_fraction=spec.crop_fraction,
                                      resample=spec.resample, max_pixels=config.max_image_pixels)
        deadline = time.time() + config.request_timeout
        job = protocol.Job(id=g.job_id, model=spec.name, deadline=deadline,
                           array=to_wire(array, config.wire_dtype), top_k=top_k,
                           trace_id=g.trace_id, cache_key=digest)
        if not queue.enqueue(job, config.queue_limit):
            raise GatewayError(errors.SERVER_BUSY, f"{config.queue_limit} requests are already waiting",
                               {"Retry-After": str(config.retry_after)})
        result = queue.wait_result(job.id, deadline - time.time())
        if result is None:
            metrics.TIMEOUTS.inc()
            raise GatewayError(errors.TIMEOUT, f"no result within {config.request_timeout:g} s")
        metrics.RESULTS_WAITED.inc()
        return answer(result, spec.name)

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        try:
            queue.client.ping()
            live = queue.live_workers(config.heartbeat_ttl)
        except redis.RedisError:
            return jsonify({"ready": False, "reason": "redis unreachable"}), 503
        body = {"ready": bool(live), "model": spec.name, "live_workers": len(live)}
        return jsonify(body), (200 if live else 503)

    @app.get("/status")
    def status():
        live = queue.live_workers(config.heartbeat_ttl)
        return jsonify({"model": spec.name, "queue_depth": queue.depth(), "stats": queue.stats(),
                        "workers": [{"id": w, **queue.worker_info(w)} for w in live]})

    @app.get("/metrics")
    def prometheus():
        body, content_type = metrics.render(app.extensions["gateway"]["collector"])
        return Response(body, content_type=content_type)

    @app.get("/")
    def index():
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(STATIC_DIR, name)

    return app


# ------------------------------------------------------------------------------ request helpers
def error_response(error: errors.ErrorCode, message: str, headers: dict | None = None):
    body = {"success": False, "id": g.get("job_id"), "error": {"code": error.code, "message": message}}
    return jsonify(body), error.status, headers or {}


def answer(result: dict, model: str):
    """The client's JSON for a worker's result (success or a worker-side error)."""
    if not result.get("success"):
        code = result.get("error", {}).get("code", errors.INFERENCE_FAILED.code)
        error = next((e for e in errors.ALL_CODES if e.code == code), errors.INFERENCE_FAILED)
        raise GatewayError(error, result.get("error", {}).get("message"))
    return jsonify({"success": True, "id": g.job_id, "model": model,
                    "predictions": result["predictions"]})


def check_api_key(config: Settings) -> None:
    if config.api_key and not hmac.compare_digest(request.headers.get("X-API-Key", ""), config.api_key):
        raise GatewayError(errors.UNAUTHORIZED)


def read_upload(config: Settings) -> tuple[bytes, int]:
    """The image bytes and top_k from a multipart `image` field or a JSON {"image": base64} body."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise GatewayError(errors.MISSING_IMAGE, "send the image in a multipart field named `image`")
        data, top_k = upload.read(), request.form.get("top_k")
    elif request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise GatewayError(errors.INVALID_JSON)
        if "image" not in body:
            raise GatewayError(errors.MISSING_IMAGE, "the JSON body has no `image` field")
        data, top_k = decode_base64(body["image"]), body.get("top_k")
    else:
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE, f"content type {request.mimetype or 'none'!r} is not "
                           "accepted: send multipart/form-data or application/json")
    if not data:
        raise GatewayError(errors.EMPTY_IMAGE)
    return data, parse_top_k(top_k if top_k is not None else request.args.get("top_k"), config)


def decode_base64(value) -> bytes:
    if not isinstance(value, str):
        raise GatewayError(errors.INVALID_JSON, "`image` must be a base64 string")
    if value.startswith("data:") and "," in value:   # a data URL from a browser
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(errors.INVALID_BASE64) from None


def parse_top_k(raw, config: Settings) -> int:
    if raw is None or raw == "":
        return config.top_k
    try:
        top_k = int(raw)
    except (TypeError, ValueError):
        top_k = 0
    if not 1 <= top_k <= config.max_top_k:
        raise GatewayError(errors.INVALID_PARAMETER, f"top_k must be an integer from 1 to {config.max_top_k}")
    return top_k


def cache_digest(data: bytes, top_k: int) -> str:
    """Identical bytes asking for the same top_k share a cached answer (keys are per model already)."""
    return f"{hashlib.blake2b(data, digest_size=20).hexdigest()}:{top_k}"


def to_wire(array: np.ndarray, dtype: str) -> np.ndarray:
    return array if dtype == "uint8" else np.ascontiguousarray(array, dtype=np.float32)


# ------------------------------------------------------------------ the one-command embedded default
def __getattr__(name: str):
    """`gunicorn run_server:app` builds the app from the environment on first access."""
    if name == "app":
        config = settings_module.load()
        logs.setup(config)
        globals()["app"] = create_app(config)
        return globals()["app"]
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    config = settings_module.load()
    parser = argparse.ArgumentParser(description="Image-recognition gateway (embedded default)")
    parser.add_argument("--host", default=config.host, help="bind address (HOST)")
    parser.add_argument("--port", type=int, default=config.port, help="port (PORT)")
    parser.add_argument("--no-worker", action="store_true", help="web tier only: no model in this process")
    args = parser.parse_args(argv)
    config = settings_module.Settings(**{**config.__dict__, "host": args.host, "port": args.port})
    logs.setup(config)
    embedded = None
    if not config.redis_url:
        from redis_server import RedisServer
        embedded = RedisServer(config.redis_server_bin).start()
        config = settings_module.Settings(**{**config.__dict__, "redis_url": embedded.url})
        log.info("embedded redis-server started at %s", embedded.url)
    workers = None
    if not args.no_worker:
        from classify_worker import start_workers
        workers = start_workers(config)
    try:
        serve(create_app(config), config)
    finally:
        if workers:
            workers.stop(config.request_timeout)
        if embedded:
            embedded.close()


def make_server(app, config: Settings):
    """cheroot, CherryPy's production WSGI server: WEB_THREADS threads and HTTP/1.1 keep-alive.

    Its stop() closes the listening socket and idle connections, then waits up to REQUEST_TIMEOUT + 1 s
    for every request being handled to get its answer.
    """
    from cheroot import wsgi
    server = wsgi.Server((config.host, config.port), app, numthreads=config.web_threads,
                         request_queue_size=1024, shutdown_timeout=config.request_timeout + 1)
    server.max_request_header_size = 64 * 1024
    return server


def serve(app: Flask, config: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting and let the requests in flight finish."""
    server = make_server(app, config)
    # stop() waits for the connection loop that the main thread runs, so it needs a thread of its own.
    stopper = threading.Thread(target=server.stop, name="server-stop")

    def stop(*_):
        if stopper.ident is None:      # the first signal starts the stop; later ones change nothing
            stopper.start()

    server.prepare()                   # binds; the stop below needs a prepared server
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on http://%s:%d", config.host, config.port)
    print(f"Serving on http://{config.host}:{config.port}  (Ctrl-C to stop)", flush=True)
    server.serve()
    stopper.join()


if __name__ == "__main__":
    main()
