"""Tasks: POST /v1/tasks takes an image set, GET /v1/tasks/<id> reports it, DELETE cancels it.

The images wait in Redis as uploaded (compressed); web/feeder.py decodes and queues them a window at
a time, behind interactive traffic, from whichever web process holds the task's lease.
"""
from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request, url_for

from image_gateway import errors, protocol
from image_gateway.errors import GatewayError
from image_gateway.web import access
from image_gateway.web.pipelines import plan_named
from image_gateway.web.plans import units_per_image
from image_gateway.web.recognize import route_of
from image_gateway.web.resources import gateway
from image_gateway.web.uploads import decode_base64, json_body, parse_max_frames, parse_top_k, text_field

bp = Blueprint("tasks", __name__)
PAGE_LIMIT = 1000        # results per GET at most
MAX_URL_LENGTH = 2048


@bp.before_request
def larger_bodies():
    """A task body has its own limit, MAX_TASK_BYTES, and up to MAX_TASK_IMAGES parts."""
    config = gateway().config
    request.max_content_length = config.max_task_bytes
    request.max_form_parts = config.max_task_images + 16


@bp.post("/v1/tasks")
def create_task():
    gw = gateway()
    images, filenames, fields = read_images()
    if not images:
        raise GatewayError(errors.MISSING_IMAGE, "send the images as multipart `image` parts or JSON "
                           "`images` (base64) and `urls`")
    targets, options = task_targets(fields)
    limit, which = image_limit(gw.config)
    per_image = units_per_image(gw.plans, targets, options.get("max_frames"))   # a frames pipeline: its frames
    if len(images) * per_image > limit:
        raise GatewayError(errors.TASK_TOO_LARGE, f"{len(images)} images x {per_image} targets or frames: a task "
                           f"takes at most {limit} ({which})")
    urls = {index: name for index, (data, name) in enumerate(zip(images, filenames, strict=True)) if data is None}
    task_id = uuid.uuid4().hex
    gw.tasks.create(task_id, images, filenames, targets, options, gw.config.task_ttl, urls,
                    request.content_length or 0, access.caller().name)
    current_app.extensions["feeder"].wake()
    status_url = url_for("tasks.get_task", task_id=task_id)
    body = {"success": True, "task_id": task_id, "status_url": status_url, "images": len(images)}
    return jsonify(body), 202, {"Location": status_url}


def read_images() -> tuple[list[bytes | None], list[str], dict]:
    """The images of a multipart or JSON task body, their file names, and the other fields. An image
    given by URL is None here, its URL its file name: the feeder fetches it when its turn comes."""
    config = gateway().config
    if request.mimetype == "multipart/form-data":
        uploads = request.files.getlist("image")
        return [u.read() for u in uploads], [u.filename or "" for u in uploads], request.form
    if request.mimetype != "application/json":
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE, "send multipart/form-data or application/json")
    body = json_body()
    if not isinstance(body, dict) or not isinstance(body.get("images", []), list) \
            or not isinstance(body.get("urls", []), list):
        raise GatewayError(errors.INVALID_JSON, "a task body is {\"images\": [base64...], \"urls\": [...]}")
    limit, which = image_limit(config)
    if len(body.get("images", [])) + len(body.get("urls", [])) > limit:
        raise GatewayError(errors.TASK_TOO_LARGE, f"a task takes at most {limit} images ({which})")
    images = [decode_base64(item) for item in body.get("images", [])]
    urls = [checked_url(url, config) for url in body.get("urls", [])]
    return images + [None] * len(urls), [""] * len(images) + urls, body


def checked_url(url, config) -> str:
    """A task's image URL, refused now when it can never be fetched; the SSRF guard runs at fetch time."""
    if not config.url_input:
        raise GatewayError(errors.URL_NOT_ALLOWED, "URL input is turned off on this gateway (URL_INPUT=0)")
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH or urlsplit(url).scheme not in ("http", "https"):
        raise GatewayError(errors.URL_NOT_ALLOWED, f"a task's urls are http(s) URLs of at most {MAX_URL_LENGTH} "
                           "characters")
    return url


def image_limit(config) -> tuple[int, str]:
    """The most images x targets of one of the caller's tasks, and the setting that says so."""
    client = access.caller()
    if client.max_task_images and client.max_task_images < config.max_task_images:
        return client.max_task_images, f"max_task_images of client {client.name!r}"
    return config.max_task_images, "MAX_TASK_IMAGES"


def task_targets(fields) -> tuple[list[str], dict]:
    """What each image goes through: a model, several models, a pipeline, or the caller's route for a
    recognition `type` (checked now)."""
    gw = gateway()
    pipeline, models, kind = text_field(fields, "pipeline"), text_field(fields, "models"), text_field(fields, "type")
    options = {"top_k": parse_top_k(fields.get("top_k"), gw.config),
               "max_frames": parse_max_frames(fields.get("max_frames"))}
    if kind:
        route = route_of(access.caller(), kind)
        if route.pipeline:
            plan_named(gw, route.pipeline)
        else:
            gw.router.versions_of(route.model)
        return [route.target()], {**options, "type": kind}
    if pipeline:
        access.permit("pipeline", pipeline)
        if pipeline not in gw.plans:
            raise GatewayError(errors.PIPELINE_NOT_FOUND, f"no pipeline {pipeline!r}")
        return [f"pipeline:{pipeline}"], options
    names = [name.strip() for name in models.split(",") if name.strip()] if models else \
        [text_field(fields, "model") or gw.router.default_name]
    names = list(dict.fromkeys(names))         # a model named twice runs once
    for name in names:
        access.permit("model", name)
        gw.router.versions_of(name)              # MODEL_NOT_FOUND now, not per image later
    return names, options


@bp.get("/v1/tasks/<task_id>")
def get_task(task_id: str):
    offset, limit = page_arguments()
    return jsonify(task_report(task_id, offset, limit))


@bp.delete("/v1/tasks/<task_id>")
def cancel_task(task_id: str):
    gw = gateway()
    if task_report(task_id, 0, 0)["state"] in ("PENDING", "RUNNING"):
        gw.tasks.retire(task_id, "CANCELLED")
    offset, limit = page_arguments()
    return jsonify(task_report(task_id, offset, limit))


def page_arguments() -> tuple[int, int]:
    try:
        offset, limit = int(request.args.get("offset", 0)), int(request.args.get("limit", PAGE_LIMIT))
    except ValueError:
        offset, limit = -1, -1
    if offset < 0 or not 0 <= limit <= PAGE_LIMIT:
        raise GatewayError(errors.INVALID_PARAMETER, f"offset must be >= 0 and limit 0 to {PAGE_LIMIT}")
    return offset, limit


def task_report(task_id: str, offset: int, limit: int) -> dict:
    store: protocol.TaskStore = gateway().tasks
    meta = store.meta(task_id)
    if meta is None or meta.get("client", access.caller().name) != access.caller().name:   # another's: as unknown
        raise GatewayError(errors.TASK_NOT_FOUND, f"no task {task_id!r} (unknown, or expired and gone)")
    state = meta["state"]
    if state == "RUNNING" and float(meta["expires_at"]) < time.time():
        state = "EXPIRED"
    elif state == "RUNNING" and int(meta["done"]) == 0:
        state = "PENDING" if not store.client.exists(store.keys(task_id).in_flight) else state
    results = sorted(store.results(task_id).values(), key=lambda r: (r["index"], r.get("model", "")))
    page = results[offset:offset + limit]
    next_offset = offset + len(page) if offset + len(page) < len(results) else None
    return {"success": True, "task_id": task_id, "state": state, "total": int(meta["total"]),
            "images": int(meta["images"]), "done": int(meta["done"]), "failed": int(meta["failed"]),
            "results": page, "offset": offset, "next_offset": next_offset}
