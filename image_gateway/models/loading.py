"""load_model: turn a model name into a ready Classifier (imports Keras; the worker calls it)."""

from __future__ import annotations

import importlib
import os

from image_gateway.models.classifier import Classifier
from image_gateway.models.errors import ModelError, WeightsError
from image_gateway.models.lite_variants import LITE_VARIANTS
from image_gateway.models.repository import VersionDir, read_config, version_spec
from image_gateway.models.spec import DEFAULT_MODEL, DETECTOR_NAME, KERAS_APPS, ModelSpec, get_spec


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
    if name in KERAS_APPS:
        return _load_keras_app(spec, weights_path)
    return _load_keras_file(spec, name)


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
    return _keras_classifier(spec, _read_keras_file(path), "none")


def load_repository_version(version: VersionDir) -> Classifier:
    """A model repository version (see models/repository.py): model.keras with its config and labels."""
    config = read_config(version)
    model = _read_keras_file(str(version.path / "model.keras"))
    spec = version_spec(version, model.outputs[0].shape[-1])
    return _keras_classifier(spec, model, config.get("preprocessing", "none"))


def _keras_classifier(spec: ModelSpec, model, preprocessing: str) -> Classifier:
    _check_label_count(spec, model)
    return Classifier(spec, model, PREPROCESSING[preprocessing], apply_softmax=not _ends_in_softmax(model))


def _read_keras_file(path: str):
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError, AttributeError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from exc


PREPROCESSING = {
    "none": lambda pixels: pixels,
    "unit": lambda pixels: pixels / 255.0,
    "symmetric": lambda pixels: pixels / 127.5 - 1.0,
}


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
