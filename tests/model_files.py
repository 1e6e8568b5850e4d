"""Model files the tests build (nothing binary is committed): small ONNX graphs with onnx.helper, the
default model exported to ONNX (tf2onnx) and to LiteRT, and repository versions holding them."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from conftest import ARTIFACTS

IMAGENET_LABELS = Path(__file__).resolve().parent.parent / "image_gateway" / "models" / "imagenet_classes.txt"
OPSET = 17


def _value_info(name: str, dtype, shape):
    from onnx import helper
    from onnx.helper import np_dtype_to_tensor_dtype

    return helper.make_tensor_value_info(name, np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def save_graph(path: Path, nodes: list, inputs: list, outputs: list, initializers: list = (), opsets=()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), *opsets])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def constant_outputs_model(path: Path, input_shape: list, outputs: dict[str, np.ndarray], dtype=np.float32) -> Path:
    """A model whose outputs are the given tensors (batch 1) whatever the image: each is the constant plus
    0 x the image's mean, so the image must be fed with the declared shape and dtype."""
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Cast", ["image"], ["image_float"], to=1),
             helper.make_node("ReduceMean", ["image_float"], ["image_mean"], keepdims=0),
             helper.make_node("Mul", ["image_mean", "zero"], ["nothing"])]
    initializers = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    declared = []
    for name, value in outputs.items():
        initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        declared.append(_value_info(name, np.float32, list(np.shape(value))))
    return save_graph(path, nodes, [_value_info("image", dtype, input_shape)], declared, initializers)


def channel_mean_classifier(path: Path, layout: str, size: int) -> Path:
    """A classifier of 3 classes whose logits are the mean of each input channel (batch free)."""
    from onnx import helper

    shape = ["N", 3, size, size] if layout == "NCHW" else ["N", size, size, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    nodes = [helper.make_node("ReduceMean", ["pixels"], ["logits"], axes=axes, keepdims=0)]
    return save_graph(path, nodes, [_value_info("pixels", np.float32, shape)],
                      [_value_info("logits", np.float32, ["N", 3])])


def custom_op_model(path: Path) -> Path:
    from onnx import helper

    node = helper.make_node("FancyResize", ["image"], ["out"], domain="com.example")
    return save_graph(path, [node], [_value_info("image", np.float32, [1, 3, 8, 8])],
                      [_value_info("out", np.float32, [1, 3])], opsets=[helper.make_opsetid("com.example", 1)])


def version(repository: Path, name: str, number: int, files: dict[str, object]) -> Path:
    """A version folder built beside the model under a dot name and renamed into place (appears whole).
    files: file name -> a Path to copy, bytes, str, or a dict written as JSON."""
    staging = repository / name / f".staging-{number}"
    staging.mkdir(parents=True)
    for file_name, content in files.items():
        target = staging / file_name
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        elif isinstance(content, dict):
            target.write_text(json.dumps(content))
        else:
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
    final = repository / name / str(number)
    staging.rename(final)
    return final


def _cached(file_name: str, build) -> Path:
    """A built artifact kept under tests/artifacts/ (written whole, then renamed)."""
    path = ARTIFACTS / "model-files" / file_name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(build())
        temporary.replace(path)
    return path


def default_model_onnx(classifier) -> Path:
    """The default model's network (logits) exported by tf2onnx, taking NCHW input like a PyTorch export;
    its config: mean 127, std 128, output logits."""
    def build() -> bytes:
        import keras
        import tensorflow as tf
        import tf2onnx

        model = classifier.model
        weights = [(variable, variable.numpy()) for variable in model.weights]
        size = classifier.spec.input_size

        @tf.function(input_signature=[tf.TensorSpec([None, 3, size, size], tf.float32, name="pixels")])
        def logits(pixels):
            with keras.StatelessScope(state_mapping=[(v, tf.constant(a)) for v, a in weights]):
                return model(tf.transpose(pixels, [0, 2, 3, 1]), training=False)

        proto, _ = tf2onnx.convert.from_function(logits, input_signature=logits.input_signature, opset=OPSET)
        return proto.SerializeToString()

    return _cached(f"{classifier.spec.name}-nchw-logits.onnx", build)


def default_model_tflite(classifier) -> Path:
    """The default model converted as the gateway's LiteRT runtime does: RGB 0..255 in, probabilities out."""
    from image_gateway.models import litert

    return _cached(f"{classifier.spec.name}.tflite", lambda: litert.convert(classifier))
