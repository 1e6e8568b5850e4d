"""A repository version's config.json, checked against what its model file says about its input.

Cheap: plain Python, no framework import. `parse_config(raw, model_file, inputs)` fills every field
the config leaves out from the file (input name, layout, size, dtype) or from the defaults below, and
raises ConfigError with a short reason that names the field (never a path) when a value is wrong or
the file cannot tell what the config leaves out.

    {"kind": "classifier" | "detector",
     "input_name": "images",                     # checked against the file's one image input
     "layout": "NHWC" | "NCHW", "input_size": 224 | [height, width], "dtype": "float32" | "uint8",
     "channel_order": "RGB" | "BGR",
     "scale": 0.00392, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "resize": "center_crop" | "squash" | "letterbox", "crop_fraction": 0.875, "resample": "bilinear",
     "output": "probabilities" | "logits",       # classifiers; unset: told from the outputs at load
     "head": "yolo" | "ssd", "score_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 100,
     "objectness": true}                         # yolo: a YOLOv5-style objectness column

The model gets ((pixel * scale) - mean) / std per channel, in its channel order (`preprocessing`:
"none", "unit" = scale 1/255, "symmetric" = scale 1/127.5, mean 1 is the older spelling).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

from image_gateway.models.errors import ModelError
from image_gateway.models.spec import STANDARD_CROP

KINDS = ("classifier", "detector")
LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float32", "float16", "uint8")
CHANNEL_ORDERS = ("RGB", "BGR")
RESIZES = ("center_crop", "squash", "letterbox")
RESAMPLES = ("bilinear", "bicubic")
OUTPUTS = ("probabilities", "logits")
HEADS = ("yolo", "ssd")
PREPROCESSING = {"none": (1.0, 0.0), "unit": (1 / 255, 0.0), "symmetric": (1 / 127.5, 1.0)}   # scale, mean
FIELDS = frozenset({"kind", "input_name", "layout", "input_size", "dtype", "channel_order", "scale", "mean", "std",
                    "preprocessing", "resize", "crop_fraction", "resample", "output", "head", "score_threshold",
                    "iou_threshold", "max_detections", "objectness"})
MAX_SIDE = 4096


class ConfigError(ModelError):
    """config.json is wrong or incomplete for its model file."""


@dataclass(frozen=True)
class InputInfo:
    """One input of a model file as the file declares it: None where a dimension is free."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str                      # numpy's name: float32, uint8 ...


@dataclass(frozen=True)
class ModelConfig:
    kind: str
    input_name: str
    layout: str
    height: int
    width: int
    dtype: str
    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str
    crop_fraction: float
    resample: str
    output: str | None              # None: told from the model's outputs when it loads
    head: str | None
    score_threshold: float
    iou_threshold: float
    max_detections: int
    objectness: bool | None         # None: told from the output's shape and the labels


def bad(field: str, text: str) -> ConfigError:
    return ConfigError(f'config.json: field "{field}" {text}')


def parse_config(raw: dict, model_file: str, inputs: list[InputInfo]) -> ModelConfig:
    """The checked config of a model whose file (named model_file in reasons) declares `inputs`."""
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise ConfigError(f'config.json: unknown field "{unknown[0]}" (fields: {", ".join(sorted(FIELDS))})')
    kind = choice(raw, "kind", KINDS, "classifier")
    source = pick_input(raw, model_file, inputs)
    layout = choice(raw, "layout", LAYOUTS, guess_layout(source.shape))
    if layout is None:
        raise bad("layout", f"is needed: {model_file}'s input shape {shape_text(source.shape)} does not tell "
                  "NHWC from NCHW")
    height, width = input_size(raw, model_file, source, layout)
    if kind == "classifier" and height != width:
        raise bad("input_size", f"must be square for a classifier (the web tier sends a square), not {height}x{width}")
    if source.dtype not in DTYPES:
        raise ConfigError(f"{model_file}'s input is {source.dtype}; the gateway feeds {', '.join(DTYPES)}")
    dtype = choice(raw, "dtype", DTYPES, source.dtype)
    if dtype != source.dtype:
        raise bad("dtype", f"must be {source.dtype}: {model_file}'s input is {source.dtype}")
    scale, mean, std = normalisation(raw, dtype)
    head = choice(raw, "head", HEADS, None) if kind == "detector" else None
    if kind == "detector" and head is None:
        raise bad("head", f"is needed for a detector: one of {', '.join(HEADS)}")
    resize = choice(raw, "resize", RESIZES, "center_crop" if kind == "classifier" else
                    "letterbox" if head == "yolo" else "squash")
    if kind == "detector" and resize == "center_crop":
        raise bad("resize", "must be squash or letterbox for a detector (a crop would lose the image's edges)")
    return ModelConfig(
        kind, source.name, layout, height, width, dtype, choice(raw, "channel_order", CHANNEL_ORDERS, "RGB"),
        scale, mean, std, resize, number(raw, "crop_fraction", STANDARD_CROP, 0.0, 1.0, low_open=True),
        choice(raw, "resample", RESAMPLES, "bilinear"), choice(raw, "output", OUTPUTS, None), head,
        number(raw, "score_threshold", 0.25, 0.0, 1.0), number(raw, "iou_threshold", 0.45, 0.0, 1.0),
        integer(raw, "max_detections", 100, 1, 10_000), boolean(raw, "objectness"))


def choice(raw: dict, field: str, allowed: tuple[str, ...], default):
    value = raw.get(field, default)
    if value is not default and value not in allowed:
        raise bad(field, f"must be {' or '.join(allowed) if len(allowed) == 2 else 'one of ' + ', '.join(allowed)}")
    return value


def number(raw: dict, field: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = raw.get(field, default)
    if not is_number(value) or not (low < value <= high if low_open else low <= value <= high):
        raise bad(field, f"must be a number from {low:g} to {high:g}" + (" (not 0)" if low_open else ""))
    return float(value)


def integer(raw: dict, field: str, default: int, low: int, high: int) -> int:
    value = raw.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad(field, f"must be an integer from {low} to {high}")
    return value


def boolean(raw: dict, field: str) -> bool | None:
    value = raw.get(field)
    if value is not None and not isinstance(value, bool):
        raise bad(field, "must be true or false")
    return value


def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def pick_input(raw: dict, model_file: str, inputs: list[InputInfo]) -> InputInfo:
    """The image input: the file's one input that needs a value (`input_name`, when given, must name it)."""
    names = [item.name for item in inputs]
    name = raw.get("input_name")
    if name is not None and name not in names:
        raise bad("input_name", f"must name an input of {model_file}: {', '.join(names)}")
    if len(inputs) != 1:
        raise ConfigError(f"{model_file} has {len(inputs)} inputs that need a value ({', '.join(names)}); the "
                          "gateway feeds one image, so every other input needs a default in the file")
    return inputs[0]


def guess_layout(shape: tuple[int | None, ...]) -> str | None:
    if len(shape) != 4:
        return None
    if shape[3] == 3:
        return "NHWC"
    return "NCHW" if shape[1] == 3 else None


def shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if side is None else str(side) for side in shape) + "]"


def input_size(raw: dict, model_file: str, source: InputInfo, layout: str) -> tuple[int, int]:
    """(height, width): the file's fixed sides, else the config's `input_size`; both must agree."""
    shape = source.shape
    channels, sides = (shape[3], shape[1:3]) if layout == "NHWC" else (shape[1], shape[2:4])
    if len(shape) != 4 or channels not in (3, None):
        text = f"{model_file}'s input {shape_text(shape)} is not an {layout} image with 3 channels"
        raise bad("layout", f"is {layout}, but {text}") if "layout" in raw else ConfigError(text)
    value = raw.get("input_size")
    if value is None:
        if None in sides:
            raise bad("input_size", f"is needed: {model_file}'s input {shape_text(shape)} has no fixed size")
        return sides[0], sides[1]
    size = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(size, list | tuple) and len(size) == 2
            and all(isinstance(side, int) and not isinstance(side, bool) and 1 <= side <= MAX_SIDE for side in size)):
        raise bad("input_size", f"must be an integer or [height, width], each from 1 to {MAX_SIDE}")
    if any(fixed not in (None, given) for fixed, given in zip(sides, size, strict=True)):
        raise bad("input_size", f"is {size[0]}x{size[1]}, but {model_file}'s input is {shape_text(shape)}")
    return size[0], size[1]


def normalisation(raw: dict, dtype: str) -> tuple[float, tuple, tuple]:
    """(scale, mean per channel, std per channel); an integer input takes the pixels as they are."""
    preprocessing = choice(raw, "preprocessing", tuple(PREPROCESSING), "none")
    given = [field for field in ("scale", "mean", "std") if field in raw]
    given += ["preprocessing"] if preprocessing != "none" else []
    if len(given) > 1 and "preprocessing" in given:
        raise bad(given[0], 'and "preprocessing" say the same thing: give one of them')
    if given and dtype == "uint8":
        raise bad(given[0], "needs a float input: the model takes uint8 pixels as they are")
    scale, mean = PREPROCESSING[preprocessing]
    scale = number(raw, "scale", scale, 0.0, 1e6, low_open=True)
    return scale, triple(raw, "mean", mean, positive=False), triple(raw, "std", 1.0, positive=True)


def triple(raw: dict, field: str, default: float, positive: bool) -> tuple[float, float, float]:
    value = raw.get(field, default)
    values = [value] * 3 if is_number(value) else value
    if not (isinstance(values, list | tuple) and len(values) == 3 and all(is_number(item) for item in values)) \
            or (positive and min(values) <= 0):
        raise bad(field, "must be a number or a list of 3 numbers" + (" above 0" if positive else ""))
    return tuple(float(item) for item in values)
