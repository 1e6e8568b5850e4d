"""Fitting an image into a model's fixed input by `squash` or `letterbox`, and mapping boxes back.

Pillow and numpy only. A detector's worker fits the working image the web tier sent; a classifier
whose config says `squash` or `letterbox` is fitted by the web tier with the same function (the
usual `center_crop` is imaging.resize_center_crop's).

- squash: resize to the input's width and height, the aspect ratio not kept;
- letterbox: scale to fit inside the input keeping the aspect ratio (enlarging small images, as
  YOLO's own LetterBox does), centred on a grey (114) canvas.

`Placement` remembers the affine map, input = image * gain + offset per axis, so a box found on the
model's input goes back to the image's pixels exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

FILL = 114  # the letterbox's grey, as YOLO exports are trained with
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Placement:
    gain_x: float
    gain_y: float
    offset_x: float
    offset_y: float

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) x_min, y_min, x_max, y_max on the model's input -> the same on the image."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        x = (boxes[:, 0::2] - self.offset_x) / self.gain_x
        y = (boxes[:, 1::2] - self.offset_y) / self.gain_y
        return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def as_image(pixels: np.ndarray | Image.Image) -> Image.Image:
    """An RGB Pillow image of an (H, W, 3) uint8 or float32 0..255 array (or the image itself)."""
    if isinstance(pixels, Image.Image):
        return pixels
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def fit(pixels: np.ndarray | Image.Image, width: int, height: int, resize: str,
        resample: str = "bilinear") -> tuple[np.ndarray, Placement]:
    """The (height, width, 3) uint8 model input and where the image landed in it."""
    image = as_image(pixels)
    if resize == "squash":
        placement = Placement(width / image.width, height / image.height, 0.0, 0.0)
        return np.asarray(image.resize((width, height), FILTERS[resample]), np.uint8), placement
    if resize != "letterbox":
        raise ValueError(f"resize must be squash or letterbox, not {resize!r}")
    gain = min(width / image.width, height / image.height)
    inner_width, inner_height = max(1, round(image.width * gain)), max(1, round(image.height * gain))
    left, top = (width - inner_width) // 2, (height - inner_height) // 2
    canvas = np.full((height, width, 3), FILL, np.uint8)
    inner = image.resize((inner_width, inner_height), FILTERS[resample])
    canvas[top:top + inner_height, left:left + inner_width] = np.asarray(inner, np.uint8)
    return canvas, Placement(inner_width / image.width, inner_height / image.height, float(left), float(top))
