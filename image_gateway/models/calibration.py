"""The INT8 calibration set: photo-like images the gateway draws itself, never a photo.

Why generated: the accuracy check (models/quantize.py) needs real photos that calibration never saw,
and the photos at hand are few, so all of them go to the check. What calibration needs is the range
of every activation on photo-like input, and the "dead leaves" model gives that: overlapping shapes
whose sizes follow a power law (so the image has a photo's 1/f spectrum and edges at every scale),
each flat, shaded or textured (stripes, checks, grain), over a sky-to-ground gradient, then lens
blur, sensor noise, colour cast and a JPEG round trip at a random quality. Deterministic: image i
of a seed is always the same, so the recipe (RECIPE, in the cache key) says what a cached file saw.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RECIPE = "dead-leaves-v1"    # bump when what the generator draws changes
DEFAULT_COUNT = 256          # images per calibration set (the issue asks for at least 200)
SHORT_SIDE = (256, 480)      # px of the generated image's shorter side
LEAVES = (40, 160)           # shapes per image


def generated_photo(index: int, seed: int = 0) -> Image.Image:
    """The index-th photo-like RGB image of a seed."""
    rng = np.random.default_rng([seed, index])
    short = int(rng.integers(*SHORT_SIDE))
    aspect = float(rng.uniform(0.75, 1.5))
    width, height = (round(short * aspect), short) if rng.random() < 0.7 else (short, round(short * aspect))
    canvas = Image.fromarray(_background(rng, width, height))
    for _ in range(int(rng.integers(*LEAVES))):
        _leaf(canvas, rng)
    return _camera(canvas, rng)


def calibration_images(count: int = DEFAULT_COUNT, seed: int = 0):
    """The calibration set, one image at a time."""
    for index in range(count):
        yield generated_photo(index, seed)


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A natural-looking RGB colour: mostly muted, sometimes vivid, any brightness."""
    hue = rng.uniform(0, 1)
    saturation = rng.beta(1.2, 2.5)
    value = rng.beta(2.0, 1.6)
    rgb = np.array([abs(((hue * 6 + shift) % 6) - 3) - 1 for shift in (0, 4, 2)]).clip(0, 1)
    return 255 * value * (1 - saturation + saturation * rgb)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    top, bottom = _colour(rng), _colour(rng)
    ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).clip(0, 255).astype(np.uint8)


def _leaf(canvas: Image.Image, rng: np.random.Generator) -> None:
    """One shape, its size drawn from a power law (many small, few large), pasted with its texture."""
    width, height = canvas.size
    smallest, largest = 4.0, 0.6 * min(width, height)
    radius = smallest * (largest / smallest) ** rng.uniform(0, 1) ** 1.6
    cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
    side = max(2, int(2 * radius))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon(_outline(rng, side), fill=255)
    canvas.paste(_texture(rng, side), (int(cx - side / 2), int(cy - side / 2)), mask)


def _outline(rng: np.random.Generator, side: int) -> list[tuple[float, float]]:
    """An ellipse, a rectangle or a random convex-ish polygon inside a side x side box, at any angle."""
    shape, half = rng.integers(0, 3), side / 2
    squash = rng.uniform(0.3, 1.0)
    if shape == 0:
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        points = np.stack([np.cos(angles), squash * np.sin(angles)], axis=1)
    elif shape == 1:
        points = np.array([(-1, -squash), (1, -squash), (1, squash), (-1, squash)]) / math.sqrt(1 + squash ** 2)
    else:
        angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 8))))
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * rng.uniform(0.6, 1.0, (len(angles), 1))
    turn = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    return [(half + half * x, half + half * y) for x, y in points @ rotation.T]


def _texture(rng: np.random.Generator, side: int) -> Image.Image | tuple[int, int, int]:
    """A side x side fill: a flat colour, or a shading ramp, stripes, checks or grain between two colours."""
    first, second = _colour(rng).astype(np.float32), _colour(rng).astype(np.float32)
    kind = rng.integers(0, 5)
    if kind == 0:
        return tuple(int(channel) for channel in first)
    ramp = np.arange(side, dtype=np.float32) / side
    angle = rng.uniform(0, math.pi)
    along = ramp[None, :] * np.float32(math.cos(angle)) + ramp[:, None] * np.float32(math.sin(angle))
    if kind == 1:
        weight = along / max(float(along.max()), 1e-6)
    elif kind == 2:
        weight = 0.5 + 0.5 * np.sin(np.float32(2 * math.pi * rng.uniform(2, 12)) * along)
    elif kind == 3:
        cells = np.floor(ramp * np.float32(rng.uniform(2, 10)))
        weight = ((cells[None, :] + cells[:, None]) % 2).astype(np.float32)
    else:
        weight = rng.random((side, side), dtype=np.float32)
    fill = first + (second - first) * weight[..., None]
    return Image.fromarray(fill.clip(0, 255).astype(np.uint8))


def _camera(canvas: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lens blur, sensor noise, a colour cast and JPEG compression, as a camera would add them."""
    if rng.random() < 0.7:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 2.5))))
    pixels = np.asarray(canvas, np.float32)
    pixels = pixels * rng.uniform(0.85, 1.15, 3) + rng.normal(0, rng.uniform(0, 6), pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=int(rng.integers(60, 95)))
    return Image.open(buffer).convert("RGB")
