"""model.tflite on the LiteRT interpreter (XNNPACK), as models/litert.py runs the built-ins.

An interpreter is not thread-safe: each calling thread gets its own (created on first use), on
`threads` XNNPACK threads, and feeds it one image per invoke (measured fastest on CPU; a file's batch
dimension is 1 or free). Quantized outputs are dequantized with the file's scale and zero point.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

from image_gateway.models.errors import ModelError
from image_gateway.models.model_config import InputInfo

RUNTIME = "litert"
CUSTOM_OP = re.compile(r"unresolved custom op: ([\w.]+)", re.IGNORECASE)


def new_interpreter(path: Path, threads: int = 1, allocate: bool = True):
    """A LiteRT interpreter of the file, or ModelError with a reason that names no path."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ModelError(f"{path.name} needs the ai-edge-litert package: {exc}") from None
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=max(1, threads))
        if allocate:
            interpreter.allocate_tensors()
        return interpreter
    except (ValueError, RuntimeError) as exc:
        custom = CUSTOM_OP.search(str(exc))
        if custom:
            raise ModelError(f"{path.name} needs the custom op {custom.group(1)}, which LiteRT does not have") from None
        text = str(exc).replace(str(path), path.name).splitlines()[0][:300]
        raise ModelError(f"{path.name} is not a loadable LiteRT model: {text}") from None


def interpreter_inputs(interpreter) -> list[InputInfo]:
    return [InputInfo(detail["name"], tuple(int(side) if side > 0 else None for side in detail["shape_signature"]),
                      np.dtype(detail["dtype"]).name) for detail in interpreter.get_input_details()]


def inspect_tflite(path: Path) -> list[InputInfo]:
    """The inputs model.tflite declares (read without allocating its tensors)."""
    return interpreter_inputs(new_interpreter(path, allocate=False))


class TFLiteRunner:
    runtime = RUNTIME

    def __init__(self, path: Path, threads: int = 1):
        self.path, self.threads = path, threads
        self._local = threading.local()
        interpreter = self._interpreter()
        self.inputs = interpreter_inputs(interpreter)
        self.output_names = [detail["name"] for detail in interpreter.get_output_details()]

    def _interpreter(self):
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = self._local.interpreter = new_interpreter(self.path, self.threads)
        return interpreter

    def run(self, name: str, tensor: np.ndarray) -> list[np.ndarray]:
        """Every output for the batch `tensor` fed to input `name`, batch first."""
        interpreter = self._interpreter()
        index = next(detail["index"] for detail in interpreter.get_input_details() if detail["name"] == name)
        outputs = interpreter.get_output_details()
        rows: list[list[np.ndarray]] = [[] for _ in outputs]
        for image in tensor:
            interpreter.set_tensor(index, image[np.newaxis])
            interpreter.invoke()
            for row, detail in zip(rows, outputs, strict=True):
                row.append(dequantized(interpreter.get_tensor(detail["index"]), detail))
        return [np.concatenate(row) for row in rows]


def dequantized(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale and np.issubdtype(values.dtype, np.integer):
        return (values.astype(np.float32) - zero_point) * np.float32(scale)
    return values.copy()
