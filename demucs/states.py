"""Checkpoint format and model state helpers (upstream-compatible).

A checkpoint ("package") is a dict ``{"klass", "args", "kwargs", "state", "training_args"}``
as written by upstream Demucs; see ``serialize_model`` / ``load_model``.
"""
from __future__ import annotations

import functools
import typing as tp

import torch


def capture_init(init: tp.Callable) -> tp.Callable:
    """Decorates ``__init__`` so the constructor arguments are kept on the instance.

    ``serialize_model`` saves them as the checkpoint's ``args``/``kwargs``, so a model
    can be rebuilt from a checkpoint without knowing its configuration in advance.
    """

    @functools.wraps(init)
    def __init__(self: torch.nn.Module, *args: tp.Any, **kwargs: tp.Any) -> None:
        self._init_args_kwargs = (args, kwargs)
        init(self, *args, **kwargs)

    return __init__
