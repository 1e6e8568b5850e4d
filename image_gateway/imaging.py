"""Decoding, validation and resizing of uploaded images: the only module that parses image bytes.

The web tier calls ``prepare_image`` on every request before anything reaches the queue, so a
bad upload is answered with a ``GatewayError`` here and never reaches a worker.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import struct
import threading
import time
import warnings
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from image_gateway import errors
from image_gateway.models import resizing
from image_gateway.models.geometry import working_size

if TYPE_CHECKING:
    from image_gateway.models.spec import ModelSpec

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# Pillow has no opener named MPO (Image.open raises KeyError for it): the JPEG opener returns
# an MPO image for multi-picture phone JPEGs.
PILLOW_OPEN_FORMATS: tuple[str, ...] = tuple(name for name in ALLOWED_FORMATS if name != "MPO")

RESAMPLE_FILTERS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

# Downscale by whole factors first (Image.reduce) while the remaining factor stays >= this gap;
# Pillow documents 3.0 as indistinguishable from a full-quality resize in most cases.
REDUCING_GAP = 3.0

# Everything Pillow's decoders are known to raise on bad input: one "unreadable" family.
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, MemoryError, NotImplementedError, OverflowError,
    struct.error, EOFError, IndexError, TypeError,
)
BOMB_ERRORS: tuple[type[BaseException], ...] = (
    Image.DecompressionBombError, Image.DecompressionBombWarning,
)

ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
HIGH_BIT_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
# Pillow decodes WebP through libwebp's animation decoder, which holds about three more copies of the
# RGBA canvas while loading: a 1.5 KB, 39 MP WebP peaked at 607 MB (found by fuzz/). 25 MP stays < 400 MB.
WEBP_MAX_PIXELS = 25_000_000
# An image over LARGE_DECODE_PIXELS (after JPEG drafting) costs 100-450 MB to decode; only
# MAX_LARGE_DECODES of them decode at once in a process (the web tier has hundreds of threads), and one
# that finds no slot within LARGE_DECODE_WAIT_S is refused with 503 SERVER_BUSY. A classifier's input
# is reduced inside the slot; a detector's or pipeline's full-size image outlives it.
LARGE_DECODE_PIXELS = 10_000_000
LARGE_DECODE_WAIT_S = 10.0
M_MMAP_THRESHOLD = -3           # glibc's mallopt parameter: allocations at least this large are mmapped


class PixelBudget:
    """The pixels being decoded at once in this process, of every size (DECODE_BUDGET_MP): a decode
    waits until its pixels fit (an image larger than the whole budget waits for all of it), and one
    that cannot start by its deadline is refused with 503 SERVER_BUSY. Decoding costs up to ~8 bytes
    per pixel at its peak (RGBA plus the RGB copy), so the budget bounds a web process' decode memory."""

    def __init__(self, pixels: int):
        self.capacity = self.free = pixels
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int, timeout_s: float):
        pixels = min(pixels, self.capacity)
        with self.changed:
            if not self.changed.wait_for(lambda: self.free >= pixels, max(0.0, timeout_s)):
                raise errors.GatewayError(errors.SERVER_BUSY, "the server is decoding as many pixels as it may; "
                                          "retry shortly", {"Retry-After": "1"})
            self.free -= pixels
        try:
            yield
        finally:
            with self.changed:
                self.free += pixels
                self.changed.notify_all()


_large_decodes = threading.BoundedSemaphore(2)
_budget = PixelBudget(100_000_000)


def bound_decode_memory(slots: int, budget_mp: float = 100.0) -> None:
    """At most `slots` images over LARGE_DECODE_PIXELS decode at once in this process (MAX_LARGE_DECODES),
    within a budget of `budget_mp` megapixels for decodes of every size (DECODE_BUDGET_MP), and what
    they free goes back to the OS: glibc's malloc otherwise keeps large freed buffers in its
    per-thread arenas (measured: 8 threads that had decoded 40 MP PNGs kept 1,537 MiB; with a fixed
    4 MiB mmap threshold, 42 MiB)."""
    global _large_decodes, _budget
    _large_decodes = threading.BoundedSemaphore(slots)
    _budget = PixelBudget(int(budget_mp * 1_000_000))
    with contextlib.suppress(OSError, AttributeError):      # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 4 << 20)


@contextlib.contextmanager
def _decode_slot(image: Image.Image, deadline: float | None, kept_pixels: int = 0):
    """Hold the image's pixels of the budget (and `kept_pixels`: frames kept from an animation, frames.py), and a
    large-decode slot when it is large, while it decodes."""
    timeout_s = LARGE_DECODE_WAIT_S if deadline is None else deadline - time.time()
    with _budget.hold(image.width * image.height + kept_pixels, timeout_s):
        if image.width * image.height <= LARGE_DECODE_PIXELS:
            yield
            return
        slots = _large_decodes
        if not slots.acquire(timeout=max(0.0, min(timeout_s, LARGE_DECODE_WAIT_S))):
            raise errors.GatewayError(errors.SERVER_BUSY, "too many large images are being decoded; retry shortly",
                                      {"Retry-After": "1"})
        try:
            yield
        finally:
            slots.release()

# Well-known formats we refuse, recognised by magic bytes only (never handed to a Pillow plugin:
# EPS would start Ghostscript; the PSD/ICO/TGA/... parsers are attack surface we do not need).
REFUSED_MAGIC: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("PSD", (b"8BPS",)),
    ("EPS", (b"%!PS", b"\xc5\xd0\xd3\xc6")),
    ("PDF", (b"%PDF",)),
    ("JPEG2000", (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n")),
    ("JPEG XL", (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")),
    ("DDS", (b"DDS ",)),
    ("ICNS", (b"icns",)),
    ("QOI", (b"qoif",)),
    ("BLP", (b"BLP1", b"BLP2")),
    ("SUN", (b"\x59\xa6\x6a\x95",)),
    ("XCF", (b"gimp xcf",)),
    ("SGI", (b"\x01\xda",)),
    ("MSP", (b"DanM", b"LinS")),
)
ISO_MEDIA_BRANDS: dict[bytes, str] = {
    b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"hevc": "HEIF",
    b"hevx": "HEIF", b"heim": "HEIF", b"heis": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF",
}
PNM_KINDS = frozenset(b"1234567fF")
WHITESPACE = frozenset(b" \t\r\n")


def _sniff_structured_format(data: bytes) -> str | None:
    """Refused formats whose signature is more than a fixed prefix (or sits at the end)."""
    head = data[:32]
    if data.endswith(b"TRUEVISION-XFILE.\x00"):
        return "TGA"  # checked before ICO/CUR: a TGA header can start with the same four bytes
    if len(head) >= 6 and head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and head[4:6] != b"\x00\x00":
        return "ICO" if head[2] == 1 else "CUR"
    if len(head) >= 3 and head[0] == ord("P") and head[1] in PNM_KINDS and head[2] in WHITESPACE:
        return "PPM"
    if len(head) >= 4 and head[0] == 0x0A and head[1] in (0, 2, 3, 4, 5) and head[2] == 1 and head[3] in (1, 2, 4, 8):
        return "PCX"
    if head[4:8] == b"ftyp" and head[8:12] in ISO_MEDIA_BRANDS:
        return ISO_MEDIA_BRANDS[head[8:12]]
    if b"<svg" in data[:1024].lower():
        return "SVG"
    return None


def _sniff_refused_format(data: bytes) -> str | None:
    """Name a well-known image format outside the allowlist from its bytes alone, else None."""
    for format_name, magic_prefixes in REFUSED_MAGIC:
        if data.startswith(magic_prefixes):
            return format_name
    return _sniff_structured_format(data)


def _open_image(data: bytes) -> Image.Image:
    """Image.open restricted to ALLOWED_FORMATS; unknown or refused bytes raise GatewayError."""
    try:
        return Image.open(BytesIO(data), formats=PILLOW_OPEN_FORMATS)
    except Image.UnidentifiedImageError:
        refused_format = _sniff_refused_format(data)
        if refused_format:
            raise errors.GatewayError(
                errors.UNSUPPORTED_FORMAT,
                f"{refused_format} images are not accepted; send one of {', '.join(ALLOWED_FORMATS)}",
            ) from None
        raise errors.GatewayError(
            errors.IMAGE_UNREADABLE, "the bytes are not a readable image in an accepted format",
        ) from None


def _effective_pixel_limit(max_pixels: int) -> int:
    """max_pixels, capped at Pillow's bomb-warning threshold.

    warnings.catch_warnings is process-global (not thread-safe before Python 3.14), so in a
    threaded web tier the "bomb warning is an error" filter can be briefly absent; checking
    against the same threshold ourselves keeps the outcome independent of that race.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, pillow_limit) if pillow_limit else max_pixels


def _check_pixel_count(image: Image.Image, max_pixels: int) -> None:
    """Refuse an image whose header declares more than max_pixels pixels."""
    width, height = image.size
    if width * height > max_pixels:
        raise errors.GatewayError(
            errors.IMAGE_TOO_LARGE,
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
        )


def _apply_exif_orientation(image: Image.Image) -> None:
    """Rotate/flip in place per the EXIF Orientation tag; corrupt EXIF metadata is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except UNREADABLE_ERRORS:
        pass  # the pixels decoded fine; a broken metadata block should not reject the photo


def _high_bit_depth_band(pixels: np.ndarray, mode: str, scale: float) -> np.ndarray:
    if mode == "F":
        pixels = np.nan_to_num(pixels.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0) * scale
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    # I;16* holds 0..65535; "I" from 16-bit sources too: keep the high byte, as Pillow does for RGB;16.
    return np.clip(pixels.astype(np.int64) >> 8, 0, 255).astype(np.uint8)


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float greyscale to 8-bit L (Pillow's own convert clips), 256 rows
    at a time: whole-image int64/float temporaries took 920 MB for a 40 MP TIFF (found by fuzz/)."""
    def band(top: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, image.width, min(top + 256, image.height))))

    tops = range(0, image.height, 256)
    scale = 1.0
    if image.mode == "F":   # float images in [0, 1] are scaled to 0..255
        high = max((np.nan_to_num(band(top), nan=0.0, posinf=255.0, neginf=0.0).max(initial=0.0)
                    for top in tops if image.width), default=2.0)
        scale = 255.0 if high <= 1.0 else 1.0
    pixels = np.empty((image.height, image.width), np.uint8)
    for top in tops:
        pixels[top:top + 256] = _high_bit_depth_band(band(top), image.mode, scale)
    return Image.fromarray(pixels)


def _composite_on_white(rgba_image: Image.Image) -> Image.Image:
    """Blend an RGBA image over a white background; returns RGB."""
    background = Image.new("RGB", rgba_image.size, (255, 255, 255))
    background.paste(rgba_image, mask=rgba_image)
    return background


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB: alpha/transparency over white, high bit depth scaled."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = _high_bit_depth_to_l(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        # no copy of an RGBA image: a 40 MP RGBA PNG peaked at 456 MB with it, 305 MB without (fuzz/)
        return _composite_on_white(image if image.mode == "RGBA" else image.convert("RGBA"))
    if image.mode == "RGB":
        return image
    return image.convert("RGB")  # L, 1, P, CMYK (Pillow undoes Adobe-inverted CMYK), YCbCr ...


def _decode_checked(data: bytes, max_pixels: int, draft_size: int | None, deadline: float | None) -> Image.Image:
    """Open, size-check, optionally draft, load, orient and convert; raises Pillow's errors."""
    pixel_limit = _effective_pixel_limit(max_pixels)
    image = _open_image(data)
    if image.format == "WEBP":
        pixel_limit = min(pixel_limit, WEBP_MAX_PIXELS)
    _check_pixel_count(image, pixel_limit)
    if draft_size and image.format in JPEG_FORMATS:
        image.draft(None, (draft_size, draft_size))  # DCT scaling: both sides stay >= draft_size
    with _decode_slot(image, deadline):
        image.load()
        _check_pixel_count(image, pixel_limit)  # some formats (GIF) only know the frame size now
        _apply_exif_orientation(image)
        return _reduced(_to_rgb(image), draft_size)


def _reduced(image: Image.Image, draft_size: int | None) -> Image.Image:
    """A large image reduced by the whole factor that keeps its shorter side >= REDUCING_GAP x draft_size
    (the step resize(reducing_gap=...) would take first anyway), inside the decode slot, so only the
    small copy outlives it; other images as they are."""
    if not draft_size or image.width * image.height <= LARGE_DECODE_PIXELS:
        return image
    factor = int(min(image.size) / (draft_size * REDUCING_GAP))
    return image.reduce(factor) if factor >= 2 else image


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None,
                 deadline: float | None = None) -> Image.Image:
    """Decode upload bytes to a fully loaded RGB image, or raise errors.GatewayError.

    Accepts ALLOWED_FORMATS only; takes the first frame of animations (frames.py: others), applies EXIF orientation,
    composites transparency on white and scales 16-bit images to 8 bits. Refuses more than
    max_pixels pixels (IMAGE_TOO_LARGE; never more than Pillow's Image.MAX_IMAGE_PIXELS) before
    decoding any pixel data. With draft_size, a JPEG at least twice draft_size on both sides is
    decoded at a reduced DCT scale (1/2, 1/4, 1/8) whose shorter side stays >= draft_size. The decode
    waits for its pixels of the process' budget until `deadline` (time.time()), else SERVER_BUSY.
    """
    if not data:
        raise errors.GatewayError(errors.EMPTY_IMAGE, "the image is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode_checked(data, max_pixels, draft_size, deadline)
        except errors.GatewayError:
            raise
        except BOMB_ERRORS as exc:
            raise errors.GatewayError(errors.IMAGE_TOO_LARGE, f"the image is too large: {exc}") from None
        except UNREADABLE_ERRORS as exc:
            raise errors.GatewayError(
                errors.IMAGE_UNREADABLE, f"the image could not be decoded ({type(exc).__name__}: {exc})",
            ) from None


def _center_crop_box(width: int, height: int, size: int, crop_fraction: float) -> tuple[float, float, float, float]:
    """The source-pixel box that becomes the size x size center crop after scaling the
    shorter side to round(size / crop_fraction)."""
    resized_short_side = round(size / crop_fraction)
    source_pixels_per_output = min(width, height) / resized_short_side
    crop_extent = size * source_pixels_per_output
    left = (width - crop_extent) / 2
    top = (height - crop_extent) / 2
    return (left, top, left + crop_extent, top + crop_extent)


def _validate_prepare_args(size: int, crop_fraction: float, resample: str) -> Image.Resampling:
    """Check the preprocessing settings (a server configuration error, not a client one)."""
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {resample!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    return RESAMPLE_FILTERS[resample]


def resize_center_crop(image: Image.Image, *, size: int, crop_fraction: float, resample: str) -> np.ndarray:
    """Scale an RGB image's shorter side to round(size / crop_fraction) and keep the size x size
    center, as a read-only C-contiguous uint8 (size, size, 3) array.

    Resize and crop are one Pillow resize over the crop's source box, so the margin that is cut
    away is never resampled; the filter still reads just past the box, as resize-then-crop would.
    """
    resample_filter = _validate_prepare_args(size, crop_fraction, resample)
    crop_box = _center_crop_box(image.width, image.height, size, crop_fraction)
    model_input = image.resize((size, size), resample_filter, box=crop_box, reducing_gap=REDUCING_GAP)
    return np.ascontiguousarray(np.asarray(model_input, dtype=np.uint8))


def prepare_image(data: bytes, spec: ModelSpec, *, max_pixels: int, deadline: float | None = None) -> np.ndarray:
    """Decode upload bytes into the model's input: a C-contiguous uint8 (size, size, 3) RGB array.

    decode_image (JPEGs drafted to the resize target), then resize_center_crop: the shorter side
    becomes round(spec.input_size / spec.crop_fraction) with the spec's filter ("bilinear" or
    "bicubic") and the centre square is kept. Raises errors.GatewayError for bad input and
    ValueError for bad settings (checked before any decoding). The array is read-only.
    """
    size, crop_fraction, resample = spec.input_size, spec.crop_fraction, spec.resample
    _validate_prepare_args(size, crop_fraction, resample)
    draft_size = round(size / crop_fraction) if spec.resize == "center_crop" else size
    image = decode_image(data, max_pixels=max_pixels, draft_size=draft_size, deadline=deadline)
    return fit_square(image, spec)


def fit_square(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """A classifier's (size, size, 3) uint8 input from a decoded image by the spec's resize: center_crop
    (resize_center_crop), or squash / letterbox as a repository model's config.json asks (models/resizing.py)."""
    if spec.resize == "center_crop":
        return resize_center_crop(image, size=spec.input_size, crop_fraction=spec.crop_fraction, resample=spec.resample)
    return resizing.fit(image, spec.input_size, spec.input_size, spec.resize, spec.resample)[0]


def working_image(image: Image.Image, max_side: int) -> tuple[np.ndarray, dict]:
    """A detector's input: the decoded image shrunk so its longest side is at most `max_side`, and
    the params that map its boxes back to the original pixels (models/geometry.py)."""
    width, height, scale = working_size(image.width, image.height, max_side)
    shrunk = image if scale == 1.0 else image.resize((width, height), Image.Resampling.BILINEAR,
                                                     reducing_gap=REDUCING_GAP)
    pixels = np.ascontiguousarray(np.asarray(shrunk, dtype=np.uint8))
    return pixels, {"scale": scale, "original_size": [image.width, image.height]}


def crop_box(box: list[float], margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A detection's box grown by `margin` of its width and height on every side, in whole pixels
    inside the image."""
    x_min, y_min, x_max, y_max = box
    grow_x, grow_y = (x_max - x_min) * margin, (y_max - y_min) * margin
    left, top = max(0, math.floor(x_min - grow_x)), max(0, math.floor(y_min - grow_y))
    right, bottom = min(size[0], math.ceil(x_max + grow_x)), min(size[1], math.ceil(y_max + grow_y))
    return left, top, max(right, left + 1), max(bottom, top + 1)
