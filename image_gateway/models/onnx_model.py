"""model.onnx on ONNX Runtime's CPU execution provider (onnxruntime is imported only when a file is opened).

One InferenceSession per loaded version, shared by the worker's threads (its `run` is thread-safe),
each call on `threads` intra-op threads. A file with a free batch dimension takes a whole batch in one
call; one exported with a fixed batch is called per chunk of that size, the last chunk padded.

Why a file is refused, in the reason the version is listed with (never its path): not a readable ONNX
model (protobuf parsing failed), an operator ONNX Runtime does not have (a custom op, named), or an
input the gateway cannot feed (models/model_config.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from image_gateway.models.errors import ModelError
from image_gateway.models.model_config import InputInfo

RUNTIME = "onnxruntime"
ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
                 "tensor(int8)": "int8", "tensor(double)": "float64", "tensor(int32)": "int32",
                 "tensor(int64)": "int64"}
CUSTOM_OP = (re.compile(r"([\w.]+:\w+)\(-?\d+\) is not a registered function/op"),
             re.compile(r"No Op registered for (\w+) with domain_version"),
             re.compile(r"[Cc]ould not find an implementation for (\w+\(\d+\) node with name '[^']*')"))


def open_session(path: Path, threads: int = 1, optimize: bool = True, spin: bool = True):
    """An InferenceSession on the CPU, or ModelError with a reason that names no path. spin=False: idle
    intra-op threads sleep instead of spinning (their spinning slowed a lone call 2x on 2 shared cores)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError(f"{path.name} needs the onnxruntime package (pip install onnxruntime): {exc}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
    options.log_severity_level = 3      # errors only: a loaded version logs its own line
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:    # onnxruntime raises its own classes (Fail, InvalidGraph, InvalidProtobuf ...)
        raise ModelError(load_failure(str(exc), path)) from None


def load_failure(message: str, path: Path) -> str:
    """ONNX Runtime's load error as a short reason: the custom op it needs, or its message less the path."""
    for pattern in CUSTOM_OP:
        found = pattern.search(message)
        if found:
            return (f"{path.name} needs the operator {found.group(1)}, which ONNX Runtime does not have "
                    "(a custom op: export the model without it)")
    text = message.replace(str(path), path.name).replace(str(path.parent), "").split(" failed:", 1)[-1]
    if "Protobuf parsing failed" in text or "INVALID_PROTOBUF" in message:
        return f"{path.name} is not a readable ONNX model (protobuf parsing failed)"
    return f"{path.name} does not load in ONNX Runtime: {text.strip()[:300]}"


def dimensions(shape) -> tuple[int | None, ...]:
    return tuple(side if isinstance(side, int) and side > 0 else None for side in shape)


def session_inputs(session) -> list[InputInfo]:
    return [InputInfo(item.name, dimensions(item.shape), ELEMENT_TYPES.get(item.type, item.type))
            for item in session.get_inputs()]


def inspect_onnx(path: Path) -> list[InputInfo]:
    """The inputs model.onnx declares (a quick, unoptimised session)."""
    return session_inputs(open_session(path, optimize=False))


class OnnxRunner:
    runtime = RUNTIME

    def __init__(self, path: Path, threads: int = 1):
        self.session = open_session(path, threads)
        self.inputs = session_inputs(self.session)
        self.output_names = [item.name for item in self.session.get_outputs()]

    def run(self, name: str, tensor: np.ndarray) -> list[np.ndarray]:
        """Every output for the batch `tensor` fed to input `name`, batch first."""
        fixed = next(item.shape[0] for item in self.inputs if item.name == name)
        count = tensor.shape[0]
        if fixed is None or fixed == count:
            return self.session.run(None, {name: tensor})
        chunks = []
        for start in range(0, count, fixed):
            chunk = tensor[start:start + fixed]
            if len(chunk) < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            chunks.append(self.session.run(None, {name: chunk}))
        return [np.concatenate(parts)[:count] for parts in zip(*chunks, strict=True)]
