"""Tests for demucs/utils.py: upstream names and behaviour (fatal, DummyPoolExecutor,
unfold's keyword names, the metric helpers)."""

from __future__ import annotations

from concurrent.futures import CancelledError

import pytest
import torch

from demucs import utils


def test_fatal_prints_to_stderr_and_exits_1(capsys):
    with pytest.raises(SystemExit) as info:
        utils.fatal("bad", "thing")
    assert info.value.code == 1
    assert capsys.readouterr().err == "bad thing\n"


def test_dummy_pool_runs_lazily_and_shutdown_cancels():
    calls = []
    pool = utils.DummyPoolExecutor(workers=3)
    first = pool.submit(calls.append, 1)
    second = pool.submit(lambda value, scale=1: value * scale, 2, scale=5)
    assert calls == []
    assert first.result() is None and calls == [1]
    assert second.result() == 10
    pending = pool.submit(calls.append, 3)
    pool.shutdown(wait=True, cancel_futures=True)
    with pytest.raises(CancelledError):
        pending.result()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(calls.append, 4)
    assert calls == [1]


def test_dummy_pool_shutdown_without_cancel_keeps_pending_jobs():
    with utils.DummyPoolExecutor() as pool:
        job = pool.submit(lambda: 7)
    assert job.result() == 7
    assert isinstance(job, utils.DummyPoolExecutor.DummyResult)


def test_unfold_keyword_names_and_frames():
    frames = utils.unfold(a=torch.arange(7.0)[None], kernel_size=4, stride=3)
    assert frames.shape == (1, 3, 4)
    assert frames[0, 2].tolist() == [6.0, 0.0, 0.0, 0.0]


def test_pull_metric_ema_random_subset():
    history = [{"valid": {"loss": 1.0}}, {"valid": {"loss": 3.0}}]
    assert utils.pull_metric(history, "valid.loss") == [1.0, 3.0]
    mean = utils.EMA()
    mean({"loss": 1.0})
    assert mean({"loss": 3.0}, weight=3) == {"loss": 2.5}
    decayed = utils.EMA(beta=0.5)
    decayed({"loss": 4.0})
    assert decayed({"loss": 1.0}) == pytest.approx({"loss": (0.5 * 4 + 1) / 1.5})
    data = list(range(10))
    assert utils.random_subset(data, 20) is data
    subset = utils.random_subset(data, 4, seed=1)
    assert len(subset) == 4 and len(set(subset)) == 4
    assert list(subset) == list(utils.random_subset(data, 4, seed=1))
