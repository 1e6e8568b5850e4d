"""One test per fuzzing finding (issue 17): the input, rebuilt here, now keeps the promise.

The promise: an input gives the model's array or a GatewayError, within 2 s and 500 MB. Each input is
a few KB to 250 KB that decodes to ~40 MP, just under MAX_IMAGE_PIXELS; each runs in a fresh Python
process, whose peak RSS growth and CPU time are the measure (a shared machine slows the wall clock,
not the CPU time). Before the fixes in imaging.py: 760 MB (16-bit PNG), 920 MB and 2.15 s (32-bit
TIFF), 805 MB (float TIFF), 607 MB (WebP).
"""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT

MEMORY_LIMIT_MB = 500
CPU_LIMIT_S = 2.0
SIDE = 6300                    # 6300 x 6300 = 39.7 MP < MAX_IMAGE_PIXELS (40 M)

MEASURE = """
import json, resource, sys
from image_gateway import imaging
from image_gateway import models
from image_gateway.errors import GatewayError
data = open(sys.argv[1], "rb").read()
spec = models.get_spec("efficientnet_lite0")
usage = lambda: resource.getrusage(resource.RUSAGE_SELF)
before = usage()
try:
    outcome = list(imaging.prepare_image(data, spec, max_pixels=40_000_000).shape)
except GatewayError as error:
    outcome = error.code
after = usage()
print(json.dumps({"outcome": outcome, "rss_mb": (after.ru_maxrss - before.ru_maxrss) / 1024,
                  "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}))
"""


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def measure(tmp_path, data: bytes) -> dict:
    path = tmp_path / "input"
    path.write_bytes(data)
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode, fmt, options", [
    ("I;16", "PNG", {"compress_level": 9}),                        # 77 KB: was 760 MB, 1.7 s
    ("I;16", "TIFF", {"compression": "tiff_adobe_deflate"}),       # 116 KB: was 770 MB
    ("I", "TIFF", {"compression": "tiff_adobe_deflate"}),          # 252 KB: was 920 MB, 2.15 s
    ("F", "TIFF", {"compression": "tiff_adobe_deflate"}),          # 252 KB: was 805 MB
])
def test_a_40_megapixel_high_bit_depth_image_is_scaled_in_bands(tmp_path, mode, fmt, options):
    """Finding 1: 16/32-bit and float greyscale were scaled to 8 bits through whole-image int64 and
    float32 temporaries (up to 8 bytes a pixel, several at once)."""
    found = measure(tmp_path, encoded(Image.new(mode, (SIDE, SIDE)), fmt, **options))
    assert found["outcome"] == [224, 224, 3]
    assert found["rss_mb"] <= MEMORY_LIMIT_MB and found["cpu_s"] <= CPU_LIMIT_S, found


def test_a_40_megapixel_transparent_png_is_composited_without_a_copy(tmp_path):
    """Finding 2 (within the limit, but the largest left): an RGBA image was copied before compositing."""
    found = measure(tmp_path, encoded(Image.new("RGBA", (SIDE, SIDE)), "PNG", compress_level=9))
    assert found["outcome"] == [224, 224, 3]
    assert found["rss_mb"] <= 400 and found["cpu_s"] <= CPU_LIMIT_S, found


def test_a_webp_over_25_megapixels_is_refused_before_decoding(tmp_path):
    """Finding 3: a 1.5 KB lossless WebP of 39 MP peaked at 607 MB inside Pillow's WebP decoder (libwebp's
    animation decoder keeps copies of the canvas), so WebP has its own cap, imaging.WEBP_MAX_PIXELS."""
    found = measure(tmp_path, encoded(Image.new("RGBA", (16383, 2400)), "WEBP", lossless=True))
    assert found["outcome"] == "IMAGE_TOO_LARGE"
    assert found["rss_mb"] <= 50, found
    below_the_cap = measure(tmp_path, encoded(Image.new("RGBA", (6000, 4100)), "WEBP", lossless=True))
    assert below_the_cap["outcome"] == [224, 224, 3]
    assert below_the_cap["rss_mb"] <= MEMORY_LIMIT_MB and below_the_cap["cpu_s"] <= CPU_LIMIT_S, below_the_cap


def test_a_content_length_with_a_non_ascii_digit_is_a_400_not_a_crash():
    """Found by fuzz/http_target.py in CI: '²5' passes str.isdigit() but not int()."""
    from image_gateway.front import http11
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: \xb25\r\n\r\n"
    with pytest.raises(http11.BadRequest) as refused:
        http11.parse_head(head[:-4])
    assert refused.value.status == 400
