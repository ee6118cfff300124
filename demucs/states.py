"""Checkpoint format and model state helpers (upstream-compatible).

A checkpoint ("package") is a dict ``{"klass", "args", "kwargs", "state", "training_args"}``
as written by upstream Demucs; see ``serialize_model`` / ``load_model``.

Checkpoints are pickles, and a pickle can run arbitrary code when it is loaded. Files are
therefore always read with ``torch.load(..., weights_only=True)`` and an explicit allowlist
of the few Python objects a Demucs checkpoint legitimately names (the model classes and
``fractions.Fraction``). Anything else is refused with :class:`UnsafeCheckpointError`
unless the caller explicitly trusts the file (``trust=True`` or the environment variable
``DEMUCS_TRUST_CHECKPOINTS=1``).
"""

from __future__ import annotations

import argparse
import contextlib
import fractions
import functools
import hashlib
import importlib
import inspect
import io
import os
import pickle
import pickletools
import typing as tp
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from .errors import ModelLoadingError
from .utils import fatal  # noqa: F401 (upstream's name)
from .model_checks import check_model_kwargs, check_parameter_count

#: What ``torch.load`` raises on a file that is not a (readable) checkpoint.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    zipfile.BadZipFile,
    OSError,
)

PathLike = tp.Union[str, os.PathLike]
Package = tp.Dict[str, tp.Any]
State = tp.Dict[str, tp.Any]

#: Environment variable that, set to 1/true/yes, disables the safe loader (trusted files only).
TRUST_ENV = "DEMUCS_TRUST_CHECKPOINTS"

#: Keyword arguments of our models that upstream does not know; never written to checkpoints.
FORK_ONLY_KWARGS = ("use_conv_stft",)

#: Model classes that checkpoints may name, as ``(module, class name)``; imported lazily.
_MODEL_CLASSES = (
    ("demucs.htdemucs", "HTDemucs"),
    ("demucs.hdemucs", "HDemucs"),
    ("demucs.demucs", "Demucs"),
)

#: Quantizer classes of diffq that quantized checkpoints name in ``state["meta"]["klass"]``.
_DIFFQ_CLASSES = (
    ("diffq.diffq", "DiffQuantizer"),
    ("diffq.uniform", "UniformQuantizer"),
    ("diffq.lsq", "LSQ"),
)

_DIFFQ_HINT = (
    "this checkpoint is quantized with DiffQ, which is not installed: "
    "run `pip install demucs[quantized]` (or `pip install diffq`)"
)

#: Extra classes registered by users with :func:`allow_model_class`.
_EXTRA_SAFE: tp.List[type] = []


class UnsafeCheckpointError(ModelLoadingError, ValueError):
    """A checkpoint names Python objects outside the allowlist; it was not unpickled."""


class MissingDiffQError(ModelLoadingError, ImportError):
    """A quantized checkpoint needs the optional ``diffq`` package."""

    def __init__(self, message: str = _DIFFQ_HINT) -> None:
        super().__init__(message)


def capture_init(init: tp.Callable) -> tp.Callable:
    """Decorates ``__init__`` so the constructor arguments are kept on the instance.

    ``serialize_model`` saves them as the checkpoint's ``args``/``kwargs``, so a model
    can be rebuilt from a checkpoint without knowing its configuration in advance.
    """

    @functools.wraps(init)
    def __init__(self: torch.nn.Module, *args: tp.Any, **kwargs: tp.Any) -> None:
        object.__setattr__(self, "_init_args_kwargs", (args, kwargs))
        init(self, *args, **kwargs)

    return __init__


# --------------------------------------------------------------------------------------
# DiffQ (optional dependency)
# --------------------------------------------------------------------------------------


def import_diffq() -> tp.Any:
    """Returns the ``diffq`` module, or raises :class:`MissingDiffQError` with the install hint."""
    try:
        return importlib.import_module("diffq")
    except ImportError as exc:
        raise MissingDiffQError() from exc


def _check_diffq() -> None:
    """Raises :class:`MissingDiffQError` when ``diffq`` cannot be imported."""
    import_diffq()


def get_quantizer(
    model: nn.Module, args: tp.Any, optimizer: tp.Optional[torch.optim.Optimizer] = None
) -> tp.Any:
    """Builds the DiffQ quantizer described by the training ``args`` (or ``None``).

    ``args`` needs the attributes ``diffq`` (penalty, 0 disables), ``qat`` (bits for
    quantization-aware training, 0 disables), ``min_size`` and, for DiffQ, ``group_size``.
    """
    if getattr(args, "diffq", 0):
        diffq = import_diffq()
        quantizer = diffq.DiffQuantizer(model, min_size=args.min_size, group_size=args.group_size)
        if optimizer is not None:
            quantizer.setup_optimizer(optimizer)
        return quantizer
    if getattr(args, "qat", 0):
        diffq = import_diffq()
        return diffq.UniformQuantizer(model, bits=args.qat, min_size=args.min_size)
    return None


# --------------------------------------------------------------------------------------
# Safe reading of checkpoint files
# --------------------------------------------------------------------------------------


def allow_model_class(klass: type) -> type:
    """Adds ``klass`` to the classes a checkpoint may name (for custom model classes).

    Returns ``klass`` so it can be used as a class decorator.
    """
    if not isinstance(klass, type):
        raise ValueError(f"expected a class, got {klass!r}")
    if klass not in _EXTRA_SAFE:
        _EXTRA_SAFE.append(klass)
    return klass


def _import_classes(names: tp.Iterable[tp.Tuple[str, str]]) -> tp.List[type]:
    """Imports the classes that can be imported; missing modules are skipped."""
    classes = []
    for module, name in names:
        try:
            classes.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return classes


def safe_globals() -> tp.List[tp.Any]:
    """The objects, besides torch's defaults, that a Demucs checkpoint may reference."""
    return [fractions.Fraction, *_import_classes(_MODEL_CLASSES), *_EXTRA_SAFE]


def _trusted_by_env() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "y")


def _raw_pickle_globals(path: Path) -> tp.Set[str]:
    """Globals named by the pickles of a non-zip (legacy or raw pickle) file, read statically."""
    names: tp.Set[str] = set()
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        while file.tell() < size:
            strings: tp.List[str] = []
            try:
                for opcode, arg, _ in pickletools.genops(file):
                    if opcode.name in ("GLOBAL", "INST"):
                        names.add(str(arg).replace(" ", "."))
                    elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.add(".".join(strings[-2:]))
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # truncated, or the raw tensor data after the pickles
                break
    return names


def _unsafe_globals(path: Path, allowed: tp.List[tp.Any]) -> tp.Optional[tp.List[str]]:
    """Names of globals in ``path`` outside ``allowed``, read without unpickling (or None)."""
    try:
        with torch.serialization.safe_globals(allowed):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint: scan the pickles ourselves
        pass
    try:
        names = _raw_pickle_globals(path)
    except OSError:
        return None
    known = {f"{obj.__module__}.{obj.__qualname__}" for obj in allowed}
    known.update(f"torch._utils.{name}" for name in ("_rebuild_tensor_v2", "_rebuild_parameter"))
    unsafe = sorted(
        name
        for name in names
        if name not in known and not name.startswith(("torch.", "collections."))
    )
    return unsafe or None


def _is_diffq_global(name: str) -> bool:
    return name == "diffq" or name.startswith("diffq.")


#: First bytes of the files ``torch.save`` writes: a zip archive, or (legacy format) a
#: pickle of protocol 2 or more.
_CHECKPOINT_MAGICS = (b"PK\x03\x04", b"\x80")


def _looks_like_checkpoint(path: Path) -> bool:
    """Whether ``path`` starts like a file written by ``torch.save``."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return any(head.startswith(magic) for magic in _CHECKPOINT_MAGICS)


def _explain_load_failure(
    path: Path, allowed: tp.List[tp.Any], exc: BaseException
) -> ModelLoadingError:
    """Turns a failed weights-only load into a clear :class:`ModelLoadingError`."""
    if not _looks_like_checkpoint(path):
        return ModelLoadingError(
            f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle): "
            "wrong file, or corrupted"
        )
    unsafe = _unsafe_globals(path, allowed)
    if unsafe and all(_is_diffq_global(name) for name in unsafe):
        return MissingDiffQError(f"cannot load {path}: {_DIFFQ_HINT}")
    if unsafe or isinstance(exc, pickle.UnpicklingError):
        if unsafe:
            detail = f"it references {', '.join(unsafe)}, which could run arbitrary code"
        else:
            detail = "it uses pickle instructions outside the safe subset (or is corrupted)"
        return UnsafeCheckpointError(
            f"{path} is not a safe Demucs checkpoint: {detail}, so it was not loaded. "
            "Only load it if you trust its source, with load_model(..., trust=True) or "
            f"{TRUST_ENV}=1."
        )
    return ModelLoadingError(
        f"cannot read checkpoint {path}: the file is truncated or corrupted "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "Delete it and download or copy it again."
    )


def _diffq_classes_if_needed(path: Path, allowed: tp.List[tp.Any]) -> tp.List[type]:
    """The diffq classes ``path`` names, when diffq is installed (else empty)."""
    unsafe = _unsafe_globals(path, allowed) or []
    if not unsafe or not all(_is_diffq_global(name) for name in unsafe):
        return []
    _check_diffq()
    return _import_classes(_DIFFQ_CLASSES)


def load_package(path: PathLike, trust: tp.Optional[bool] = None) -> Package:
    """Reads a checkpoint file safely and returns its content (on CPU).

    Args:
        path: file written by ``torch.save`` (e.g. with :func:`serialize_model`).
        trust: ``True`` disables the allowlist (full pickle, trusted files only).
            ``None`` (default) reads the ``DEMUCS_TRUST_CHECKPOINTS`` environment variable.

    Raises:
        ModelLoadingError: missing, truncated or corrupted file.
        UnsafeCheckpointError: the file references objects outside the allowlist.
        MissingDiffQError: a quantized checkpoint while ``diffq`` is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadingError(f"checkpoint {path} does not exist or is not a file")
    if trust is None:
        trust = _trusted_by_env()
    if trust:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except ModuleNotFoundError as exc:
            if exc.name and _is_diffq_global(exc.name):
                raise MissingDiffQError(f"cannot load {path}: {_DIFFQ_HINT}") from exc
            raise ModelLoadingError(f"cannot load {path}: {exc}") from exc
        except _LOAD_ERRORS as exc:
            if not _looks_like_checkpoint(path):
                raise ModelLoadingError(f"{path} is not a PyTorch checkpoint") from exc
            raise ModelLoadingError(
                f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc

    allowed = safe_globals()
    try:
        allowed = allowed + _diffq_classes_if_needed(path, allowed)
    except MissingDiffQError as exc:
        raise MissingDiffQError(f"cannot load {path}: {_DIFFQ_HINT}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        raise _explain_load_failure(path, allowed, exc) from exc


# --------------------------------------------------------------------------------------
# Building models from packages
# --------------------------------------------------------------------------------------


def model_classes() -> tp.List[type]:
    """The classes a model file may name as its model: Demucs' three and the ones
    registered with :func:`allow_model_class`."""
    return [*_import_classes(_MODEL_CLASSES), *_EXTRA_SAFE]


def _check_package(package: tp.Any, origin: str, any_class: bool = False) -> Package:
    """Checks the layout of a checkpoint dict: which keys, and what kind of value where
    (a model class as ``klass``, a dict of tensors or a quantized state as ``state``).

    ``klass`` must be one of :func:`model_classes`, or with ``any_class`` (trusted files,
    packages built in memory by the caller) any ``nn.Module`` subclass."""
    if not isinstance(package, dict):
        raise ModelLoadingError(
            f"{origin} is not a Demucs checkpoint (it holds a {type(package).__name__})"
        )
    missing = [key for key in ("klass", "args", "kwargs", "state") if key not in package]
    if missing:
        raise ModelLoadingError(
            f"{origin} is not a Demucs model checkpoint: missing {', '.join(missing)}"
        )
    klass = package["klass"]
    allowed = model_classes()
    if any_class and isinstance(klass, type) and issubclass(klass, nn.Module):
        pass
    elif not isinstance(klass, type) or klass not in allowed:
        names = ", ".join(cls.__name__ for cls in allowed)
        raise ModelLoadingError(
            f"{origin}: 'klass' must be a Demucs model class ({names}), got {_short_repr(klass)}"
        )
    _check_state(package["state"], origin)
    return package


def _short_repr(value: tp.Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_state(state: tp.Any, origin: str) -> None:
    """A plain state is ``{name: tensor}``; a quantized one names a DiffQ quantizer."""
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise ModelLoadingError(
            f"{origin}: 'state' must be a dict of named tensors, got {type(state).__name__}"
        )
    if state.get("__quantized"):
        meta = state.get("meta")
        klass = meta.get("klass") if isinstance(meta, dict) else None
        module = klass.__module__ if isinstance(klass, type) else ""
        if (
            not _is_diffq_global(module)
            or not isinstance(meta, dict)
            or not isinstance(meta.get("init_kwargs"), dict)
        ):
            raise ModelLoadingError(
                f"{origin}: a quantized state must name a DiffQ "
                f"quantizer class, got {_short_repr(klass)}"
            )
        for key in ("quantized", "float16", "others"):
            if not isinstance(state.get(key), (list, tuple)):
                raise ModelLoadingError(f"{origin}: quantized state without its {key!r} list")
        return
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise ModelLoadingError(
            f"{origin}: state entry {bad[0]!r} is not a tensor ({_short_repr(state[bad[0]])})"
        )


def _accepted_kwargs(
    klass: type, kwargs: tp.Dict[str, tp.Any], strict: bool
) -> tp.Dict[str, tp.Any]:
    """Copy of ``kwargs`` without the keys ``klass`` does not accept (warns for each)."""
    kwargs = dict(kwargs)
    if strict:
        return kwargs
    params = inspect.signature(klass).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    for key in list(kwargs):
        if key not in params:
            warnings.warn(f"Dropping inexistant parameter {key}")
            del kwargs[key]
    return kwargs


def set_stft_backend(model: nn.Module, use_conv_stft: bool) -> nn.Module:
    """Sets ``use_conv_stft`` on ``model`` and every submodule that has that attribute.

    Works for single models and for bags of models. Returns ``model``.
    """
    for module in model.modules():
        if hasattr(module, "use_conv_stft"):
            setattr(module, "use_conv_stft", bool(use_conv_stft))
    return model


def load_model(
    path_or_package: tp.Union[PathLike, Package],
    strict: bool = False,
    *,
    trust: tp.Optional[bool] = None,
    use_conv_stft: tp.Optional[bool] = None,
) -> nn.Module:
    """Rebuilds a model from a checkpoint file or an already loaded package dict.

    Args:
        path_or_package: path to a checkpoint, or the dict it contains.
        strict: if False (default), constructor kwargs the model class does not know are
            dropped with a warning (as upstream does); if True they are refused.
        trust: see :func:`load_package` (files only).
        use_conv_stft: if not None, selects the STFT backend of the loaded model
            (``True``: convolutional, ONNX-exportable; ``False``: ``torch.stft``).

    Returns:
        The model, with the checkpoint's weights, in float32.

    Raises:
        ModelLoadingError: unreadable, unsafe or malformed file, or values that cannot
            be right (see :func:`build_model`); always one line naming the file.
    """
    if isinstance(path_or_package, dict):
        origin = "the given package"
        package = path_or_package
        any_class = True
    elif isinstance(path_or_package, (str, os.PathLike)):
        origin = str(path_or_package)
        package = load_package(path_or_package, trust=trust)
        any_class = _trusted_by_env() if trust is None else bool(trust)
    else:
        raise ValueError(f"expected a path or a package dict, got {type(path_or_package)}")
    return build_model(
        package, origin, strict=strict, use_conv_stft=use_conv_stft, any_class=any_class
    )


def build_model(
    package: Package,
    origin: str,
    strict: bool = False,
    use_conv_stft: tp.Optional[bool] = None,
    any_class: bool = False,
) -> nn.Module:
    """Builds the model a checked package describes (see :func:`load_model`).

    The constructor arguments are validated (:func:`~demucs.model_checks.check_model_kwargs`)
    and the parameter count is computed on the ``meta`` device before any weight is
    allocated, so a crafted file cannot exhaust memory. Every failure is a
    :class:`ModelLoadingError` naming ``origin``. ``any_class``: see :func:`_check_package`.
    """
    package = _check_package(package, origin, any_class)
    klass = package["klass"]
    args = package["args"]
    if isinstance(args, tuple):
        args = list(args)
    kwargs = package["kwargs"]
    if not isinstance(kwargs, dict):
        raise ModelLoadingError(f"{origin}: 'kwargs' must be a dict, got {type(kwargs).__name__}")
    kwargs = _accepted_kwargs(klass, kwargs, strict)
    check_model_kwargs(klass, args, kwargs, origin)
    check_parameter_count(klass, args, kwargs, origin)
    if use_conv_stft is not None and "use_conv_stft" in inspect.signature(klass).parameters:
        kwargs["use_conv_stft"] = bool(use_conv_stft)
    try:
        model = klass(*args, **kwargs)
    except (
        TypeError,
        ValueError,
        AttributeError,
        KeyError,
        IndexError,
        ZeroDivisionError,
        RuntimeError,
    ) as exc:
        raise ModelLoadingError(
            f"{origin}: cannot build {klass.__name__} ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    try:
        set_state(model, package["state"])
    except MissingDiffQError as exc:
        raise MissingDiffQError(f"cannot load {origin}: {_DIFFQ_HINT}") from exc
    except (
        TypeError,
        ValueError,
        AttributeError,
        KeyError,
        IndexError,
        RuntimeError,
        AssertionError,
    ) as exc:
        raise ModelLoadingError(
            f"{origin}: the weights do not fit the model ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if use_conv_stft is not None:
        set_stft_backend(model, use_conv_stft)
    return model


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


# --------------------------------------------------------------------------------------
# States
# --------------------------------------------------------------------------------------


def get_state(model: nn.Module, quantizer: tp.Any = None, half: bool = False) -> State:
    """Returns the model weights as a dict of CPU tensors.

    With a ``quantizer``, returns its quantized state (marked with ``"__quantized"``);
    otherwise plain tensors, in float16 when ``half`` (halves the file size).
    """
    if quantizer is not None:
        state = quantizer.get_quantized_state()
        state["__quantized"] = True
        return state
    dtype = torch.half if half else None
    return {
        key: value.data.to(device="cpu", dtype=dtype) for key, value in model.state_dict().items()
    }


def set_state(model: nn.Module, state: State, quantizer: tp.Any = None) -> State:
    """Loads ``state`` (plain or quantized, see :func:`get_state`) into ``model``."""
    if state.get("__quantized"):
        if quantizer is not None:
            quantizer.restore_quantized_state(state)
        else:
            diffq = import_diffq()
            diffq.restore_quantized_state(model, state)
    else:
        model.load_state_dict(state)
    return state


def _plain_training_args(training_args: tp.Any) -> tp.Any:
    """Converts training arguments (OmegaConf, Namespace, dict...) to plain containers."""
    if training_args is None:
        return {}
    if isinstance(training_args, argparse.Namespace):
        return vars(training_args).copy()
    module = type(training_args).__module__ or ""
    if module.startswith("omegaconf"):
        omegaconf = importlib.import_module("omegaconf")
        return omegaconf.OmegaConf.to_container(training_args, resolve=True)
    return training_args


def serialize_model(
    model: nn.Module, training_args: tp.Any, quantizer: tp.Any = None, half: bool = True
) -> Package:
    """Returns the checkpoint dict of a model built with a ``capture_init`` constructor.

    Fork-only constructor kwargs (``use_conv_stft``) are left out, so the checkpoint
    loads unchanged in upstream Demucs.
    """
    if not hasattr(model, "_init_args_kwargs"):
        raise ValueError(f"{type(model).__name__} was not built with a @capture_init constructor")
    args, kwargs = tp.cast(
        tp.Tuple[tp.Sequence[tp.Any], tp.Dict[str, tp.Any]], getattr(model, "_init_args_kwargs")
    )
    kwargs = {key: value for key, value in kwargs.items() if key not in FORK_ONLY_KWARGS}
    return {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, quantizer, half),
        "training_args": _plain_training_args(training_args),
    }


def save_with_checksum(content: tp.Any, path: PathLike) -> Path:
    """Saves ``content`` as ``STEM-CHECKSUM.SUFFIX`` next to ``path``.

    CHECKSUM is the first 8 hex digits of the file's sha256, as expected by ``LocalRepo``.
    Returns the path actually written.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(content, buf)
    data = buf.getvalue()
    checksum = hashlib.sha256(data).hexdigest()[:8]
    target = path.parent / f"{path.stem}-{checksum}{path.suffix}"
    target.write_bytes(data)
    return target


def save_model(
    model: nn.Module,
    path: PathLike,
    training_args: tp.Any = None,
    quantizer: tp.Any = None,
    half: bool = True,
) -> Path:
    """Serializes ``model`` (see :func:`serialize_model`) to ``path``; returns the path."""
    path = Path(path)
    torch.save(serialize_model(model, training_args, quantizer, half), path)
    return path


def copy_state(state: State) -> State:
    """Deep copy of a state dict, on CPU."""
    return {key: value.cpu().clone() for key, value in state.items()}


@contextlib.contextmanager
def swap_state(model: nn.Module, state: State) -> tp.Iterator[None]:
    """Temporarily loads ``state`` into ``model``; the old weights come back on exit.

    The swap is non-strict: keys missing from ``state`` keep their current value.
    """
    old_state = copy_state(model.state_dict())
    model.load_state_dict(state, strict=False)
    try:
        yield
    finally:
        model.load_state_dict(old_state)
