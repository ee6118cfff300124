"""Streaming separation: tracks of any length in bounded memory.

The whole pipeline works on blocks of samples, so peak memory is the model plus a few
segments, whatever the track's length:

1. **Decode** blockwise, convert the channels and resample blockwise in numpy
   (:mod:`demucs.io.readers`, :mod:`demucs.io.resample`).
2. **First pass** (:func:`open_track`): decode the whole track once to validate it and to
   compute the mean and standard deviation of its mono mix (the normalisation of
   ``demucs.separate``; unbiased std as ``torch.std``).
3. **Second pass** (:func:`stream_separate`): overlapping segments are separated and
   overlap-added with the triangular weights of :func:`demucs.apply.apply_model`; each
   output block is final as soon as no later segment covers it.
4. **Write** every stem incrementally (:func:`demucs.io.writers.open_stem_writer`).

Equality with the in-memory path. :func:`stream_separate` reproduces ``apply_model`` with
``split=True``: per-segment context padding with the real neighbouring audio (zeros past
the track's ends), the shift trick (offsets drawn with ``random.randint`` in the same
order as ``apply_model``, including the draws that models make during their forward
passes, which are replayed), bags of models with per-source weights. Python's ``random``
state is left exactly as ``apply_model`` leaves it.

The pluggable hook. The core only needs, per model of the bag, a :class:`StreamMember`:

* ``run``: a callable ``(B, C, V) float32 ndarray -> (B, S, C, V) float32 ndarray`` that
  separates a batch of padded segments (a torch model: :func:`torch_runner`; an exported
  graph in ONNX Runtime: :func:`onnx_members`);
* ``segment_length``: samples per segment; ``valid_length``: model input length for a
  chunk of ``n`` samples (fixed for HTDemucs and exported graphs);
* ``weights``: per-source weights in the bag; ``draws``: arguments of the
  ``random.randrange`` calls one forward pass makes (HTDemucs: ``(sin_random_shift + 1,)``);
  ``max_batch``: how many segments one call of ``run`` may take.

The core itself (this module without :func:`torch_runner` and the :class:`Separator`
glue) uses numpy only; torch is imported lazily where needed. The I/O names this module
used to define (sources, resampler, writers) are re-exported from :mod:`demucs.io`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import typing as tp
from pathlib import Path

import numpy as np

from .allocator import tune_allocator  # noqa: F401 (re-exported)
from .io import readers as io_readers
from .io.errors import one_line
from .io.readers import (DEFAULT_BLOCK, ArraySource, BlockSource,  # noqa: F401 (re-exported)
                         ConvertedSource, PyAVSource, SoundfileSource)
from .io.resample import (BlockResampler, convert_channels,  # noqa: F401 (re-exported)
                          sinc_resample_kernels)
from .io.writers import StemWriter, open_stem_writer  # noqa: F401 (re-exported)
from .onnx_runtime import check_split_params

if tp.TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "BlockSource", "ArraySource", "SoundfileSource", "PyAVSource", "ConvertedSource",
    "BlockResampler", "TrackStats", "Track", "open_track", "StreamMember", "stream_separate",
    "torch_runner", "members_for", "onnx_members", "open_stem_writer", "StemWriter",
    "MAX_SHIFT_SECONDS", "DEFAULT_BLOCK", "tune_allocator",
]

#: Largest random shift of the shift trick, in seconds (as :mod:`demucs.apply`).
MAX_SHIFT_SECONDS = 0.5

Array = np.ndarray
SegmentRunner = tp.Callable[[Array], Array]


# ======================================================================================
# First pass: validation and statistics
# ======================================================================================

@dataclasses.dataclass
class TrackStats:
    """Length and normalisation statistics of the mono mix of a (converted) track."""

    length: int = 0
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def of_blocks(cls, blocks: tp.Iterable[Array]) -> "TrackStats":
        """Mean and unbiased std of the channel average, merged block by block in float64
        (Chan et al.), so they match ``wav.mean(0).mean()`` / ``.std()`` on the whole."""
        count, mean, m2 = 0, 0.0, 0.0
        for block in blocks:
            mono = block.mean(axis=0, dtype=np.float32).astype(np.float64)
            n = mono.shape[0]
            if not n:
                continue
            block_mean = float(mono.mean())
            block_m2 = float(((mono - block_mean) ** 2).sum())
            total = count + n
            delta = block_mean - mean
            mean += delta * n / total
            m2 += block_m2 + delta * delta * count * n / total
            count = total
        std = math.sqrt(m2 / (count - 1)) if count > 1 else 0.0
        if not (std > 0 and math.isfinite(std)):  # silent/constant mix: as api.normalize
            std = 1.0
        return cls(length=count, mean=float(np.float32(mean)), std=float(np.float32(std)))


@dataclasses.dataclass
class Track:
    """A validated, converted track ready for :func:`stream_separate`."""

    path: Path
    source: BlockSource  # converted to the model's rate and channels
    stats: TrackStats

    @property
    def length(self) -> int:
        return self.stats.length


def open_track(path: tp.Union[str, os.PathLike], samplerate: int, channels: int,
               block: int = DEFAULT_BLOCK) -> Track:
    """Decodes ``path`` once (block by block) to validate it and compute its statistics
    (:func:`demucs.io.readers.open_track`). Raises :class:`LoadAudioError`."""
    opened = io_readers.open_track(path, samplerate, channels, block, scan=TrackStats.of_blocks)
    return Track(path=opened.path, source=opened.source, stats=opened.scanned)


# ======================================================================================
# The streaming core (numpy only)
# ======================================================================================

@dataclasses.dataclass
class StreamMember:
    """One model of a bag, as the streaming core sees it (see the module docstring)."""

    run: SegmentRunner
    segment_length: int
    valid_length: tp.Callable[[int], int]
    weights: tp.Sequence[float]
    draws: tp.Sequence[int] = ()
    max_batch: int = 1


def transition_weight(segment_length: int, transition_power: float) -> Array:
    """Triangular window ``(segment_length,)`` peaking at 1, to a power (as apply_model)."""
    half = segment_length // 2
    weight = np.concatenate([np.arange(1, half + 1),
                             np.arange(segment_length - half, 0, -1)]).astype(np.float32)
    return (weight / weight.max()) ** np.float32(transition_power)


class _Job(tp.NamedTuple):
    lane: "_Lane"
    index: int
    start: int  # first mix sample the segment covers (may be < 0 with shifts)
    length: int  # samples the segment covers
    valid: int  # model input length
    state: tp.Optional[tp.Any]  # random state to restore before the forward pass

    @property
    def window(self) -> int:
        """First mix sample of the model input (context included)."""
        return self.start - (self.valid - self.length) // 2


class _Lane:
    """One pass of one member over the track (one shift): segments and their overlap-add.

    ``delay`` is the shift trick's delay ``d``: the lane separates the mix delayed by
    ``d`` samples, so its segment ``k`` covers mix samples ``[k * stride - d, ...)``.
    """

    def __init__(self, member_index: int, member: StreamMember, delay: int, length: int,
                 stride: int, weight: Array, sources: int, channels: int) -> None:
        self.member_index = member_index
        self.member = member
        self.delay = delay
        self.length = length  # padded mix length (not including the delay)
        self.offsets = range(0, length + delay, stride)  # in delayed coordinates
        self.weight = weight
        self.jobs: tp.List[_Job] = []
        self.next = 0
        self.base = -delay  # mix sample of acc[..., 0]
        self.acc = np.zeros((sources, channels, 0), np.float32)
        self.wsum = np.zeros(0, np.float32)

    def make_job(self, index: int, state: tp.Optional[tp.Any]) -> _Job:
        offset = self.offsets[index]
        length = min(self.member.segment_length, self.length + self.delay - offset)
        return _Job(self, index, offset - self.delay, length, self.member.valid_length(length),
                    state)

    @property
    def final(self) -> int:
        """Mix samples before this one are final in this lane."""
        if self.next < len(self.jobs):
            return self.jobs[self.next].start
        return self.length

    def add(self, job: _Job, out: Array) -> None:
        """Overlap-adds the separated ``(S, C, job.length)`` segment."""
        begin = job.start - self.base
        end = begin + job.length
        if end > self.acc.shape[-1]:
            grow = end - self.acc.shape[-1]
            self.acc = np.concatenate(
                [self.acc, np.zeros(self.acc.shape[:-1] + (grow,), np.float32)], axis=-1)
            self.wsum = np.concatenate([self.wsum, np.zeros(grow, np.float32)])
        weight = self.weight[:job.length]
        self.acc[..., begin:end] += weight * out
        self.wsum[begin:end] += weight

    def take(self, upto: int) -> Array:
        """Final samples ``[base, upto)`` (mix coordinates), removed from the lane."""
        count = upto - self.base
        if self.wsum[:count].min(initial=1.0) <= 0:
            raise RuntimeError("some samples were not covered by any segment")
        out = self.acc[..., :count] / self.wsum[:count]
        self.acc = self.acc[..., count:]
        self.wsum = self.wsum[count:]
        self.base = upto
        return out


class _InputBuffer:
    """Raw samples of the track from ``start`` on, read from ``blocks`` on demand."""

    def __init__(self, blocks: tp.Iterator[Array], channels: int, length: int) -> None:
        self._blocks = blocks
        self.channels = channels
        self.length = length  # real samples in the track
        self.start = 0
        self._parts: tp.List[Array] = []
        self._size = 0

    @property
    def end(self) -> int:
        return self.start + self._size

    def ensure(self, upto: int) -> None:
        upto = min(upto, self.length)
        while self.end < upto:
            block = next(self._blocks, None)
            if block is None:
                raise RuntimeError(f"the track ended after {self.end} samples, "
                                   f"expected {self.length}: was it modified meanwhile?")
            block = block[:, :self.length - self.end]
            self._parts.append(block)
            self._size += block.shape[1]

    def _data(self) -> Array:
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts, axis=1) if self._parts
                           else np.zeros((self.channels, 0), np.float32)]
        return self._parts[0]

    def raw(self, begin: int, end: int) -> Array:
        """Real samples ``[begin, end)`` (within the track and the buffer)."""
        self.ensure(end)
        return self._data()[:, begin - self.start:end - self.start]

    def window(self, begin: int, size: int, mean: float, std: float) -> Array:
        """Normalised samples ``[begin, begin + size)``, zeros outside the track."""
        out = np.zeros((self.channels, size), np.float32)
        inner_begin, inner_end = max(begin, 0), min(begin + size, self.length)
        if inner_end > inner_begin:
            raw = self.raw(inner_begin, inner_end)
            out[:, inner_begin - begin:inner_end - begin] = ((raw - np.float32(mean))
                                                             / np.float32(std))
        return out

    def drop(self, before: int) -> None:
        """Forgets the samples before ``before``."""
        count = min(before, self.end) - self.start
        if count > 0:
            data = self._data()[:, count:]
            self._parts = [data]
            self._size = data.shape[1]
            self.start += count


def _plan(members: tp.Sequence[StreamMember], length: int, shifts: int, overlap: float,
          transition_power: float, samplerate: int, sources: int, channels: int
          ) -> tp.List[_Lane]:
    """Lanes and jobs in ``apply_model``'s order, drawing from ``random`` as it would.

    The offsets of the shift trick are drawn with ``random.randint`` member by member and
    shift by shift; between two draws, the forward passes of the previous shift would
    draw too (``member.draws``), so those draws are made here as well. When a forward
    pass draws values that matter (``randrange(n)`` with ``n > 1``), the state before it
    is kept and restored when the segment is actually run.
    """
    max_shift = int(MAX_SHIFT_SECONDS * samplerate)
    lanes = []
    for index, member in enumerate(members):
        segment_length = member.segment_length
        stride = int((1 - overlap) * segment_length)
        if segment_length <= 0 or stride <= 0:
            raise ValueError(f"invalid segment ({segment_length} samples) or overlap "
                             f"({overlap})")
        weight = transition_weight(segment_length, transition_power)
        keep_states = any(n > 1 for n in member.draws)
        delays = [0] if shifts == 0 else []
        for shift in range(max(shifts, 1)):
            if shifts:
                delays.append(max_shift - random.randint(0, max_shift))
            lane = _Lane(index, member, delays[-1], length, stride, weight, sources, channels)
            for job_index in range(len(lane.offsets)):
                state = random.getstate() if keep_states else None
                for n in member.draws:
                    random.randrange(n)
                lane.jobs.append(lane.make_job(job_index, state))
            lanes.append(lane)
    return lanes


def _next_batch(lanes: tp.Sequence[_Lane]) -> tp.List[_Job]:
    """Jobs to run now: the lane that holds the output back goes first; followed by the
    next jobs in the same order while they share the member and the input length."""
    pointers = {id(lane): lane.next for lane in lanes}

    def position(lane: _Lane) -> int:
        k = pointers[id(lane)]
        return lane.jobs[k].start if k < len(lane.jobs) else lane.length + 1

    batch: tp.List[_Job] = []
    while True:
        active = [lane for lane in lanes if pointers[id(lane)] < len(lane.jobs)]
        if not active:
            break
        lane = min(active, key=position)
        job = lane.jobs[pointers[id(lane)]]
        if batch:
            first = batch[0]
            if (job.lane.member_index != first.lane.member_index or job.valid != first.valid
                    or len(batch) >= first.lane.member.max_batch
                    or job.state is not None or first.state is not None):
                break
        batch.append(job)
        pointers[id(lane)] += 1
    return batch


def stream_separate(members: tp.Sequence[StreamMember], source: tp.Iterable[Array], length: int,
                    *, sources: int, channels: int, samplerate: int, shifts: int = 1,
                    overlap: float = 0.25, transition_power: float = 1.0,
                    mean: float = 0.0, std: float = 1.0, min_length: int = 1,
                    progress: tp.Optional[tp.Callable[[int, int], None]] = None
                    ) -> tp.Iterator[tp.Tuple[Array, Array]]:
    """Separates a track given as blocks, yielding ``(origin, stems)`` blocks in order.

    Same result as ``apply_model(bag, (wav - mean) / std, shifts, split=True, overlap,
    transition_power) * std + mean`` (with the mix zero-padded to ``min_length`` first,
    then the output trimmed back, as :class:`demucs.api.Separator` does).

    Args:
        members: the models (see :class:`StreamMember`), one for a single model.
        source: ``(channels, n)`` float32 blocks of the raw (un-normalised) track.
        length: samples in the track (the blocks must hold exactly that many).
        sources, channels, samplerate: the models' output sources, channels and rate.
        shifts, overlap, transition_power: as :func:`demucs.apply.apply_model`.
        mean, std: normalisation of the track (see :class:`TrackStats`).
        min_length: shortest input the models take (shorter tracks are zero-padded).
        progress: called with ``(segments done, total segments)`` after each batch.

    Yields:
        ``(origin (C, n), stems (S, C, n))``: the input samples and their separation.
        The blocks cover ``[0, length)`` exactly once, in order.

    Python's ``random`` state ends as ``apply_model`` would leave it.
    """
    if length <= 0:
        raise ValueError("cannot separate audio with no samples")
    check_split_params(shifts, overlap, transition_power)
    padded_length = max(length, min_length)
    lanes = _plan(members, padded_length, shifts, overlap, transition_power, samplerate,
                  sources, channels)
    final_state = random.getstate()
    try:
        yield from _run_lanes(lanes, members, iter(source), length, padded_length, shifts,
                              channels, sources, mean, std, progress)
    finally:
        random.setstate(final_state)


def _source_coefficients(members: tp.Sequence[StreamMember], sources: int,
                         shifts: int) -> tp.List[Array]:
    """Per member, the factor of each source: its weight / total weight / shifts."""
    totals = np.zeros(sources, np.float64)
    for member in members:
        if len(member.weights) != sources:
            raise ValueError(f"{len(member.weights)} weights for {sources} sources")
        totals += np.asarray(member.weights, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return [(np.asarray(m.weights, np.float64) / totals / max(shifts, 1))
                .astype(np.float32)[:, None, None] for m in members]


def _run_lanes(lanes: tp.List[_Lane], members: tp.Sequence[StreamMember],
               blocks: tp.Iterator[Array], length: int, padded_length: int, shifts: int,
               channels: int, sources: int, mean: float, std: float,
               progress: tp.Optional[tp.Callable[[int, int], None]]
               ) -> tp.Iterator[tp.Tuple[Array, Array]]:
    coefficients = _source_coefficients(members, sources, shifts)
    buffer = _InputBuffer(blocks, channels, length)
    total = sum(len(lane.jobs) for lane in lanes)
    done = 0
    emitted = 0
    for lane in lanes:  # drop the part of the delayed lanes before the track
        lane.base = -lane.delay
    while emitted < padded_length:
        batch = _next_batch(lanes)
        if batch:
            member = batch[0].lane.member
            valid = batch[0].valid
            inputs = np.stack([buffer.window(job.window, valid, mean, std) for job in batch])
            if batch[0].state is not None:
                random.setstate(batch[0].state)
            outputs = member.run(inputs)
            if outputs.shape[:1] != (len(batch),) or outputs.shape[-1] != valid:
                raise RuntimeError(f"segment runner returned shape {outputs.shape} for input "
                                   f"{inputs.shape}")
            for job, out in zip(batch, outputs):
                trim = (valid - job.length) // 2
                job.lane.add(job, out[..., trim:trim + job.length])
                job.lane.next += 1
            done += len(batch)
            if progress is not None:
                progress(done, total)
        ready = min(lane.final for lane in lanes)
        if ready > emitted:
            stems = np.zeros((sources, channels, ready - emitted), np.float32)
            for lane in lanes:
                if lane.base < emitted:
                    lane.take(emitted)  # samples before the track (shift delay)
                stems += coefficients[lane.member_index] * lane.take(ready)
            end = min(ready, length)
            if end > emitted:
                origin = buffer.raw(emitted, end)
                yield origin.copy(), stems[..., :end - emitted] * np.float32(std) + np.float32(mean)
            emitted = ready
        elif not batch:
            raise RuntimeError("streaming separation made no progress")
        keep = [emitted] + [lane.jobs[lane.next].window for lane in lanes
                            if lane.next < len(lane.jobs)]
        buffer.drop(min(keep))


# ======================================================================================
# Torch glue
# ======================================================================================

def _forward_draws(model: "nn.Module") -> tp.Tuple[int, ...]:
    """Arguments of the ``random.randrange`` calls that one forward pass of ``model``
    makes: HTDemucs's sin positional embedding draws its shift at every call."""
    transformer = getattr(model, "crosstransformer", None)
    if transformer is not None and getattr(transformer, "emb", None) == "sin":
        return (int(transformer.sin_random_shift) + 1,)
    return ()


def torch_runner(model: "nn.Module", device: tp.Any = "cpu") -> SegmentRunner:
    """Runs ``model`` on numpy batches ``(B, C, V)`` under ``torch.inference_mode``."""
    import torch

    def run(batch: Array) -> Array:
        with torch.inference_mode():
            out = model(torch.from_numpy(batch).to(device))
        return out.detach().to("cpu", torch.float32).numpy()

    return run


def members_for(model: "nn.Module", *, segment: tp.Optional[float] = None,
                device: tp.Any = "cpu", max_batch: int = 1,
                runner: tp.Optional[tp.Callable[["nn.Module"], SegmentRunner]] = None
                ) -> tp.List[StreamMember]:
    """:class:`StreamMember` list for a torch model or :class:`demucs.apply.BagOfModels`.

    The models are put on ``device`` in eval mode. ``runner`` builds the segment runner
    of each model (default :func:`torch_runner`).
    """
    from .apply import BagOfModels, _valid_length

    if isinstance(model, BagOfModels):
        models, weights = list(model.models), model.weights
    else:
        models, weights = [model], [[1.0] * len(model.sources)]
    members = []
    for sub, sub_weights in zip(models, weights):
        sub.to(device)
        sub.eval()
        seconds = sub.segment if segment is None else segment
        if seconds is None or seconds <= 0:
            raise ValueError(f"cannot split: the model has no valid segment ({seconds!r})")
        members.append(StreamMember(
            run=runner(sub) if runner is not None else torch_runner(sub, device),
            segment_length=int(sub.samplerate * seconds),
            valid_length=lambda n, _sub=sub: _valid_length(_sub, n, segment),
            weights=list(sub_weights),
            draws=_forward_draws(sub),
            max_batch=max_batch,
        ))
    return members


class OnnxRuntimeLike(tp.Protocol):
    """What :func:`onnx_members` needs of :class:`demucs.onnx_runtime.OnnxSeparator`."""

    spec: tp.Any  # SegmentSpec: segment_samples, input_samples, sources, dynamic_batch

    def run_segment(self, mix: Array) -> Array: ...  # pragma: no cover


def _is_onnxruntime_error(error: BaseException) -> bool:
    """ONNX Runtime's own exceptions (``Fail``, ``InvalidArgument``...) only derive from
    ``Exception``; they are turned into ``RuntimeError`` for the callers."""
    return type(error).__module__.startswith("onnxruntime")


def onnx_members(runtime: OnnxRuntimeLike, max_batch: int = 1) -> tp.List[StreamMember]:
    """The :class:`StreamMember` of an exported graph (one member: a bag exported as one
    graph applies its weights inside).

    The graph takes exactly ``spec.input_samples`` samples, so every segment
    (``spec.segment_samples``, shorter at the end of the track) is padded to that length
    with its real neighbouring samples (zeros past the track's ends) and the output is
    centre-trimmed, as ``apply_model`` does with ``TensorChunk.padded``. A graph with a
    fixed batch of 1 gets one segment per call; a dynamic batch up to ``max_batch``.
    The graph draws nothing from ``random`` (``draws=()``), like
    :meth:`demucs.onnx_runtime.OnnxSeparator.separate`. ``runtime.run_segment`` is
    looked up at every call, so wrapping it later (e.g. for callbacks) takes effect.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    spec = runtime.spec
    input_samples = int(spec.input_samples)

    def run(batch: Array) -> Array:
        try:
            out = runtime.run_segment(batch)
        except Exception as err:
            if _is_onnxruntime_error(err):
                raise RuntimeError(f"ONNX Runtime: {one_line(err)}") from err
            raise
        return np.asarray(out, dtype=np.float32)

    def valid_length(length: int) -> int:
        if length > input_samples:
            raise ValueError(f"a segment of {length} samples does not fit in the graph's "
                             f"{input_samples} input samples")
        return input_samples

    return [StreamMember(run=run, segment_length=int(spec.segment_samples),
                         valid_length=valid_length, weights=[1.0] * len(spec.sources),
                         draws=(), max_batch=max_batch if spec.dynamic_batch else 1)]
