"""Exceptions shared by the model loaders and the ONNX path (no torch import here)."""

import typing as tp

__all__ = ["ModelLoadingError", "ModelArgumentsError", "TrainingOnlyError", "training_only"]


class ModelLoadingError(RuntimeError):
    """A model or checkpoint could not be found, downloaded, verified or read."""


class TrainingOnlyError(ImportError):
    """Raised on import of one of upstream Demucs's training modules, which this
    inference fork does not ship."""


def training_only(module: str) -> tp.NoReturn:
    """Raises :class:`TrainingOnlyError` for ``module`` (e.g. "demucs.train").

    Called at import time by the stand-ins of upstream's training modules, so that code
    written for upstream fails on the import with a message saying why.
    """
    raise TrainingOnlyError(
        f"{module} is part of upstream Demucs's training code, which this package does "
        "not include: it is the inference fork of Demucs (separation, ONNX export). To "
        "train or evaluate models, install upstream demucs in a separate environment.",
        name=module,
    )


class ModelArgumentsError(ModelLoadingError, TypeError):
    """A model file gives constructor arguments its model class does not take.

    Also a ``TypeError``, which is what upstream raised for the same file.
    """
