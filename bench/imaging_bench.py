"""Time the JPEG decode of imaging.prepare_image: Pillow's draft path against simplejpeg (libjpeg-turbo).

    python -m bench.imaging_bench [--repeat 30] [--json PATH] [--scales]

Inputs: the real photos in tests/data/*.jpg, one of them (rocket) scaled to 3000x2000 and 4000x3000
(quality 90), and a 1000x1000 PNG. Per input, the median CPU ms of one image over --repeat rounds,
the paths interleaved so that other load on the machine hits each alike:

  pillow   imaging.prepare_image as shipped: Pillow's draft (1/2, 1/4, 1/8), then the resize
  turbo    header read by Pillow (as the checks need), simplejpeg at the same DCT scale, the same
           resize: identical pixels, Pillow's decoder swapped for simplejpeg's
  any_m8   the same at the smallest M/8 scale (1/8 ... 7/8) not below the resize target: fewer
           pixels to resize, different pixels
  full     a full Pillow decode (no draft), then the same resize

and max|diff| of the turbo and any_m8 model inputs against pillow's. --scales adds simplejpeg's
decode time at each M/8 for the 3000-px photo. Without simplejpeg installed (`pip install
simplejpeg==1.9.0`; the gateway does not use it, see bench/README.md) the turbo columns are the
pillow path. The geometry (size, crop, filter) is the default model's unless flags say otherwise.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.system import machine_info
from image_gateway import imaging, models
from image_gateway import settings as settings_module

try:
    import simplejpeg
except ImportError:     # the turbo columns then repeat the pillow path
    simplejpeg = None

MAX_PIXELS = 100_000_000
PHOTO_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
PATHS = ("pillow", "turbo", "any_m8", "full")


def inputs() -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of every input: the real photos, two large JPEGs and a PNG."""
    photos = [(path.name, path.read_bytes()) for path in sorted(PHOTO_DIR.glob("*.jpg"))]
    rocket = Image.open(PHOTO_DIR / "rocket.jpg").convert("RGB")
    for width, height in ((3000, 2000), (4000, 3000)):
        photos.append((f"rocket {width}x{height}", encode(rocket.resize((width, height), Image.Resampling.BICUBIC),
                                                          "JPEG", quality=90)))
    photos.append(("rocket 1000x1000 PNG", encode(rocket.resize((1000, 1000)), "PNG")))
    return photos


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def path_functions(spec: models.ModelSpec) -> dict[str, Callable[[bytes], np.ndarray]]:
    """The four ways to turn upload bytes into the model's input (see the module's docstring)."""
    target = round(spec.input_size / spec.crop_fraction)

    def resize(image: Image.Image) -> np.ndarray:
        return imaging.resize_center_crop(image, size=spec.input_size, crop_fraction=spec.crop_fraction,
                                          resample=spec.resample)

    def pillow(data: bytes) -> np.ndarray:
        return imaging.prepare_image(data, spec, max_pixels=MAX_PIXELS)

    def turbo_at(data: bytes, side: Callable[[int, int], int]) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as header:
            if simplejpeg is None or header.format != "JPEG" or header.mode not in ("RGB", "L"):
                return pillow(data)
            width, height = header.size
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=side(width, height),
                                        min_height=side(height, width))
        return resize(Image.fromarray(pixels))

    def turbo(data: bytes) -> np.ndarray:   # Pillow draft's scale 1/D: ceil(side / D)
        return turbo_at(data, lambda side, other: -(-side // draft_denominator(side, other, target)))

    def any_m8(data: bytes) -> np.ndarray:  # simplejpeg's own choice: the smallest M/8 reaching target
        return turbo_at(data, lambda side, other: target)

    def full(data: bytes) -> np.ndarray:
        return resize(imaging.decode_image(data, max_pixels=MAX_PIXELS))

    return {"pillow": pillow, "turbo": turbo, "any_m8": any_m8, "full": full}


def draft_denominator(width: int, height: int, draft_size: int) -> int:
    """D of the DCT scale 1/D that Pillow's JPEG draft picks: the largest of 8, 4, 2 with both sides
    at least D * draft_size, else 1."""
    ratio = min(width, height) // draft_size
    return next((d for d in (8, 4, 2) if ratio >= d), 1)


def interleaved_cpu_ms(functions: dict[str, Callable[[bytes], object]], data: bytes, repeat: int) -> dict:
    """{name: median CPU ms of functions[name](data)}, one call of each per round, after a warm-up."""
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function(data)
    for _ in range(repeat):
        for name, function in functions.items():
            started = time.process_time()
            function(data)
            timings[name].append(1000 * (time.process_time() - started))
    return {name: round(statistics.median(values), 3) for name, values in timings.items()}


def bench_input(name: str, data: bytes, functions: dict, repeat: int) -> dict:
    """One input's row: its size, each path's ms, and how far turbo and any_m8 are from pillow."""
    with Image.open(io.BytesIO(data)) as image:
        width, height, image_format = *image.size, image.format
    row = {"input": name, "format": image_format, "size": [width, height], "kib": round(len(data) / 1024, 1),
           "ms": interleaved_cpu_ms(functions, data, repeat)}
    reference = functions["pillow"](data).astype(np.int16)
    for path in ("turbo", "any_m8"):
        row[f"max_diff_{path}"] = int(np.abs(functions[path](data).astype(np.int16) - reference).max())
    return row


def scale_timings(data: bytes, repeat: int) -> dict[str, float]:
    """simplejpeg's decode alone at each DCT scale M/8 (median CPU ms)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    functions = {f"{m}/8": (lambda d, m=m: simplejpeg.decode_jpeg(
        d, colorspace="RGB", min_width=-(-width * m // 8), min_height=-(-height * m // 8))) for m in range(1, 9)}
    return interleaved_cpu_ms(functions, data, repeat)


def summary(rows: list[dict]) -> dict:
    """Mean ms per path over the real photos, and the speed-up of turbo over pillow."""
    real = [row for row in rows if row["input"].endswith(".jpg")]
    mean = {path: round(float(np.mean([row["ms"][path] for row in real])), 3) for path in PATHS}
    return {"real_photos_mean_ms": mean, "turbo_speedup_real_photos": round(mean["pillow"] / mean["turbo"], 3)}


def print_rows(rows: list[dict]) -> None:
    print(f"{'input':<22} {'size':>10} {'KiB':>6} " + " ".join(f"{p:>8}" for p in PATHS)
          + "  max|diff| turbo any_m8   (CPU ms per image)")
    for row in rows:
        size = "x".join(map(str, row["size"]))
        print(f"{row['input']:<22} {size:>10} {row['kib']:>6.0f} "
              + " ".join(f"{row['ms'][p]:>8.2f}" for p in PATHS)
              + f"  {row['max_diff_turbo']:>15} {row['max_diff_any_m8']:>6}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.imaging_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--model", default=settings_module.Settings().model, help="whose input geometry to use")
    parser.add_argument("--size", type=int)
    parser.add_argument("--crop-fraction", type=float)
    parser.add_argument("--resample", choices=sorted(imaging.RESAMPLE_FILTERS))
    parser.add_argument("--scales", action="store_true", help="also time simplejpeg at each M/8 (3000-px photo)")
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args(argv)
    default = models.get_spec(args.model)
    spec = models.ModelSpec("imaging_bench", args.size or default.input_size,
                            args.crop_fraction or default.crop_fraction, args.resample or default.resample, labels=())
    machine = machine_info()
    print(f"{machine['cpu_model']} x{machine['nproc']}, Python {platform.python_version()}, Pillow "
          f"{machine['pillow']}, simplejpeg {getattr(simplejpeg, '__version__', None)}; size "
          f"{spec.input_size}, crop {spec.crop_fraction}, {spec.resample}; median of {args.repeat}")
    functions = path_functions(spec)
    rows = [bench_input(name, data, functions, args.repeat) for name, data in inputs()]
    print_rows(rows)
    result = {"machine": machine, "spec": [spec.input_size, spec.crop_fraction, spec.resample], "rows": rows,
              **summary(rows)}
    print(f"real photos, mean ms: {result['real_photos_mean_ms']}; turbo {result['turbo_speedup_real_photos']}x")
    if args.scales and simplejpeg is not None:
        result["decode_ms_by_scale_3000px"] = scale_timings(dict(inputs())["rocket 3000x2000"], args.repeat)
        print(f"simplejpeg decode alone, 3000x2000, CPU ms by scale: {result['decode_ms_by_scale_3000px']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
