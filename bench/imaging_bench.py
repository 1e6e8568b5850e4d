"""Time imaging.prepare_image per request-sized image, with and without JPEG draft decoding.

    python -m bench.imaging_bench [--repeat 20] [--size 224] [--crop-fraction 0.875]

Inputs are generated here from scikit-image's astronaut photo (a synthetic one without
scikit-image), scaled. For each image it prints
the median ms per image with draft (what the web tier runs) and with a full decode, and the mean
absolute pixel difference between the two 224x224 results.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

import imaging
from models import ModelSpec

MAX_PIXELS = 100_000_000


def source_photo() -> Image.Image:
    """scikit-image's astronaut photo, or a smooth synthetic one where scikit-image is missing."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        y, x = np.mgrid[0:512, 0:512].astype(np.float32)
        channels = [127 + 120 * np.sin(x / 23.0), 127 + 120 * np.cos(y / 17.0), 127 + 120 * np.sin((x + y) / 41.0)]
        return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))
    return Image.fromarray(skimage_data.astronaut())


def encode_photo(width: int, height: int, image_format: str) -> bytes:
    """The source photo resized to width x height and encoded (JPEG at quality 90)."""
    photo = source_photo().resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def median_ms(work: Callable[[], object], repeat: int) -> float:
    """Median wall time of work() in milliseconds, after one warm-up call."""
    work()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def bench_one(name: str, encoded: bytes, args: argparse.Namespace) -> None:
    spec = ModelSpec("imaging_bench", args.size, args.crop_fraction, args.resample, labels=())

    def with_draft() -> np.ndarray:
        return imaging.prepare_image(encoded, spec, max_pixels=MAX_PIXELS)

    def full_decode() -> np.ndarray:
        image = imaging.decode_image(encoded, max_pixels=MAX_PIXELS, draft_size=None)
        return imaging.resize_center_crop(image, size=spec.input_size, crop_fraction=spec.crop_fraction,
                                          resample=spec.resample)

    draft_ms = median_ms(with_draft, args.repeat)
    full_ms = median_ms(full_decode, args.repeat)
    difference = np.abs(with_draft().astype(np.int16) - full_decode().astype(np.int16))
    print(f"{name:<22} {len(encoded) / 1024:>8.0f} KiB  draft {draft_ms:8.2f} ms  "
          f"full {full_ms:8.2f} ms  mean|diff| {difference.mean():.3f}  max|diff| {difference.max()}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.imaging_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--crop-fraction", type=float, default=0.875)
    parser.add_argument("--resample", default="bilinear", choices=sorted(imaging.RESAMPLE_FILTERS))
    args = parser.parse_args()
    print(f"Pillow {Image.__version__}, size {args.size}, crop {args.crop_fraction}, {args.resample}, "
          f"median of {args.repeat}")
    for name, width, height, image_format in [
        ("640x480 JPEG", 640, 480, "JPEG"),
        ("4000x3000 JPEG", 4000, 3000, "JPEG"),
        ("1000x1000 PNG", 1000, 1000, "PNG"),
    ]:
        bench_one(name, encode_photo(width, height, image_format), args)


if __name__ == "__main__":
    main()
