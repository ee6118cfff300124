"""Small tensor and process helpers shared by the models and by ``apply``.

Everything here that touches tensors is written to be export-safe: it only does
shape arithmetic with Python ints and never branches on tensor values.
"""
from __future__ import annotations

import os
import tempfile
import typing as tp
from contextlib import contextmanager

import torch
from torch.nn import functional as F

__all__ = [
    "ceil_div",
    "is_exporting",
    "center_trim",
    "unfold",
    "DummyPoolExecutor",
    "temp_filenames",
    "sizeof_fmt",
]

T = tp.TypeVar("T")


def is_exporting() -> bool:
    """True while an exporter traces the model (TorchScript/ONNX tracing, torch.export,
    dynamo). Code that should leave computations in the graph, or pick an export-friendly
    formulation, checks this."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return True
    for probe in ("is_exporting", "is_compiling"):
        check = getattr(torch.compiler, probe, None)
        if check is not None and check():
            return True
    return False


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ``ceil(numerator / denominator)`` for a positive ``denominator``.

    Exact for any (also negative) integer numerator, and safe to use on symbolic
    shapes during export, unlike ``math.ceil`` on a float division.
    """
    return (numerator + denominator - 1) // denominator


def center_trim(tensor: torch.Tensor,
                reference: tp.Union[torch.Tensor, int]) -> torch.Tensor:
    """Trims the last axis of ``tensor`` symmetrically down to a target length.

    Args:
        tensor: any tensor ``(..., T)``.
        reference: the target length ``T'`` (an int, or a 0-dim tensor as shapes are
            while tracing for export), or a tensor whose last axis has length ``T'``.

    Returns:
        ``tensor[..., a:a + T']`` with ``a = (T - T') // 2``: when the excess is odd,
        the extra sample is removed on the right.

    Raises:
        ValueError: if the target is longer than ``tensor`` (checked when known).
    """
    if isinstance(reference, torch.Tensor) and reference.dim() > 0:
        target = reference.shape[-1]
    else:
        target = reference
    excess = tensor.shape[-1] - target
    if isinstance(excess, int):
        if excess < 0:
            raise ValueError(f"cannot trim a tensor of length {tensor.shape[-1]} "
                             f"to the longer length {target}")
        if excess == 0:
            return tensor
    left = excess // 2
    return tensor[..., left:left + target]


def unfold(signal: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Cuts the last axis into overlapping frames.

    The input is zero padded on the right so that every sample lands in a frame and
    there are ``ceil(T / stride)`` frames.

    Args:
        signal: tensor ``(*other, T)``.
        kernel_size: frame length ``K``.
        stride: hop between the starts of two consecutive frames.

    Returns:
        tensor ``(*other, ceil(T / stride), K)``.
    """
    if kernel_size <= 0 or stride <= 0:
        raise ValueError(f"kernel_size ({kernel_size}) and stride ({stride}) must be positive")
    length = signal.shape[-1]
    n_frames = ceil_div(length, stride)
    padded_length = (n_frames - 1) * stride + kernel_size
    signal = F.pad(signal, (0, padded_length - length))
    # Gather rather than `Tensor.unfold`/`as_strided`: it exports to ONNX (Gather)
    # even when the length is only known at run time.
    starts = torch.arange(n_frames, device=signal.device) * stride
    index = starts[:, None] + torch.arange(kernel_size, device=signal.device)
    return signal[..., index]


def sizeof_fmt(num: float, suffix: str = "B") -> str:
    """Human readable size with binary prefixes, e.g. ``sizeof_fmt(3 * 2**20) == '3.0MiB'``."""
    for unit in ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi"]:
        if abs(num) < 1024.0:
            return f"{num:3.1f}{unit}{suffix}"
        num /= 1024.0
    return f"{num:.1f}Yi{suffix}"


@contextmanager
def temp_filenames(count: int, delete: bool = True) -> tp.Iterator[tp.List[str]]:
    """Yields ``count`` fresh temporary file names, removed on exit if ``delete``."""
    names: tp.List[str] = []
    try:
        for _ in range(count):
            handle = tempfile.NamedTemporaryFile(delete=False)
            handle.close()
            names.append(handle.name)
        yield names
    finally:
        if delete:
            for name in names:
                if os.path.exists(name):
                    os.unlink(name)


class _DeferredResult(tp.Generic[T]):
    """A "future" whose work runs, in the calling thread, when ``result()`` is asked."""

    def __init__(self, func: tp.Callable[..., T], *args: tp.Any, **kwargs: tp.Any) -> None:
        self._func = func
        self._args = args
        self._kwargs = kwargs

    def result(self) -> T:
        return self._func(*self._args, **self._kwargs)


class DummyPoolExecutor:
    """Stand-in for ``concurrent.futures`` executors that runs jobs lazily and serially.

    ``submit`` returns an object with a ``result()`` method, like a ``Future``; the job
    runs when ``result()`` is called, in the caller's thread.
    """

    DummyResult = _DeferredResult

    def __init__(self, workers: int = 0) -> None:
        del workers  # accepted for interface compatibility with real executors

    def submit(self, func: tp.Callable[..., T], *args: tp.Any,
               **kwargs: tp.Any) -> _DeferredResult[T]:
        return _DeferredResult(func, *args, **kwargs)

    def __enter__(self) -> "DummyPoolExecutor":
        return self

    def __exit__(self, *exc_info: tp.Any) -> None:
        return None
