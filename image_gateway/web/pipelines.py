"""GET /v1/pipelines and POST /v1/pipelines/<name>/predict: several models on one request.

Every step runs on the same queues and workers as /predict. One deadline covers the whole pipeline;
all crops of an image (or all models of a fan-out) are queued together, so they batch. A step that
fails fails the request (500 PIPELINE_STEP_FAILED, or 504 TIMEOUT) with the step named: never a
partial answer that looks complete.
"""
from __future__ import annotations

import time

from flask import Blueprint, g, jsonify

from image_gateway import errors, imaging, protocol
from image_gateway.errors import GatewayError
from image_gateway.web.jobs import new_job, submit, wait
from image_gateway.web.plans import DetectThenClassify, FanOut
from image_gateway.web.predict import model_input
from image_gateway.web.resources import gateway
from image_gateway.web.routing import Served
from image_gateway.web.uploads import check_api_key, read_upload

bp = Blueprint("pipelines", __name__)


@bp.get("/v1/pipelines")
def list_pipelines():
    plans = gateway().plans.values()
    return jsonify({"pipelines": [{"name": plan.name, "description": plan.description, "steps": plan.steps()}
                                  for plan in plans]})


@bp.post("/v1/pipelines/<name>/predict")
def run_pipeline(name: str):
    gw = gateway()
    g.job_id = protocol.new_job_id()
    check_api_key(gw.config)
    plan = gw.plans.get(name)
    if plan is None:
        raise GatewayError(errors.PIPELINE_NOT_FOUND, f"no pipeline {name!r}; pipelines: "
                           f"{', '.join(sorted(gw.plans)) or 'none'}")
    upload = read_upload(gw.config)
    deadline = time.time() + gw.config.request_timeout
    return jsonify({"success": True, "id": g.job_id, "pipeline": name, **run_plan(plan, upload, deadline)})


def run_plan(plan, upload, deadline: float, bulk: bool = False) -> dict:
    """The pipeline's answer fields; `bulk` queues its jobs as task work."""
    runner = fan_out if isinstance(plan, FanOut) else detect_then_classify
    return runner(plan, upload, deadline, bulk)


def step_output(served: Served, job: protocol.Job, step: str) -> dict:
    """A step's answer fields, or the request fails naming the step."""
    result = wait(served, job, step)
    if not result.success:
        raise GatewayError(errors.PIPELINE_STEP_FAILED, f"{step} failed: {result.error['code']}: "
                           f"{result.error['message']}")
    return result.output


def detect_then_classify(plan: DetectThenClassify, upload, deadline: float, bulk: bool) -> dict:
    router = gateway().router
    detector, classifier = router.resolve(plan.detector, None), router.resolve(plan.classifier, None)
    image = imaging.decode_image(upload.data, max_pixels=gateway().config.max_image_pixels)
    pixels, params = imaging.working_image(image, gateway().config.detect_max_side)
    found = step_output(detector, submit(detector, new_job(detector, pixels, deadline, 1, params), bulk),
                        f"step 1 (detect with {detector.name})")["detections"]
    kept = [d for d in found if d["score"] >= plan.min_score and (not plan.labels or d["label"] in plan.labels)]
    kept = kept[:plan.max_detections]
    boxes = [imaging.crop_box(d["box"], plan.margin, image.size) for d in kept]
    spec, top_k = classifier.spec, plan.top_k or upload.top_k
    jobs = [submit(classifier, new_job(classifier, imaging.resize_center_crop(
        image.crop(box), size=spec.input_size, crop_fraction=spec.crop_fraction, resample=spec.resample),
        deadline, top_k), bulk) for box in boxes]
    step = f"step 2 (classify with {classifier.name})"
    detections = [{**detection, "crop_box": list(box), "predictions": step_output(classifier, job, step)["predictions"]}
                  for detection, box, job in zip(kept, boxes, jobs, strict=True)]
    return {"models": {"detect": describe(detector), "classify": describe(classifier)}, "detections": detections}


def fan_out(plan: FanOut, upload, deadline: float, bulk: bool) -> dict:
    router = gateway().router
    names = plan.models or [name for name, versions in sorted(router.view().items())
                            if next(iter(versions.values())).spec.kind == "classifier"]
    targets = [router.resolve(name, None) for name in names]
    jobs = []
    for served in targets:
        array, params = model_input(upload.data, served.spec)
        jobs.append(submit(served, new_job(served, array, deadline, upload.top_k, params), bulk))
    return {"results": {served.name: {"success": True, **describe(served),
                                      **step_output(served, job, f"model {served.name}")}
                        for served, job in zip(targets, jobs, strict=True)}}


def describe(served: Served) -> dict:
    return {"model": served.name, "version": served.version}
