"""Frames of an animated GIF, WebP or APNG, sampled for a frames pipeline (web/frame_runner.py).

Only the frames up to the last one sampled are decoded, in order: each of the three formats draws a frame
over the one before it (GIF's and APNG's disposal and blending, libwebp's animation decoder), so a frame
skipped on the way still costs its decoding, and frames after the last sampled one cost nothing. Bounds:
- the canvas, like any image, is at most MAX_IMAGE_PIXELS (WebP 25 MP), checked on every frame (a GIF frame
  may grow it);
- the canvas times the frames decoded is at most MAX_ANIMATION_MP, checked before decoding when the
  sampling says how far it goes (`every_n`) and on every frame (`fps`), else 413 IMAGE_TOO_LARGE;
- the canvas and every frame kept (max_frames of them at most, each what `keep` makes of it) hold their
  pixels of the process' decode budget (DECODE_BUDGET_MP, imaging.PixelBudget) for as long as the caller
  uses them; the request's deadline is checked on every frame (504 TIMEOUT).
Any other image (a still PNG, JPEG, TIFF, MPO ...) is one frame, decoded as /predict decodes it.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from image_gateway import errors, imaging
from image_gateway.errors import GatewayError

ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
DEFAULT_FRAME_MS = 100      # a frame with no duration (or a GIF's 0 or 10 ms) shows this long, as browsers do


@dataclass(frozen=True)
class Sampling:
    every_n: int = 1               # every n-th frame from the first ...
    fps: float | None = None       # ... or, when set, the frame showing at each 1/fps s (each frame once)
    max_frames: int = 32


@dataclass(frozen=True)
class Limits:
    max_pixels: int                # of the canvas (MAX_IMAGE_PIXELS)
    max_animation_pixels: int      # of all the frames decoded (MAX_ANIMATION_MP)
    deadline: float                # time.time() by which the request is due


@dataclass(frozen=True)
class Frame:
    index: int                     # in the file, from 0
    timestamp: float               # s from the start of the animation
    value: Any                     # what `keep` made of the frame


@dataclass(frozen=True)
class Sampled:
    frames: list[Frame]
    total: int                     # frames in the file


@contextlib.contextmanager
def sampled_frames(data: bytes, sampling: Sampling, limits: Limits, keep: Callable[[Image.Image], Any],
                   kept_pixels: Callable[[int, int], int]) -> Iterator[Sampled]:
    """The sampled frames, each as `keep(rgb_frame)` made it (a copy: the canvas changes under it), their
    pixels (`kept_pixels(width, height)` of the canvas each) held of the decode budget until the block ends."""
    with contextlib.ExitStack() as stack:
        sampled = _guarded(lambda: _sample(stack, data, sampling, limits, keep, kept_pixels))
        yield sampled


def _guarded(extract: Callable[[], Sampled]) -> Sampled:
    """Pillow's errors as the gateway's codes, as imaging.decode_image maps them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return extract()
        except GatewayError:
            raise
        except imaging.BOMB_ERRORS as exc:
            raise GatewayError(errors.IMAGE_TOO_LARGE, f"the image is too large: {exc}") from None
        except imaging.UNREADABLE_ERRORS as exc:
            raise GatewayError(errors.IMAGE_UNREADABLE,
                               f"the animation could not be decoded ({type(exc).__name__}: {exc})") from None


def _sample(stack: contextlib.ExitStack, data: bytes, sampling: Sampling, limits: Limits,
            keep: Callable[[Image.Image], Any], kept_pixels: Callable[[int, int], int]) -> Sampled:
    if not data:
        raise GatewayError(errors.EMPTY_IMAGE, "the image is empty (0 bytes)")
    image = stack.enter_context(imaging._open_image(data))
    pixel_limit = imaging._effective_pixel_limit(limits.max_pixels)
    if image.format == "WEBP":
        pixel_limit = min(pixel_limit, imaging.WEBP_MAX_PIXELS)
    imaging._check_pixel_count(image, pixel_limit)
    total = image.n_frames if image.format in ANIMATED_FORMATS else 1      # GIF: its blocks parsed, not decoded
    if total == 1:
        still = imaging.decode_image(data, max_pixels=limits.max_pixels, deadline=limits.deadline)
        return Sampled([Frame(0, 0.0, keep(still))], 1)
    canvas = image.width * image.height
    if sampling.fps is None:          # how far every_n goes is known now
        decoded = canvas * min(total, (sampling.max_frames - 1) * sampling.every_n + 1)
        _check_decoded(decoded, limits)
    kept = min(sampling.max_frames, total) * kept_pixels(image.width, image.height)
    stack.enter_context(imaging._decode_slot(image, limits.deadline, kept))
    return Sampled(_walk(image, total, sampling, limits, keep), total)


def _check_decoded(pixels: int, limits: Limits) -> None:
    if pixels > limits.max_animation_pixels:
        raise GatewayError(errors.IMAGE_TOO_LARGE, f"sampling this animation decodes {pixels} pixels (its canvas "
                           f"times the frames up to the last one sampled); the limit is {limits.max_animation_pixels} "
                           "(MAX_ANIMATION_MP): ask fewer frames (`max_frames`)")


def _walk(image: Image.Image, total: int, sampling: Sampling, limits: Limits,
          keep: Callable[[Image.Image], Any]) -> list[Frame]:
    """Decode frame after frame up to the last one sampled, keeping the sampled ones."""
    canvas, frames, decoded = image.width * image.height, [], 0
    start_ms, next_sample = 0.0, 0          # fps: the index of the next sample time (next_sample / fps s)
    period_ms = 1000.0 / sampling.fps if sampling.fps else 0.0
    for index in range(total):
        if time.time() >= limits.deadline:
            raise GatewayError(errors.TIMEOUT, f"no result by the deadline (still decoding frame {index})")
        image.seek(index)
        image.load()
        if image.width * image.height > canvas:
            raise GatewayError(errors.IMAGE_TOO_LARGE, f"frame {index} grows the canvas to {image.size}")
        decoded += canvas
        _check_decoded(decoded, limits)
        duration = frame_ms(image)
        if period_ms:
            sampled = next_sample * period_ms < start_ms + duration - 1e-6
            next_sample = max(next_sample, math.ceil((start_ms + duration) / period_ms - 1e-9))
        else:
            sampled = index % sampling.every_n == 0
        if sampled:
            frames.append(Frame(index, round(start_ms / 1000, 3), keep(imaging._to_rgb(image))))
            if len(frames) == sampling.max_frames:
                break
        start_ms += duration
    return frames


def frame_ms(image: Image.Image) -> float:
    """How long the current frame shows, in ms."""
    duration = image.info.get("duration") or 0
    if duration <= 0 or (image.format == "GIF" and duration <= 10):
        return DEFAULT_FRAME_MS
    return float(duration)
