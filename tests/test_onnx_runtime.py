"""demucs.onnx_runtime: whole-track separation with an exported graph vs apply_model."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from demucs import export_onnx as E  # noqa: E402
from demucs import onnx_runtime as R  # noqa: E402
from demucs.apply import apply_model  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.configs import TINY_HTDEMUCS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HTDemucs(**TINY_HTDEMUCS).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    return E.export_model(model, tmp_path_factory.mktemp("rt") / "tiny.onnx", name="tiny")


@pytest.fixture(scope="module")
def separator(onnx_file):
    return R.OnnxSeparator(onnx_file, threads=1)


def _track(seconds: float, seed: int = 3, batch: int = 1) -> torch.Tensor:
    """A music-like test signal at 16 kHz: decaying tones plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    tones = sum(
        torch.sin(2 * np.pi * f * t) * (0.5 + 0.5 * torch.cos(2 * np.pi * r * t))
        for f, r in ((110, 0.5), (440, 2.0), (1250, 3.0))
    )
    noise = 0.05 * torch.randn(batch, 2, t.numel(), generator=gen)
    return (0.2 * tones + noise).float() + 0.01


def _torch_reference(model, mix: torch.Tensor, **kwargs) -> torch.Tensor:
    """``demucs.separate``'s normalisation around ``apply_model``, for one track (C, T)."""
    ref = mix.mean(0)
    mean, std = ref.mean(), ref.std()
    out = apply_model(model, ((mix - mean) / std)[None], **kwargs)[0]
    return out * std + mean


def test_metadata(separator, model):
    assert separator.sources == model.sources
    assert separator.sample_rate == 16000
    assert separator.audio_channels == 2
    assert separator.spec.segment_samples == 8000
    assert separator.spec.input_samples == 8000
    assert separator.spec.model_name == "tiny"


@pytest.mark.parametrize("shifts,overlap,power", [(2, 0.25, 1.0), (0, 0.5, 2.0)])
def test_matches_apply_model(separator, model, shifts, overlap, power, monkeypatch):
    mix = _track(2.3)[0]  # ~6 overlapping segments, last one partial
    # Record apply_model's shift offsets (the model itself also draws from `random`,
    # so re-seeding alone does not reproduce them) and replay them.
    drawn = []
    draw = random.randint

    def recording_randint(a, b):
        drawn.append(draw(a, b))
        return drawn[-1]

    monkeypatch.setattr(random, "randint", recording_randint)
    expected = _torch_reference(model, mix, shifts=shifts, overlap=overlap, transition_power=power)
    monkeypatch.undo()
    assert len(drawn) == shifts
    replay = iter(drawn)
    monkeypatch.setattr(random, "randint", lambda a, b: next(replay))
    got = separator.separate(mix.numpy(), shifts=shifts, overlap=overlap, transition_power=power)
    monkeypatch.undo()
    assert got.shape == (4, 2, mix.shape[-1])
    assert E.snr_db(expected.numpy(), got) >= 60


def test_short_track_and_batch(separator, model):
    mix = _track(0.3, batch=2)  # shorter than a segment
    expected = apply_model(model, mix, shifts=0)
    got = separator.separate(mix.numpy(), shifts=0, normalize=False)
    assert got.shape == (2, 4, 2, mix.shape[-1])
    assert E.snr_db(expected.numpy(), got) >= 60
    single = separator.separate(mix.numpy(), shifts=0, split=False, normalize=False)
    assert E.snr_db(expected.numpy(), single) >= 60


def test_progress_and_errors(separator):
    calls = []
    separator.separate(
        np.zeros((2, 20000), np.float32),
        shifts=0,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls and calls[-1][0] == len(calls) and all(d <= t for d, t in calls)
    with pytest.raises(ValueError, match="channels"):
        separator.separate(np.zeros((3, 1000), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        separator.separate(np.zeros((2, 1000), np.float32), overlap=1.0)
    with pytest.raises(ValueError, match="split"):
        separator.separate(np.zeros((2, 9000), np.float32), shifts=0, split=False)


def test_session_options_and_optimized_model(onnx_file, tmp_path):
    saved = tmp_path / "optimized.onnx"
    first = R.OnnxSeparator(
        onnx_file,
        threads=1,
        optimization="extended",
        memory_arena=False,
        optimized_model_path=str(saved),
    )
    assert saved.exists()
    again = R.OnnxSeparator(saved, threads=1, optimization="disable")
    mix = np.random.default_rng(0).standard_normal((1, 2, 8000)).astype(np.float32)
    assert E.snr_db(first.run_segment(mix), again.run_segment(mix)) > 100
    with pytest.raises(ValueError, match="optimization"):
        R.make_session_options(optimization="fast")


def test_runtime_needs_only_numpy_and_onnxruntime():
    """The ONNX backend, the core and the API import without torch."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import demucs.onnx.runtime, demucs.core, demucs.api, demucs.separate\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(demucs.onnx.runtime.OnnxSeparator.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT)
    )
    assert result.returncode == 0, result.stderr
    assert "OnnxSeparator" in result.stdout
