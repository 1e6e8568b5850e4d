"""GET /v1/pipelines and POST /v1/pipelines/<name>/predict: several models on one request.

The PIPELINES file's plans are in web/plans.py; web/plan_runner.py runs one on an image.
"""
from __future__ import annotations

from flask import Blueprint, g, jsonify

from image_gateway import errors, protocol
from image_gateway.errors import GatewayError
from image_gateway.protocol.catalog import READY, UNAVAILABLE
from image_gateway.web import access
from image_gateway.web.envelope import current_call
from image_gateway.web.plan_runner import run_plan
from image_gateway.web.resources import gateway
from image_gateway.web.uploads import read_upload

bp = Blueprint("pipelines", __name__)


@bp.get("/v1/pipelines")
def list_pipelines():
    gw = gateway()
    return jsonify({"pipelines": [{"name": plan.name, "description": plan.description, "steps": plan.steps(),
                                   **plan_state(plan, gw.router.view())} for plan in gw.plans.values()]})


def plan_state(plan, view: dict) -> dict:
    """READY when every model the plan needs has a READY version; else UNAVAILABLE with the reason and
    the setting that fixes it (a shipped pipeline whose models the default does not serve)."""
    missing = [name for name in plan.needs() if name not in view]
    if missing:
        return {"state": UNAVAILABLE, "reason": f"not served: {', '.join(missing)}; serve them with "
                f"MODELS={','.join(missing)} (or MODEL_REPOSITORY)"}
    waiting = [name for name in plan.needs() if not any(s.state == READY for s in view[name].values())]
    if waiting:
        return {"state": UNAVAILABLE, "reason": f"no ready version yet: {', '.join(waiting)}"}
    return {"state": READY}


@bp.post("/v1/pipelines/<name>/predict")
def run_pipeline(name: str):
    call = current_call()
    g.job_id = protocol.new_job_id()
    access.permit("pipeline", name)
    plan_named(call.gw, name)
    return jsonify(pipeline_body(call, name, read_upload(call.config)))


def plan_named(gw, name: str):
    plan = gw.plans.get(name)
    if plan is None:
        raise GatewayError(errors.PIPELINE_NOT_FOUND, f"no pipeline {name!r}; pipelines: "
                           f"{', '.join(sorted(gw.plans)) or 'none'}")
    return plan


def pipeline_body(call, name: str, upload) -> dict:
    """A pipeline's answer on one image (shared by /v1/pipelines/<name>/predict and /v1/recognize/<type>)."""
    g.pipeline = name
    return {"success": True, "id": g.job_id, "pipeline": name, **run_plan(call, plan_named(call.gw, name), upload)}
