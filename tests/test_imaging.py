"""imaging: every bad upload gets its documented error code; unusual valid images decode right.

Every input is generated here with Pillow/numpy; no fixture files.
"""
from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from image_gateway import errors, imaging
from image_gateway.models import ModelSpec

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
MAX_PIXELS = 50_000_000


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def prepare(data: bytes, *, size: int = 224, crop_fraction: float = 0.875,
            resample: str = "bilinear", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    spec = ModelSpec("test", size, crop_fraction, resample, ("a",))
    return imaging.prepare_image(data, spec, max_pixels=max_pixels)


def assert_model_input(pixels: np.ndarray, size: int = 224) -> None:
    assert pixels.shape == (size, size, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


def assert_colour(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 3) -> None:
    difference = np.abs(pixels.reshape(-1, 3).astype(int) - np.array(colour)).max()
    assert difference <= tolerance, f"expected {colour}, max difference {difference}"


def error_code_of(data: bytes, **kwargs) -> str:
    with pytest.raises(errors.GatewayError) as caught:
        prepare(data, **kwargs)
    return caught.value.code


def split_image(mode: str, size: tuple[int, int], left, right) -> Image.Image:
    """An image whose left half is `left` and right half is `right`."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit greyscale pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixel_rows = zlib.compress(b"\x00" * 1000)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixel_rows)
            + png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    return encode(split_image("RGB", (640, 480), RED, BLUE), "JPEG", quality=90)


# ---------------------------------------------------------------- bad input -> error codes

def test_empty_bytes_is_empty_image():
    assert error_code_of(b"") == "EMPTY_IMAGE"


@pytest.mark.parametrize("data", [
    np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    b"this is plain text, not an image\n" * 20,
    b'{"image": "not really"}',
], ids=["random", "text", "json"])
def test_non_image_bytes_are_unreadable(data):
    assert error_code_of(data) == "IMAGE_UNREADABLE"


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_image_is_unreadable(image_format):
    noise = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    complete = encode(Image.fromarray(noise), image_format)
    assert error_code_of(complete[: len(complete) // 2]) == "IMAGE_UNREADABLE"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("header", [
    b"\xff\xd8\xff\xe0",                       # JPEG SOI + APP0
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a\x10\x00\x10\x00\x00\x00\x00,\x00\x00\x00\x00\x10\x00\x10\x00\x00",  # 16x16 frame
    b"BM",
    b"II*\x00",                                # TIFF little-endian
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
], ids=["jpeg", "png", "gif", "bmp", "tiff", "webp"])
def test_allowed_format_header_with_garbage_body_is_unreadable(header):
    garbage = np.random.default_rng(2).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    assert error_code_of(header + garbage) == "IMAGE_UNREADABLE"


# Headers for refused formats that this Pillow build may not be able to write (or at all).
REFUSED_HEADERS = {
    "PSD": b"8BPS\x00\x01" + bytes(90),
    "HEIF": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
    "AVIF": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64),
    "SVG": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "QOI": b"qoif\x00\x00\x00\x20\x00\x00\x00\x20\x03\x00" + bytes(64),
    "DDS": b"DDS \x7c\x00\x00\x00" + bytes(120),
    "ICNS": b"icns\x00\x00\x01\x00" + bytes(64),
    "JPEG2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64),
}


def refused_samples() -> dict[str, bytes]:
    """Real files where this Pillow can write the format, else a realistic header."""
    image = Image.new("RGB", (32, 32), RED)
    samples = {f"{name} header": header for name, header in REFUSED_HEADERS.items()}
    for name in ["ICO", "PPM", "PCX", "TGA", "EPS", "PDF", "SGI", "JPEG2000", "DDS", "QOI", "ICNS", "AVIF"]:
        try:
            samples[f"{name} file"] = encode(image, name)
        except (KeyError, OSError, ValueError):
            assert name in REFUSED_HEADERS, f"Pillow cannot write {name}"
    samples["PPM file (greyscale PGM)"] = encode(image.convert("L"), "PPM")
    return samples


REFUSED_SAMPLES = refused_samples()


@pytest.mark.parametrize("name", sorted(REFUSED_SAMPLES))
def test_known_but_refused_format_is_unsupported_and_named(name):
    with pytest.raises(errors.GatewayError) as caught:
        prepare(REFUSED_SAMPLES[name])
    assert caught.value.code == "UNSUPPORTED_FORMAT"
    assert caught.value.status == 415
    assert name.split()[0] in caught.value.message


def test_refused_formats_never_reach_their_pillow_plugin(monkeypatch):
    def must_not_open(*args, **kwargs):
        raise AssertionError("a refused format's plugin was called")

    Image.init()
    for format_name, (_factory, accept) in list(Image.OPEN.items()):
        if format_name not in imaging.ALLOWED_FORMATS:
            monkeypatch.setitem(Image.OPEN, format_name, (must_not_open, accept))
    for name, data in REFUSED_SAMPLES.items():
        assert error_code_of(data) == "UNSUPPORTED_FORMAT", name


def test_png_bomb_claiming_30000_square_is_too_large():
    bomb = png_claiming(30000, 30000)
    assert len(bomb) < 200
    with pytest.raises(errors.GatewayError) as caught:
        prepare(bomb, max_pixels=10**10)  # Pillow's own bomb error is the guard here
    assert caught.value.code == "IMAGE_TOO_LARGE"
    assert caught.value.status == 413


def test_header_over_max_pixels_is_refused_before_decoding():
    # 5000x5000 with a body that could never decode: the header check must answer first.
    assert error_code_of(png_claiming(5000, 5000), max_pixels=1_000_000) == "IMAGE_TOO_LARGE"


def test_bomb_warning_range_is_an_error_and_filters_are_restored():
    filters_before = list(warnings.filters)
    over_warning_limit = png_claiming(10_000, 9_500)  # 95M: above Pillow's 89M warning limit
    assert error_code_of(over_warning_limit, max_pixels=10**10) == "IMAGE_TOO_LARGE"
    assert warnings.filters == filters_before


def test_normal_image_over_a_small_max_pixels_is_too_large(photo_jpeg):
    assert error_code_of(photo_jpeg, max_pixels=640 * 480 - 1) == "IMAGE_TOO_LARGE"
    assert_model_input(prepare(photo_jpeg, max_pixels=640 * 480))


# ---------------------------------------------------------------- settings validation

@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_known_resample_names_work(photo_jpeg, resample):
    assert_model_input(prepare(photo_jpeg, resample=resample))


@pytest.mark.parametrize("settings", [
    {"resample": "lanczos"}, {"resample": "BILINEAR"}, {"resample": ""},
    {"crop_fraction": 0.0}, {"crop_fraction": 1.5}, {"size": 0},
])
def test_bad_settings_raise_value_error(photo_jpeg, settings):
    with pytest.raises(ValueError):
        prepare(photo_jpeg, **settings)


# ---------------------------------------------------------------- geometry

def framed_png() -> bytes:
    """256x256 green with a 16-pixel red border."""
    framed = Image.new("RGB", (256, 256), RED)
    framed.paste(GREEN, (16, 16, 240, 240))
    return encode(framed, "PNG")


def test_center_crop_removes_the_border_at_crop_fraction_0_875():
    # 256 * 0.875 = 224: a 16-pixel border is exactly what the crop cuts away.
    pixels = prepare(framed_png(), size=224, crop_fraction=0.875)
    assert_colour(pixels, GREEN, tolerance=0)


def test_crop_fraction_1_keeps_the_border():
    pixels = prepare(framed_png(), size=256, crop_fraction=1.0)
    assert_colour(pixels[:16, :16], RED, tolerance=0)
    assert_colour(pixels[16:240, 16:240], GREEN, tolerance=0)


def test_non_square_image_keeps_the_center():
    wide = Image.new("RGB", (800, 200), BLUE)
    wide.paste(RED, (300, 0, 500, 200))  # the 200x200 middle square
    pixels = prepare(encode(wide, "PNG"), size=64, crop_fraction=1.0)
    # the outermost columns blend with blue: the filter's support reaches past the crop, as it
    # would when resizing the whole image and cropping afterwards
    assert_colour(pixels[:, 2:-2], RED, tolerance=0)
    assert pixels[:, 0, 2].max() > 0


@pytest.mark.parametrize("size", [(1, 1), (4000, 10), (10, 4000), (3, 7)])
def test_tiny_and_extreme_aspect_images_are_upscaled(size):
    image = Image.new("RGB", size, (12, 34, 56))
    pixels = prepare(encode(image, "PNG"))
    assert_model_input(pixels)
    assert_colour(pixels, (12, 34, 56), tolerance=0)


def test_very_wide_image_crops_its_middle():
    wide = Image.new("RGB", (4000, 10), BLUE)
    wide.paste(GREEN, (1990, 0, 2010, 10))
    pixels = prepare(encode(wide, "PNG"), size=32, crop_fraction=1.0)
    assert_colour(pixels, GREEN, tolerance=0)


# ---------------------------------------------------------------- colour modes

def test_grayscale():
    assert_colour(prepare(encode(Image.new("L", (100, 80), 77), "PNG")), (77, 77, 77), tolerance=0)


def test_bilevel():
    image = split_image("1", (100, 100), 0, 1)
    pixels = prepare(encode(image, "PNG"), size=100, crop_fraction=1.0)
    assert_colour(pixels[:, :40], (0, 0, 0), tolerance=0)
    assert_colour(pixels[:, 60:], WHITE, tolerance=0)


def test_la_alpha_is_composited_on_white():
    image = split_image("LA", (100, 100), (0, 0), (0, 255))
    pixels = prepare(encode(image, "PNG"), size=100, crop_fraction=1.0)
    assert_colour(pixels[:, :40], WHITE, tolerance=0)
    assert_colour(pixels[:, 60:], (0, 0, 0), tolerance=0)


def test_rgba_transparent_becomes_white_and_half_alpha_blends():
    image = split_image("RGBA", (100, 100), (255, 0, 0, 0), (0, 0, 255, 255))
    image.paste((0, 0, 0, 128), (0, 0, 100, 10))
    pixels = prepare(encode(image, "PNG"), size=100, crop_fraction=1.0)
    assert_colour(pixels[20:, :40], WHITE, tolerance=0)
    assert_colour(pixels[20:, 60:], BLUE, tolerance=0)
    assert_colour(pixels[:8, 20:80], (127, 127, 127), tolerance=1)


@pytest.mark.parametrize("image_format", ["PNG", "GIF"])
def test_palette_with_transparency(image_format):
    palette_image = Image.new("P", (100, 100), 0)
    palette_image.putpalette([0, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    palette_image.paste(1, (50, 0, 100, 100))
    pixels = prepare(encode(palette_image, image_format, transparency=0), size=100, crop_fraction=1.0)
    assert_colour(pixels[:, :40], WHITE, tolerance=0)
    assert_colour(pixels[:, 60:], GREEN, tolerance=0)


def test_rgb_png_with_colour_key_transparency():
    image = split_image("RGB", (100, 100), (1, 2, 3), BLUE)
    pixels = prepare(encode(image, "PNG", transparency=(1, 2, 3)), size=100, crop_fraction=1.0)
    assert_colour(pixels[:, :40], WHITE, tolerance=0)
    assert_colour(pixels[:, 60:], BLUE, tolerance=0)


def test_cmyk_jpeg_has_the_right_colours():
    # Pillow writes CMYK JPEGs Adobe-style (inverted); decoding must undo it.
    image = split_image("CMYK", (128, 128), (0, 255, 255, 0), (255, 255, 0, 0))
    pixels = prepare(encode(image, "JPEG", quality=95), size=128, crop_fraction=1.0)
    assert_colour(pixels[:, 10:50], RED, tolerance=8)
    assert_colour(pixels[:, 78:118], BLUE, tolerance=8)


@pytest.mark.parametrize("image_format", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(image_format):
    mid_grey = np.full((64, 64), 0x8080, dtype=np.uint16)
    mid_grey[:, 32:] = 0xFFFF
    pixels = prepare(encode(Image.fromarray(mid_grey), image_format), size=64, crop_fraction=1.0)
    assert_colour(pixels[:, :28], (128, 128, 128), tolerance=1)
    assert_colour(pixels[:, 36:], WHITE, tolerance=0)


def test_32_bit_int_and_float_images():
    int_image = Image.fromarray(np.full((32, 32), 0x4000, dtype=np.int32))
    assert_colour(prepare(encode(int_image, "TIFF")), (64, 64, 64), tolerance=1)
    float_image = Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32))
    assert_colour(prepare(encode(float_image, "TIFF")), (128, 128, 128), tolerance=1)


# ---------------------------------------------------------------- orientation, frames, formats

def test_exif_orientation_6_is_applied():
    stored = split_image("RGB", (200, 100), RED, BLUE)  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: left half goes on top
    pixels = prepare(encode(stored, "JPEG", exif=exif, quality=95), size=64, crop_fraction=1.0)
    assert_colour(pixels[:28], RED, tolerance=10)
    assert_colour(pixels[36:], BLUE, tolerance=10)
    decoded = imaging.decode_image(encode(stored, "JPEG", exif=exif), max_pixels=MAX_PIXELS)
    assert decoded.size == (100, 200)


def animation(image_format: str, **options) -> bytes:
    frames = [Image.new("RGB", (64, 48), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], image_format, save_all=True, append_images=frames[1:],
                  duration=100, loop=0, **options)


@pytest.mark.parametrize("image_format, options", [
    ("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {}),
], ids=["gif", "webp", "apng"])
def test_animation_gives_its_first_frame(image_format, options):
    data = animation(image_format, **options)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert_colour(prepare(data), RED, tolerance=2)


@pytest.mark.parametrize("image_format, options", [
    ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}), ("WEBP", {"lossless": True}),
    ("WEBP", {"quality": 90}), ("GIF", {}), ("PNG", {}), ("JPEG", {"quality": 95}),
])
def test_allowed_formats_decode(image_format, options):
    data = encode(Image.new("RGB", (120, 90), (40, 160, 220)), image_format, **options)
    pixels = prepare(data)
    assert_model_input(pixels)
    assert_colour(pixels, (40, 160, 220), tolerance=4 if image_format in ("JPEG", "WEBP", "GIF") else 0)


def test_mpo_phone_jpeg_gives_its_first_picture():
    pictures = [Image.new("RGB", (64, 64), RED), Image.new("RGB", (64, 64), BLUE)]
    data = encode(pictures[0], "MPO", save_all=True, append_images=pictures[1:], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert_colour(prepare(data), RED, tolerance=4)


# ---------------------------------------------------------------- decode_image and draft

def test_decode_image_returns_a_loaded_rgb_image(photo_jpeg):
    decoded = imaging.decode_image(photo_jpeg, max_pixels=MAX_PIXELS)
    assert decoded.mode == "RGB"
    assert decoded.size == (640, 480)
    assert decoded.getpixel((10, 10))[0] > 240


def smooth_photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [127 + 120 * np.sin(x / 97.0), 127 + 120 * np.cos(y / 61.0),
                127 + 120 * np.sin((x + y) / 143.0)]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


@pytest.fixture(scope="module")
def large_jpeg() -> bytes:
    return encode(smooth_photo(4000, 3000), "JPEG", quality=90)


def test_draft_decodes_large_jpeg_at_reduced_scale(large_jpeg):
    drafted = imaging.decode_image(large_jpeg, max_pixels=MAX_PIXELS, draft_size=256)
    assert drafted.mode == "RGB"
    assert min(drafted.size) >= 256
    assert drafted.size == (500, 375)  # libjpeg 1/8 scale
    full = imaging.decode_image(large_jpeg, max_pixels=MAX_PIXELS)
    assert full.size == (4000, 3000)


def test_draft_is_not_used_when_the_jpeg_is_already_small(photo_jpeg):
    drafted = imaging.decode_image(photo_jpeg, max_pixels=MAX_PIXELS, draft_size=400)
    assert drafted.size == (640, 480)


def test_draft_result_is_close_to_full_decode(large_jpeg):
    drafted = prepare(large_jpeg)
    full_image = imaging.decode_image(large_jpeg, max_pixels=MAX_PIXELS)
    full = imaging.resize_center_crop(full_image, size=224, crop_fraction=0.875, resample="bilinear")
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 2.0


def test_max_pixels_applies_to_the_original_size_not_the_draft(large_jpeg):
    with pytest.raises(errors.GatewayError) as caught:
        imaging.decode_image(large_jpeg, max_pixels=4000 * 3000 - 1, draft_size=256)
    assert caught.value.code == "IMAGE_TOO_LARGE"


def test_concurrent_requests_keep_bomb_protection():
    """catch_warnings is process-global: threads must still refuse every bomb and decode the rest."""
    bomb_over_warning_limit = png_claiming(10_000, 9_500)
    valid = encode(Image.new("RGB", (300, 200), (9, 99, 199)), "PNG")

    def outcome(data: bytes) -> str:
        try:
            return "ok" if tuple(prepare(data, max_pixels=10**10)[0, 0]) == (9, 99, 199) else "wrong"
        except errors.GatewayError as error:
            return error.code

    inputs = [bomb_over_warning_limit, valid] * 100
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(outcome, inputs))
    assert outcomes == ["IMAGE_TOO_LARGE", "ok"] * 100


# ------------------------------------------------------------------ the large-decode bound
def _large_png() -> bytes:
    """A 4000 x 3000 (12 MP, over LARGE_DECODE_PIXELS) PNG of a few KB."""
    return encode(Image.new("RGB", (4000, 3000), (30, 90, 160)), "PNG")


def test_large_images_decode_at_most_max_large_decodes_at_a_time(monkeypatch):
    imaging.bound_decode_memory(2)
    inside, most, lock = [0], [0], threading.Lock()
    orient = imaging._apply_exif_orientation

    def counting(image):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.2)              # every decode overlaps the others
        with lock:
            inside[0] -= 1
        return orient(image)

    monkeypatch.setattr(imaging, "_apply_exif_orientation", counting)
    data = _large_png()
    with ThreadPoolExecutor(6) as pool:
        sizes = list(pool.map(lambda _: imaging.decode_image(data, max_pixels=40_000_000).size, range(6)))
    assert sizes == [(4000, 3000)] * 6
    assert most[0] == 2


def test_a_large_image_that_finds_no_slot_is_refused_busy_and_small_ones_pass(monkeypatch, photo_jpeg):
    imaging.bound_decode_memory(1)
    monkeypatch.setattr(imaging, "LARGE_DECODE_WAIT_S", 0.2)
    assert imaging._large_decodes.acquire(timeout=1)          # another request holds the only slot
    try:
        with pytest.raises(errors.GatewayError) as refused:
            imaging.decode_image(_large_png(), max_pixels=40_000_000)
        assert refused.value.error is errors.SERVER_BUSY and refused.value.headers == {"Retry-After": "1"}
        assert_model_input(prepare(photo_jpeg))                 # a normal photo does not wait
    finally:
        imaging._large_decodes.release()
    assert imaging.decode_image(_large_png(), max_pixels=40_000_000).size == (4000, 3000)
    imaging.bound_decode_memory(2)


MEMORY_AFTER_LARGE_DECODES = """
import io, sys, threading
from concurrent.futures import ThreadPoolExecutor
from PIL import Image
from image_gateway import imaging
from image_gateway import models
if sys.argv[1] == "bounded":
    imaging.bound_decode_memory(2)
image = Image.new("RGBA", (6400, 6200), (10, 20, 30, 128))
buffer = io.BytesIO(); image.save(buffer, "PNG", compress_level=1); data = buffer.getvalue(); del image
spec = models.get_spec("efficientnet_lite0")
with ThreadPoolExecutor(6) as pool:
    list(pool.map(lambda _: imaging.prepare_image(data, spec, max_pixels=40_000_000), range(6)))
print(int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20)
"""


def test_memory_of_large_decodes_goes_back_to_the_os():
    """Six threads decode 40 MP RGBA PNGs: with bound_decode_memory (what the web tier calls) the process
    ends near where it started; glibc alone kept about a gigabyte in its per-thread arenas."""
    def rss_after(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", MEMORY_AFTER_LARGE_DECODES, mode], capture_output=True,
                              text=True, timeout=120, check=True)
        return int(done.stdout.split()[-1])

    bounded, unbounded = rss_after("bounded"), rss_after("glibc")
    assert bounded < 200, f"{bounded} MiB resident after the decodes"
    assert unbounded > bounded + 300, f"glibc alone kept {unbounded} MiB (bounded {bounded}): the check is moot"
