"""Validation of what a model file declares, before anything is built from it.

Model files (checkpoints, safetensors folders, bag YAML files, ONNX metadata) are
untrusted input: a name they carry ends up in output paths, and a size they declare
decides how much memory the model takes. Everything is checked here, and every failure
is one :class:`~demucs.errors.ModelLoadingError` line naming the file (``origin``).

This module does not import torch at import time (the ONNX path uses the name checks);
only :func:`count_parameters` needs it.
"""

from __future__ import annotations

import inspect
import math
import numbers
import typing as tp
from fractions import Fraction

from .errors import ModelArgumentsError, ModelLoadingError

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_SOURCES",
    "MAX_PARAMETERS",
    "MAX_WIDTH",
    "SAMPLERATE_RANGE",
    "MAX_SEGMENT_SECONDS",
    "MAX_TRAIN_SEGMENT_SECONDS",
    "check_name",
    "check_sources",
    "check_samplerate",
    "check_audio_channels",
    "check_segment",
    "check_model_kwargs",
    "count_parameters",
    "check_parameter_count",
]

#: Longest name (UTF-8 bytes) a model file may give a source or a model: it becomes a
#: file name component, with room left for a prefix and an extension within 255 bytes.
MAX_NAME_BYTES = 128
#: Most sources a model may declare.
MAX_SOURCES = 64
#: Most parameters a model may declare (4 GB of float32 weights); released models have
#: at most about 84 M. Checked on the ``meta`` device, before any weight is allocated.
MAX_PARAMETERS = 1_000_000_000
#: Widest layer (channels) that the architecture arguments may lead to.
MAX_WIDTH = 1 << 16
#: Accepted model sample rates, in Hz (inclusive).
SAMPLERATE_RANGE = (1, 768000)
#: Most audio channels a model may declare.
MAX_AUDIO_CHANNELS = 16
#: Longest training / bag segment, in seconds.
MAX_SEGMENT_SECONDS = 3600.0
#: Longest training segment of a model that pads every input to it (HTDemucs with
#: ``use_train_segment``; its attention cost grows with the square of the segment).
#: Released models use 7.8 s.
MAX_TRAIN_SEGMENT_SECONDS = 60.0

_FORBIDDEN_NAMES = ("", ".", "..")

#: Bounds of the integer architecture arguments of the model classes: (low, high).
_INT_BOUNDS: tp.Dict[str, tp.Tuple[int, int]] = {
    "channels": (1, 8192),
    "channels_time": (1, 8192),
    "depth": (1, 16),
    "nfft": (4, 1 << 16),
    "kernel_size": (1, 256),
    "stride": (1, 256),
    "time_stride": (1, 256),
    "context": (0, 64),
    "context_enc": (0, 64),
    "norm_starts": (0, 1 << 10),
    "norm_groups": (1, 1 << 10),
    "dconv_mode": (0, 3),
    "dconv_depth": (0, 16),
    "dconv_attn": (0, 1 << 10),
    "dconv_lstm": (0, 1 << 10),
    "multi_freqs_depth": (0, 16),
    "lstm_layers": (0, 16),
    "bottom_channels": (0, 1 << 14),
    "t_layers": (0, 64),
    "t_heads": (1, 256),
    "t_max_positions": (1, 1 << 20),
    "t_sparse_attn_window": (1, 1 << 20),
    "t_global_window": (1, 1 << 20),
    "wiener_iters": (-1, 64),
    "end_iters": (-1, 64),
}

#: Bounds of the real-valued architecture arguments: (low, high), low exclusive.
_FLOAT_BOUNDS: tp.Dict[str, tp.Tuple[float, float]] = {
    "growth": (0.0, 16.0),
    "dconv_comp": (0.0, 1024.0),
    "t_hidden_scale": (0.0, 64.0),
}


def _describe(value: tp.Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_name(name: tp.Any, what: str, origin: str) -> str:
    """Returns ``name`` if it is a plain file name component, else raises.

    Refused: non-strings, empty, ``.``/``..``, path separators (``/``, ``\\``), NUL and
    other control characters, and names longer than :data:`MAX_NAME_BYTES` UTF-8 bytes.
    """
    if not isinstance(name, str):
        raise ModelLoadingError(f"{origin}: {what} {_describe(name)} is not a string")
    if name in _FORBIDDEN_NAMES:
        raise ModelLoadingError(f"{origin}: {what} {name!r} is not a valid file name")
    if any(char in "/\\" for char in name):
        raise ModelLoadingError(f"{origin}: {what} {_describe(name)} contains a path separator")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ModelLoadingError(f"{origin}: {what} {_describe(name)} contains a control character")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ModelLoadingError(
            f"{origin}: {what} {_describe(name)} is not valid Unicode"
        ) from None
    if size > MAX_NAME_BYTES:
        raise ModelLoadingError(
            f"{origin}: {what} {_describe(name)} is too long ({size} bytes, "
            f"at most {MAX_NAME_BYTES})"
        )
    return name


def check_sources(sources: tp.Any, origin: str) -> tp.List[str]:
    """``sources`` must be a list of 1 to :data:`MAX_SOURCES` distinct valid names."""
    if not isinstance(sources, (list, tuple)):
        raise ModelLoadingError(
            f"{origin}: sources must be a list of names, got {_describe(sources)}"
        )
    if not 1 <= len(sources) <= MAX_SOURCES:
        raise ModelLoadingError(
            f"{origin}: a model needs 1 to {MAX_SOURCES} sources, got {len(sources)}"
        )
    for source in sources:
        check_name(source, "source name", origin)
    if len(set(sources)) != len(sources):
        raise ModelLoadingError(f"{origin}: duplicate source names in {_describe(sources)}")
    return list(sources)


def _is_int(value: tp.Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: tp.Any) -> bool:
    return isinstance(value, (numbers.Real, Fraction)) and not isinstance(value, bool)


def check_samplerate(samplerate: tp.Any, origin: str) -> int:
    """An integer sample rate within :data:`SAMPLERATE_RANGE`."""
    low, high = SAMPLERATE_RANGE
    if not _is_int(samplerate) or not low <= samplerate <= high:
        raise ModelLoadingError(
            f"{origin}: samplerate must be an integer between {low} "
            f"and {high} Hz, got {_describe(samplerate)}"
        )
    return int(samplerate)


def check_audio_channels(channels: tp.Any, origin: str) -> int:
    """An integer between 1 and :data:`MAX_AUDIO_CHANNELS`."""
    if not _is_int(channels) or not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise ModelLoadingError(
            f"{origin}: audio_channels must be an integer between 1 "
            f"and {MAX_AUDIO_CHANNELS}, got {_describe(channels)}"
        )
    return int(channels)


def check_segment(segment: tp.Any, origin: str, what: str = "segment") -> tp.Any:
    """A finite number of seconds in ``(0, MAX_SEGMENT_SECONDS]`` (returned unchanged)."""
    if (
        not _is_real(segment)
        or not math.isfinite(float(segment))
        or not 0 < float(segment) <= MAX_SEGMENT_SECONDS
    ):
        raise ModelLoadingError(
            f"{origin}: {what} must be a number of seconds in (0, {MAX_SEGMENT_SECONDS:g}], "
            f"got {_describe(segment)}"
        )
    return segment


def _check_bounds(name: str, value: tp.Any, origin: str) -> None:
    if name in _INT_BOUNDS:
        low, high = _INT_BOUNDS[name]
        if value is None and name == "channels_time":
            return
        if not _is_int(value) or not low <= value <= high:
            raise ModelLoadingError(
                f"{origin}: {name} must be an integer between {low} "
                f"and {high}, got {_describe(value)}"
            )
    elif name in _FLOAT_BOUNDS:
        low_f, high_f = _FLOAT_BOUNDS[name]
        if (
            not _is_real(value)
            or not math.isfinite(float(value))
            or not low_f < float(value) <= high_f
        ):
            raise ModelLoadingError(
                f"{origin}: {name} must be a number in ({low_f:g}, "
                f"{high_f:g}], got {_describe(value)}"
            )


def _check_multi_freqs(value: tp.Any, origin: str) -> None:
    if value is None:
        return
    if (
        not isinstance(value, (list, tuple))
        or len(value) > 16
        or not all(_is_real(ratio) and 0 < float(ratio) < 1 for ratio in value)
        or list(value) != sorted(value)
    ):
        raise ModelLoadingError(
            f"{origin}: multi_freqs must be increasing ratios in (0, 1), got {_describe(value)}"
        )


def check_model_kwargs(
    klass: type, args: tp.Any, kwargs: tp.Any, origin: str
) -> tp.Dict[str, tp.Any]:
    """Checks the constructor arguments a model file gives for ``klass``.

    The arguments must bind to ``klass``'s signature (no unknown or missing argument),
    and every value that decides file names or sizes must be sane: ``sources`` (see
    :func:`check_sources`), ``samplerate``, ``audio_channels``, ``segment`` and the
    architecture sizes (bounded so that the widest layer stays under :data:`MAX_WIDTH`).

    Returns:
        All arguments by name, defaults included.
    """
    if not isinstance(args, (list, tuple)):
        raise ModelLoadingError(f"{origin}: 'args' must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ModelLoadingError(
            f"{origin}: 'kwargs' must be a dict of named arguments, got {type(kwargs).__name__}"
        )
    try:
        bound = inspect.signature(klass).bind(*args, **kwargs)
    except TypeError as exc:
        raise ModelArgumentsError(
            f"{origin}: wrong constructor arguments for {klass.__name__}: {exc}"
        ) from None
    bound.apply_defaults()
    values = dict(bound.arguments)
    for name, value in values.items():
        if name in ("sources",):
            check_sources(value, origin)
        elif name == "samplerate":
            check_samplerate(value, origin)
        elif name == "audio_channels":
            check_audio_channels(value, origin)
        elif name == "segment":
            check_segment(value, origin)
        elif name == "multi_freqs":
            _check_multi_freqs(value, origin)
        else:
            _check_bounds(name, value, origin)
    if (
        values.get("use_train_segment")
        and "segment" in values
        and float(values["segment"]) > MAX_TRAIN_SEGMENT_SECONDS
    ):
        raise ModelLoadingError(
            f"{origin}: {klass.__name__} runs every input at its training segment, "
            f"{float(values['segment']):g} s here (at most {MAX_TRAIN_SEGMENT_SECONDS:g} s)"
        )
    if "depth" in values and "channels" in values:
        growth = float(values.get("growth", 1) or 1)
        widest = max(values["channels"], values.get("channels_time") or 0) * max(growth, 1.0) ** (
            values["depth"] - 1
        )
        if widest > MAX_WIDTH:
            raise ModelLoadingError(
                f"{origin}: channels={values['channels']}, growth={growth:g} and "
                f"depth={values['depth']} give layers of {widest:.3g} channels "
                f"(at most {MAX_WIDTH})"
            )
    return values


def count_parameters(klass: type, args: tp.Sequence[tp.Any], kwargs: tp.Dict[str, tp.Any]) -> int:
    """Parameters and buffers of ``klass(*args, **kwargs)``, counted on the ``meta``
    device (shapes only: nothing is allocated, no weight initialised for real)."""
    import torch

    with torch.device("meta"):
        model = klass(*args, **kwargs)
    return sum(tensor.numel() for tensor in model.parameters()) + sum(
        tensor.numel() for tensor in model.buffers()
    )


def check_parameter_count(
    klass: type, args: tp.Sequence[tp.Any], kwargs: tp.Dict[str, tp.Any], origin: str
) -> int:
    """Refuses a model that would hold more than :data:`MAX_PARAMETERS` numbers, or that
    cannot even be built from its arguments; returns the count."""
    try:
        count = count_parameters(klass, args, kwargs)
    except ModelLoadingError:
        raise
    except Exception as exc:  # any constructor failure is a bad file, not a crash
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadingError(
            f"{origin}: cannot build {klass.__name__} from its "
            f"arguments ({type(exc).__name__}: {first})"
        ) from None
    if count > MAX_PARAMETERS:
        raise ModelLoadingError(
            f"{origin}: the model would have {count:,} parameters (at most {MAX_PARAMETERS:,})"
        )
    return count
