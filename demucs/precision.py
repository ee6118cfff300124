"""Numeric precision of PyTorch forward passes (placeholder until the bf16 mode lands)."""
from __future__ import annotations

import contextlib
import typing as tp

PRECISIONS = ("fp32",)


def precision_context(precision: str, device: tp.Any) -> tp.ContextManager[None]:
    """A context in which forward passes run at ``precision``."""
    if precision != "fp32":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return contextlib.nullcontext()


def check_precision(precision: str, device: tp.Any) -> None:
    """Raises ValueError when ``precision`` cannot run (fast) on ``device``."""
    precision_context(precision, device)
