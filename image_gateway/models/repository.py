"""A model repository on disk: ``<root>/<name>/<version>/model.keras``, as TF Serving and Triton lay it out.

Each version folder holds ``model.keras``, optionally ``labels.txt`` (one label per line; class ids
otherwise) and ``config.json``::

    {"input_size": 224, "crop_fraction": 0.875, "resample": "bilinear", "kind": "classifier",
     "preprocessing": "none"}

`preprocessing` is what the gateway does to RGB 0..255 float pixels before the model: "none" (the
model carries its own normalisation), "unit" (/255) or "symmetric" (to -1..1). Versions are positive
integers; other folder names (``.staging``, ``tmp``) are ignored, so copy a version next to the model
under such a name and rename it into place: it appears whole. Cheap: no Keras import here.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from image_gateway.models.errors import ModelError
from image_gateway.models.spec import STANDARD_CROP, ModelSpec, keras_file_input_size, read_labels

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
PREPROCESSING = ("none", "unit", "symmetric")
KINDS = ("classifier",)


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


def scan(root: str | None, only: str | None = None) -> dict[tuple[str, str], VersionDir]:
    """Every (name, version) folder under `root` holding a model.keras; `only` keeps one model."""
    found: dict[tuple[str, str], VersionDir] = {}
    if not root or not os.path.isdir(root):
        return found
    for model_dir in Path(root).iterdir():
        if not (model_dir.is_dir() and MODEL_NAME.match(model_dir.name)) or only not in (None, model_dir.name):
            continue
        for version_dir in model_dir.iterdir():
            if VERSION.match(version_dir.name) and (version_dir / "model.keras").is_file():
                found[(model_dir.name, version_dir.name)] = VersionDir(model_dir.name, version_dir.name, version_dir)
    return found


def read_config(version: VersionDir) -> dict:
    path = version.path / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path}: must hold a JSON object")
    if config.get("preprocessing", "none") not in PREPROCESSING:
        raise ModelError(f"{path}: preprocessing must be one of {', '.join(PREPROCESSING)}")
    if config.get("kind", "classifier") not in KINDS:
        raise ModelError(f"{path}: kind must be one of {', '.join(KINDS)}")
    return config


def version_spec(version: VersionDir, num_classes: int | None = None) -> ModelSpec:
    """The spec of a repository version; labels default to class ids when there is no labels.txt."""
    config = read_config(version)
    model_file = str(version.path / "model.keras")
    size = int(config.get("input_size") or keras_file_input_size(model_file))
    labels_file = version.path / "labels.txt"
    if labels_file.is_file():
        labels = read_labels(str(labels_file))
    else:
        labels = tuple(str(i) for i in range(num_classes or 0))
    return ModelSpec(version.name, size, float(config.get("crop_fraction", STANDARD_CROP)),
                     config.get("resample", "bilinear"), labels, config.get("kind", "classifier"))
