"""Runs a separation plan (:mod:`demucs.core.plan`) on a track and yields the stems.

The arithmetic (windows, overlap-add, weighting) runs on the backend's arrays through a
small :class:`Ops` object: numpy for ONNX Runtime and files, torch tensors for PyTorch
models (on the tensor's device, so a CUDA track stays on the GPU). The track is either in
memory (:class:`ArrayInput`: a whole array, as ``apply_model`` gets it) or streamed
(:class:`BlockInput`: blocks decoded from a file); only the samples that some pending
segment still needs are kept, and stems are yielded as soon as no later segment covers
them, so a streamed separation holds a few segments whatever the track's length.

Two orders: ``"memory"`` runs member by member, shift by shift, segment by segment, as
upstream ``apply_model`` does (and may hand a lane's segments to a thread pool);
``"stream"`` always runs the segment that holds the output back, so blocks come out in
order with bounded memory. Both give the same numbers.
"""

from __future__ import annotations

import random
import threading
import typing as tp

import numpy as np

from .plan import Job, Lane, Member, count_segments, plan_lanes, source_coefficients

__all__ = [
    "Ops",
    "NumpyOps",
    "NUMPY",
    "TrackInput",
    "ArrayInput",
    "BlockInput",
    "separate",
    "JobHook",
    "ORDERS",
]

Array = tp.Any
ORDERS = ("memory", "stream")
#: Called with ``(job, "start" | "end")`` around each forward pass.
JobHook = tp.Callable[[Job, str], None]
Progress = tp.Callable[[int, int], None]


class Ops(tp.Protocol):
    """What the engine needs of an array library."""

    def zeros(self, shape: tp.Sequence[int]) -> Array: ...  # pragma: no cover

    def asarray(self, array: np.ndarray) -> Array: ...  # pragma: no cover

    def cat(self, arrays: tp.Sequence[Array], axis: int) -> Array: ...  # pragma: no cover


class NumpyOps:
    """float32 numpy arrays."""

    def zeros(self, shape: tp.Sequence[int]) -> np.ndarray:
        return np.zeros(tuple(shape), np.float32)

    def asarray(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, np.float32)

    def cat(self, arrays: tp.Sequence[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)


NUMPY = NumpyOps()


class TrackInput(tp.Protocol):
    """The mix, ``(B, C, length)``, read window by window in increasing order."""

    batch: int
    channels: int
    length: int

    def window(self, begin: int, size: int, mean: float, std: float) -> Array:
        """Normalised samples ``[begin, begin + size)`` ``(B, C, size)``, real neighbouring
        samples where there are some, zeros elsewhere."""
        ...  # pragma: no cover

    def raw(self, begin: int, end: int) -> Array:
        """The unnormalised track samples ``[begin, end)`` (within ``[0, length)``)."""
        ...  # pragma: no cover

    def drop(self, before: int) -> None:
        """No sample before ``before`` will be asked for again."""
        ...  # pragma: no cover


def _normalised(raw: Array, mean: float, std: float) -> Array:
    if mean == 0.0 and std == 1.0:
        return raw
    return (raw - np.float32(mean)) / np.float32(std)


class ArrayInput:
    """A mix held in memory: ``array[..., offset:offset + length]`` of a ``(B, C, T)`` array.

    Context padding reads the array's real samples within ``[lo, hi)`` (track
    coordinates; default: the whole array) and zeros beyond, like upstream's
    ``TensorChunk.padded``.
    """

    def __init__(
        self,
        array: Array,
        ops: Ops,
        offset: int = 0,
        length: tp.Optional[int] = None,
        lo: tp.Optional[int] = None,
        hi: tp.Optional[int] = None,
    ) -> None:
        if len(array.shape) != 3:
            raise ValueError(
                f"mix must have shape (batch, channels, time), got {tuple(array.shape)}"
            )
        total = int(array.shape[-1])
        self.array = array
        self.ops = ops
        self.offset = offset
        self.batch, self.channels = int(array.shape[0]), int(array.shape[1])
        self.length = total - offset if length is None else length
        self.lo = -offset if lo is None else lo
        self.hi = total - offset if hi is None else hi

    def window(self, begin: int, size: int, mean: float, std: float) -> Array:
        inner_begin, inner_end = max(begin, self.lo), min(begin + size, self.hi)
        if inner_begin == begin and inner_end == begin + size:
            return _normalised(self.raw(begin, begin + size), mean, std)
        out = self.ops.zeros((self.batch, self.channels, size))
        if inner_end > inner_begin:
            out[..., inner_begin - begin : inner_end - begin] = _normalised(
                self.raw(inner_begin, inner_end), mean, std
            )
        return out

    def raw(self, begin: int, end: int) -> Array:
        return self.array[..., self.offset + begin : self.offset + end]

    def drop(self, before: int) -> None:
        pass


class BlockInput:
    """A track read as ``(C, n)`` numpy blocks, holding only the samples still needed."""

    batch = 1

    def __init__(self, blocks: tp.Iterable[np.ndarray], channels: int, length: int) -> None:
        self._blocks = iter(blocks)
        self.channels = channels
        self.length = length
        self.start = 0  # track sample of the first buffered sample
        self._parts: tp.List[np.ndarray] = []
        self._size = 0

    @property
    def end(self) -> int:
        return self.start + self._size

    def _ensure(self, upto: int) -> None:
        upto = min(upto, self.length)
        while self.end < upto:
            block = next(self._blocks, None)
            if block is None:
                raise RuntimeError(
                    f"the track ended after {self.end} samples, "
                    f"expected {self.length}: was it modified meanwhile?"
                )
            block = np.asarray(block, np.float32)[:, : self.length - self.end]
            self._parts.append(block)
            self._size += block.shape[1]

    def _data(self) -> np.ndarray:
        if len(self._parts) != 1:
            self._parts = [
                np.concatenate(self._parts, axis=1)
                if self._parts
                else np.zeros((self.channels, 0), np.float32)
            ]
        return self._parts[0]

    def raw(self, begin: int, end: int) -> np.ndarray:
        self._ensure(end)
        return self._data()[None, :, begin - self.start : end - self.start]

    def window(self, begin: int, size: int, mean: float, std: float) -> np.ndarray:
        out = np.zeros((1, self.channels, size), np.float32)
        inner_begin, inner_end = max(begin, 0), min(begin + size, self.length)
        if inner_end > inner_begin:
            out[..., inner_begin - begin : inner_end - begin] = _normalised(
                self.raw(inner_begin, inner_end), mean, std
            )
        return out

    def drop(self, before: int) -> None:
        count = min(before, self.end) - self.start
        if count > 0:
            data = self._data()[:, count:]
            self._parts = [data]
            self._size = data.shape[1]
            self.start += count


class _LaneRun:
    """The overlap-add of one lane: weighted outputs and summed weights, from ``base``."""

    def __init__(self, lane: Lane, ops: Ops, shape: tp.Tuple[int, int, int]) -> None:
        self.lane = lane
        self.ops = ops
        self.next = 0  # next job to run
        self.base = -lane.delay  # track sample of acc[..., 0]
        self.acc = ops.zeros(shape + (0,))
        self.wsum = ops.zeros((0,))
        self.weight = None if lane.weight is None else ops.asarray(lane.weight)

    @property
    def final(self) -> int:
        """Track samples before this one will not change any more."""
        jobs = self.lane.jobs
        return jobs[self.next].start if self.next < len(jobs) else self.lane.length

    def add(self, job: Job, out: Array) -> None:
        begin = job.start - self.base
        end = begin + job.length
        if end > self.acc.shape[-1]:
            grow = end - self.acc.shape[-1]
            self.acc = self.ops.cat(
                [self.acc, self.ops.zeros(tuple(self.acc.shape[:-1]) + (grow,))], axis=-1
            )
            self.wsum = self.ops.cat([self.wsum, self.ops.zeros((grow,))], axis=-1)
        if self.weight is None:
            self.acc[..., begin:end] += out
            self.wsum[begin:end] += 1
        else:
            weight = self.weight[: job.length]
            self.acc[..., begin:end] += weight * out
            self.wsum[begin:end] += weight

    def take(self, upto: int) -> Array:
        """Final samples ``[base, upto)``, removed from the lane."""
        count = upto - self.base
        out = self.acc[..., :count] / self.wsum[:count]
        self.acc = self.acc[..., count:]
        self.wsum = self.wsum[count:]
        self.base = upto
        return out


class _Output:
    """Sum of the lanes' contributions from ``emitted`` on (sliding buffer)."""

    def __init__(self, ops: Ops, shape: tp.Tuple[int, int, int]) -> None:
        self.ops = ops
        self.shape = shape
        self.emitted = 0
        self.buffer = ops.zeros(shape + (0,))

    def add(self, begin: int, values: Array) -> None:
        start = begin - self.emitted
        end = start + values.shape[-1]
        if end > self.buffer.shape[-1]:
            grow = end - self.buffer.shape[-1]
            self.buffer = self.ops.cat([self.buffer, self.ops.zeros(self.shape + (grow,))], axis=-1)
        self.buffer[..., start:end] += values

    def pop(self, upto: int) -> Array:
        count = upto - self.emitted
        out = self.buffer[..., :count]
        self.buffer = self.buffer[..., count:]
        self.emitted = upto
        return out


def _next_stream_batch(runs: tp.Sequence[_LaneRun]) -> tp.List[Job]:
    """The job that holds the output back, then the next ones in track order while they
    share the member and the input length (up to the member's ``max_batch``)."""
    pointers = {id(run): run.next for run in runs}

    def position(run: _LaneRun) -> int:
        k = pointers[id(run)]
        return run.lane.jobs[k].start if k < len(run.lane.jobs) else run.lane.length + 1

    batch: tp.List[Job] = []
    while True:
        active = [run for run in runs if pointers[id(run)] < len(run.lane.jobs)]
        if not active:
            return batch
        run = min(active, key=position)
        job = run.lane.jobs[pointers[id(run)]]
        if batch and not _batchable(batch, job):
            return batch
        batch.append(job)
        pointers[id(run)] += 1


def _batchable(batch: tp.Sequence[Job], job: Job) -> bool:
    first = batch[0]
    return (
        job.lane.member_index == first.lane.member_index
        and job.valid == first.valid
        and len(batch) < first.lane.member.max_batch
        and job.state is None
        and first.state is None
    )


def _next_memory_batch(runs: tp.Sequence[_LaneRun]) -> tp.List[Job]:
    """The next jobs in upstream's order: lane by lane, segment by segment."""
    for run in runs:
        if run.next < len(run.lane.jobs):
            batch = [run.lane.jobs[run.next]]
            for job in run.lane.jobs[run.next + 1 :]:
                if not _batchable(batch, job):
                    break
                batch.append(job)
            return batch
    return []


class _Runner:
    """Runs jobs: windows in, trimmed outputs out, hooks around the forward pass."""

    def __init__(
        self, track: TrackInput, ops: Ops, mean: float, std: float, hook: tp.Optional[JobHook]
    ) -> None:
        self.track = track
        self.ops = ops
        self.mean, self.std = mean, std
        self.hook = hook
        self.lock = threading.Lock()

    def __call__(self, batch: tp.Sequence[Job]) -> tp.List[Array]:
        member = batch[0].lane.member
        windows = [self.track.window(job.window, job.valid, self.mean, self.std) for job in batch]
        inputs = windows[0] if len(windows) == 1 else self.ops.cat(windows, axis=0)
        if batch[0].state is not None:
            random.setstate(batch[0].state)
        self._hook(batch, "start")
        outputs = member.run(inputs)
        self._hook(batch, "end")
        size = self.track.batch
        if tuple(outputs.shape[:1]) != (len(batch) * size,) or outputs.shape[-1] != batch[0].valid:
            raise RuntimeError(
                f"the model returned shape {tuple(outputs.shape)} for input {tuple(inputs.shape)}"
            )
        result = []
        for index, job in enumerate(batch):
            trim = (job.valid - job.length) // 2
            result.append(outputs[index * size : (index + 1) * size, ..., trim : trim + job.length])
        return result

    def _hook(self, batch: tp.Sequence[Job], state: str) -> None:
        if self.hook is not None:
            with self.lock:
                for job in batch:
                    self.hook(job, state)


def separate(
    members: tp.Sequence[Member],
    track: TrackInput,
    *,
    sources: int,
    samplerate: int,
    shifts: int = 1,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    min_length: int = 1,
    order: str = "stream",
    ops: Ops = NUMPY,
    hook: tp.Optional[JobHook] = None,
    progress: tp.Optional[Progress] = None,
    pool: tp.Any = None,
) -> tp.Iterator[tp.Tuple[int, Array, Array]]:
    """Separates ``track`` with the ``members`` of a bag; yields the stems in order.

    Equal to upstream ``apply_model(bag, (mix - mean) / std, shifts, split, overlap,
    transition_power) * std + mean``, with a track shorter than ``min_length`` zero-padded
    to it first and the output trimmed back.

    Args:
        members: the models (see :class:`~demucs.core.plan.Member`).
        track: the mix (see :class:`TrackInput`).
        sources: number of sources the members output.
        samplerate: the models' sample rate (for the shift trick's range).
        shifts, overlap, transition_power: as ``apply_model``.
        mean, std: normalisation of the track (:class:`~demucs.core.stats.TrackStats`).
        min_length: shortest input the models take.
        order: ``"stream"`` or ``"memory"`` (see the module docstring).
        ops: array operations of the backend.
        hook: called around every forward pass (callbacks; raising aborts).
        progress: called with ``(segments done, total segments)``.
        pool: an executor for a lane's segments (``"memory"`` order only).

    Yields:
        ``(start, origin (B, C, n), stems (B, S, C, n))`` blocks covering ``[0, length)``
        once, in order. Python's ``random`` state ends as ``apply_model`` leaves it.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if pool is not None and order != "memory":
        raise ValueError("a pool needs order='memory'")
    length = track.length
    padded_length = max(length, min_length)
    lanes = plan_lanes(members, padded_length, shifts, overlap, transition_power, samplerate)
    final_state = random.getstate()
    try:
        yield from _run(
            lanes,
            members,
            track,
            length,
            padded_length,
            sources,
            shifts,
            mean,
            std,
            order,
            ops,
            hook,
            progress,
            pool,
        )
    finally:
        random.setstate(final_state)


def _run(
    lanes: tp.List[Lane],
    members: tp.Sequence[Member],
    track: TrackInput,
    length: int,
    padded_length: int,
    sources: int,
    shifts: int,
    mean: float,
    std: float,
    order: str,
    ops: Ops,
    hook: tp.Optional[JobHook],
    progress: tp.Optional[Progress],
    pool: tp.Any,
) -> tp.Iterator[tp.Tuple[int, Array, Array]]:
    shape = (track.batch, sources, track.channels)
    coefficients = [ops.asarray(c) for c in source_coefficients(members, sources, shifts)]
    runs = [_LaneRun(lane, ops, shape) for lane in lanes]
    output = _Output(ops, shape)
    runner = _Runner(track, ops, mean, std, hook)
    total, done = count_segments(lanes), 0
    next_batch = _next_memory_batch if order == "memory" else _next_stream_batch
    while output.emitted < padded_length:
        if pool is not None and order == "memory":
            batch = _pooled_lane(runs, runner, pool)
        else:
            batch = next_batch(runs)
            if batch:
                for job, out in zip(batch, runner(batch)):
                    _add(runs, job, out)
        if batch:
            done += len(batch)
            if progress is not None:
                progress(done, total)
        for run in runs:
            final = run.final
            if final > max(run.base, 0):
                if run.base < 0:  # delayed lanes start before the track: never output
                    run.take(0)
                output.add(run.base, coefficients[run.lane.member_index] * run.take(final))
        ready = min((max(run.base, 0) for run in runs), default=padded_length)
        if ready > output.emitted:
            begin = output.emitted
            stems = output.pop(ready)
            end = min(ready, length)
            if end > begin:
                origin = track.raw(begin, end)
                stems = stems[..., : end - begin]
                if not (mean == 0.0 and std == 1.0):
                    stems = stems * np.float32(std) + np.float32(mean)
                yield begin, origin, stems
        elif not batch:
            raise RuntimeError("separation made no progress")
        keep = [output.emitted] + [
            run.lane.jobs[run.next].window for run in runs if run.next < len(run.lane.jobs)
        ]
        track.drop(min(keep))


def _add(runs: tp.Sequence[_LaneRun], job: Job, out: Array) -> None:
    run = next(r for r in runs if r.lane is job.lane)
    run.add(job, out)
    run.next += 1


def _pooled_lane(runs: tp.Sequence[_LaneRun], runner: _Runner, pool: tp.Any) -> tp.List[Job]:
    """Submits every remaining job of the next unfinished lane to ``pool``, then adds the
    results in order (as upstream does with ``num_workers``)."""
    run = next((r for r in runs if r.next < len(r.lane.jobs)), None)
    if run is None:
        return []
    jobs = run.lane.jobs[run.next :]
    futures = [pool.submit(runner, [job]) for job in jobs]
    try:
        for job, future in zip(jobs, futures):
            _add(runs, job, future.result()[0])
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return list(jobs)
