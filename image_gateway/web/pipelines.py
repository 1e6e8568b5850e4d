"""GET /v1/pipelines and POST /v1/pipelines/<name>/predict: several models on one request.

The PIPELINES file's plans are in web/plans.py; web/plan_runner.py runs one on an image.
"""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from image_gateway import errors, protocol
from image_gateway.errors import GatewayError
from image_gateway.web.envelope import current_call
from image_gateway.web.plan_runner import run_plan
from image_gateway.web.resources import gateway
from image_gateway.web.uploads import check_api_key, read_upload

bp = Blueprint("pipelines", __name__)


@bp.get("/v1/pipelines")
def list_pipelines():
    plans = gateway().plans.values()
    return jsonify({"pipelines": [{"name": plan.name, "description": plan.description, "steps": plan.steps()}
                                  for plan in plans]})


@bp.post("/v1/pipelines/<name>/predict")
def run_pipeline(name: str):
    call = current_call()
    gw = call.gw
    g.job_id = protocol.new_job_id()
    check_api_key(gw.config)
    plan = gw.plans.get(name)
    if plan is None:
        raise GatewayError(errors.PIPELINE_NOT_FOUND, f"no pipeline {name!r}; pipelines: "
                           f"{', '.join(sorted(gw.plans)) or 'none'}")
    upload = read_upload(gw.config)
    return jsonify({"success": True, "id": g.job_id, "pipeline": name, **run_plan(call, plan, upload)})
