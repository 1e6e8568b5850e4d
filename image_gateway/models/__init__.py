"""Model registry: the default EfficientNet-Lite0, keras.applications models, .keras files, and
repository versions holding model.onnx, model.tflite or model.keras (classifiers and detectors).

get_spec and known_models are cheap (no TensorFlow/Keras import) for the web tier; load_model
builds a Classifier for the worker, load_repository_version a repository version's model.
"""

from image_gateway.models.classifier import Classifier
from image_gateway.models.errors import ModelError, ModelNotFoundError, WeightsError
from image_gateway.models.loading import load_model, load_ocr_model, load_repository_version
from image_gateway.models.postprocess import top_predictions
from image_gateway.models.spec import ModelSpec, get_spec, known_models

__all__ = ["Classifier", "ModelError", "ModelNotFoundError", "ModelSpec", "WeightsError",
           "get_spec", "known_models", "load_model", "load_ocr_model", "load_repository_version",
           "top_predictions"]
