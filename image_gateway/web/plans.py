"""Pipelines: named plans of steps over the served models, declared in the PIPELINES file (JSON).

    {"pipelines": [
      {"name": "face_crops", "type": "detect_then_classify",
       "detect":   {"model": "mtcnn", "min_score": 0.9, "labels": ["face"], "max_detections": 20},
       "classify": {"model": "efficientnet_lite0", "margin": 0.2, "top_k": 5}},
      {"name": "all_classifiers", "type": "fan_out", "models": "all_classifiers"}]}

detect_then_classify: the detector's boxes, kept when their score is at least `min_score` and their
label is in `labels` (any label when absent), each grown by `margin` (a fraction of its width and
height on every side), cropped from the original image and classified. fan_out: each model in
`models` (a list, or "all_classifiers": every classifier served when the request comes) on the same
image. Every model must be served; a request to a pipeline whose model is not gets MODEL_NOT_FOUND.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

ALL_CLASSIFIERS = "all_classifiers"


@dataclass(frozen=True)
class DetectThenClassify:
    name: str
    detector: str
    classifier: str
    description: str = ""
    min_score: float = 0.0
    labels: tuple[str, ...] = ()
    max_detections: int = 20
    margin: float = 0.0
    top_k: int | None = None

    def steps(self) -> list[dict]:
        return [{"step": "detect", "model": self.detector, "min_score": self.min_score,
                 "labels": list(self.labels), "max_detections": self.max_detections},
                {"step": "classify", "model": self.classifier, "margin": self.margin}]


@dataclass(frozen=True)
class FanOut:
    name: str
    models: tuple[str, ...] = field(default_factory=tuple)    # empty: every served classifier
    description: str = ""

    def steps(self) -> list[dict]:
        return [{"step": "fan_out", "models": list(self.models) or ALL_CLASSIFIERS}]


Plan = DetectThenClassify | FanOut


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
    raise ValueError(f"pipeline {entry.get('name')!r}: unknown type {kind!r}")
