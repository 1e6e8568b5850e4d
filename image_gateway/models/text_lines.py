"""Text regions between the OCR steps: their corners, their reading order and their rectified crops.

Cheap to import (numpy only): OpenCV and rapidocr are imported by `crop_line` when it first runs, so the
web tier pays for them only when it serves the `ocr` pipeline.

A text region is a quadrilateral, its corners clockwise from the top left of the text as written (rapidocr's
DB decoding orders them so). `ocr_det` answers each region as a detection: `box` is its axis-aligned bounding
box, and its corners are the detection's `landmarks` (named by CORNERS), so the worker maps them back to the
original pixels exactly as it maps a face's landmarks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CORNERS = ("top_left", "top_right", "bottom_right", "bottom_left")
MAX_LINE_RATIO = 50       # a line image is at most this many times wider than tall (wider ones are squeezed)


def region_detection(quad: np.ndarray, score: float, label: str, decimals: int = 6) -> dict:
    """A detection for one text region: bounding `box`, and the corners as `landmarks`."""
    points = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    return {"label": label, "score": round(float(score), decimals),
            "box": [float(points[:, 0].min()), float(points[:, 1].min()),
                    float(points[:, 0].max()), float(points[:, 1].max())],
            "landmarks": {name: [float(x), float(y)] for name, (x, y) in zip(CORNERS, points, strict=True)}}


def region_corners(detection: dict) -> list[list[float]] | None:
    """The four corners of a detection made by region_detection (None when it has not got them)."""
    landmarks = detection.get("landmarks") or {}
    if not all(name in landmarks for name in CORNERS):
        return None
    return [[float(value) for value in landmarks[name]] for name in CORNERS]


def reading_order(quads: Sequence[np.ndarray]) -> list[int]:
    """Indexes of the regions in reading order: lines top to bottom, each left to right.

    A region joins the line being read when its vertical centre lies within that line's first region;
    otherwise it starts the next line. (rapidocr's own sort, by a fixed 10 px step of the top left corner,
    depends on the image's scale, and it reorders the boxes without their scores.)
    """
    if not len(quads):
        return []
    points = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    tops, bottoms = points[:, :, 1].min(axis=1), points[:, :, 1].max(axis=1)
    centres, lefts = (tops + bottoms) / 2, points[:, :, 0].min(axis=1)
    lines: list[list[int]] = []
    for index in sorted(range(len(points)), key=lambda i: (centres[i], lefts[i])):
        anchor = lines[-1][0] if lines else None
        if anchor is not None and tops[anchor] <= centres[index] <= bottoms[anchor]:
            lines[-1].append(index)
        else:
            lines.append([index])
    return [index for line in lines for index in sorted(line, key=lambda i: lefts[i])]


def line_width(width: int, height: int, line_height: int) -> int:
    """The width of a `width` x `height` line image scaled to `line_height`, at most MAX_LINE_RATIO times it."""
    return max(1, min(math.ceil(line_height * width / max(height, 1)), line_height * MAX_LINE_RATIO))


def crop_line(pixels: np.ndarray, corners: Sequence[Sequence[float]], line_height: int) -> np.ndarray:
    """The region cut out of `pixels` (H, W, 3) and rectified: rapidocr's own perspective warp of the
    quadrilateral (cubic, edges replicated; a tall region turned a quarter), then scaled to `line_height`
    rows (the recogniser's input height) as rapidocr's recogniser scales it, uint8."""
    import cv2
    from rapidocr.utils.process_img import get_rotate_crop_image

    points = np.asarray(corners, dtype=np.float32).reshape(4, 2)
    crop = get_rotate_crop_image(pixels, points)     # ocr_det keeps no region under 4 px a side
    width = line_width(crop.shape[1], crop.shape[0], line_height)
    line = cv2.resize(np.ascontiguousarray(crop), (width, line_height))
    return np.ascontiguousarray(line, dtype=np.uint8)
