"""Exceptions shared by the model loaders and the ONNX path (no torch import here)."""

__all__ = ["ModelLoadingError", "ModelArgumentsError"]


class ModelLoadingError(RuntimeError):
    """A model or checkpoint could not be found, downloaded, verified or read."""


class ModelArgumentsError(ModelLoadingError, TypeError):
    """A model file gives constructor arguments its model class does not take.

    Also a ``TypeError``, which is what upstream raised for the same file.
    """
