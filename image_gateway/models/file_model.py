"""A repository version read from model.onnx or model.tflite: a classifier, or a detector with a head.

The web tier sends a classifier its input square (RGB uint8, or float32 0..255 on a float32 wire)
and a detector its working image (any size, see models/geometry.py). Here, in the worker, a
detector's image is fitted into the model's input (letterbox or squash, models/resizing.py); then
both get the config's channel order, normalisation, dtype and layout, one runtime call per batch,
and their outputs decoded: softmax over logits, or the head (models/heads.py) with the boxes mapped
back to the pixels of the image sent. An input of another size is refused before the runtime sees it.

Loading runs one probe through the model, so a head or label count that does not fit its outputs
makes the version UNAVAILABLE with the reason instead of failing each request.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from image_gateway.models.classifier import MAX_BATCH, _check_batch
from image_gateway.models.detector import _check_image
from image_gateway.models.errors import ModelError
from image_gateway.models.heads import Found, Limits, decode_ssd, decode_yolo, ssd_output_order, yolo_layout
from image_gateway.models.model_config import ModelConfig
from image_gateway.models.repository import MODEL_FILES, VersionDir, version_config, version_labels, version_spec
from image_gateway.models.resizing import Placement, fit

SCORE_DECIMALS = 6
PROBABILITY_SUM_TOLERANCE = 1e-3   # rows summing to 1 within this, all in [0, 1]: the model outputs probabilities


def model_tensor(batch: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(N, H, W, 3) RGB 0..255 -> the model's input: channel order, normalisation, dtype, layout."""
    pixels = batch[..., ::-1] if config.channel_order == "BGR" else batch
    if config.dtype == "uint8":
        tensor = pixels if pixels.dtype == np.uint8 else np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    else:
        tensor = pixels.astype(np.float32)
        if config.scale != 1.0:
            tensor *= np.float32(config.scale)
        if any(config.mean):
            tensor -= np.asarray(config.mean, np.float32)
        if any(value != 1.0 for value in config.std):
            tensor /= np.asarray(config.std, np.float32)
        tensor = tensor.astype(config.dtype, copy=False)
    if config.layout == "NCHW":
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor)


class FileModel:
    """What both kinds share: the runner, its config and a count of runtime calls."""

    def __init__(self, name: str, config: ModelConfig, runner, labels: tuple[str, ...], file_format: str):
        self.name, self.config, self.runner, self.labels, self.format = name, config, runner, labels, file_format
        self.model_file = MODEL_FILES[file_format]
        self.runtime = runner.runtime
        self.runs = 0                   # calls of the runtime (a refused input never adds one)
        self._runs_lock = threading.Lock()

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        with self._runs_lock:
            self.runs += 1
        outputs = self.runner.run(self.config.input_name, model_tensor(batch, self.config))
        return [np.asarray(output) for output in outputs]


class FileClassifier(FileModel):
    """spec + predict(batch) -> probabilities, like models.Classifier."""

    def check(self, version: VersionDir) -> None:
        """Probe once: the class count (against labels.txt) and, unless the config says, probabilities or logits."""
        size = self.config.height
        probe = np.stack([np.zeros((size, size, 3), np.uint8),
                          np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)])
        scores = self._scores(probe)
        classes = scores.shape[1]
        if self.labels and len(self.labels) != classes:
            raise ModelError(f"labels.txt has {len(self.labels)} labels but {self.model_file}'s output has {classes} "
                             "classes")
        self.labels = self.labels or tuple(str(i) for i in range(classes))
        if self.config.output is None:
            sums_to_one = np.abs(scores.sum(axis=1) - 1.0).max() <= PROBABILITY_SUM_TOLERANCE
            self.apply_softmax = not (sums_to_one and scores.min() >= 0.0 and scores.max() <= 1.0)
        else:
            self.apply_softmax = self.config.output == "logits"
        self.spec = version_spec(version, classes, self.config, self.labels)

    def _scores(self, batch: np.ndarray) -> np.ndarray:
        outputs = self._run(batch)
        return outputs[0].reshape(batch.shape[0], -1).astype(np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 or float32 RGB 0..255 -> (N, classes) float32 probabilities."""
        _check_batch(batch, self.spec.input_size)
        scores = self._scores(batch)
        if scores.shape != (batch.shape[0], len(self.labels)):
            raise ModelError(f"{self.model_file} returned {list(scores.shape)} for {batch.shape[0]} images")
        if not self.apply_softmax:
            return scores
        exponents = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exponents / exponents.sum(axis=1, keepdims=True)

    def warm_up(self) -> None:
        size = self.spec.input_size
        self.predict(np.zeros((1, size, size, 3), np.uint8))


class FileDetector(FileModel):
    """spec + detect(images) -> per image its detections, like models.detector.Detector."""

    def check(self, version: VersionDir) -> None:
        """Probe once: the outputs fit the head (and the yolo class count fits labels.txt)."""
        config = self.config
        self.limits = Limits(config.score_threshold, config.iou_threshold, config.max_detections)
        self.num_classes = len(self.labels) or None
        if config.head == "ssd":
            self.ssd_order = ssd_output_order(self.runner.output_names)
        outputs = self._run(fit(np.zeros((48, 64, 3), np.uint8), config.width, config.height, config.resize)[0][None])
        if config.head == "yolo":
            self.num_classes = yolo_layout(self._yolo_output(outputs).shape[1:], self.num_classes, config.objectness)[2]
        self.labels = self.labels or tuple(str(i) for i in range(self.num_classes or 0))
        self._decode(outputs, 0)
        self.spec = version_spec(version, self.num_classes, config, self.labels)

    def detect(self, batch: Sequence[np.ndarray]) -> list[list[dict]]:
        """RGB (H, W, 3) uint8 or float32 0..255 arrays, sizes free -> per image its detections
        {"label", "class_id", "score", "box": [x_min, y_min, x_max, y_max]} in the pixels of the
        array given, best first."""
        images = list(batch)
        if len(images) > MAX_BATCH:
            raise ValueError(f"batch size must be at most {MAX_BATCH}, got {len(images)}")
        for index, image in enumerate(images):
            _check_image(image, index)
        if not images:
            return []
        config = self.config
        fitted = [fit(image, config.width, config.height, config.resize, config.resample) for image in images]
        outputs = self._run(np.stack([pixels for pixels, _ in fitted]))
        return [self._detections(self._decode(outputs, index), placement, images[index].shape)
                for index, (_, placement) in enumerate(fitted)]

    def _yolo_output(self, outputs: list[np.ndarray]) -> np.ndarray:
        output = next((output for output in outputs if output.ndim == 3), None)
        if output is None:
            raise ModelError(f"yolo head: {self.model_file} has no output [N, 4 + C, A] or [N, A, 4 + C]")
        return output

    def _decode(self, outputs: list[np.ndarray], index: int) -> Found:
        if self.config.head == "yolo":
            return decode_yolo(self._yolo_output(outputs)[index], self.num_classes, self.config.objectness, self.limits)
        boxes, classes, scores, count = self.ssd_order
        if max(boxes, classes, scores, count or 0) >= len(outputs):
            raise ModelError(f"ssd head: {self.model_file} has {len(outputs)} outputs")
        return decode_ssd(outputs[boxes][index], outputs[classes][index], outputs[scores][index],
                          None if count is None else outputs[count].reshape(len(outputs[boxes]), -1)[index],
                          (self.config.width, self.config.height), self.limits)

    def _detections(self, found: Found, placement: Placement, shape: tuple[int, ...]) -> list[dict]:
        height, width = shape[:2]
        boxes = placement.to_image(found.boxes)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
        return [{"label": self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id),
                 "class_id": int(class_id), "score": round(float(score), SCORE_DECIMALS),
                 "box": [float(value) for value in box]}
                for box, score, class_id in zip(boxes, found.scores, found.classes, strict=True)]

    def warm_up(self) -> None:
        self.detect([np.zeros((self.config.height, self.config.width, 3), np.uint8)])


def open_runner(version: VersionDir, threads: int):
    if version.format == "onnx":
        from image_gateway.models.onnx_model import OnnxRunner
        return OnnxRunner(version.model_file, threads)
    from image_gateway.models.tflite_model import TFLiteRunner
    return TFLiteRunner(version.model_file, threads)


def load_file_version(version: VersionDir, threads: int = 1) -> FileClassifier | FileDetector:
    """model.onnx / model.tflite with its config and labels, probed once; ModelError says why not."""
    runner = open_runner(version, threads)
    config = version_config(version, runner.inputs)
    kind = FileDetector if config.kind == "detector" else FileClassifier
    model = kind(version.name, config, runner, version_labels(version), version.format)
    model.check(version)
    return model
