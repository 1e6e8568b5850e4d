"""Errors the model registry raises; the worker maps them to one clear startup failure."""


class ModelError(Exception):
    """A model cannot be specified or loaded."""


class ModelNotFoundError(ModelError):
    """The model name is neither known nor a .keras file."""


class WeightsError(ModelError):
    """A weights file is missing, unreadable or does not fit the architecture."""
