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

Both return False (and do nothing) on other C libraries or when
``DEMUCS_NO_MALLOC_TUNING=1``. Environment equivalents, for your own processes:
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`` (PyTorch) and
``MALLOC_MMAP_THRESHOLD_=1048576`` (ONNX Runtime).
"""
from __future__ import annotations

import os

NO_ALLOCATOR_TUNING_ENV = "DEMUCS_NO_MALLOC_TUNING"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _mallopt(settings: dict) -> bool:
    """Applies ``{param: value}`` with glibc's ``mallopt``; False where unavailable."""
    if os.environ.get(NO_ALLOCATOR_TUNING_ENV) == "1":
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, int(value)) for param, value in settings.items())


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """For PyTorch on CPU: keep freed buffers in the heap (fewer page faults)."""
    return _mallopt({_M_MMAP_THRESHOLD: threshold, _M_TRIM_THRESHOLD: threshold})


def bound_allocator(threshold: int = 1 << 20) -> bool:
    """For ONNX Runtime on CPU: a fixed mmap threshold, so the peak RSS stays that of
    one run instead of growing with heap fragmentation."""
    return _mallopt({_M_MMAP_THRESHOLD: threshold})


_TUNED_FOR_TORCH = False


def tune_for_torch() -> bool:
    """:func:`tune_allocator` once per process, when a PyTorch model first runs on CPU
    (library calls get the command line's setting; ``DEMUCS_NO_MALLOC_TUNING=1`` opts out)."""
    global _TUNED_FOR_TORCH
    if not _TUNED_FOR_TORCH:
        _TUNED_FOR_TORCH = True
        return tune_allocator()
    return False
