"""Running a frames pipeline: a model, or another pipeline, on sampled frames of an animation (frames.py).

A model's frames are queued together, as a detect_then_classify pipeline queues its crops, so they batch in
the model's queue; another pipeline runs on the frames concurrently (FRAME_THREADS at a time), its own steps
queued as it queues them for one image. The answer has each frame's `index` and `timestamp` and a `merge`:
for predictions the highest probability of each label over the frames (`max`), for detections (or an OCR's
texts) the union of every frame's, each with its frame's index and timestamp.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from image_gateway import errors, frames
from image_gateway.errors import GatewayError
from image_gateway.models.geometry import working_size
from image_gateway.web.jobs import Call, new_job, submit
from image_gateway.web.plan_steps import describe, image_input, step_output
from image_gateway.web.plans import Frames

FRAME_THREADS = 8        # frames of one request running another pipeline at once
UNIONS = ("detections", "texts")


@dataclass(frozen=True)
class FrameImage:
    """A frame handed to another pipeline's runner in place of an upload: decoded already."""
    image: Image.Image
    top_k: int
    data: bytes = b""


def sampling_of(plan: Frames, upload) -> frames.Sampling:
    """The plan's sampling; a request's `max_frames` may lower the plan's, never raise it."""
    asked = getattr(upload, "max_frames", None)
    return frames.Sampling(plan.every_n, plan.fps, min(plan.max_frames, asked or plan.max_frames))


def run_frames(call: Call, plan: Frames, upload, run_plan: Callable) -> dict:
    """The frames pipeline's answer fields; `run_plan` runs another pipeline on one frame."""
    config = call.config
    sampling = sampling_of(plan, upload)
    limits = frames.Limits(config.max_image_pixels, int(config.max_animation_mp * 1_000_000), call.deadline)
    if plan.pipeline:
        inner = call.gw.plans.get(plan.target)
        if inner is None:
            raise GatewayError(errors.PIPELINE_NOT_FOUND, f"no pipeline {plan.target!r} (frames of {plan.name!r})")
        with frames.sampled_frames(upload.data, sampling, limits, Image.Image.copy, lambda w, h: w * h) as found:
            with ThreadPoolExecutor(min(FRAME_THREADS, len(found.frames))) as pool:
                outputs = list(pool.map(lambda frame: run_plan(call, inner, FrameImage(frame.value, upload.top_k)),
                                        found.frames))
        each = {"pipeline": plan.target}
    else:
        each, found, outputs = model_frames(call, plan, upload, sampling, limits)
    results = [{"index": frame.index, "timestamp": frame.timestamp, **output}
               for frame, output in zip(found.frames, outputs, strict=True)]
    return {"each_frame": each, "frames_total": found.total, "sampling": sampling_fields(sampling),
            "frames": results, "merge": merge(results)}


def model_frames(call: Call, plan: Frames, upload, sampling: frames.Sampling, limits: frames.Limits):
    """Every sampled frame through one model, queued together: (what ran, the sampled frames, their outputs)."""
    served = call.gw.router.resolve(plan.target, None)
    spec, max_side = served.spec, call.config.detect_max_side
    if spec.kind == "detector":
        def kept_pixels(width: int, height: int) -> int:
            shrunk_width, shrunk_height, _ = working_size(width, height, max_side)
            return shrunk_width * shrunk_height
    else:
        def kept_pixels(width: int, height: int) -> int:
            return spec.input_size * spec.input_size
    with frames.sampled_frames(upload.data, sampling, limits, lambda image: image_input(call, image, spec),
                               kept_pixels) as found:
        jobs = [submit(call, served, new_job(call, served, array, upload.top_k, params))
                for array, params in (frame.value for frame in found.frames)]
        outputs = [step_output(call, served, job, f"frame {frame.index} ({served.name})")
                   for frame, job in zip(found.frames, jobs, strict=True)]
    return describe(served), found, outputs


def sampling_fields(sampling: frames.Sampling) -> dict:
    how = {"fps": sampling.fps} if sampling.fps else {"every_n": sampling.every_n}
    return {**how, "max_frames": sampling.max_frames}


def merge(results: list[dict]) -> dict:
    """`max`: each label's highest probability over the frames (of the labels each frame reports, its top_k),
    highest first; `detections` / `texts`: every frame's, with its frame's index and timestamp."""
    merged: dict = {}
    if results and all("predictions" in result for result in results):
        best: dict[str, dict] = {}
        for result in results:
            for prediction in result["predictions"]:
                known = best.get(prediction["label"])
                if known is None or prediction["probability"] > known["probability"]:
                    best[prediction["label"]] = {**prediction, "index": result["index"],
                                                 "timestamp": result["timestamp"]}
        merged["max"] = sorted(best.values(), key=lambda entry: -entry["probability"])
    for key in UNIONS:
        if results and all(key in result for result in results):
            merged[key] = [{**found, "index": result["index"], "timestamp": result["timestamp"]}
                           for result in results for found in result[key]]
    return merged
