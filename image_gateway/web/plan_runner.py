"""Running a pipeline's plan on one image: every step on the same queues and workers as /predict.

One deadline (the call's) covers the whole pipeline; all crops of an image (or all models of a fan-out, or
all text lines of an OCR, or all frames of an animation: web/frame_runner.py) are queued together, so they
batch, with other requests' too. A step that fails fails the request (500 PIPELINE_STEP_FAILED, or 504
TIMEOUT) with the step named: never a partial answer that looks complete.
"""
from __future__ import annotations

import numpy as np

from image_gateway import imaging
from image_gateway.models.text_lines import crop_line, region_corners
from image_gateway.web.frame_runner import run_frames
from image_gateway.web.jobs import Call, model_input, new_job, submit
from image_gateway.web.plan_steps import decoded, describe, image_input, step_output
from image_gateway.web.plans import DetectThenClassify, FanOut, Frames, Ocr, Plan


def run_plan(call: Call, plan: Plan, upload) -> dict:
    """The pipeline's answer fields (a task's call queues its jobs as bulk work). `upload` has the image's
    bytes, or (a frame of a frames pipeline) its decoded `image`."""
    if isinstance(plan, Frames):
        return run_frames(call, plan, upload, run_plan)
    runner = fan_out if isinstance(plan, FanOut) else ocr if isinstance(plan, Ocr) else detect_then_classify
    return runner(call, plan, upload)


def detect_then_classify(call: Call, plan: DetectThenClassify, upload) -> dict:
    router = call.gw.router
    detector, classifier = router.resolve(plan.detector, None), router.resolve(plan.classifier, None)
    image = decoded(call, upload)
    pixels, params = imaging.working_image(image, call.config.detect_max_side)
    found = step_output(call, detector, submit(call, detector, new_job(call, detector, pixels, 1, params)),
                        f"step 1 (detect with {detector.name})")["detections"]
    kept = [d for d in found if d["score"] >= plan.min_score and (not plan.labels or d["label"] in plan.labels)]
    kept = kept[:plan.max_detections]
    boxes = [imaging.crop_box(d["box"], plan.margin, image.size) for d in kept]
    spec, top_k = classifier.spec, plan.top_k or upload.top_k
    jobs = [submit(call, classifier, new_job(call, classifier, imaging.fit_square(image.crop(box), spec), top_k))
            for box in boxes]
    step = f"step 2 (classify with {classifier.name})"
    detections = [{**detection, "crop_box": list(box),
                   "predictions": step_output(call, classifier, job, step)["predictions"]}
                  for detection, box, job in zip(kept, boxes, jobs, strict=True)]
    return {"models": {"detect": describe(detector), "classify": describe(classifier)}, "detections": detections}


def fan_out(call: Call, plan: FanOut, upload) -> dict:
    router = call.gw.router
    names = plan.models or [name for name, versions in sorted(router.view().items())
                            if next(iter(versions.values())).spec.kind == "classifier"]
    targets = [router.resolve(name, None) for name in names]
    jobs, image = [], getattr(upload, "image", None)
    for served in targets:
        array, params = model_input(call, upload.data, served.spec) if image is None else \
            image_input(call, image, served.spec)
        jobs.append(submit(call, served, new_job(call, served, array, upload.top_k, params)))
    return {"results": {served.name: {"success": True, **describe(served),
                                      **step_output(call, served, job, f"model {served.name}")}
                        for served, job in zip(targets, jobs, strict=True)}}


def ocr(call: Call, plan: Ocr, upload) -> dict:
    """Text regions on the working image, each line cut from the original image and read; `texts` in
    reading order, boxes (four corners, clockwise from the text's top left) in original pixels."""
    router = call.gw.router
    detector, recognizer = router.resolve(plan.detector, None), router.resolve(plan.recognizer, None)
    image = decoded(call, upload)
    pixels, params = imaging.working_image(image, plan.max_side)
    found = step_output(call, detector, submit(call, detector, new_job(call, detector, pixels, 1, params)),
                        f"step 1 (detect text with {detector.name})")["detections"]
    corners = [box for box in map(region_corners, found) if box is not None][:plan.max_texts]
    original = np.asarray(image)
    jobs = [submit(call, recognizer, new_job(call, recognizer, crop_line(original, box, recognizer.spec.input_size), 1))
            for box in corners]
    step = f"step 2 (recognize with {recognizer.name})"
    texts = []
    for box, job in zip(corners, jobs, strict=True):
        read = step_output(call, recognizer, job, step)["detections"]
        if read and read[0]["score"] >= plan.min_score:
            texts.append({"text": read[0]["label"], "score": read[0]["score"], "box": box})
    return {"models": {"detect": describe(detector), "recognize": describe(recognizer)}, "texts": texts}

