"""What each selectable model needs from the web tier: input size, resize/crop, labels.

Cheap on purpose: the web tier calls get_spec and must not import TensorFlow or Keras.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from image_gateway.models.errors import ModelError, ModelNotFoundError
from image_gateway.models.geometry import DEFAULT_MAX_SIDE
from image_gateway.models.lite_variants import INT8_VARIANTS, LITE_VARIANTS

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_LABELS = Path(__file__).with_name("imagenet_classes.txt")
STANDARD_CROP = 0.875  # the usual ImageNet evaluation crop: 224 out of 256
DETECTOR_NAME = "mtcnn"  # the built-in face detector (models/detector.py)
OCR_DETECTOR, OCR_RECOGNIZER = "ocr_det", "ocr_rec"  # the built-in text detector and recogniser (models/ocr.py)
OCR_MODELS = (OCR_DETECTOR, OCR_RECOGNIZER)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # "efficientnet_lite0", "resnet50", or the .keras file's stem
    input_size: int  # square input side
    crop_fraction: float  # resize shorter side to round(input_size / crop_fraction), center-crop
    resample: str  # "bilinear" or "bicubic" (Pillow filter name, lower-case)
    labels: tuple[str, ...]  # class names by class id
    kind: str = "classifier"  # "classifier" (predictions) or "detector" (detections)
    resize: str = "center_crop"  # how the web tier fits a classifier's square: center_crop, squash, letterbox
    precision: str = "fp32"  # the arithmetic of the served model: fp32, or int8 for the *_int8 built-ins


FACE = "face"
# input_size: the default longest side of the working image (the web tier's setting may differ);
# crop_fraction 1.0: never cropped; resample: the filter for shrinking to the working size.
MTCNN_SPEC = ModelSpec(DETECTOR_NAME, DEFAULT_MAX_SIDE, 1.0, "bilinear", (FACE,), kind="detector")
# OCR: both answer `detections`. ocr_det: text regions (input_size: rapidocr's longest working side);
# ocr_rec: the text of a line image, as one detection labelled with it (input_size: the line height it reads).
TEXT = "text"
OCR_SPECS = {OCR_DETECTOR: ModelSpec(OCR_DETECTOR, 2000, 1.0, "bilinear", (TEXT,), kind="detector"),
             OCR_RECOGNIZER: ModelSpec(OCR_RECOGNIZER, 48, 1.0, "bilinear", (), kind="detector")}


@dataclass(frozen=True)
class KerasApp:
    """A keras.applications model: constructor, preprocess module and the cache file name
    Keras itself would download (so a warm cache is found and nothing is fetched)."""

    constructor: str
    module: str
    input_size: int
    weights_file: str
    resample: str = "bilinear"


def _tf_kernels_app(name: str, constructor: str, module: str = "resnet") -> KerasApp:
    """An app whose weights file follows the common <name>_weights_tf_dim_ordering_tf_kernels.h5."""
    return KerasApp(constructor, module, 224, f"{name}_weights_tf_dim_ordering_tf_kernels.h5")


def _efficientnet(index: int, size: int) -> KerasApp:
    return KerasApp(f"EfficientNetB{index}", "efficientnet", size, f"efficientnetb{index}.h5",
                    "bicubic")


KERAS_APPS: dict[str, KerasApp] = {
    "resnet50": _tf_kernels_app("resnet50", "ResNet50"),
    "resnet101": _tf_kernels_app("resnet101", "ResNet101"),
    "resnet152": _tf_kernels_app("resnet152", "ResNet152"),
    "resnet50_v2": _tf_kernels_app("resnet50v2", "ResNet50V2", "resnet_v2"),
    "vgg16": _tf_kernels_app("vgg16", "VGG16", "vgg16"),
    "vgg19": _tf_kernels_app("vgg19", "VGG19", "vgg19"),
    "densenet121": _tf_kernels_app("densenet121", "DenseNet121", "densenet"),
    "xception": KerasApp("Xception", "xception", 299,
                         "xception_weights_tf_dim_ordering_tf_kernels.h5"),
    "inception_v3": KerasApp("InceptionV3", "inception_v3", 299,
                             "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"),
    "mobilenet_v2": KerasApp("MobileNetV2", "mobilenet_v2", 224,
                             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
    "efficientnet_b0": _efficientnet(0, 224),
    "efficientnet_b1": _efficientnet(1, 240),
    "efficientnet_b2": _efficientnet(2, 260),
    "efficientnet_b3": _efficientnet(3, 300),
}


def known_models() -> list[str]:
    """Model names accepted by get_spec/load_model (besides a path to a .keras file)."""
    return [*LITE_VARIANTS, *INT8_VARIANTS, DETECTOR_NAME, *OCR_MODELS, *KERAS_APPS]


def is_keras_file(name: str) -> bool:
    return name.endswith(".keras")


def get_spec(name: str = DEFAULT_MODEL, *, weights_path: str | None = None,
             labels_path: str | None = None) -> ModelSpec:
    """The spec of a model, without loading it. weights_path is accepted for symmetry with
    load_model; the spec never depends on it."""
    del weights_path
    if name in LITE_VARIANTS:
        lite = LITE_VARIANTS[name]
        return ModelSpec(name, lite.input_size, lite.crop_fraction, "bicubic", read_labels(labels_path))
    if name in INT8_VARIANTS:   # the fp32 model's geometry and labels, full-integer quantised
        lite = LITE_VARIANTS[INT8_VARIANTS[name]]
        return ModelSpec(name, lite.input_size, lite.crop_fraction, "bicubic", read_labels(labels_path),
                         precision="int8")
    if name == DETECTOR_NAME:
        return MTCNN_SPEC
    if name in OCR_SPECS:
        return OCR_SPECS[name]
    if name in KERAS_APPS:
        app = KERAS_APPS[name]
        return ModelSpec(name, app.input_size, STANDARD_CROP, app.resample,
                         read_labels(labels_path))
    if is_keras_file(name):
        return _keras_file_spec(name, labels_path)
    raise ModelNotFoundError(
        f"unknown model {name!r}; known models: {', '.join(known_models())}, "
        "or a path to a .keras file (with a labels file)")


def read_labels(labels_path: str | None = None) -> tuple[str, ...]:
    """One label per line, class id order; the shipped ImageNet names by default."""
    path = Path(labels_path) if labels_path else IMAGENET_LABELS
    try:
        labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file {path}: {exc}") from exc
    labels = labels[:-1] if labels and not labels[-1] else labels
    if not labels or not all(labels):
        raise ModelError(f"labels file {path} must hold one non-empty label per line")
    return labels


def _keras_file_spec(path: str, labels_path: str | None) -> ModelSpec:
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"model file {path} does not exist")
    if not labels_path:
        raise ModelError(f"{path}: a .keras model needs a labels file (one label per line)")
    size = keras_file_input_size(path)
    return ModelSpec(Path(path).stem, size, STANDARD_CROP, "bilinear", read_labels(labels_path))


def keras_file_input_size(path: str) -> int:
    """Square input side read from the .keras archive's config.json (no Keras import)."""
    shape = keras_file_input_shape(path)
    if shape is None or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 \
            or not isinstance(shape[1], int):
        raise ModelError(f"{path}: input shape must be (None, S, S, 3), found {shape}")
    return shape[1]


def keras_file_input_shape(path: str) -> list | None:
    """The first input's declared batch shape in the .keras archive's config.json (None: not declared)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a readable .keras file: {exc}") from exc
    return _first_input_shape(config)


def _first_input_shape(node) -> list | None:
    """Depth-first search for the first declared input shape in a Keras config tree."""
    if isinstance(node, dict):
        for key in ("batch_shape", "batch_input_shape"):
            if isinstance(node.get(key), list):
                return node[key]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _first_input_shape(child)
        if found is not None:
            return found
    return None
