"""load_model: turn a model name into a ready Classifier (imports Keras; the worker calls it)."""

from __future__ import annotations

import importlib
import os

import numpy as np

from image_gateway.models.classifier import Classifier
from image_gateway.models.errors import ModelError, WeightsError
from image_gateway.models.file_model import load_file_version
from image_gateway.models.lite_variants import LITE_VARIANTS
from image_gateway.models.model_config import ModelConfig
from image_gateway.models.repository import VersionDir, version_config, version_spec, without_folder
from image_gateway.models.spec import DEFAULT_MODEL, DETECTOR_NAME, KERAS_APPS, OCR_MODELS, ModelSpec, get_spec


def keras_cache_path(file_name: str) -> str:
    """Where Keras caches downloaded weights: $KERAS_HOME/models or ~/.keras/models (Keras' own lookup;
    the KERAS_HOME setting is exported for Keras by image_gateway.startup)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models", file_name)


def load_model(name: str = DEFAULT_MODEL, *, weights_path: str | None = None,
               labels_path: str | None = None) -> Classifier:
    """Build the model, load its weights from disk only, and compile its predict path."""
    spec = get_spec(name, weights_path=weights_path, labels_path=labels_path)
    if name in LITE_VARIANTS:
        return _load_efficientnet_lite(spec, weights_path)
    if name == DETECTOR_NAME:
        from image_gateway.models.detector import load_detector
        return load_detector(name)
    if name in OCR_MODELS:
        return load_ocr_model(name)
    if name in KERAS_APPS:
        return _load_keras_app(spec, weights_path)
    return _load_keras_file(spec, name)


def load_ocr_model(name: str, threads: int = 1):
    """ocr_det or ocr_rec: rapidocr's PP-OCR ONNX files on ONNX Runtime (models/ocr.py; no TensorFlow)."""
    from image_gateway.models.ocr import load_ocr_model as load
    return load(name, threads)


def _load_efficientnet_lite(spec: ModelSpec, weights_path: str | None) -> Classifier:
    from image_gateway.models.efficientnet_lite import load_efficientnet_lite, preprocess_input

    model = load_efficientnet_lite(spec.name, weights_path)
    _check_label_count(spec, model)
    return Classifier(spec, model, preprocess_input)


def _load_keras_app(spec: ModelSpec, weights_path: str | None) -> Classifier:
    import keras

    app = KERAS_APPS[spec.name]
    path = weights_path or keras_cache_path(app.weights_file)
    if not os.path.isfile(path):
        raise WeightsError(
            f"weights for {spec.name} not found at {path}; this gateway never downloads. Copy "
            f"Keras' {app.weights_file} there (keras.applications.{app.constructor}"
            f"(weights='imagenet') on a machine online fills that cache) or pass its path as "
            "weights_path")
    constructor = getattr(keras.applications, app.constructor)
    try:
        model = constructor(weights=path, classifier_activation=None)
    except (ValueError, OSError, KeyError) as exc:
        raise WeightsError(f"cannot load {spec.name} weights from {path}: {exc}") from exc
    _check_label_count(spec, model)
    module = importlib.import_module(f"keras.applications.{app.module}")
    return Classifier(spec, model, module.preprocess_input)


def _load_keras_file(spec: ModelSpec, path: str) -> Classifier:
    """A user model takes float32 RGB 0..255 and carries its own normalisation layers."""
    return _keras_classifier(spec, _read_keras_file(path))


def load_repository_version(version: VersionDir, threads: int = 1):
    """A model repository version (see models/repository.py) with its config and labels: model.onnx or
    model.tflite as a FileClassifier/FileDetector (on `threads` runtime threads), model.keras as a
    Classifier. Reasons name the version's files, never their folder."""
    try:
        if version.format != "keras":
            return load_file_version(version, threads)
        config = version_config(version)
        model = _read_keras_file(str(version.model_file))
        spec = version_spec(version, model.outputs[0].shape[-1], config)
        _check_label_count(spec, model)
        apply_softmax = config.output == "logits" if config.output else not _ends_in_softmax(model)
        return Classifier(spec, model, _normaliser(config), apply_softmax=apply_softmax)
    except ModelError as exc:
        raise type(exc)(without_folder(str(exc), version)) from None


def _normaliser(config: ModelConfig):
    """RGB 0..255 float pixels -> ((pixels * scale) - mean) / std in the model's channel order (keras.ops)."""
    if config.channel_order == "RGB" and config.scale == 1.0 and not any(config.mean) and config.std == (1.0,) * 3:
        return _unchanged
    mean, std = np.asarray(config.mean, np.float32), np.asarray(config.std, np.float32)

    def normalise(pixels):
        ordered = pixels[..., ::-1] if config.channel_order == "BGR" else pixels
        return (ordered * config.scale - mean) / std

    return normalise


def _keras_classifier(spec: ModelSpec, model) -> Classifier:
    _check_label_count(spec, model)
    return Classifier(spec, model, _unchanged, apply_softmax=not _ends_in_softmax(model))


def _read_keras_file(path: str):
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError, AttributeError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from exc


def _unchanged(pixels):
    return pixels


def _check_label_count(spec: ModelSpec, model) -> None:
    units = model.outputs[0].shape[-1]
    if units != len(spec.labels):
        raise ModelError(f"{spec.name}: the model has {units} outputs but the labels file has "
                         f"{len(spec.labels)} labels")


def _ends_in_softmax(model) -> bool:
    """Whether the last layer already outputs probabilities, so softmax is not applied twice."""
    import keras

    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return isinstance(last, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax"
