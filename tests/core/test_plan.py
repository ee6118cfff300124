"""demucs.core.plan: blending weights, argument checks, the plan's random draws."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from demucs.core.plan import (
    Member,
    check_split_params,
    plan_lanes,
    segment_stride,
    source_coefficients,
    transition_weight,
)


def test_transition_weight_is_upstreams_triangle():
    """Upstream's formula: arange(1, n//2 + 1) then arange(n - n//2, 0, -1), scaled to a
    peak of 1, to a power (float32)."""
    for length, power in ((8, 1.0), (9, 2.0), (1, 1.0)):
        half = length // 2
        triangle = np.concatenate([np.arange(1, half + 1), np.arange(length - half, 0, -1)])
        expected = (triangle.astype(np.float32) / np.float32(triangle.max())) ** power
        got = transition_weight(length, power)
        assert got.dtype == np.float32 and np.array_equal(got, expected.astype(np.float32))
        assert got.min() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shifts=-1, overlap=0.25),
        dict(shifts=1.5, overlap=0.25),
        dict(shifts=1, overlap=1.0),
        dict(shifts=1, overlap=-0.1),
        dict(shifts=1, overlap=0.25, transition_power=0.5),
        dict(shifts=1, overlap=0.25, segment=0),
        dict(shifts=1, overlap=0.25, segment=-1.0),
        dict(shifts=1, overlap=0.25, segment=math.nan),
        dict(shifts=1, overlap=0.25, segment=math.inf),
    ],
)
def test_check_split_params_refuses(kwargs):
    with pytest.raises(ValueError):
        check_split_params(**kwargs)


def test_stride_needs_room():
    assert segment_stride(100, 0.25) == 75
    with pytest.raises(ValueError):
        segment_stride(1, 0.5)


def _member(draws=(), active=True, weights=(1.0, 1.0)):
    return Member(
        run=lambda x: x,
        segment_length=100,
        valid_length=lambda n: 120,
        weights=list(weights),
        draws=draws,
        active=active,
    )


def test_plan_draws_like_upstream():
    """One randint per shift and member, forward draws replayed in between; inactive
    members draw too, so the others draw as in a full run."""
    random.seed(3)
    full = plan_lanes([_member(draws=(1,)), _member()], 450, 2, 0.25, 1.0, 200)
    state = random.getstate()
    random.seed(3)
    partial = plan_lanes([_member(draws=(1,), active=False), _member()], 450, 2, 0.25, 1.0, 200)
    assert random.getstate() == state
    assert [lane.delay for lane in full[2:]] == [lane.delay for lane in partial]
    assert len(partial) == 2 and all(lane.member_index == 1 for lane in partial)
    lane = full[0]
    assert [job.offset for job in lane.jobs] == list(range(0, 450 + lane.delay, 75))
    assert lane.jobs[0].start == -lane.delay
    assert all(job.valid == 120 for job in lane.jobs)


def test_source_coefficients():
    members = [_member(weights=(1.0, 0.0)), _member(weights=(3.0, 0.0))]
    first, second = source_coefficients(members, 2, shifts=2)
    assert first[:, 0, 0].tolist() == [0.125, 0.0] and second[:, 0, 0].tolist() == [0.375, 0.0]
