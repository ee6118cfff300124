"""Applying a separation model to a whole mixture.

:func:`apply_model` handles what the models themselves do not:

* the *shift trick*: the input is shifted by a random offset (up to 0.5 s), separated,
  and shifted back; several shifts are averaged, which makes the result closer to time
  equivariant;
* splitting long inputs into overlapping segments, blended with triangular weights;
* padding every chunk to a length the model accepts (``valid_length``);
* bags of models (:class:`BagOfModels`), applied member by member and mixed with
  per-source weights.

Shapes: a mixture is ``(B, C, T)`` (batch, audio channels, samples); the separated
output is ``(B, S, C, T)`` with ``S = len(model.sources)``.
"""
from __future__ import annotations

import random
import typing as tp
from concurrent.futures import Executor, ThreadPoolExecutor

import torch
import tqdm
from torch import nn
from torch.nn import functional as F

from .utils import DummyPoolExecutor, center_trim

if tp.TYPE_CHECKING:  # pragma: no cover - typing only, avoids import cycles at runtime
    from .demucs import Demucs
    from .hdemucs import HDemucs
    from .htdemucs import HTDemucs

#: Any single separation model (Demucs v2/v3 waveform, hybrid, or hybrid transformer).
Model = tp.Union["Demucs", "HDemucs", "HTDemucs"]
Weights = tp.List[tp.List[float]]

#: Largest random shift of the shift trick, in seconds.
MAX_SHIFT_SECONDS = 0.5


def _is_transformer(model: nn.Module) -> bool:
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

    def __init__(self, models: tp.Sequence[nn.Module], weights: tp.Optional[Weights] = None,
                 segment: tp.Optional[float] = None) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("a BagOfModels needs at least one model")
        first = models[0]
        for index, other in enumerate(models):
            for attr in ("sources", "samplerate", "audio_channels"):
                if getattr(other, attr) != getattr(first, attr):
                    raise ValueError(
                        f"model {index} of the bag has {attr}={getattr(other, attr)!r} but "
                        f"model 0 has {getattr(first, attr)!r}")
            if segment is not None:
                other.segment = segment

        self.audio_channels: int = first.audio_channels
        self.samplerate: int = first.samplerate
        self.sources: tp.List[str] = first.sources
        self.models = nn.ModuleList(models)
        self.weights: Weights = self._check_weights(weights, len(models), len(first.sources))

    @staticmethod
    def _check_weights(weights: tp.Optional[Weights], num_models: int,
                       num_sources: int) -> Weights:
        if weights is None:
            return [[1.0] * num_sources for _ in range(num_models)]
        if len(weights) != num_models:
            raise ValueError(f"got {len(weights)} weight lists for {num_models} models")
        for index, weight in enumerate(weights):
            if len(weight) != num_sources:
                raise ValueError(f"weights of model {index} have {len(weight)} entries, "
                                 f"expected one per source ({num_sources})")
        return [list(weight) for weight in weights]

    @property
    def max_allowed_segment(self) -> float:
        """Longest ``segment`` usable with this bag: the shortest HTDemucs training segment."""
        return min((float(model.segment) for model in self.models if _is_transformer(model)),
                   default=float("inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("Call `apply_model` on this.")


def max_allowed_segment(model: nn.Module) -> float:
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

    def __init__(self, tensor: tp.Union[torch.Tensor, "TensorChunk"], offset: int = 0,
                 length: tp.Optional[int] = None) -> None:
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
        out = F.pad(self.tensor[..., inner_start:inner_end],
                    (inner_start - start, end - inner_end))
        return out


def tensor_chunk(tensor_or_chunk: tp.Union[torch.Tensor, TensorChunk]) -> TensorChunk:
    """Wraps a tensor into a :class:`TensorChunk` covering all of it (chunks pass through)."""
    if isinstance(tensor_or_chunk, TensorChunk):
        return tensor_or_chunk
    if not isinstance(tensor_or_chunk, torch.Tensor):
        raise ValueError(f"expected a tensor or a TensorChunk, got {type(tensor_or_chunk)}")
    return TensorChunk(tensor_or_chunk)


def _transition_weight(segment_length: int, transition_power: float,
                       device: tp.Union[str, torch.device, None]) -> torch.Tensor:
    """Triangular blending window ``(segment_length,)``, peak 1 in the middle, to a power."""
    half = segment_length // 2
    weight = torch.cat([torch.arange(1, half + 1, device=device),
                        torch.arange(segment_length - half, 0, -1, device=device)])
    return (weight / weight.max()) ** transition_power


def _check_arguments(model: nn.Module, mix: tp.Union[torch.Tensor, TensorChunk], shifts: int,
                     overlap: float, transition_power: float,
                     segment: tp.Optional[float]) -> None:
    if len(mix.shape) != 3:
        raise ValueError(f"mix must have shape (batch, channels, time), got {tuple(mix.shape)}")
    if shifts < 0:
        raise ValueError(f"shifts must be >= 0, got {shifts}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if transition_power < 1:
        raise ValueError("transition_power < 1 leads to weird behavior "
                         f"(got {transition_power})")
    if segment is not None:
        if segment <= 0:
            raise ValueError(f"segment must be > 0, got {segment}")
        limit = max_allowed_segment(model)
        if float(segment) > limit:
            raise ValueError(
                "Cannot use a Transformer model with a longer segment than it was trained "
                f"for: segment={float(segment)}, maximum is {limit}")


class _Options(tp.NamedTuple):
    shifts: int
    split: bool
    overlap: float
    transition_power: float
    progress: bool
    device: torch.device
    pool: tp.Any
    segment: tp.Optional[float]


def _apply_bag(bag: BagOfModels, mix: tp.Union[torch.Tensor, TensorChunk],
               opts: _Options) -> torch.Tensor:
    """Applies each member in turn (each draws its own shifts) and mixes with weights."""
    estimates: tp.Optional[torch.Tensor] = None
    totals = [0.0] * len(bag.sources)
    for member, member_weights in zip(bag.models, bag.weights):
        original_device = next(iter(member.parameters())).device
        member.to(opts.device)
        out = _apply(member, mix, opts)
        member.to(original_device)
        for k, weight in enumerate(member_weights):
            out[:, k, :, :] *= weight
            totals[k] += weight
        estimates = out if estimates is None else estimates + out
        del out
    assert estimates is not None
    for k in range(estimates.shape[1]):
        estimates[:, k, :, :] /= totals[k]
    return estimates


def _apply_shifted(model: nn.Module, mix: tp.Union[torch.Tensor, TensorChunk],
                   opts: _Options) -> torch.Tensor:
    """The shift trick: averages ``opts.shifts`` randomly shifted separations."""
    length = mix.shape[-1]
    max_shift = int(MAX_SHIFT_SECONDS * model.samplerate)
    padded_mix = tensor_chunk(mix).padded(length + 2 * max_shift)
    inner = opts._replace(shifts=0)
    out: tp.Union[float, torch.Tensor] = 0.0
    for _ in range(opts.shifts):
        offset = random.randint(0, max_shift)
        shifted = TensorChunk(padded_mix, offset, length + max_shift - offset)
        shifted_out = _apply(model, shifted, inner)
        out = out + shifted_out[..., max_shift - offset:]
    assert isinstance(out, torch.Tensor)
    return out / opts.shifts


def _apply_split(model: nn.Module, mix: tp.Union[torch.Tensor, TensorChunk],
                 opts: _Options) -> torch.Tensor:
    """Separates overlapping segments and blends them with triangular weights."""
    batch, channels, length = mix.shape
    segment = model.segment if opts.segment is None else opts.segment
    if segment is None or segment <= 0:
        raise ValueError(f"cannot split: the model has no valid segment ({segment!r})")
    segment_length = int(model.samplerate * segment)
    stride = int((1 - opts.overlap) * segment_length)
    if stride <= 0:
        raise ValueError(f"overlap {opts.overlap} leaves no stride for segment {segment}")
    weight = _transition_weight(segment_length, opts.transition_power, opts.device)
    inner = opts._replace(split=False)

    out = torch.zeros(batch, len(model.sources), channels, length, device=mix.device)
    sum_weight = torch.zeros(length, device=mix.device)
    jobs: tp.Iterable[tp.Tuple[tp.Any, int]] = [
        (opts.pool.submit(_apply, model, TensorChunk(mix, offset, segment_length), inner),
         offset)
        for offset in range(0, length, stride)]
    if opts.progress:
        scale = float(format(stride / model.samplerate, ".2f"))
        jobs = tqdm.tqdm(jobs, unit_scale=scale, ncols=120, unit="seconds")
    for future, offset in jobs:
        chunk_out = future.result()
        chunk_length = chunk_out.shape[-1]
        chunk_weight = weight[:chunk_length]
        out[..., offset:offset + segment_length] += (chunk_weight * chunk_out).to(mix.device)
        sum_weight[offset:offset + segment_length] += chunk_weight.to(mix.device)
    if sum_weight.min() <= 0:  # cannot happen with stride <= segment_length
        raise RuntimeError("some samples were not covered by any segment")
    return out / sum_weight


def _valid_length(model: nn.Module, length: int, segment: tp.Optional[float]) -> int:
    """Input length to feed ``model`` for ``length`` samples of audio."""
    if segment is not None and _is_transformer(model):
        return int(segment * model.samplerate)
    if hasattr(model, "valid_length"):
        return model.valid_length(length)
    return length


def _apply_single(model: nn.Module, mix: tp.Union[torch.Tensor, TensorChunk],
                  opts: _Options) -> torch.Tensor:
    """One forward pass on the (padded) chunk, trimmed back to its length."""
    length = mix.shape[-1]
    valid_length = _valid_length(model, length, opts.segment)
    padded_mix = tensor_chunk(mix).padded(valid_length).to(opts.device)
    with torch.no_grad():
        out = model(padded_mix)
    return center_trim(out, length)


def _apply(model: nn.Module, mix: tp.Union[torch.Tensor, TensorChunk],
           opts: _Options) -> torch.Tensor:
    if isinstance(model, BagOfModels):
        return _apply_bag(model, mix, opts)
    model.to(opts.device)
    model.eval()
    if opts.shifts:
        return _apply_shifted(model, mix, opts)
    if opts.split:
        return _apply_split(model, mix, opts)
    return _apply_single(model, mix, opts)


def apply_model(model: tp.Union[BagOfModels, nn.Module],
                mix: tp.Union[torch.Tensor, TensorChunk],
                shifts: int = 1, split: bool = True,
                overlap: float = 0.25, transition_power: float = 1.,
                progress: bool = False, device: tp.Union[str, torch.device, None] = None,
                num_workers: int = 0, segment: tp.Optional[float] = None,
                pool: tp.Optional[Executor] = None) -> torch.Tensor:
    """Separates ``mix`` with ``model`` (a single model or a :class:`BagOfModels`).

    Args:
        model: the separation model or bag of models.
        mix: mixture ``(B, C, T)`` (tensor or :class:`TensorChunk`).
        shifts: number of random shifts (0 to 0.5 s, drawn with ``random.randint``)
            to average; 0 disables the shift trick.
        split: separate overlapping segments of ``segment`` seconds one by one.
        overlap: fraction of a segment shared with the next one, in ``[0, 1)``.
        transition_power: >= 1; higher values sharpen the cross-fade between segments.
        progress: show a tqdm progress bar over segments (with ``split``).
        device: where to run the model; defaults to ``mix.device``. The full-length
            output stays on ``mix.device``.
        num_workers: if > 0 and ``device`` is a CPU, segments run in that many threads.
        segment: segment length in seconds, overriding the model's. For HTDemucs it
            cannot exceed the training segment.
        pool: executor used for segments (overrides ``num_workers``).

    Returns:
        The separated sources, ``(B, S, C, T)``, on ``mix.device``.

    Raises:
        ValueError: invalid arguments (shape of ``mix``, ``shifts``, ``overlap``,
            ``transition_power``, or a segment longer than the model allows).
    """
    _check_arguments(model, mix, shifts, overlap, transition_power, segment)
    device = mix.device if device is None else torch.device(device)
    own_pool = None
    if pool is None:
        if num_workers > 0 and device.type == "cpu":
            pool = own_pool = ThreadPoolExecutor(num_workers)
        else:
            pool = DummyPoolExecutor()
    opts = _Options(shifts=shifts, split=split, overlap=overlap,
                    transition_power=transition_power, progress=progress, device=device,
                    pool=pool, segment=segment)
    try:
        with torch.no_grad():
            return _apply(model, mix, opts)
    finally:
        if own_pool is not None:
            own_pool.shutdown(wait=False)
