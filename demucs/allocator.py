"""glibc ``malloc`` settings for long CPU runs (process-wide; ctypes only).

Two opposite needs, measured on the htdemucs architecture:

* PyTorch (:func:`tune_allocator`): a forward pass allocates and frees hundreds of MB of
  temporaries. With glibc's defaults each large buffer is a fresh ``mmap`` returned at
  ``free``, and every segment pays for the kernel zeroing pages again (~300,000 page
  faults per 7.8 s segment). Large mmap/trim thresholds keep that memory in the heap:
  same results, ~20 % faster, same peak RSS.
* ONNX Runtime with its arena off (:func:`bound_allocator`): glibc's *dynamic* mmap
  threshold rises as ORT frees its large buffers, so the next run takes them from the
  heap, which fragments and grows: the peak RSS went from 1.17 GB after one segment to
  1.7 GB after two. A fixed 1 MB threshold keeps large buffers mmapped: 1.15 GB
  steady, no slower.

Library code calls :func:`ensure_tuned_for_torch` before a PyTorch model first runs on
CPU, so ``apply_model`` and ``Separator`` get the command line's setting without the
caller doing anything; it applies :func:`tune_allocator` once per process.

All return False (and do nothing) on other C libraries or when
``DEMUCS_NO_MALLOC_TUNING=1``. The setting is process-wide: freed buffers stay in the
heap, so the process keeps its peak memory after a separation; :func:`release_memory`
hands it back to the system (glibc ``malloc_trim``). Environment equivalents, for your
own processes: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``
(PyTorch) and ``MALLOC_MMAP_THRESHOLD_=1048576`` (ONNX Runtime).
"""

from __future__ import annotations

import os
import threading
import typing as tp

NO_ALLOCATOR_TUNING_ENV = "DEMUCS_NO_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Thresholds of :func:`tune_allocator`: above the largest temporary of a forward pass.
TORCH_THRESHOLD = 1 << 30

_TUNE_LOCK = threading.Lock()
_tuned_for_torch: tp.Optional[bool] = None


def _libc() -> tp.Any:
    """glibc through ctypes, or None on other C libraries (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # glibc only: musl and others lack it
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt(settings: dict) -> bool:
    """Applies ``{param: value}`` with glibc's ``mallopt``; False where unavailable."""
    if os.environ.get(NO_ALLOCATOR_TUNING_ENV) == "1":
        return False
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(param, int(value)) for param, value in settings.items())


def tune_allocator(threshold: int = TORCH_THRESHOLD) -> bool:
    """For PyTorch on CPU: keep freed buffers in the heap (fewer page faults)."""
    return _mallopt({_M_MMAP_THRESHOLD: threshold, _M_TRIM_THRESHOLD: threshold})


def bound_allocator(threshold: int = 1 << 20) -> bool:
    """For ONNX Runtime on CPU: a fixed mmap threshold, so the peak RSS stays that of
    one run instead of growing with heap fragmentation."""
    return _mallopt({_M_MMAP_THRESHOLD: threshold})


def ensure_tuned_for_torch() -> bool:
    """:func:`tune_allocator` once per process (thread-safe); later calls cost a lock.

    Meant for the first CPU forward pass of a PyTorch model in library code
    (``apply_model``, ``Separator``). Returns whether the setting is in effect: False
    with ``DEMUCS_NO_MALLOC_TUNING=1`` (read at the first call) or without glibc.
    """
    global _tuned_for_torch
    with _TUNE_LOCK:
        if _tuned_for_torch is None:
            _tuned_for_torch = tune_allocator()
        return _tuned_for_torch


def release_memory() -> bool:
    """Returns the heap's free memory to the system (glibc ``malloc_trim(0)``).

    For long-lived processes after a separation under :func:`tune_allocator`, which
    otherwise keeps the peak in the heap for the next one. False without glibc.
    """
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
