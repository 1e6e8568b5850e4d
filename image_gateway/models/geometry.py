"""Working size for a detector and mapping its detections back: pure Python, no TensorFlow.

A detector is not fed a square. The web tier decodes the upload (EXIF-rotated RGB), shrinks it so
its longest side is at most ``max_side`` (never enlarges it), sends that array, and maps the
answer back to the pixels of the decoded image::

    width, height, scale = working_size(image.width, image.height, max_side)
    pixels = np.asarray(image.resize((width, height)))           # skip when scale == 1.0
    detections = scale_detections(answer, scale, (image.width, image.height))

Coordinates are continuous pixel positions: x in [0, width], y in [0, height]. The scale is the
longest side's (exact there); the shorter side is rounded to whole pixels, which moves its
coordinates by at most half a working pixel.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_MAX_SIDE = 1024  # px: the working image's longest side unless a setting says otherwise
COORDINATE_DECIMALS = 2


def working_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int, float]:
    """(working width, working height, scale = working / original); scale is 1.0 when the image
    already fits in max_side."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height, 1.0
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def scale_detections(detections: Iterable[dict], scale: float, original_size: tuple[int, int]) -> list[dict]:
    """Detections on the working image -> detections on the original: box and landmark
    coordinates divided by scale, clipped to [0, width] x [0, height] of original_size
    (width, height) and rounded to 2 decimals. Other keys are kept; the input is not changed."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    width, height = original_size
    return [_scaled(detection, scale, width, height) for detection in detections]


def _scaled(detection: dict, scale: float, width: int, height: int) -> dict:
    scaled = dict(detection)
    x_min, y_min, x_max, y_max = detection["box"]
    scaled["box"] = [_coordinate(x_min, scale, width), _coordinate(y_min, scale, height),
                     _coordinate(x_max, scale, width), _coordinate(y_max, scale, height)]
    if "landmarks" in detection:
        scaled["landmarks"] = {name: [_coordinate(x, scale, width), _coordinate(y, scale, height)]
                               for name, (x, y) in detection["landmarks"].items()}
    return scaled


def _coordinate(value: float, scale: float, limit: int) -> float:
    return round(min(max(float(value) / scale, 0.0), float(limit)), COORDINATE_DECIMALS)
