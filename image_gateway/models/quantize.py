"""Full-integer (INT8) conversion of an EfficientNet-Lite classifier, and the accuracy check that gates it.

Conversion: TensorFlow's converter with a representative dataset, every op in int8 (TFLITE_BUILTINS_INT8:
int8 weights per channel, int8 activations), a float32 input of RGB 0..255 pixels (quantised in the
graph with scale 1, so integer pixels are exact) and a float32 output. The file ends at the logits, not
the softmax: an int8 softmax has steps of 1/256, so most of a top-5 would read 0.0 and tie; the
runtime applies softmax to the dequantised logits in numpy (models/litert.py, microseconds).

Calibration: DEFAULT_COUNT generated photo-like images (models/calibration.py) through the web tier's
own resize and crop (imaging.fit_square), so each activation's range is that of a served request.

The check: the fp32 Keras model and the int8 file classify CHECK_DIR's real photos (none of them seen
by calibration), each as VIEWS_PER_PHOTO views (the centre crop a request gets, four corner crops of
80% of the shorter side, and the five mirrored). Two figures: top-1 agreement (int8's top-1 is fp32's),
and containment (fp32's top-1 is inside int8's top-3). Below MIN_TOP1_AGREEMENT or MIN_TOP3_CONTAINMENT
the conversion fails: the version is UNAVAILABLE and the reason carries the figures.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from image_gateway import imaging
from image_gateway.models import calibration
from image_gateway.models.errors import ModelError
from image_gateway.models.spec import ModelSpec

CHECK_DIR = Path(__file__).with_name("check_photos")
CHECK_PHOTOS = ("astronaut.jpg", "cat.jpg", "coffee.jpg", "grace_hopper.jpg", "motorcycle.jpg", "rocket.jpg")
CORNER_CROP = 0.8            # side of a corner view, as a fraction of the photo's shorter side
VIEWS_PER_PHOTO = 10
# Bars. Measured (README "INT8 models"): agreement 0.933 / 0.883 / 0.933 for lite0 / 1 / 2, containment
# 1.000 for all three; a broken conversion (the network fed unnormalised pixels) agrees on almost no view.
# The misses of a sound conversion are near-ties of fp32 itself, which int8 keeps in its top-3: so the
# agreement bar leaves lite1 a margin of 5 views in 60, and containment may miss 3 views in 60.
MIN_TOP1_AGREEMENT = 0.8
MIN_TOP3_CONTAINMENT = 0.95
# What a cached int8 file depends on besides the weights and the converter (litert.cache_key).
KEY_FIELDS = {"precision": "int8", "calibration": calibration.RECIPE, "calibration_count": calibration.DEFAULT_COUNT,
              "check": f"{len(CHECK_PHOTOS)}x{VIEWS_PER_PHOTO}", "bars": [MIN_TOP1_AGREEMENT, MIN_TOP3_CONTAINMENT],
              "output": "logits"}


class QuantizationError(ModelError):
    """The int8 conversion failed, or the converted model disagrees with fp32 beyond the bars."""


@dataclass(frozen=True)
class Agreement:
    """How the int8 model's answers compare with fp32's on the check set."""

    photos: int
    views: int
    top1_agreement: float          # share of views where int8's top-1 is fp32's
    fp32_top1_in_top3: float       # share of views where fp32's top-1 is inside int8's top-3
    centre_top1_agreement: float   # the same on the centre crop alone (what a request gets), per photo
    calibration_images: int = calibration.DEFAULT_COUNT
    calibration: str = calibration.RECIPE

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= MIN_TOP1_AGREEMENT and self.fp32_top1_in_top3 >= MIN_TOP3_CONTAINMENT

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "summary": self.summary(),
                "bars": {"top1_agreement": MIN_TOP1_AGREEMENT, "fp32_top1_in_top3": MIN_TOP3_CONTAINMENT}}

    def summary(self) -> str:
        return (f"top-1 agreement with fp32 {self.top1_agreement:.3f} (bar {MIN_TOP1_AGREEMENT}), fp32 top-1 "
                f"in int8 top-3 {self.fp32_top1_in_top3:.3f} (bar {MIN_TOP3_CONTAINMENT}) on {self.views} views "
                f"of {self.photos} real photos")


def check_views(spec: ModelSpec, photo_dir: Path = CHECK_DIR) -> np.ndarray:
    """(photos * VIEWS_PER_PHOTO, S, S, 3) uint8: per photo the centre crop first, then the corners,
    then the same five mirrored."""
    views = []
    for name in CHECK_PHOTOS:
        try:
            with Image.open(photo_dir / name) as opened:
                photo = opened.convert("RGB")
        except OSError as exc:
            raise QuantizationError(f"the int8 check photo {name} is unreadable: {exc}") from None
        width, height = photo.size
        side = int(min(width, height) * CORNER_CROP)
        crops = [photo] + [photo.crop((x, y, x + side, y + side))
                           for x in (0, width - side) for y in (0, height - side)]
        upright = [imaging.fit_square(crop, spec) for crop in crops]
        views += upright + [np.ascontiguousarray(view[:, ::-1]) for view in upright]
    return np.stack(views)


def compare(fp32: np.ndarray, int8: np.ndarray) -> Agreement:
    """Agreement of two (views, classes) probability arrays laid out as check_views makes them."""
    reference, top3 = fp32.argmax(axis=1), np.argsort(-int8, axis=1)[:, :3]
    agree = int8.argmax(axis=1) == reference
    inside = (top3 == reference[:, None]).any(axis=1)
    return Agreement(photos=len(fp32) // VIEWS_PER_PHOTO, views=len(fp32),
                     top1_agreement=round(float(agree.mean()), 4), fp32_top1_in_top3=round(float(inside.mean()), 4),
                     centre_top1_agreement=round(float(agree[::VIEWS_PER_PHOTO].mean()), 4))


def check(spec: ModelSpec, fp32_predict: Callable, int8_predict: Callable) -> Agreement:
    """Both models on the check views (fp32: the Keras classifier's predict; int8: the converted file's)."""
    views = check_views(spec)
    return compare(np.asarray(fp32_predict(views)), np.asarray(int8_predict(views)))


def calibration_batch(spec: ModelSpec, count: int = calibration.DEFAULT_COUNT) -> np.ndarray:
    """(count, S, S, 3) uint8: the generated images as the web tier would hand them to the model."""
    return np.stack([imaging.fit_square(image, spec) for image in calibration.calibration_images(count)])


def convert_int8(classifier, preprocess: Callable, count: int = calibration.DEFAULT_COUNT) -> bytes:
    """The Keras classifier's network (after `preprocess`, before softmax) as a full-integer LiteRT file:
    float32 (1, S, S, 3) pixels in, float32 logits out. Imports TensorFlow."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise QuantizationError(f"int8 conversion needs KERAS_BACKEND=tensorflow, not {keras.backend.backend()}")
    spec, model = classifier.spec, classifier.model
    size, pixels = spec.input_size, calibration_batch(classifier.spec, count).astype(np.float32)
    weights = [(variable, variable.numpy()) for variable in model.weights]

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def logits(batch):   # weights as constants, as litert.convert does
        with keras.StatelessScope(state_mapping=[(v, tf.constant(a)) for v, a in weights]):
            return model(preprocess(batch), training=False)

    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([logits.get_concrete_function()], model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([pixels[i:i + 1]] for i in range(len(pixels)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        with warnings.catch_warnings():   # "Statistics for quantized inputs were expected": the input is float
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as exc:   # the converter raises many kinds (ConverterError, ValueError, RuntimeError ...)
        raise QuantizationError(f"{spec.name} does not convert to int8: {exc}") from exc


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32 (the int8 file stops at the logits)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)
