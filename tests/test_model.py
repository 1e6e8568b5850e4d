"""EfficientNet-Lite0: the torch-free weight reader, the layer mapping and the golden logits.

The golden file holds logits of the PyTorch reference (efficientnet_lite_pytorch 0.1.0, torch
2.13.0) on the photos in tests/data, made by tests/data/make_golden.py; torch is not needed here.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from image_gateway.models import WeightsError, load_model
from image_gateway.models.efficientnet_lite import (
    IGNORED_SUFFIX,
    block_configs,
    build_model,
    default_weights_path,
    keras_weights_from_state_dict,
    preprocess_input,
)
from image_gateway.models.torch_weights import LEGACY_MAGIC, LEGACY_PROTOCOL, read_state_dict

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_efficientnet_lite0.npz"
EXPECTED_TOP1 = {"cat": "tiger_cat", "coffee": "espresso", "astronaut": "football_helmet",
                 "rocket": "missile", "motorcycle": "moped"}


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_state_dict(default_weights_path())


@pytest.fixture(scope="module")
def classifier():
    return load_model()


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


# -- a tiny legacy-format file written with pickle, as torch.save did before 1.6 ----------------

def write_legacy(path: Path, tensors: dict[str, np.ndarray], extra_global=None) -> None:
    """Write float32 arrays as a legacy torch state dict, one storage each, as torch.save did
    before 1.6: three header pickles, the state dict pickle, the storage keys, the raw storages."""
    with open(path, "wb") as stream:
        for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, stream, protocol=2)
        stream.write(_state_dict_pickle(tensors, extra_global))
        pickle.dump([str(i) for i in range(len(tensors))], stream, protocol=2)
        for array in tensors.values():
            storage = np.ravel(array.astype("<f4"), order="K")  # memory order, like a storage
            stream.write(struct.pack("<q", array.size) + storage.tobytes())


def _state_dict_pickle(tensors: dict[str, np.ndarray], extra_global) -> bytes:
    """Hand-assembled protocol-2 pickle: OrderedDict of name -> _rebuild_tensor_v2(...), the
    tensors naming their storages by persistent id, exactly the opcodes torch emits."""
    out = [b"\x80\x02", _glob("collections", "OrderedDict"), b")R("]
    for key, (name, array) in enumerate(tensors.items()):
        strides = tuple(s // array.itemsize for s in array.strides)
        out += [_str(name), _glob("torch._utils", "_rebuild_tensor_v2"), b"((",
                _str("storage"), _glob("torch", "FloatStorage"), _str(str(key)), _str("cpu"),
                _int(array.size), b"tQ", _int(0), _tuple(array.shape), _tuple(strides),
                b"\x89", _glob("collections", "OrderedDict"), b")Rt", b"R"]
    if extra_global:
        out += [_str("evil"), _glob(*extra_global), b")R"]
    out.append(b"u.")
    return b"".join(out)


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _tuple(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


# -- weight reading ---------------------------------------------------------------------------

def test_reads_synthetic_legacy_file(tmp_path):
    tensors = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
               "transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,
               "fc.bias": np.array([1.5, -2.0], np.float32)}
    path = tmp_path / "tiny.pth"
    write_legacy(path, tensors)
    read = read_state_dict(str(path))
    assert list(read) == list(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(read[name], array)
        assert read[name].flags.c_contiguous


def test_refuses_a_global_outside_the_allowlist(tmp_path):
    path = tmp_path / "evil.pth"
    write_legacy(path, {"w": np.zeros(2, np.float32)}, extra_global=("os", "system"))
    with pytest.raises(WeightsError, match="disallowed global os.system"):
        read_state_dict(str(path))


@pytest.mark.parametrize("cut", [10, 5000, -100])
def test_truncated_file_is_a_weights_error(tmp_path, cut):
    data = Path(default_weights_path()).read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(WeightsError):
        read_state_dict(str(path))


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04zipzip"])
def test_garbage_file_is_a_weights_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        read_state_dict(str(path))


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="cannot read"):
        read_state_dict(str(tmp_path / "absent.pth"))


def test_real_file_has_the_reference_tensors(state):
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32
    assert all(np.isfinite(v).all() for v in state.values())


def test_strided_stem_kernel_is_read_in_torch_layout(state):
    # The file stores the stem kernel with non-contiguous strides (a transposed TF array).
    stem = state["_conv_stem.weight"]
    assert stem.flags.c_contiguous and float(np.abs(stem).sum()) > 0


# -- layer mapping ----------------------------------------------------------------------------

def test_every_tensor_maps_to_one_layer_with_matching_shapes(state):
    model = build_model()
    mapped = keras_weights_from_state_dict(model, state)
    used = sum(len(arrays) for arrays in mapped.values())
    assert used == sum(1 for k in state if not k.endswith(IGNORED_SUFFIX))
    weighted = [layer.name for layer in model.layers if layer.weights]
    assert sorted(mapped) == sorted(weighted)
    assert len(block_configs()) == 16


def test_depthwise_and_dense_layouts(state):
    mapped = keras_weights_from_state_dict(build_model(), state)
    depthwise = mapped["_blocks.1._depthwise_conv"][0]
    torch_depthwise = state["_blocks.1._depthwise_conv.weight"]
    assert depthwise.shape == (3, 3, 96, 1)
    assert depthwise[0, 2, 5, 0] == torch_depthwise[5, 0, 0, 2]
    conv = mapped["_conv_stem"][0]
    assert conv[1, 2, 0, 7] == state["_conv_stem.weight"][7, 0, 1, 2]
    np.testing.assert_array_equal(mapped["_fc"][0], state["_fc.weight"].T)


def test_missing_extra_and_misshapen_tensors_are_named(state):
    broken = dict(state)
    del broken["_bn0.running_var"]
    broken["_extra.weight"] = np.zeros(3, np.float32)
    broken["_fc.bias"] = np.zeros(10, np.float32)
    with pytest.raises(WeightsError) as error:
        keras_weights_from_state_dict(build_model(), broken)
    message = str(error.value)
    assert "_bn0.running_var" in message and "_extra.weight" in message and "_fc" in message


def test_load_model_rejects_a_mismatched_file(tmp_path):
    path = tmp_path / "other.pth"
    write_legacy(path, {"conv.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(WeightsError, match="does not fit EfficientNet-Lite0"):
        load_model(weights_path=str(path))


# -- golden logits against the PyTorch reference -----------------------------------------------

def test_logits_match_the_pytorch_reference(classifier, golden):
    normalised = preprocess_input(golden["pixels"].astype(np.float32))
    logits = np.asarray(classifier.model(normalised, training=False))
    assert np.abs(logits - golden["logits"]).max() < 1e-3


def test_probabilities_and_top5_match_the_reference(classifier, golden):
    probabilities = classifier.predict(golden["pixels"])
    reference = _softmax(golden["logits"])
    assert np.abs(probabilities - reference).max() < 1e-4
    for mine, theirs in zip(probabilities, reference, strict=True):
        assert list(np.argsort(-mine)[:5]) == list(np.argsort(-theirs)[:5])


def test_top1_labels_on_real_photos(classifier, golden):
    probabilities = classifier.predict(golden["pixels"].astype(np.float32))
    labels = classifier.spec.labels
    top1 = {str(name): labels[int(row.argmax())] for name, row in zip(golden["names"], probabilities, strict=True)}
    assert top1 == EXPECTED_TOP1


def test_predict_shapes_dtypes_and_batch_independence(classifier, golden):
    pixels = golden["pixels"]
    single = classifier.predict(pixels[:1])
    assert single.shape == (1, 1000) and single.dtype == np.float32
    np.testing.assert_allclose(single.sum(axis=1), 1.0, atol=1e-5)
    batch = classifier.predict(np.concatenate([pixels] * 3))
    np.testing.assert_allclose(batch[:1], single, atol=1e-5)
    np.testing.assert_allclose(batch[5:10], batch[:5], atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros((1, 224, 224), np.uint8), np.zeros((1, 200, 200, 3), np.uint8),
                                 np.zeros((1, 224, 224, 3), np.float64), np.zeros((0, 224, 224, 3), np.uint8)])
def test_predict_rejects_bad_batches(classifier, bad):
    with pytest.raises(ValueError):
        classifier.predict(bad)


def test_spec_declares_the_reference_preprocessing(classifier):
    spec = classifier.spec
    assert (spec.name, spec.input_size, spec.crop_fraction, spec.resample) == \
        ("efficientnet_lite0", 224, 0.875, "bicubic")
    assert round(spec.input_size / spec.crop_fraction) == 256


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
