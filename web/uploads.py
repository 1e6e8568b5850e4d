"""Read what a client sent: the image bytes and its parameters, from multipart or JSON."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from flask import request

import errors
from errors import GatewayError
from settings import Settings


def check_api_key(config: Settings) -> None:
    if config.api_key and not hmac.compare_digest(request.headers.get("X-API-Key", ""), config.api_key):
        raise GatewayError(errors.UNAUTHORIZED)


@dataclass(frozen=True)
class Upload:
    """What a predict request asks for: the image bytes and its parameters."""

    data: bytes
    top_k: int
    model: str | None = None        # form field, JSON field or query parameter; the path overrides
    version: str | None = None


def read_upload(config: Settings) -> Upload:
    """The image from a multipart `image` field or a JSON {"image": base64} body, with its parameters."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise GatewayError(errors.MISSING_IMAGE, "send the image in a multipart field named `image`")
        data, fields = upload.read(), request.form
    elif request.mimetype == "application/json":
        fields = request.get_json(silent=True)
        if not isinstance(fields, dict):
            raise GatewayError(errors.INVALID_JSON)
        if "image" not in fields:
            raise GatewayError(errors.MISSING_IMAGE, "the JSON body has no `image` field")
        data = decode_base64(fields["image"])
    else:
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE, f"content type {request.mimetype or 'none'!r} is not "
                           "accepted: send multipart/form-data or application/json")
    if not data:
        raise GatewayError(errors.EMPTY_IMAGE)
    top_k = parse_top_k(field(fields, "top_k"), config)
    return Upload(data, top_k, text_field(fields, "model"), text_field(fields, "version"))


def field(fields, name: str):
    """A parameter from the body, else from the query string."""
    value = fields.get(name)
    return value if value is not None else request.args.get(name)


def text_field(fields, name: str) -> str | None:
    value = field(fields, name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise GatewayError(errors.INVALID_PARAMETER, f"`{name}` must be a string")
    return str(value)


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
