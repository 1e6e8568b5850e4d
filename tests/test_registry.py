"""Model registry: names, specs, shipped labels, keras.applications weights and .keras files.

Runs offline: keras.applications weights are a randomly initialised model saved under the file
name Keras would have downloaded, in a temporary KERAS_HOME.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from image_gateway.models import (
    ModelError,
    ModelNotFoundError,
    WeightsError,
    get_spec,
    known_models,
    load_model,
)
from image_gateway.models.spec import KERAS_APPS

ROOT = Path(__file__).resolve().parent.parent


def test_known_models_include_the_default_and_keras_applications():
    names = known_models()
    assert names[0] == "efficientnet_lite0"
    assert {"resnet50", "mobilenet_v2", "efficientnet_b0"} <= set(names)


def test_unknown_name_lists_the_known_models():
    with pytest.raises(ModelNotFoundError) as error:
        get_spec("alexnet")
    assert "alexnet" in str(error.value)
    assert all(name in str(error.value) for name in known_models())


def test_get_spec_does_not_import_tensorflow_or_keras():
    code = ("import sys; from image_gateway import models; models.get_spec(); models.get_spec('resnet50'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'jax', 'torch')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_shipped_imagenet_labels_are_keras_names_in_class_order():
    labels = get_spec().labels
    assert len(labels) == 1000
    assert (labels[0], labels[162], labels[281], labels[285], labels[967]) == \
        ("tench", "beagle", "tabby", "Egyptian_cat", "espresso")
    # ImageNet has two pairs of synsets that share a first name; Keras keeps both.
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    assert duplicates == ["crane", "maillot"]


def test_keras_app_specs():
    resnet = get_spec("resnet50")
    assert (resnet.input_size, resnet.crop_fraction, resnet.resample) == (224, 0.875, "bilinear")
    assert get_spec("inception_v3").input_size == 299
    assert get_spec("efficientnet_b0").resample == "bicubic"


def test_missing_keras_weights_name_the_exact_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    expected = tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    with pytest.raises(WeightsError) as error:
        load_model("resnet50")
    assert str(expected) in str(error.value)
    assert "weights_path" in str(error.value)


def test_missing_explicit_weights_path_is_named(tmp_path):
    path = tmp_path / "nowhere.h5"
    with pytest.raises(WeightsError, match=str(path)):
        load_model("mobilenet_v2", weights_path=str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside Keras' legacy HDF5 writer
def test_keras_app_loads_from_the_keras_cache(tmp_path, monkeypatch):
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    reference = keras.applications.MobileNetV2(weights=None, classifier_activation=None)
    cached = tmp_path / "models" / KERAS_APPS["mobilenet_v2"].weights_file
    cached.parent.mkdir()
    reference.save(cached)  # legacy HDF5, the format of Keras' cached weights files
    classifier = load_model("mobilenet_v2")
    pixels = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    probabilities = classifier.predict(pixels)
    inputs = keras.applications.mobilenet_v2.preprocess_input(pixels.astype(np.float32))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(reference(inputs, training=False)))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    """A tiny user model: 32x32 input, own rescaling, 3 softmax outputs."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path_factory.mktemp("user") / "flowers.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def _labels(tmp_path: Path, names: list[str]) -> str:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n")
    return str(path)


def test_keras_file_with_matching_labels(keras_file, tmp_path):
    import keras

    labels = _labels(tmp_path, ["daisy", "rose", "tulip"])
    spec = get_spec(str(keras_file), labels_path=labels)
    assert (spec.name, spec.input_size, spec.labels) == ("flowers", 32, ("daisy", "rose", "tulip"))
    classifier = load_model(str(keras_file), labels_path=labels)
    pixels = np.random.default_rng(2).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = keras.ops.convert_to_numpy(
        keras.saving.load_model(keras_file)(pixels.astype(np.float32)))
    # The model ends in softmax already: it must not be applied twice.
    np.testing.assert_allclose(classifier.predict(pixels), expected, atol=1e-6)


def test_keras_file_label_count_must_match_outputs(keras_file, tmp_path):
    with pytest.raises(ModelError, match="3 outputs but the labels file has 2"):
        load_model(str(keras_file), labels_path=_labels(tmp_path, ["daisy", "rose"]))


def test_keras_file_needs_labels(keras_file):
    with pytest.raises(ModelError, match="labels file"):
        get_spec(str(keras_file))


def test_missing_keras_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        get_spec(str(tmp_path / "absent.keras"), labels_path="x")


def test_unreadable_labels_file(tmp_path):
    with pytest.raises(ModelError, match="cannot read labels"):
        get_spec(labels_path=str(tmp_path / "absent.txt"))
