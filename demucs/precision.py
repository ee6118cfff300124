"""Opt-in reduced precision for PyTorch inference: bf16 on CPU, fp16 on CUDA.

``precision_context(precision, device)`` runs the model's matrix products and
convolutions (linear layers, fused attention, ``conv1d/2d`` and their transposes) in
bfloat16 (CPU) or float16 (CUDA) through ``torch.autocast``, whose kernels accumulate in
float32. Everything else stays float32:

* normalisations: ``torch.autocast`` leaves ``group_norm`` / ``layer_norm`` in the dtype of
  their input (bf16 after a convolution), so inside the context every ``nn.GroupNorm`` and
  ``nn.LayerNorm`` gets its input cast to float32 first (a global module pre-hook, active
  only in threads where autocast is on) and returns float32;
* the STFT and iSTFT: ``torch.stft`` / ``istft`` / ``view_as_complex`` are on autocast's
  float32 list, and the conv-STFT backend turns autocast off around itself
  (``demucs.spec``);
* LSTMs (Demucs/HDemucs ``BLSTM``): turn autocast off around themselves
  (``demucs.demucs``);
* softmax: inside the fused attention kernel, which accumulates in float32 (the CPU
  kernel of ``scaled_dot_product_attention`` computes its softmax in float32);
* the final sums: the model de-normalises each branch with float32 statistics and adds
  the branches in float32, and the output is float32.

The default, ``"fp32"``, is the exact float32 path: the context then does nothing.

bf16 pays only on CPUs with native bf16 instructions (x86 ``avx512_bf16`` or
``amx_bf16``, Arm ``bf16``); elsewhere PyTorch emulates it several times slower than
float32, so asking for it there raises ``ValueError`` instead. fp16 is CUDA only (x86
CPUs have no fast float16 arithmetic).

``torch.autocast`` state is per thread: enter the context in the thread that calls the
model (e.g. inside each segment worker of a thread pool).
"""

from __future__ import annotations

import contextlib
import typing as tp
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_PRECISION = "fp32"
#: /proc/cpuinfo flags that mean native bf16 arithmetic (x86: AVX-512 BF16 or AMX; Arm).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: tp.Optional[Path] = None) -> tp.FrozenSet[str]:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``);
    empty where the file does not exist (macOS, Windows)."""
    try:
        text = (cpuinfo or CPUINFO).read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: tp.Set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_supports_bf16(cpuinfo: tp.Optional[Path] = None) -> bool:
    """Whether this CPU has native bf16 arithmetic.

    From ``/proc/cpuinfo`` where it exists, else from PyTorch's own CPU detection (which
    knows x86's AVX-512 BF16 and AMX).
    """
    path = cpuinfo or CPUINFO
    if path.exists():
        return bool(cpu_flags(path) & set(BF16_CPU_FLAGS))
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _device_type(device: tp.Any) -> str:
    """``"cpu"``, ``"cuda"``, ... from a ``torch.device``, a string like ``"cuda:0"``."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def check_precision(precision: str, device: tp.Any = "cpu") -> None:
    """Raises ``ValueError`` (one line) if ``precision`` cannot run fast on ``device``.

    Call it early (argument parsing, ``Separator.__init__``) so that a bad choice fails
    before the model is loaded.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    kind = _device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device (got {kind}); on CPU use "
            "bf16 where the CPU supports it, or fp32"
        )
    if precision == "bf16" and kind == "cpu" and not cpu_supports_bf16():
        raise ValueError(
            "precision bf16 needs a CPU with native bf16 instructions "
            "(avx512_bf16 or amx_bf16 in /proc/cpuinfo), which this one lacks: "
            "it would run slower than fp32; use fp32"
        )
    if precision == "bf16" and kind not in ("cpu", "cuda"):
        raise ValueError(f"precision bf16 is supported on cpu and cuda, not {kind}")


def autocast_dtype(precision: str) -> tp.Any:
    """The ``torch`` dtype of ``precision``'s matrix products (``None`` for fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _float32_norm_hook(module: tp.Any, args: tp.Tuple[tp.Any, ...]) -> tp.Any:
    """Global forward pre-hook: normalisation layers take float32 inputs under autocast."""
    import torch
    from torch import nn

    if not isinstance(module, (nn.GroupNorm, nn.LayerNorm)) or not args:
        return None
    first = args[0]
    if not (
        isinstance(first, torch.Tensor)
        and first.is_floating_point()
        and first.dtype != torch.float32
        and torch.is_autocast_enabled(first.device.type)
    ):
        return None
    return (first.float(), *args[1:])


@contextlib.contextmanager
def precision_context(
    precision: str, device: tp.Any = "cpu", check: bool = True
) -> tp.Iterator[None]:
    """Runs the PyTorch code inside with ``precision`` (see the module docstring).

    ``device``: where the model runs (``torch.device`` or string). ``check=False`` skips
    :func:`check_precision`'s hardware test (tests, or to measure emulated bf16).
    Model outputs may come out in the reduced dtype for models that end with a
    convolution (Demucs v2): cast them with ``.float()``.
    """
    if check:
        check_precision(precision, device)
    elif precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        yield
        return
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook

    handle = register_module_forward_pre_hook(_float32_norm_hook)
    try:
        with torch.autocast(_device_type(device), dtype=autocast_dtype(precision)):
            yield
    finally:
        handle.remove()
