"""A loaded model behind one compiled, batched predict call.

Why compiled: keras `Model.predict` costs milliseconds of Python per call, as much as a whole
batch-1 inference of EfficientNet-Lite0. Here normalisation, the network and softmax run as one
traced function per input dtype: a `tf.function` with a variable batch dimension under TensorFlow
(traced once), or `jax.jit` of the stateless call under JAX, where the batch is padded up to a
power of two so at most nine shapes are ever compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from image_gateway.models.errors import ModelError
from image_gateway.models.spec import ModelSpec

MAX_BATCH = 256
INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


class Classifier:
    """spec + predict(batch) -> softmax probabilities, one row per input."""

    def __init__(self, spec: ModelSpec, model, preprocess: Callable, apply_softmax: bool = True):
        import keras

        self.spec = spec
        self.model = model
        compile_fn = _compile_jax if keras.backend.backend() == "jax" else _compile_tf
        self.forward = _forward(model, preprocess, apply_softmax)   # pixels -> probabilities (LiteRT converts it)
        self._predict = compile_fn(model, self.forward, spec.input_size)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 or float32 RGB 0..255 -> (N, num_classes) float32 probabilities."""
        _check_batch(batch, self.spec.input_size)
        probabilities = np.asarray(self._predict(batch), dtype=np.float32)
        if probabilities.shape[0] != batch.shape[0]:
            raise ModelError(f"model returned {probabilities.shape[0]} rows for {batch.shape[0]}")
        return probabilities


def _check_batch(batch: np.ndarray, size: int) -> None:
    if not isinstance(batch, np.ndarray) or batch.dtype not in INPUT_DTYPES:
        raise ValueError(f"batch must be a uint8 or float32 numpy array, got "
                         f"{getattr(batch, 'dtype', type(batch))}")
    if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
        raise ValueError(f"batch must have shape (N, {size}, {size}, 3), got {batch.shape}")
    if not 1 <= batch.shape[0] <= MAX_BATCH:
        raise ValueError(f"batch size must be 1..{MAX_BATCH}, got {batch.shape[0]}")


def _forward(model, preprocess: Callable, apply_softmax: bool) -> Callable:
    """pixels -> probabilities, written in keras.ops so it traces on any backend."""
    from keras import ops

    def forward(pixels):
        outputs = model(preprocess(ops.cast(pixels, "float32")), training=False)
        return ops.softmax(outputs, axis=-1) if apply_softmax else outputs

    return forward


def _compile_tf(model, forward: Callable, size: int) -> Callable:
    import tensorflow as tf

    functions = {
        dtype: tf.function(forward, input_signature=[tf.TensorSpec([None, size, size, 3], dtype)],
                           reduce_retracing=True).get_concrete_function()
        for dtype in (tf.uint8, tf.float32)
    }
    return lambda batch: functions[tf.as_dtype(batch.dtype)](tf.constant(batch)).numpy()


def _compile_jax(model, forward: Callable, size: int) -> Callable:
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def stateless(trainable_values, non_trainable_values, pixels):
        from keras import StatelessScope

        mapping = list(zip(model.trainable_variables, trainable_values, strict=True))
        mapping += list(zip(model.non_trainable_variables, non_trainable_values, strict=True))
        with StatelessScope(state_mapping=mapping):
            return forward(pixels)

    def predict(batch: np.ndarray):
        count = batch.shape[0]
        padded = np.zeros((_bucket(count),) + batch.shape[1:], batch.dtype)
        padded[:count] = batch
        return np.asarray(stateless(trainable, non_trainable, padded))[:count]

    return predict


def _bucket(count: int) -> int:
    return 1 << (count - 1).bit_length()
