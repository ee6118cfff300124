"""Exceptions shared by the model loaders and the ONNX path (no torch import here)."""

__all__ = ["ModelLoadingError"]


class ModelLoadingError(RuntimeError):
    """A model or checkpoint could not be found, downloaded, verified or read."""
