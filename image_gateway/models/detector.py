"""The built-in face detector ``mtcnn``: MTCNN (P/R/O-Net) of the ``mtcnn==1.0.0`` package.

Offline: the three nets' weights ship inside the wheel and are read from its package data.
Importing this module is cheap (no TensorFlow; its spec, models.spec.MTCNN_SPEC, is the web tier's);
load_detector imports mtcnn, which imports TensorFlow.

How mtcnn is driven, and why:
- Its three Keras nets are wrapped in ``tf.function`` with a fixed input signature (free batch,
  height and width), so each is traced once. mtcnn calls them eagerly, once per pyramid scale,
  and Keras' per-layer eager overhead was most of the time (512 px photo: 130 ms -> 50 ms, same
  outputs to the last bit).
- Images go in as float32: mtcnn normalises in the input's dtype, and uint8 became float64 that
  every pyramid resize converted again (1024 px: 220 ms -> 133 ms, same outputs).
- Its batch API pads a mixed-size batch to the largest image, and 1.0.0 then pairs the padding
  offsets with the images that have detections rather than with all images, so a face can come
  back at the wrong place. Images of one shape need no padding: each group of equal shapes is one
  batched call, and its answers equal the single-image ones.
- mtcnn's defaults are kept (smallest face 20 px of the working image, thresholds 0.6/0.7/0.8,
  pyramid factor 0.709): at the 1024 px working size a face of 2% of the longest side is found.

Thread safety: a small pool of MTCNN instances (REPLICAS, 2 by default: the worker's two
threads), each used by one call at a time; a caller takes an idle one from a queue and puts it
back. Nothing mutable is shared between concurrent calls, whatever mtcnn's stage objects and
Keras' layer-call machinery tolerate (neither documents concurrent calls). A lock would be safe
too but serialises: two threads on separate instances measured ~30% more images/s than one after
the other (astronaut, 2 cores: 33 vs 44 ms per call). The pool, unlike one instance per thread,
is built and warmed up front, so neither a new thread nor a thread pool's churn costs a trace.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Sequence

import numpy as np

from image_gateway.models.errors import ModelError, ModelNotFoundError
from image_gateway.models.geometry import scale_detections
from image_gateway.models.spec import DETECTOR_NAME, FACE, MTCNN_SPEC, ModelSpec

MAX_BATCH = 256
REPLICAS = 2  # concurrent detect calls served without waiting (each instance: < 2 MB of weights)
IMAGES_PER_CALL = 8  # bounds one call's memory: a float32 stack of the images plus its pyramid
INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
BLANK_SIDE = 64  # warm-up image

# mtcnn's rows with output_type="numpy", box_format="xyxy": image index, x1, y1, x2, y2, score,
# the five landmarks' x, then their y, in this order (left_eye is the one on the image's left).
ROW_WIDTH = 16
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
LANDMARK_X, LANDMARK_Y = 6, 11
SCORE_DECIMALS = 6

# (stage class name, net input shape): P-Net sees whole pyramid levels, R/O-Net fixed crops.
STAGES = (("StagePNet", (None, None, None, 3)), ("StageRNet", (None, 24, 24, 3)),
          ("StageONet", (None, 48, 48, 3)))
NET_MIN_SIDE = 12  # P-Net's receptive field: the smallest input it accepts


class Detector:
    """spec + detect(batch) -> per image, its detections sorted by score (highest first)."""

    def __init__(self, spec: ModelSpec, instances: Sequence):
        if not instances:
            raise ValueError("a Detector needs at least one MTCNN instance")
        self.spec = spec
        self._replicas = len(instances)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # instances not serving a call now
        for instance in instances:
            self._idle.put(instance)

    def detect(self, batch: Sequence[np.ndarray]) -> list[list[dict]]:
        """RGB (H, W, 3) uint8 or float32 0..255 arrays, sizes free -> per image a list of
        {"label", "score", "box": [x_min, y_min, x_max, y_max], "landmarks": {name: [x, y]}} in
        the pixels of the array given."""
        images = list(batch)
        if len(images) > MAX_BATCH:
            raise ValueError(f"batch size must be at most {MAX_BATCH}, got {len(images)}")
        for index, image in enumerate(images):
            _check_image(image, index)
        results: list[list[dict]] = [[] for _ in images]
        for indexes in _chunks_of_one_shape(images):
            rows = self._run([images[index] for index in indexes])
            for position, index in enumerate(indexes):
                results[index] = _detections(rows[rows[:, 0] == position], images[index].shape)
        return results

    def warm_up(self) -> None:
        """Trace the three nets and run one detection, so the first request pays neither."""
        import tensorflow as tf

        blank = [np.zeros((BLANK_SIDE, BLANK_SIDE, 3), np.float32)]
        instances = [self._idle.get() for _ in range(self._replicas)]  # waits for calls in flight
        try:
            for instance in instances:
                for stage, (_, input_shape) in zip(instance.stages, STAGES, strict=True):
                    stage.model(tf.zeros([1] + [side or NET_MIN_SIDE for side in input_shape[1:3]] + [3]))
                _detect_faces(instance, blank)
        finally:
            for instance in instances:
                self._idle.put(instance)

    def _run(self, images: list[np.ndarray]) -> np.ndarray:
        pixels = [np.ascontiguousarray(image, dtype=np.float32) for image in images]
        instance = self._idle.get()
        try:
            rows = _detect_faces(instance, pixels)
        finally:
            self._idle.put(instance)
        if rows.size and (rows.ndim != 2 or rows.shape[1] != ROW_WIDTH):
            raise ModelError(f"mtcnn returned rows of shape {rows.shape}, expected (N, {ROW_WIDTH})")
        return rows.reshape(-1, ROW_WIDTH)


def _detect_faces(instance, pixels: list[np.ndarray]) -> np.ndarray:
    # postprocess=False: no padding to undo (one shape per call); clipping is done here.
    rows = instance.detect_faces(pixels, box_format="xyxy", output_type="numpy", postprocess=False)
    return np.asarray(rows, dtype=np.float64)


def _check_image(image: np.ndarray, index: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype not in INPUT_DTYPES:
        raise ValueError(f"image {index} must be a uint8 or float32 numpy array, got "
                         f"{getattr(image, 'dtype', type(image))}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index} must have shape (H, W, 3), got {image.shape}")


def _chunks_of_one_shape(images: list[np.ndarray]) -> list[list[int]]:
    """Indexes of the images grouped by shape (first-seen order), at most IMAGES_PER_CALL each."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return [indexes[start:start + IMAGES_PER_CALL]
            for indexes in groups.values() for start in range(0, len(indexes), IMAGES_PER_CALL)]


def _detections(rows: np.ndarray, shape: tuple[int, ...]) -> list[dict]:
    """One image's mtcnn rows -> detection dicts, clipped to the image, highest score first."""
    height, width = shape[:2]
    found = [{
        "label": FACE,
        "score": round(float(row[5]), SCORE_DECIMALS),
        "box": [float(value) for value in row[1:5]],
        "landmarks": {name: [float(row[LANDMARK_X + i]), float(row[LANDMARK_Y + i])]
                      for i, name in enumerate(LANDMARK_NAMES)},
    } for row in rows]
    found.sort(key=lambda detection: detection["score"], reverse=True)
    return scale_detections(found, 1.0, (width, height))


def load_detector(name: str = DETECTOR_NAME, *, replicas: int = REPLICAS) -> Detector:
    """Build MTCNN from the weights inside the mtcnn wheel (nothing is downloaded), with its nets
    traced (see the module docstring). Needs Keras on the TensorFlow backend."""
    if name != DETECTOR_NAME:
        raise ModelNotFoundError(f"unknown detector {name!r}; known detectors: {DETECTOR_NAME}")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ModelError(f"the {DETECTOR_NAME} detector runs on TensorFlow; this worker runs Keras on "
                         f"{keras.backend.backend()!r} (unset KERAS_BACKEND for the detector's worker)")
    try:
        import mtcnn
        import mtcnn.stages
    except ImportError as exc:
        raise ModelError(f"the {DETECTOR_NAME} detector needs the mtcnn package "
                         f"(pip install mtcnn==1.0.0): {exc}") from exc
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    return Detector(MTCNN_SPEC, [_build_mtcnn(mtcnn) for _ in range(replicas)])


def _build_mtcnn(mtcnn):
    stages = [_traced(getattr(mtcnn.stages, class_name)(), input_shape) for class_name, input_shape in STAGES]
    return mtcnn.MTCNN(stages=stages)


def _traced(stage, input_shape: tuple[int | None, ...]):
    """The stage with its Keras net replaced by a tf.function of it (traced once).

    mtcnn 1.0.0's stages call ``self._model(batch)``, and StageBase stores the net there; the
    package is pinned, so this is the one place that relies on it.
    """
    import tensorflow as tf

    # A partial, not a lambda: TensorFlow counts traces per code object, and six lambdas of one
    # code object (two instances x three nets) would log a false "excessive retracing" warning.
    stage._model = tf.function(functools.partial(_call_net, stage.model),
                               input_signature=[tf.TensorSpec(input_shape, tf.float32)])
    return stage


def _call_net(network, pixels):
    return network(pixels)
