"""Pipelines: named plans of steps over the served models, declared in the PIPELINES file (JSON).

    {"pipelines": [
      {"name": "face_crops", "type": "detect_then_classify",
       "detect":   {"model": "mtcnn", "min_score": 0.9, "labels": ["face"], "max_detections": 20},
       "classify": {"model": "efficientnet_lite0", "margin": 0.2, "top_k": 5}},
      {"name": "all_classifiers", "type": "fan_out", "models": "all_classifiers"},
      {"name": "ocr", "type": "ocr",
       "detect":    {"model": "ocr_det", "max_side": 2000, "max_texts": 200},
       "recognize": {"model": "ocr_rec", "min_score": 0.5}}]}

detect_then_classify: the detector's boxes, kept when their score is at least `min_score` and their
label is in `labels` (any label when absent), each grown by `margin` (a fraction of its width and
height on every side), cropped from the original image and classified. fan_out: each model in
`models` (a list, or "all_classifiers": every classifier served when the request comes) on the same
image. ocr: the detector's text regions on the image shrunk to at most `max_side` px (its longest side), at
most `max_texts` of them in reading order, each cut out of the original image, rectified and sent to the
recogniser; the lines read with a score of at least `min_score` are the answer's `texts`. Every model must be
served; a request to a pipeline whose model is not gets MODEL_NOT_FOUND. frames: a model (`model`) or another
pipeline (`pipeline`, not itself of type frames) on frames of an animated GIF, WebP or APNG, sampled every
`every_n`th frame or `fps` times a second, at most `max_frames` of them (web/frame_runner.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

ALL_CLASSIFIERS = "all_classifiers"


@dataclass(frozen=True)
class DetectFirst:
    """A plan whose first step is a detector (its boxes feed the second model)."""
    name: str
    detector: str


@dataclass(frozen=True)
class DetectThenClassify(DetectFirst):
    classifier: str
    description: str = ""
    min_score: float = 0.0
    labels: tuple[str, ...] = ()
    max_detections: int = 20
    margin: float = 0.0
    top_k: int | None = None

    def needs(self) -> tuple[str, ...]:
        return self.detector, self.classifier

    def steps(self) -> list[dict]:
        return [{"step": "detect", "model": self.detector, "min_score": self.min_score,
                 "labels": list(self.labels), "max_detections": self.max_detections},
                {"step": "classify", "model": self.classifier, "margin": self.margin}]


@dataclass(frozen=True)
class FanOut:
    name: str
    models: tuple[str, ...] = field(default_factory=tuple)    # empty: every served classifier
    description: str = ""

    def needs(self) -> tuple[str, ...]:
        return self.models               # all_classifiers: whatever is served

    def steps(self) -> list[dict]:
        return [{"step": "fan_out", "models": list(self.models) or ALL_CLASSIFIERS}]


@dataclass(frozen=True)
class Ocr(DetectFirst):
    recognizer: str
    description: str = ""
    max_side: int = 2000           # rapidocr's own bound on the image its detector sees
    max_texts: int = 200
    min_score: float = 0.5         # rapidocr's text_score: lines read less surely are left out

    def needs(self) -> tuple[str, ...]:
        return self.detector, self.recognizer

    def steps(self) -> list[dict]:
        return [{"step": "detect", "model": self.detector, "max_side": self.max_side, "max_texts": self.max_texts},
                {"step": "recognize", "model": self.recognizer, "min_score": self.min_score}]


@dataclass(frozen=True)
class Frames:
    """A model or another pipeline on sampled frames of an animation (a still image is one frame)."""
    name: str
    target: str                    # a model's name, or a pipeline's when `pipeline`
    pipeline: bool = False
    description: str = ""
    every_n: int = 1               # every n-th frame, from the first ...
    fps: float | None = None       # ... or the frame showing at every 1/fps seconds
    max_frames: int = 32           # frames sampled at most; a request may ask fewer (`max_frames`)
    inner_needs: tuple[str, ...] = ()      # the other pipeline's models (set when the file is loaded)

    def needs(self) -> tuple[str, ...]:
        return self.inner_needs if self.pipeline else (self.target,)

    def steps(self) -> list[dict]:
        sampling = {"fps": self.fps} if self.fps else {"every_n": self.every_n}
        return [{"step": "frames", **sampling, "max_frames": self.max_frames},
                {"step": "each_frame", "pipeline" if self.pipeline else "model": self.target}]


Plan = DetectThenClassify | FanOut | Ocr | Frames


def load_plans(path: str | None) -> dict[str, Plan]:
    """The pipelines of the file at `path` (none when unset); ValueError names what is wrong."""
    if not path:
        return {}
    try:
        document = json.loads(Path(path).read_text())
        plans = [parse_plan(entry) for entry in document["pipelines"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"PIPELINES file {path}: {exc}") from exc
    by_name = {plan.name: plan for plan in plans}
    for plan in plans:
        inner = by_name.get(plan.target) if isinstance(plan, Frames) and plan.pipeline else None
        if isinstance(plan, Frames) and plan.pipeline and (inner is None or isinstance(inner, Frames)):
            raise ValueError(f"PIPELINES file {path}: pipeline {plan.name!r} runs {plan.target!r}, which is "
                             "not a pipeline of the file other than a frames one")
        if inner is not None:
            by_name[plan.name] = replace(plan, inner_needs=inner.needs())
    return by_name


def parse_plan(entry: dict) -> Plan:
    kind = entry["type"]
    if kind == "detect_then_classify":
        detect, classify = entry["detect"], entry["classify"]
        return DetectThenClassify(
            entry["name"], detect["model"], classify["model"], entry.get("description", ""),
            float(detect.get("min_score", 0.0)), tuple(detect.get("labels", ())),
            int(detect.get("max_detections", 20)), float(classify.get("margin", 0.0)), classify.get("top_k"))
    if kind == "fan_out":
        models = entry.get("models", ALL_CLASSIFIERS)
        return FanOut(entry["name"], () if models == ALL_CLASSIFIERS else tuple(models), entry.get("description", ""))
    if kind == "ocr":
        return parse_ocr(entry)
    if kind == "frames":
        return parse_frames(entry)
    raise ValueError(f"pipeline {entry.get('name')!r}: unknown type {kind!r}")


def parse_ocr(entry: dict) -> Ocr:
    detect, recognize = entry["detect"], entry["recognize"]
    plan = Ocr(entry["name"], detect["model"], recognize["model"], entry.get("description", ""),
               int(detect.get("max_side", 2000)), int(detect.get("max_texts", 200)),
               float(recognize.get("min_score", 0.5)))
    if plan.max_side < 32 or plan.max_texts < 1:
        raise ValueError(f"pipeline {plan.name!r}: max_side must be at least 32 and max_texts at least 1")
    return plan


def parse_frames(entry: dict) -> Frames:
    if ("model" in entry) == ("pipeline" in entry):
        raise ValueError(f"pipeline {entry['name']!r}: a frames pipeline names one `model` or one `pipeline`")
    if "every_n" in entry and "fps" in entry:
        raise ValueError(f"pipeline {entry['name']!r}: sample by `every_n` or by `fps`, not both")
    fps = float(entry["fps"]) if "fps" in entry else None
    plan = Frames(entry["name"], str(entry.get("model") or entry["pipeline"]), "pipeline" in entry,
                  entry.get("description", ""), int(entry.get("every_n", 1)), fps, int(entry.get("max_frames", 32)))
    if plan.every_n < 1 or plan.max_frames < 1 or (fps is not None and not 0 < fps <= 1000):
        raise ValueError(f"pipeline {plan.name!r}: every_n and max_frames must be at least 1, fps in (0, 1000]")
    return plan


def units_per_image(plans: dict, targets: list[str], max_frames: int | None) -> int:
    """What one image of a task counts against MAX_TASK_IMAGES: 1 a target, but a frames pipeline its frames
    (its max_frames, or the task's lower `max_frames`), each of which is an image to the model."""
    total = 0
    for target in targets:
        plan = plans.get(target.removeprefix("pipeline:")) if target.startswith("pipeline:") else None
        total += min(plan.max_frames, max_frames or plan.max_frames) if isinstance(plan, Frames) else 1
    return total
