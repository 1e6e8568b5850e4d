"""Every error the gateway answers with: a stable code, an HTTP status and a message.

The web tier turns a GatewayError into the JSON envelope
``{"success": false, "id": ..., "error": {"code": ..., "message": ...}}``.
The README's error table lists the same codes; keep both in step.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    description: str


MISSING_IMAGE = ErrorCode("MISSING_IMAGE", 400, "the request has no `image` field")
EMPTY_IMAGE = ErrorCode("EMPTY_IMAGE", 400, "the image field is empty")
INVALID_BASE64 = ErrorCode("INVALID_BASE64", 400, "the JSON `image` is not valid base64")
INVALID_PARAMETER = ErrorCode("INVALID_PARAMETER", 400, "a request parameter (such as top_k) is out of range")
INVALID_JSON = ErrorCode("INVALID_JSON", 400, "the body is not a JSON object with a string `image`")
URL_NOT_ALLOWED = ErrorCode("URL_NOT_ALLOWED", 400, "the image URL is refused (scheme, credentials, or an "
                            "address that is not public and not in URL_ALLOWLIST; the message says which)")
URL_FETCH_FAILED = ErrorCode("URL_FETCH_FAILED", 400, "the image URL could not be fetched (network, timeout, "
                             "HTTP status, or larger than MAX_UPLOAD_BYTES: 413)")
IMAGE_UNREADABLE = ErrorCode("IMAGE_UNREADABLE", 400,
                              "the bytes are not a readable image (corrupt, truncated or not an image)")
UNSUPPORTED_FORMAT = ErrorCode("UNSUPPORTED_FORMAT", 415, "an image format the gateway does not accept")
UNSUPPORTED_MEDIA_TYPE = ErrorCode("UNSUPPORTED_MEDIA_TYPE", 415, "send multipart/form-data or application/json")
IMAGE_TOO_LARGE = ErrorCode("IMAGE_TOO_LARGE", 413, "the image has more pixels than MAX_IMAGE_PIXELS")
PAYLOAD_TOO_LARGE = ErrorCode("PAYLOAD_TOO_LARGE", 413, "the request body is larger than MAX_UPLOAD_BYTES")
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", 401, "a valid API key is required (X-API-Key header)")
MODEL_NOT_ALLOWED = ErrorCode("MODEL_NOT_ALLOWED", 403, "the client may not name that model or pipeline (`models`)")
NOT_FOUND = ErrorCode("NOT_FOUND", 404, "no such endpoint")
MODEL_NOT_FOUND = ErrorCode("MODEL_NOT_FOUND", 404, "no model of that name is served")
MODEL_VERSION_NOT_FOUND = ErrorCode("MODEL_VERSION_NOT_FOUND", 404, "the model has no such version (or it was removed)")
TASK_NOT_FOUND = ErrorCode("TASK_NOT_FOUND", 404, "no task with that id (unknown, or expired and gone)")
TASK_TOO_LARGE = ErrorCode("TASK_TOO_LARGE", 413, "the task has more than MAX_TASK_IMAGES images")
BATCH_TOO_LARGE = ErrorCode("BATCH_TOO_LARGE", 413, "the inference request has more than MAX_BATCH_IMAGES images")
TYPE_NOT_FOUND = ErrorCode("TYPE_NOT_FOUND", 404, "the client has no route for that type; the message lists them")
PIPELINE_NOT_FOUND = ErrorCode("PIPELINE_NOT_FOUND", 404, "no pipeline of that name (GET /v1/pipelines lists them)")
PIPELINE_STEP_FAILED = ErrorCode("PIPELINE_STEP_FAILED", 500, "a step of the pipeline failed; the message names it")
MODEL_UNAVAILABLE = ErrorCode("MODEL_UNAVAILABLE", 503, "the model version failed to load or has no live worker")
RATE_LIMITED = ErrorCode("RATE_LIMITED", 429, "over the client's `rate` (and `burst`); retry after Retry-After")
METHOD_NOT_ALLOWED = ErrorCode("METHOD_NOT_ALLOWED", 405, "method not allowed on this endpoint")
SERVER_BUSY = ErrorCode("SERVER_BUSY", 503, "the queue or the large-image decoder is full; retry after Retry-After")
QUEUE_UNAVAILABLE = ErrorCode("QUEUE_UNAVAILABLE", 503, "the queue (Redis) cannot be reached")
TIMEOUT = ErrorCode("TIMEOUT", 504, "no result within REQUEST_TIMEOUT")
INFERENCE_FAILED = ErrorCode("INFERENCE_FAILED", 500, "the model failed on this request")
INTERNAL_ERROR = ErrorCode("INTERNAL_ERROR", 500, "an unexpected error in the gateway")
# Answered by nginx itself (deploy/nginx.conf.template), never by the app.
UPSTREAM_UNAVAILABLE = ErrorCode("UPSTREAM_UNAVAILABLE", 502, "no web server could be reached (answered by nginx)")
UPSTREAM_TIMEOUT = ErrorCode("UPSTREAM_TIMEOUT", 504, "the web server did not answer in time (answered by nginx)")

ALL_CODES = [value for value in list(globals().values()) if isinstance(value, ErrorCode)]
BY_CODE = {error.code: error for error in ALL_CODES}


def by_code(code: str) -> ErrorCode:
    """The ErrorCode a worker's result names; an unknown code is an inference failure."""
    return BY_CODE.get(code, INFERENCE_FAILED)


class GatewayError(Exception):
    """An error with a code from this module; raised anywhere, answered by the web tier."""

    def __init__(self, error: ErrorCode, message: str | None = None, headers: dict | None = None):
        super().__init__(message or error.description)
        self.error = error
        self.message = message or error.description
        self.headers = headers or {}

    @property
    def code(self) -> str:
        return self.error.code

    @property
    def status(self) -> int:
        return self.error.status
