"""A model repository on disk: ``<root>/<name>/<version>/model.{onnx,tflite,keras}``, as Triton lays it out.

Each version folder holds one model file, optionally ``labels.txt`` (one label per line; class ids
otherwise) and ``config.json`` (fields in models/model_config.py)::

    model.onnx    ONNX Runtime, CPU    (models/onnx_model.py)
    model.tflite  LiteRT, XNNPACK      (models/tflite_model.py)
    model.keras   Keras; LiteRT where it converts (models/loading.py, models/litert.py)

What the config leaves out is read from the file (input name, layout, size, dtype). Versions are
positive integers; other folder names (``.staging``, ``tmp``) are ignored, so copy a version next to
the model under such a name and rename it into place: it appears whole. Cheap: the web tier imports
this module, and nothing here imports a framework until a worker inspects a file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from image_gateway.models.errors import ModelError
from image_gateway.models.model_config import ConfigError, InputInfo, ModelConfig, bad, parse_config
from image_gateway.models.spec import ModelSpec, keras_file_input_shape, read_labels

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
MODEL_FILES = {"onnx": "model.onnx", "tflite": "model.tflite", "keras": "model.keras"}
FORMAT_RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}   # keras: decided when it loads


@dataclass(frozen=True)
class VersionDir:
    name: str
    version: str
    path: Path

    @property
    def signature(self) -> tuple:
        """Changes when any file of the version is replaced (a broken version is retried then)."""
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                            for p in self.path.iterdir() if p.is_file()))

    @property
    def formats(self) -> list[str]:
        """The formats whose model file the folder holds (one, unless it is misconfigured)."""
        return [name for name, file in MODEL_FILES.items() if (self.path / file).is_file()]

    @property
    def format(self) -> str:
        return (self.formats or ["keras"])[0]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILES[self.format]


def scan(root: str | None, only: str | None = None) -> dict[tuple[str, str], VersionDir]:
    """Every (name, version) folder under `root` holding a model file; `only` keeps one model."""
    found: dict[tuple[str, str], VersionDir] = {}
    if not root or not os.path.isdir(root):
        return found
    for model_dir in Path(root).iterdir():
        if not (model_dir.is_dir() and MODEL_NAME.match(model_dir.name)) or only not in (None, model_dir.name):
            continue
        for version_dir in model_dir.iterdir():
            if VERSION.match(version_dir.name) and any((version_dir / file).is_file() for file in MODEL_FILES.values()):
                found[(model_dir.name, version_dir.name)] = VersionDir(model_dir.name, version_dir.name, version_dir)
    return found


def read_config(version: VersionDir) -> dict:
    """config.json as a dict ({} when there is none)."""
    path = version.path / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except OSError as exc:
        raise ConfigError(f"config.json: not readable ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"config.json: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ConfigError("config.json: must hold a JSON object")
    return config


def file_inputs(version: VersionDir, raw: dict) -> list[InputInfo]:
    """The inputs the model file declares (a .keras file's only when config.json gives no input_size)."""
    if version.format == "onnx":
        from image_gateway.models.onnx_model import inspect_onnx
        return inspect_onnx(version.model_file)
    if version.format == "tflite":
        from image_gateway.models.tflite_model import inspect_tflite
        return inspect_tflite(version.model_file)
    shape = None if "input_size" in raw else keras_file_input_shape(str(version.model_file))
    shape = shape if isinstance(shape, list) and len(shape) == 4 else [None, None, None, 3]
    return [InputInfo("", tuple(side if isinstance(side, int) else None for side in shape), "float32")]


def version_config(version: VersionDir, inputs: list[InputInfo] | None = None) -> ModelConfig:
    """The checked config of a version; `inputs`: what an already opened file declares."""
    if len(version.formats) > 1:
        raise ModelError(f"the version folder holds {' and '.join(MODEL_FILES[f] for f in version.formats)}: "
                         "keep one")
    raw = read_config(version)
    config = parse_config(raw, MODEL_FILES[version.format], inputs or file_inputs(version, raw))
    if version.format == "keras":
        if config.kind != "classifier":
            raise bad("kind", "detector needs model.onnx or model.tflite (a .keras model is served as a classifier)")
        if config.layout != "NHWC" or config.dtype != "float32":
            raise bad("layout" if config.layout != "NHWC" else "dtype", "must be NHWC float32 for model.keras")
    return config


def version_labels(version: VersionDir, num_classes: int | None = None) -> tuple[str, ...]:
    """labels.txt, else the class ids when their count is known, else none."""
    labels_file = version.path / "labels.txt"
    if labels_file.is_file():
        try:
            return read_labels(str(labels_file))
        except ModelError as exc:
            raise ModelError(str(exc).replace(str(labels_file), "labels.txt")) from None
    return tuple(str(i) for i in range(num_classes or 0))


def version_spec(version: VersionDir, num_classes: int | None = None, config: ModelConfig | None = None,
                 labels: tuple[str, ...] | None = None) -> ModelSpec:
    """The spec of a repository version (what the web tier needs: size, resize, kind)."""
    config = config or version_config(version)
    labels = version_labels(version, num_classes) if labels is None else labels
    if config.kind == "detector":       # the worker fits the working image itself (models/resizing.py)
        return ModelSpec(version.name, max(config.height, config.width), 1.0, config.resample, labels,
                         "detector", config.resize)
    return ModelSpec(version.name, config.height, config.crop_fraction, config.resample, labels, "classifier",
                     config.resize)


def without_folder(message: str, version: VersionDir) -> str:
    """A reason with the version folder's path taken out (files are named relative to it)."""
    return message.replace(str(version.path) + os.sep, "").replace(str(version.path), f"version {version.version}")
