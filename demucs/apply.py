"""The PyTorch backend of the separation core, and upstream's ``apply_model``.

:func:`apply_model` separates a whole mixture with a model or a :class:`BagOfModels`:
the shift trick, overlapping segments blended with triangular weights, padding to a
length the model accepts, and per-source bag weights. The algorithm itself lives in
:mod:`demucs.core` (shared with streaming and ONNX Runtime); this module turns PyTorch
models into core members (:func:`torch_members`) and runs the arithmetic on tensors
(:class:`TorchOps`, on the mix's device).

Shapes: a mixture is ``(B, C, T)`` (batch, audio channels, samples); the separated
output is ``(B, S, C, T)`` with ``S = len(model.sources)``.
"""

from __future__ import annotations

import threading
import typing as tp
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .allocator import ensure_tuned_for_torch
from .core import engine
from .core.hooks import Callback, callback_hook, locked_hook, progress_bar
from .utils import DummyPoolExecutor, center_trim  # noqa: F401 (upstream's names)
from .core.plan import MAX_SHIFT_SECONDS, Member, check_split_params, max_shift_samples
from .lazy import lazy_exports
from .precision import check_precision, precision_context

if tp.TYPE_CHECKING:  # pragma: no cover - typing only, avoids import cycles at runtime
    from .demucs import Demucs
    from .hdemucs import HDemucs
    from .htdemucs import HTDemucs

#: Any single separation model (Demucs v2/v3 waveform, hybrid, or hybrid transformer).
Model = tp.Union["Demucs", "HDemucs", "HTDemucs"]
Weights = tp.List[tp.List[float]]

__all__ = [
    "BagOfModels",
    "TensorChunk",
    "tensor_chunk",
    "apply_model",
    "max_allowed_segment",
    "torch_members",
    "TorchOps",
    "MAX_SHIFT_SECONDS",
]


def _is_transformer(model: tp.Any) -> bool:
    """True if ``model`` is an HTDemucs (limited to its training segment length)."""
    try:
        from .htdemucs import HTDemucs
    except ImportError:  # pragma: no cover - only while the package is being assembled
        return False
    return isinstance(model, HTDemucs)


class BagOfModels(nn.Module):
    """Several models with the same sources, averaged with per-source weights.

    Use :func:`apply_model` on a bag; calling it directly is not supported.

    Args:
        models: the members; all must share ``sources``, ``samplerate`` and
            ``audio_channels``.
        weights: ``len(models)`` lists of ``len(sources)`` floats: how much each member
            contributes to each source. ``None`` means all ones.
        segment: if given, overrides the ``segment`` attribute of every member
            (in place: the models passed in are modified).

    Raises:
        ValueError: no models, members that disagree, or weights of the wrong shape.
    """

    def __init__(
        self,
        models: tp.Sequence[nn.Module],
        weights: tp.Optional[Weights] = None,
        segment: tp.Optional[float] = None,
    ) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("a BagOfModels needs at least one model")
        first: tp.Any = models[0]
        for index, other in enumerate(models):
            for attr in ("sources", "samplerate", "audio_channels"):
                if getattr(other, attr) != getattr(first, attr):
                    raise ValueError(
                        f"model {index} of the bag has {attr}={getattr(other, attr)!r} but "
                        f"model 0 has {getattr(first, attr)!r}"
                    )
            if segment is not None:
                setattr(other, "segment", segment)

        self.audio_channels: int = first.audio_channels
        self.samplerate: int = first.samplerate
        self.sources: tp.List[str] = first.sources
        self.models = nn.ModuleList(models)
        self.weights: Weights = self._check_weights(weights, len(models), len(first.sources))

    @staticmethod
    def _check_weights(weights: tp.Optional[Weights], num_models: int, num_sources: int) -> Weights:
        if weights is None:
            return [[1.0] * num_sources for _ in range(num_models)]
        if len(weights) != num_models:
            raise ValueError(f"got {len(weights)} weight lists for {num_models} models")
        for index, weight in enumerate(weights):
            if len(weight) != num_sources:
                raise ValueError(
                    f"weights of model {index} have {len(weight)} entries, "
                    f"expected one per source ({num_sources})"
                )
        return [list(weight) for weight in weights]

    @property
    def max_allowed_segment(self) -> float:
        """Longest ``segment`` usable with this bag: the shortest HTDemucs training segment."""
        models: tp.List[tp.Any] = list(self.models)
        return min(
            (float(model.segment) for model in models if _is_transformer(model)),
            default=float("inf"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Call `apply_model` on this.")


def max_allowed_segment(model: tp.Any) -> float:
    """Longest ``segment`` (seconds) that :func:`apply_model` accepts for ``model``."""
    if isinstance(model, BagOfModels):
        return model.max_allowed_segment
    if _is_transformer(model):
        return float(model.segment)
    return float("inf")


class TensorChunk:
    """A lazy view ``tensor[..., offset:offset + length]`` that can be padded from context.

    Padding uses the real neighbouring samples of the underlying tensor when there are
    some, and zeros past its ends. Chunks of chunks refer to the original tensor.
    """

    def __init__(
        self,
        tensor: tp.Union[torch.Tensor, "TensorChunk"],
        offset: int = 0,
        length: tp.Optional[int] = None,
    ) -> None:
        total_length = tensor.shape[-1]
        if not 0 <= offset < total_length:
            raise ValueError(f"offset {offset} outside of [0, {total_length})")
        available = total_length - offset
        self.length: int = available if length is None else min(available, length)
        if isinstance(tensor, TensorChunk):
            self.tensor: torch.Tensor = tensor.tensor
            self.offset: int = offset + tensor.offset
        else:
            self.tensor = tensor
            self.offset = offset
        self.device: torch.device = tensor.device

    @property
    def shape(self) -> tp.List[int]:
        """Shape of the chunk, as a list."""
        shape = list(self.tensor.shape)
        shape[-1] = self.length
        return shape

    def padded(self, target_length: int) -> torch.Tensor:
        """The chunk centred in a window of ``target_length`` samples, as a tensor.

        The window extends ``(target_length - length) // 2`` samples to the left.
        """
        delta = target_length - self.length
        if delta < 0:
            raise ValueError(f"cannot pad a chunk of length {self.length} to {target_length}")
        total_length = self.tensor.shape[-1]
        start = self.offset - delta // 2
        end = start + target_length
        inner_start = max(0, start)
        inner_end = min(total_length, end)
        out = F.pad(self.tensor[..., inner_start:inner_end], (inner_start - start, end - inner_end))
        return out


def tensor_chunk(tensor_or_chunk: tp.Union[torch.Tensor, TensorChunk]) -> TensorChunk:
    """Wraps a tensor into a :class:`TensorChunk` covering all of it (chunks pass through)."""
    if isinstance(tensor_or_chunk, TensorChunk):
        return tensor_or_chunk
    if not isinstance(tensor_or_chunk, torch.Tensor):
        raise ValueError(f"expected a tensor or a TensorChunk, got {type(tensor_or_chunk)}")
    return TensorChunk(tensor_or_chunk)


class TorchOps:
    """The core's array operations on float32 tensors of one device."""

    def __init__(self, device: tp.Union[str, torch.device]) -> None:
        self.device = torch.device(device)

    def zeros(self, shape: tp.Sequence[int]) -> torch.Tensor:
        return torch.zeros(tuple(shape), device=self.device)

    def asarray(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def cat(self, arrays: tp.Sequence[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(list(arrays), dim=axis)


def _valid_length(model: tp.Any, length: int, segment: tp.Optional[float]) -> int:
    """Input length to feed ``model`` for ``length`` samples of audio."""
    if segment is not None and _is_transformer(model):
        return int(segment * model.samplerate)
    if hasattr(model, "valid_length"):
        return model.valid_length(length)
    return length


def _forward_draws(model: tp.Any) -> tp.Tuple[int, ...]:
    """Arguments of the ``random.randrange`` calls one forward pass of ``model`` makes:
    HTDemucs's sin positional embedding draws its shift at every call."""
    transformer = getattr(model, "crosstransformer", None)
    if transformer is not None and getattr(transformer, "emb", None) == "sin":
        return (int(transformer.sin_random_shift) + 1,)
    return ()


def _members_and_weights(model: tp.Any) -> tp.Tuple[tp.List[tp.Any], Weights]:
    if isinstance(model, BagOfModels):
        return list(model.models), model.weights
    return [model], [[1.0] * len(model.sources)]


def torch_members(
    model: tp.Any,
    *,
    device: tp.Union[str, torch.device] = "cpu",
    out_device: tp.Union[str, torch.device, None] = None,
    split: bool = True,
    segment: tp.Optional[float] = None,
    max_batch: int = 1,
    sources: tp.Optional[tp.Sequence[str]] = None,
    precision: str = "fp32",
) -> tp.List[Member]:
    """Core members (:class:`demucs.core.plan.Member`) for a model or a bag.

    Each model is put on ``device`` in eval mode and run under ``torch.no_grad`` on
    tensors (``(N, C, V) -> (N, S, C, V)``, returned on ``out_device``, default
    ``device``).

    Args:
        split: cut tracks into segments (``segment`` seconds, default the model's);
            without it a track is separated in one pass.
        max_batch: segments per forward pass.
        sources: the stems needed; members that weigh nothing in them are inactive
            (they run nothing). None: all.
        precision: ``fp32`` (exact), or a reduced precision of :mod:`demucs.precision`.
    """
    device = torch.device(device)
    target = torch.device(out_device) if out_device is not None else device
    models, weights = _members_and_weights(model)
    wanted = None if sources is None else [list(model.sources).index(s) for s in sources]
    members = []
    for sub, sub_weights in zip(models, weights):
        sub.to(device)
        sub.eval()
        if split:
            seconds = sub.segment if segment is None else segment
            if seconds is None or seconds <= 0:
                raise ValueError(f"cannot split: the model has no valid segment ({seconds!r})")
            segment_length: tp.Optional[int] = int(sub.samplerate * seconds)
        else:
            segment_length = None

        def run(batch: torch.Tensor, _sub: tp.Any = sub) -> torch.Tensor:
            # Entered in the thread that runs the pass (autocast is per thread); the
            # hardware was checked once by the caller.
            with torch.no_grad(), precision_context(precision, device, check=False):
                out = _sub(batch.to(device))
            return out.to(target, torch.float32)

        def valid_length(length: int, _sub: tp.Any = sub) -> int:
            return _valid_length(_sub, length, segment)

        active = wanted is None or any(sub_weights[k] != 0 for k in wanted)
        members.append(
            Member(
                run=run,
                segment_length=segment_length,
                valid_length=valid_length,
                weights=list(sub_weights),
                draws=_forward_draws(sub),
                max_batch=max_batch,
                active=active,
            )
        )
    return members


def _input_of(
    mix: tp.Union[torch.Tensor, TensorChunk], shifts: int, samplerate: int
) -> engine.ArrayInput:
    """The core's view of ``mix``; a chunk pads from its tensor's real samples, within
    the context upstream's shift trick copies (``max_shift`` on each side) when shifting."""
    chunk = tensor_chunk(mix)
    ops = TorchOps(chunk.tensor.device)
    total = chunk.tensor.shape[-1]
    lo, hi = -chunk.offset, total - chunk.offset
    if shifts:
        max_shift = max_shift_samples(samplerate)
        lo, hi = max(lo, -max_shift), min(hi, chunk.length + max_shift)
    return engine.ArrayInput(chunk.tensor, ops, chunk.offset, chunk.length, lo, hi)


def apply_model(
    model: tp.Any,
    mix: tp.Union[torch.Tensor, TensorChunk],
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    progress: bool = False,
    device: tp.Union[str, torch.device, None] = None,
    num_workers: int = 0,
    segment: tp.Optional[float] = None,
    pool: tp.Optional[Executor] = None,
    lock: tp.Any = None,
    callback: tp.Optional[Callback] = None,
    callback_arg: tp.Optional[tp.Dict[str, tp.Any]] = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Separates ``mix`` with ``model`` (a single model or a :class:`BagOfModels`).

    Args:
        model: the separation model or bag of models.
        mix: mixture ``(B, C, T)`` (tensor or :class:`TensorChunk`).
        shifts: number of random shifts (0 to 0.5 s, drawn with ``random.randint``)
            to average; 0 disables the shift trick.
        split: separate overlapping segments of ``segment`` seconds one by one.
        overlap: fraction of a segment shared with the next one, in ``[0, 1)``.
        transition_power: >= 1; higher values sharpen the cross-fade between segments.
        progress: show a tqdm progress bar over segments.
        device: where to run the model; defaults to ``mix.device``. The full-length
            output stays on ``mix.device``.
        num_workers: if > 0 and ``device`` is a CPU, segments run in that many threads.
        segment: segment length in seconds, overriding the model's. For HTDemucs it
            cannot exceed the training segment.
        pool: executor used for segments (overrides ``num_workers``).
        lock: a lock held while ``callback`` runs (default: a new one).
        callback: called with a dict before and after every forward pass (upstream
            4.1.0): ``callback_arg``'s entries, ``model_idx_in_bag``, ``shift_idx``,
            ``segment_offset``, ``models`` and ``state`` (``"start"``/``"end"``).
            Raising from it (e.g. ``KeyboardInterrupt``) aborts the separation.
        callback_arg: entries added to every callback dict.
        precision: ``fp32`` (default, exact) or a reduced precision (see
            :mod:`demucs.precision`).

    Returns:
        The separated sources, ``(B, S, C, T)``, on ``mix.device``.

    Raises:
        ValueError: invalid arguments (shape of ``mix``, ``shifts``, ``overlap``,
            ``transition_power``, or a segment longer than the model allows).
    """
    if len(mix.shape) != 3:
        raise ValueError(f"mix must have shape (batch, channels, time), got {tuple(mix.shape)}")
    check_split_params(shifts, overlap, transition_power, segment)
    if segment is not None and float(segment) > max_allowed_segment(model):
        raise ValueError(
            "Cannot use a Transformer model with a longer segment than it was trained "
            f"for: segment={float(segment)}, maximum is {max_allowed_segment(model)}"
        )
    track = _input_of(mix, shifts, model.samplerate)
    ops = TorchOps(track.array.device)
    device = ops.device if device is None else torch.device(device)
    check_precision(precision, device)
    if device.type == "cpu":
        ensure_tuned_for_torch()
    own_pool = None
    if pool is None and num_workers > 0 and device.type == "cpu":
        pool = own_pool = ThreadPoolExecutor(num_workers)
    members = torch_members(
        model,
        device=device,
        out_device=ops.device,
        split=split,
        segment=segment,
        precision=precision,
    )
    hook = None
    if callback is not None:
        hook = locked_hook(
            callback_hook(callback, callback_arg, len(members), shifts, split),
            lock if lock is not None else threading.Lock(),
        )

    bar, close = None, None
    if progress:
        seconds = (
            segment or getattr(members[0], "segment_length", 0) / model.samplerate
            if split
            else track.length / model.samplerate
        )
        bar, close = progress_bar(float(seconds) * (1 - overlap) if split else seconds)
    out = None
    try:
        for start, _, stems in engine.separate(
            members,
            track,
            sources=len(model.sources),
            samplerate=model.samplerate,
            shifts=shifts,
            overlap=overlap,
            transition_power=transition_power,
            order="memory",
            ops=ops,
            hook=hook,
            progress=bar,
            pool=pool if not isinstance(pool, DummyPoolExecutor) else None,
        ):
            if start == 0 and stems.shape[-1] == track.length:
                out = stems
            else:
                if out is None:
                    out = ops.zeros((track.batch, len(model.sources), track.channels, track.length))
                out[..., start : start + stems.shape[-1]] = stems
    finally:
        if close is not None:
            close()
        if own_pool is not None:
            own_pool.shutdown(wait=False, cancel_futures=True)
    assert out is not None
    return out


#: Model classes upstream's ``demucs.apply`` exposes, loaded on first use (the model
#: modules are not needed to apply a model that is already built).
_MODEL_CLASSES = {"Demucs": "demucs", "HDemucs": "hdemucs", "HTDemucs": "htdemucs"}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _MODEL_CLASSES)
