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
served; a request to a pipeline whose model is not gets MODEL_NOT_FOUND.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
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


Plan = DetectThenClassify | FanOut | Ocr


def load_plans(path: str | None) -> dict[str, Plan]:
    """The pipelines of the file at `path` (none when unset); ValueError names what is wrong."""
    if not path:
        return {}
    try:
        document = json.loads(Path(path).read_text())
        plans = [parse_plan(entry) for entry in document["pipelines"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"PIPELINES file {path}: {exc}") from exc
    return {plan.name: plan for plan in plans}


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
    raise ValueError(f"pipeline {entry.get('name')!r}: unknown type {kind!r}")


def parse_ocr(entry: dict) -> Ocr:
    detect, recognize = entry["detect"], entry["recognize"]
    plan = Ocr(entry["name"], detect["model"], recognize["model"], entry.get("description", ""),
               int(detect.get("max_side", 2000)), int(detect.get("max_texts", 200)),
               float(recognize.get("min_score", 0.5)))
    if plan.max_side < 32 or plan.max_texts < 1:
        raise ValueError(f"pipeline {plan.name!r}: max_side must be at least 32 and max_texts at least 1")
    return plan
