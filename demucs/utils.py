"""Small tensor and process helpers shared by the models and by ``apply``.

Everything here that touches tensors is written to be export-safe: it only does
shape arithmetic with Python ints and never branches on tensor values.
"""

from __future__ import annotations

import os
import sys
import tempfile
import typing as tp
from collections import defaultdict
from concurrent.futures import CancelledError
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
    "fatal",
    "pull_metric",
    "EMA",
    "random_subset",
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


def center_trim(tensor: torch.Tensor, reference: tp.Union[torch.Tensor, int]) -> torch.Tensor:
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
    target: tp.Any = reference
    if isinstance(reference, torch.Tensor) and reference.dim() > 0:
        target = reference.shape[-1]
    excess = tensor.shape[-1] - target
    if isinstance(excess, int):
        if excess < 0:
            raise ValueError(
                f"cannot trim a tensor of length {tensor.shape[-1]} to the longer length {target}"
            )
        if excess == 0:
            return tensor
    left = excess // 2
    return tensor[..., left : left + target]


def unfold(a: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Cuts the last axis into overlapping frames.

    The input is zero padded on the right so that every sample lands in a frame and
    there are ``ceil(T / stride)`` frames. (The first parameter is named ``a``, as
    upstream names it, so keyword calls keep working.)

    Args:
        a: tensor ``(*other, T)``.
        kernel_size: frame length ``K``.
        stride: hop between the starts of two consecutive frames.

    Returns:
        tensor ``(*other, ceil(T / stride), K)``.
    """
    if kernel_size <= 0 or stride <= 0:
        raise ValueError(f"kernel_size ({kernel_size}) and stride ({stride}) must be positive")
    signal = a
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


def fatal(*args: tp.Any) -> tp.NoReturn:
    """Prints ``args`` to stderr and exits with status 1 (``SystemExit(1)``).

    Kept for programs written against upstream; this package's own code raises
    exceptions instead, so that library callers can handle them.
    """
    print(*args, file=sys.stderr)
    sys.exit(1)


def pull_metric(history: tp.Sequence[tp.Mapping[str, tp.Any]], name: str) -> tp.List[tp.Any]:
    """The value of the (dotted) metric ``name`` in every entry of ``history``.

    ``pull_metric([{"valid": {"loss": 1}}, {"valid": {"loss": 2}}], "valid.loss")``
    is ``[1, 2]``; a missing key raises ``KeyError``.
    """
    keys = name.split(".")
    values = []
    for entry in history:
        value: tp.Any = entry
        for key in keys:
            value = value[key]
        values.append(value)
    return values


def EMA(beta: float = 1) -> tp.Callable[..., tp.Dict[str, float]]:
    """An exponential moving average of dicts of metrics.

    Returns ``update(metrics, weight=1) -> averages``: every call folds ``metrics`` (name
    -> number) in with ``weight``, older contributions being multiplied by ``beta``, and
    returns the weighted average of every name seen so far. ``beta=1`` is a plain
    (weighted) mean.
    """
    sums: tp.Dict[str, float] = defaultdict(float)
    weights: tp.Dict[str, float] = defaultdict(float)

    def update(metrics: tp.Mapping[str, tp.Any], weight: float = 1) -> tp.Dict[str, float]:
        for key, value in metrics.items():
            sums[key] = sums[key] * beta + weight * float(value)
            weights[key] = weights[key] * beta + weight
        return {key: total / weights[key] for key, total in sums.items()}

    return update


def random_subset(dataset: tp.Any, max_samples: int, seed: int = 42) -> tp.Any:
    """At most ``max_samples`` items of ``dataset``, drawn without replacement.

    The draw depends only on ``seed`` and ``len(dataset)``. Returns ``dataset`` itself
    when it is not larger than ``max_samples``, else a ``torch.utils.data.Subset``.
    """
    from torch.utils.data import Subset

    if max_samples >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)
    return Subset(dataset, order[:max_samples].tolist())


class _DeferredResult(tp.Generic[T]):
    """A "future" whose work runs, in the calling thread, when ``result()`` is asked.

    Once its executor was shut down with ``cancel_futures=True``, ``result()`` raises
    ``concurrent.futures.CancelledError`` instead of running the work.
    """

    def __init__(
        self, func: tp.Callable[..., T], state: tp.Dict[str, bool], *args: tp.Any, **kwargs: tp.Any
    ) -> None:
        self._func = func
        self._state = state
        self._args = args
        self._kwargs = kwargs

    def result(self) -> T:
        if self._state["cancelled"]:
            raise CancelledError()
        return self._func(*self._args, **self._kwargs)


class DummyPoolExecutor:
    """Stand-in for ``concurrent.futures`` executors that runs jobs lazily and serially.

    ``submit`` returns an object with a ``result()`` method, like a ``Future``; the job
    runs when ``result()`` is called, in the caller's thread. ``shutdown`` follows
    ``Executor.shutdown``: no new jobs afterwards, and with ``cancel_futures=True`` the
    jobs not run yet are cancelled (their ``result()`` raises ``CancelledError``), which
    is how ``apply_model`` stops on Ctrl-C.
    """

    DummyResult = _DeferredResult

    def __init__(self, workers: int = 0) -> None:
        del workers  # accepted for interface compatibility with real executors
        self._state = {"cancelled": False, "shut_down": False}

    def submit(
        self, func: tp.Callable[..., T], *args: tp.Any, **kwargs: tp.Any
    ) -> _DeferredResult[T]:
        if self._state["shut_down"]:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return _DeferredResult(func, self._state, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuses new jobs; with ``cancel_futures``, cancels those not run yet.

        ``wait`` has nothing to wait for (no job runs in the background).
        """
        del wait
        self._state["shut_down"] = True
        if cancel_futures:
            self._state["cancelled"] = True

    def __enter__(self) -> "DummyPoolExecutor":
        return self

    def __exit__(self, exc_type: tp.Any, exc_value: tp.Any, exc_tb: tp.Any) -> None:
        self.shutdown(wait=True)
