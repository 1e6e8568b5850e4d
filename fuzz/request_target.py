"""Fuzz target: request bodies (multipart and JSON) through the app's test client.

    python -m fuzz.request_target -max_total_time=1800 fuzz/corpus/request

An input is one selector byte (which path and Content-Type, see `pick`) and the body. The app is the
real one (create_app) on a real redis-server started here, with no worker: REQUEST_TIMEOUT is 10 ms,
so a request that passes every check is queued and answered 504 TIMEOUT at once; URL input is off
(no network); fuzz.pick lists the paths and types. Every answer must be 2xx, or 4xx/5xx with the
envelope {"success": false, "error": {"code", "message"}}; a 500 INTERNAL_ERROR (an unexpected
exception, re-raised here with its traceback) is a finding, as is an input over 2 s or 500 MB.
Werkzeug's form and multipart parsers, the web tier, imaging and Pillow's Python plugins are
instrumented for coverage.
"""
from __future__ import annotations

import atexit
import logging

import atheris

with atheris.instrument_imports(include=["image_gateway.web", "werkzeug.formparser", "werkzeug.sansio", "werkzeug.http",
                                         "werkzeug.datastructures", "image_gateway.imaging", "image_gateway.errors",
                                         "PIL"]):
    from PIL import Image

    from image_gateway.web import app as run_server
    from image_gateway.web import uploads  # noqa: F401

    Image.init()

from fuzz import Finding, pick, run  # noqa: E402
from image_gateway import settings  # noqa: E402
from image_gateway.redis_server import RedisServer  # noqa: E402

FLUSH_EVERY = 64            # requests between FLUSHDBs: no worker ever takes the queued jobs


class UnexpectedErrors(logging.Handler):
    """Keeps what web/envelope.unexpected_error logs (the exception behind a 500 INTERNAL_ERROR)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Target:
    def __init__(self):
        self.redis = RedisServer().start()
        atexit.register(self.redis.close)
        config = settings.load({"REDIS_URL": self.redis.url, "REQUEST_TIMEOUT": "0.01", "CACHE_TTL": "0",
                                "URL_INPUT": "0", "QUEUE_LIMIT": "1000000", "MODELS": "mtcnn"})
        self.app = run_server.create_app(config)
        self.client = self.app.test_client()
        self.errors = UnexpectedErrors()
        logger = logging.getLogger("gateway")
        logger.addHandler(self.errors)
        logger.propagate = False
        self.redis_client = self.app.extensions["gateway"].router.client
        self.count = 0

    def check_one(self, data: bytes) -> None:
        if not data:
            return
        path, content_type = pick(data[0])
        response = self.client.post(path, data=data[1:], content_type=content_type)
        self.count += 1
        if self.count % FLUSH_EVERY == 0:
            self.redis_client.flushdb()
        if self.errors.records:
            record = self.errors.records.pop()
            self.errors.records.clear()
            raise Finding(f"{path} {content_type}: unexpected {record.getMessage()}") from (
                record.exc_info[1] if record.exc_info else None)
        check_answer(response.status_code, response.get_json(silent=True), path)


def check_answer(status: int, body, path: str) -> None:
    """2xx, or an error in the envelope; never a 500 INTERNAL_ERROR."""
    if 200 <= status < 300:
        return
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and body.get("success") is False and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)):
        raise Finding(f"{path}: {status} without the error envelope: {body!r:.200}")
    if error["code"] == "INTERNAL_ERROR":
        raise Finding(f"{path}: 500 INTERNAL_ERROR: {error['message']}")


def main() -> None:
    run(Target().check_one)


if __name__ == "__main__":
    main()
