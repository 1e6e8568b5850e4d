"""Fuzz target: imaging.prepare_image (the default model's spec) on mutated image files.

    python -m fuzz.image_target -max_total_time=1800 fuzz/corpus/image

Every input must give the model's (224, 224, 3) uint8 array or raise errors.GatewayError, within
2 s and 500 MB. imaging, errors and Pillow's Python plugins are instrumented for coverage (Pillow's C
decoders are fuzzed by oss-fuzz; here their Python glue and our checks are).
"""
from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["image_gateway.imaging", "image_gateway.errors", "PIL",
                                         "image_gateway.models.geometry"]):
    from PIL import Image

    from image_gateway import errors, imaging

    Image.init()            # imports every format plugin now, inside the instrumented block

from fuzz import Finding, run  # noqa: E402
from image_gateway import models  # noqa: E402  (the spec only: no TensorFlow)

SPEC = models.get_spec("efficientnet_lite0")
MAX_PIXELS = 40_000_000     # settings.Settings.max_image_pixels' default


def check_one(data: bytes) -> None:
    """One input through the image path; Finding (or any other exception) for a broken promise."""
    try:
        array = imaging.prepare_image(data, SPEC, max_pixels=MAX_PIXELS)
    except errors.GatewayError:
        return
    size = SPEC.input_size
    if array.shape != (size, size, 3) or array.dtype.name != "uint8" or not array.flags.c_contiguous:
        raise Finding(f"prepare_image returned {array.shape} {array.dtype}")


def main() -> None:
    run(check_one)


if __name__ == "__main__":
    main()
