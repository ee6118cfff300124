"""The separation plan: which segments of which model are run, where they go, and with
which blending weights. Computed once, in plain Python and numpy, before any model runs.

A track of ``length`` samples is separated by every *member* of a bag (one member for a
single model). With the shift trick (``shifts > 0``) each member separates ``shifts``
copies of the track delayed by a random ``delay`` in ``[0, max_shift]`` samples
(``max_shift = MAX_SHIFT_SECONDS * samplerate``); each such pass is a :class:`Lane`. A lane
cuts its delayed track into segments of ``segment_length`` samples every ``stride =
int((1 - overlap) * segment_length)`` samples; each segment is a :class:`Job`: the model
input is the segment centred in ``valid_length(n)`` samples of real neighbouring audio
(zeros past the track's ends), the output is centre-trimmed back, multiplied by the
triangular :func:`transition_weight` and overlap-added; the lane's output is that sum
divided by the summed weights. Lanes are averaged over the shifts and mixed across
members with the bag's per-source weights.

This is upstream ``apply_model``'s algorithm, arranged so that the work can run in any
order (in memory: member by member, as upstream; streamed: in the order of the track).
The random offsets are drawn with :mod:`random` in upstream's order, including the draws
that models make inside their forward passes (``Member.draws``), so that a plan made
under ``random.seed(s)`` separates exactly like upstream under the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import typing as tp

import numpy as np

__all__ = [
    "MAX_SHIFT_SECONDS",
    "check_split_params",
    "transition_weight",
    "max_shift_samples",
    "segment_stride",
    "Member",
    "Job",
    "Lane",
    "plan_lanes",
    "count_segments",
    "source_coefficients",
]

#: Largest random delay of the shift trick, in seconds.
MAX_SHIFT_SECONDS = 0.5

Array = tp.Any  # a numpy array or a torch tensor, depending on the backend
#: Separates a batch of padded segments: ``(N, C, V) -> (N, S, C, V)``.
SegmentRunner = tp.Callable[[Array], Array]


def check_split_params(
    shifts: int, overlap: float, transition_power: float = 1.0, segment: tp.Optional[float] = None
) -> None:
    """Raises ValueError for separation settings that cannot work.

    ``segment`` (seconds), when given, must be a positive finite number; its upper bound
    depends on the model and is checked by the backends.
    """
    if isinstance(shifts, bool) or int(shifts) != shifts or shifts < 0:
        raise ValueError(f"shifts must be an integer >= 0, got {shifts!r}")
    if not (isinstance(overlap, (int, float)) and 0 <= overlap < 1):
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if not (isinstance(transition_power, (int, float)) and transition_power >= 1):
        raise ValueError(f"transition_power < 1 leads to weird behavior (got {transition_power!r})")
    if segment is not None:
        if not (isinstance(segment, (int, float)) and math.isfinite(segment) and segment > 0):
            raise ValueError(f"segment must be a positive number of seconds, got {segment!r}")


def max_shift_samples(samplerate: int) -> int:
    """Largest delay of the shift trick, in samples."""
    return int(MAX_SHIFT_SECONDS * samplerate)


def segment_stride(segment_length: int, overlap: float) -> int:
    """Samples between the starts of two consecutive segments."""
    stride = int((1 - overlap) * segment_length)
    if segment_length <= 0 or stride <= 0:
        raise ValueError(
            f"segments of {segment_length} samples with overlap {overlap} leave "
            "no stride between them"
        )
    return stride


def transition_weight(
    segment_length: int, transition_power: float = 1.0, count: tp.Optional[int] = None
) -> np.ndarray:
    """Blending window ``(segment_length,)`` float32: a triangle ``1, 2, ..., 2, 1``
    scaled to peak at 1, to the power ``transition_power`` (higher: sharper cross-fades).
    Never zero, so every sample covered by a segment has a positive total weight.

    ``count``: only the first ``count`` values (a segment longer than the track never
    uses the rest, and a huge one would not fit in memory).
    """
    half = segment_length // 2
    size = segment_length if count is None else min(count, segment_length)
    index = np.arange(size)
    weight = np.where(index < half, index + 1, segment_length - index).astype(np.float32)
    return (weight / np.float32(max(half, segment_length - half))) ** np.float32(transition_power)


@dataclasses.dataclass
class Member:
    """One model of a bag, as the core sees it (a backend builds these).

    Attributes:
        run: separates a batch of padded segments ``(N, C, V) -> (N, S, C, V)``.
        active: False for a member whose output is not needed (e.g. a bag member that
            weighs nothing in the stems asked for): it runs nothing, but its random
            draws are still made so that the other members draw as in a full run.
        segment_length: samples per segment; None runs the whole track in one pass
            (``split=False``).
        valid_length: model input length for ``n`` samples of audio.
        weights: per-source weight of this member in the bag.
        draws: arguments of the ``random.randrange`` calls one forward pass makes
            (replayed while planning, so that shifts are drawn as upstream draws them).
        max_batch: segments one call of ``run`` may take.
    """

    run: SegmentRunner
    segment_length: tp.Optional[int]
    valid_length: tp.Callable[[int], int]
    weights: tp.Sequence[float]
    draws: tp.Sequence[int] = ()
    max_batch: int = 1
    active: bool = True


class Job(tp.NamedTuple):
    """One forward pass: a segment of a lane."""

    lane: "Lane"
    position: int  # segment index in the lane
    start: int  # first track sample the segment covers (< 0 for delayed lanes)
    length: int  # samples the segment covers
    valid: int  # model input length
    state: tp.Optional[tp.Any]  # random state to restore before the pass, if it matters

    @property
    def window(self) -> int:
        """First track sample of the model input (context included)."""
        return self.start - (self.valid - self.length) // 2

    @property
    def offset(self) -> int:
        """Segment start in the lane's delayed coordinates (upstream's ``segment_offset``)."""
        return self.start + self.lane.delay


@dataclasses.dataclass(eq=False)
class Lane:
    """One pass of one member over the (delayed) track: its segments in order.

    The lane separates the track delayed by ``delay`` samples, ``length + delay`` samples
    long, so its segment ``k`` covers track samples ``[offsets[k] - delay, ...)``.
    """

    member_index: int
    shift_index: int
    member: Member
    delay: int
    length: int  # track length (padded to the models' minimum), without the delay
    offsets: tp.Sequence[int]
    weight: tp.Optional[np.ndarray]  # None: one segment, no blending
    jobs: tp.List[Job] = dataclasses.field(default_factory=list)

    def make_job(self, index: int, state: tp.Optional[tp.Any]) -> Job:
        offset = self.offsets[index]
        total = self.length + self.delay
        if self.member.segment_length is None:
            length = total
        else:
            length = min(self.member.segment_length, total - offset)
        return Job(
            self, index, offset - self.delay, length, self.member.valid_length(length), state
        )


def plan_lanes(
    members: tp.Sequence[Member],
    length: int,
    shifts: int,
    overlap: float,
    transition_power: float,
    samplerate: int,
) -> tp.List[Lane]:
    """Lanes and jobs in upstream's order, drawing from :mod:`random` as it would.

    The delays of the shift trick are drawn with ``random.randint`` member by member and
    shift by shift; between two draws, upstream's forward passes of the previous shift
    draw too (``member.draws``), so those draws are made here as well. When a forward pass
    draws values that matter (``randrange(n)`` with ``n > 1``), the state before it is
    kept and restored when the segment actually runs.
    """
    if length <= 0:
        raise ValueError("cannot separate audio with no samples")
    max_shift = max_shift_samples(samplerate)
    lanes = []
    for index, member in enumerate(members):
        if member.segment_length is None:
            stride, weight = None, None
        else:
            stride = segment_stride(member.segment_length, overlap)
            weight = transition_weight(
                member.segment_length, transition_power, count=length + max_shift
            )
        keep_states = any(n > 1 for n in member.draws)
        for shift in range(max(shifts, 1)):
            delay = max_shift - random.randint(0, max_shift) if shifts else 0
            offsets = range(0, length + delay, stride) if stride else range(0, 1)
            lane = Lane(index, shift, member, delay, length, offsets, weight)
            for job_index in range(len(offsets)):
                state = random.getstate() if keep_states else None
                for n in member.draws:
                    random.randrange(n)
                if member.active:
                    lane.jobs.append(lane.make_job(job_index, state))
            if member.active:
                lanes.append(lane)
    return lanes


def count_segments(lanes: tp.Sequence[Lane]) -> int:
    """Forward passes a plan makes."""
    return sum(len(lane.jobs) for lane in lanes)


def source_coefficients(
    members: tp.Sequence[Member], sources: int, shifts: int
) -> tp.List[np.ndarray]:
    """Per member, the factor of each source ``(S, 1, 1)``: its weight divided by the
    sources' total weight and by the number of shifts (a source no member weighs is 0)."""
    totals = np.zeros(sources, np.float64)
    for member in members:
        if len(member.weights) != sources:
            raise ValueError(f"{len(member.weights)} weights for {sources} sources")
        totals += np.asarray(member.weights, np.float64)
    coefficients = []
    for member in members:
        weights = np.asarray(member.weights, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(totals != 0, weights / totals, 0.0) / max(shifts, 1)
        coefficients.append(factor.astype(np.float32)[:, None, None])
    return coefficients
