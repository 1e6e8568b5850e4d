"""POST /predict: read the upload, prepare the pixels, queue the job, wait for its result."""
from __future__ import annotations

import time

from flask import Blueprint, g, jsonify

import errors
import imaging
import metrics
import protocol
from errors import GatewayError
from web.resources import gateway
from web.uploads import cache_digest, check_api_key, read_upload

bp = Blueprint("predict", __name__)


@bp.post("/predict")
def predict():
    gw = gateway()
    g.job_id = protocol.new_job_id()       # every answer, cached or failed, carries its own id
    check_api_key(gw.config)
    data, top_k = read_upload(gw.config)
    digest = cache_digest(data, top_k) if gw.config.cache_ttl > 0 else None
    cached = gw.queue.cached(digest) if digest else None
    if cached:
        metrics.CACHE_HITS.inc()
        return answer(cached, gw.spec.name)
    array = imaging.prepare_image(data, gw.spec, max_pixels=gw.config.max_image_pixels)
    job = protocol.Job(id=g.job_id, model=gw.spec.name, deadline=time.time() + gw.config.request_timeout,
                       array=protocol.to_wire(array, gw.config.wire_dtype), top_k=top_k,
                       trace_id=g.trace_id, cache_key=digest)
    return answer(run_job(job), gw.spec.name)


def run_job(job: protocol.Job) -> protocol.Result:
    """Queue the job and wait for its result until its deadline (503 when full, 504 when late)."""
    gw = gateway()
    if not gw.queue.enqueue(job, gw.config.queue_limit):
        raise GatewayError(errors.SERVER_BUSY, f"{gw.config.queue_limit} requests are already waiting",
                           {"Retry-After": str(gw.config.retry_after)})
    result = gw.queue.wait_result(job.id, job.deadline - time.time())
    if result is None:
        metrics.TIMEOUTS.inc()
        raise GatewayError(errors.TIMEOUT, f"no result within {gw.config.request_timeout:g} s")
    metrics.RESULTS_WAITED.inc()
    return result


def answer(result: protocol.Result, model: str):
    """The client's JSON for a worker's result; a worker-side error is raised as its own code."""
    if not result.success:
        raise GatewayError(errors.by_code(result.error["code"]), result.error["message"])
    return jsonify({"success": True, "id": g.job_id, "model": model, **result.output})
