"""Detector heads: a model's raw output tensors -> boxes on its input, scores and class ids (numpy only).

- `yolo`: one tensor per image of [4 + C, A] (YOLOv8/11 exports), [A, 4 + C], or [A, 5 + C] with an
  objectness column (YOLOv5): each of A candidates is cx, cy, w, h in input pixels, then the class
  scores (times objectness where present). The best class per candidate is kept when its score is at
  least `score_threshold`; then class-aware non-maximum suppression drops a box that overlaps a
  higher-scoring box of its class by IoU above `iou_threshold`; the best `max_detections` remain.
  C is the labels' count when labels.txt is given, so the layout is told from the shape; without
  labels the smaller axis holds the attributes and `objectness` (config) says whether column 4 is one.
- `ssd`: boxes [M, 4] (y_min, x_min, y_max, x_max, 0..1 of the input), class ids [M], scores [M] and
  a count of valid rows, as TF Object Detection API and TFLite SSD exports give them (already
  suppressed in the graph): rows under `score_threshold` are dropped, the best `max_detections` kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from image_gateway.models.errors import ModelError

# TF Object Detection API's output names; other exports are matched by the words in their names, and
# failing that taken in the TFLite SSD order: boxes, classes, scores, count.
SSD_NAMES = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
SSD_WORDS = (("box",), ("class",), ("score",), ("num", "count"))
SSD_NOT = ("raw", "multiclass", "anchor")


@dataclass(frozen=True)
class Found:
    """One image's detections on the model's input, best first."""

    boxes: np.ndarray               # (K, 4) x_min, y_min, x_max, y_max in input pixels
    scores: np.ndarray              # (K,)
    classes: np.ndarray             # (K,) int


@dataclass(frozen=True)
class Limits:
    score_threshold: float
    iou_threshold: float
    max_detections: int


def yolo_layout(shape: tuple[int, ...], num_classes: int | None, objectness: bool | None) -> tuple[bool, bool, int]:
    """(attributes on the last axis, objectness column, classes) of one image's [D1, D2] output."""
    if len(shape) != 2:
        raise ModelError(f"yolo head: the output must be [N, 4 + C, A] or [N, A, 4 + C], not [N, "
                         f"{', '.join(map(str, shape))}]")
    first, last = shape
    if num_classes is None:
        attributes_last, has_objectness = last <= first, bool(objectness)
        classes = (last if attributes_last else first) - 4 - has_objectness
        if classes < 1:
            raise ModelError(f"yolo head: an output of [N, {first}, {last}] leaves no class scores")
        return attributes_last, has_objectness, classes
    for attributes_last in (False, True):
        for has_objectness in (False, True):
            width = last if attributes_last else first
            if width == 4 + has_objectness + num_classes and objectness in (None, has_objectness):
                return attributes_last, has_objectness, num_classes
    raise ModelError(f"yolo head: an output of [N, {first}, {last}] fits neither [4 + C, A] nor [A, 4 + C] "
                     f"nor [A, 5 + C] with C = {num_classes} (the labels in labels.txt)")


def decode_yolo(output: np.ndarray, num_classes: int | None, objectness: bool | None, limits: Limits) -> Found:
    """One image's [D1, D2] yolo output -> its detections."""
    attributes_last, has_objectness, _ = yolo_layout(output.shape, num_classes, objectness)
    rows = np.asarray(output if attributes_last else output.T, np.float64)
    class_scores = rows[:, 4 + has_objectness:]
    if has_objectness:
        class_scores = class_scores * rows[:, 4:5]
    classes = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(len(rows)), classes]
    kept = scores >= limits.score_threshold
    centre_x, centre_y, width, height = rows[kept, :4].T
    boxes = np.stack([centre_x - width / 2, centre_y - height / 2, centre_x + width / 2, centre_y + height / 2], 1)
    chosen = nms(boxes, scores[kept], classes[kept], limits.iou_threshold, limits.max_detections)
    return Found(boxes[chosen], scores[kept][chosen], classes[kept][chosen])


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Indexes of the boxes kept by greedy class-aware non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    kept: list[int] = []
    while order.size and len(kept) < limit:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        low, high = np.maximum(boxes[best, :2], boxes[rest, :2]), np.minimum(boxes[best, 2:], boxes[rest, 2:])
        overlap = np.prod(np.clip(high - low, 0, None), axis=1)
        union = areas[best] + areas[rest] - overlap
        iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        order = rest[~((classes[rest] == classes[best]) & (iou > iou_threshold))]
    return np.asarray(kept, dtype=np.int64)


def ssd_output_order(names: list[str]) -> tuple[int, int, int, int | None]:
    """Which outputs are (boxes, classes, scores, count): by name, else in the TFLite SSD order."""
    lowered = [name.lower().split(":")[0] for name in names]
    if all(name in lowered for name in SSD_NAMES[:3]):
        found = [lowered.index(name) if name in lowered else None for name in SSD_NAMES]
        return found[0], found[1], found[2], found[3]
    matches = [[i for i, name in enumerate(lowered) if any(word in name for word in words)
                and not any(word in name for word in SSD_NOT)] for words in SSD_WORDS]
    if all(len(match) == 1 for match in matches[:3]) and len(matches[3]) <= 1:
        return matches[0][0], matches[1][0], matches[2][0], (matches[3] or [None])[0]
    if len(names) in (3, 4):
        return 0, 1, 2, (3 if len(names) == 4 else None)
    raise ModelError(f"ssd head: cannot tell boxes, classes, scores and count among the outputs {', '.join(names)}")


def decode_ssd(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray, count, size: tuple[int, int],
               limits: Limits) -> Found:
    """One image's ssd outputs -> its detections; size is the input's (width, height)."""
    boxes, classes, scores = (np.asarray(item, np.float64) for item in (boxes, classes, scores))
    if boxes.ndim != 2 or boxes.shape[1] != 4 or classes.shape != scores.shape or scores.shape != boxes.shape[:1]:
        raise ModelError(f"ssd head: expected boxes [N, M, 4], classes [N, M] and scores [N, M], got "
                         f"{list(boxes.shape)}, {list(classes.shape)} and {list(scores.shape)} per image")
    valid = len(scores) if count is None else max(0, min(int(np.asarray(count).reshape(-1)[0]), len(scores)))
    kept = np.flatnonzero(scores[:valid] >= limits.score_threshold)
    kept = kept[np.argsort(-scores[kept], kind="stable")][:limits.max_detections]
    width, height = size
    y_min, x_min, y_max, x_max = boxes[kept].T
    pixels = np.stack([x_min * width, y_min * height, x_max * width, y_max * height], 1)
    return Found(pixels, scores[kept], np.rint(classes[kept]).astype(np.int64))
