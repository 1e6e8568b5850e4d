"""POST /predict and /v1/models/<name>[/versions/<v>]/predict: upload -> pixels -> queue -> result."""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from image_gateway import errors, metrics, protocol
from image_gateway.errors import GatewayError
from image_gateway.web import access
from image_gateway.web.envelope import current_call
from image_gateway.web.jobs import Call, model_input, new_job, refuse_when_full, submit, wait
from image_gateway.web.routing import Served
from image_gateway.web.uploads import Upload, cache_digest, read_upload

bp = Blueprint("predict", __name__)


@bp.post("/predict")
@bp.post("/v1/models/<name>/predict")
@bp.post("/v1/models/<name>/versions/<version>/predict")
def predict(name: str | None = None, version: str | None = None):
    call = current_call()
    g.job_id = protocol.new_job_id()       # every answer, cached or failed, carries its own id
    upload = read_upload(call.config)
    name = name or upload.model or call.gw.router.default_name
    access.permit("model", name)
    served = call.gw.router.resolve(name, version or upload.version)
    return jsonify(predict_body(call, upload, served))


def predict_body(call: Call, upload: Upload, served: Served) -> dict:
    """The answer of one image on one model version: from the cache, or queued and waited for. Shared by
    /predict and /v1/recognize/<type>."""
    g.model, g.version = served.name, served.version
    digest = cache_digest(upload.data, upload.top_k) if call.config.cache_ttl > 0 else None
    cached, depth = served.queue.cached_and_depth(digest)
    if cached:
        metrics.CACHE_HITS.inc()
        return answer(cached, served)
    refuse_when_full(call, depth)
    array, params = model_input(call, upload.data, served.spec)
    job = new_job(call, served, array, upload.top_k, params, digest, g.job_id)
    return answer(wait(call, served, submit(call, served, job)), served)


def answer(result: protocol.Result, served: Served) -> dict:
    """The client's JSON for a worker's result; a worker-side error is raised as its own code."""
    if not result.success:
        raise GatewayError(errors.by_code(result.error["code"]), result.error["message"])
    return {"success": True, "id": g.job_id, "model": served.name, "version": served.version, **result.output}
