"""demucs.stream: block readers, resampling and stem writers for streaming separation.

Tiny HTDemucs models (16 kHz, 0.5 s segments) on generated noise; every comparison is an
SNR against ``apply_model`` / :meth:`Separator.separate_tensor` (>= 100 dB).
"""

from __future__ import annotations

import random
import typing as tp
from pathlib import Path

import julius
import numpy as np
import pytest
import soundfile as sf
import torch

from demucs.api import Separator
from demucs.audio import save_audio
from demucs.htdemucs import HTDemucs
from demucs.io import ArraySource, ConvertedSource, open_stem_writer, open_track
from demucs.configs import TINY_HTDEMUCS
from tests.compare import snr_db

RATE = 16000
SEGMENT = int(TINY_HTDEMUCS["segment"] * RATE)  # 8000 samples, stride 6000


def noise(length: int, channels: int = 2, seed: int = 0, amplitude: float = 0.2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, length, generator=gen) * amplitude


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> tp.Iterator[None]:
    """Tiny models: one thread is several times faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(**TINY_HTDEMUCS).eval()


# ---------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("old,new", [(44100, 16000), (8000, 16000), (48000, 44100)])
def test_block_resampling_equals_julius(old, new):
    wav = noise(9001, seed=1)
    reference = julius.resample_frac(wav, old, new)
    blocks = ConvertedSource(ArraySource(wav, old, block=997), new, 2).blocks()
    out = np.concatenate(list(blocks), axis=1)
    assert out.shape == tuple(reference.shape)
    assert snr_db(reference, out) > 120


# ---------------------------------------------------------------------- files


def write_track(path: Path, wav: torch.Tensor, samplerate: int) -> None:
    sf.write(str(path), wav.numpy().T, samplerate, subtype="FLOAT")


def test_separate_audio_file_resampled_input(tmp_path, model):
    """22.05 kHz mono file: decoded, upmixed and resampled block by block."""
    wav = noise(30000, channels=1, seed=4)
    write_track(tmp_path / "in.wav", wav, 22050)
    separator = Separator(model, device="cpu", shifts=2)
    loaded = separator.load_audio(tmp_path / "in.wav")
    random.seed(2)
    origin_ref, stems_ref = separator.separate_tensor(loaded, RATE)
    random.seed(2)
    origin, stems = separator.separate_audio_file(tmp_path / "in.wav")
    assert snr_db(origin_ref, origin) > 100
    for name in separator.sources:
        assert stems[name].shape == stems_ref[name].shape
        assert snr_db(stems_ref[name], stems[name]) > 100


@pytest.mark.parametrize(
    "ext,clip,options",
    [
        ("flac", "rescale", {}),
        ("wav", "clamp", {"bits_per_sample": 24}),
        ("wav", "rescale", {"as_float": True}),
    ],
)
def test_stem_writers_equal_save_audio(tmp_path, model, ext, clip, options):
    """Streamed stems written block by block == in-memory stems saved by save_audio
    (loud input, so that ``rescale`` really rescales)."""
    wav = noise(SEGMENT * 2 + 321, seed=6, amplitude=0.6)
    write_track(tmp_path / "in.wav", wav, RATE)
    separator = Separator(model, device="cpu", shifts=1)
    random.seed(0)
    _, reference = separator.separate_tensor(separator.load_audio(tmp_path / "in.wav"), RATE)
    random.seed(0)
    track = separator.open_track(tmp_path / "in.wav")
    out = tmp_path / "out"
    out.mkdir()
    writers = [
        open_stem_writer(out / f"{name}.{ext}", RATE, 2, clip=clip, **options)
        for name in separator.sources
    ]
    for _, stems in separator.stream_track(track):
        for writer, block in zip(writers, stems):
            writer.write(block)
    for writer in writers:
        writer.close()
    for name in separator.sources:
        save_audio(reference[name], tmp_path / f"ref_{name}.{ext}", RATE, clip=clip, **options)
        ours = sf.read(str(out / f"{name}.{ext}"), dtype="float32")[0]
        theirs = sf.read(str(tmp_path / f"ref_{name}.{ext}"), dtype="float32")[0]
        assert ours.shape == theirs.shape == (wav.shape[1], 2)
        assert snr_db(theirs, ours) > 100
        if not options.get("as_float"):  # integer PCM: at most one step apart
            assert np.abs(ours - theirs).max() <= 1.5 / 2**15
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.{ext}" for name in separator.sources
    )  # no temporary left


@pytest.mark.parametrize(
    "ext,clip,options",
    [
        ("mp3", "rescale", {"bitrate": 64}),
        ("mp3", "clamp", {"bitrate": 64}),
        ("flac", "rescale", {"bits_per_sample": 24}),
        ("wav", "rescale", {"as_float": True}),
        ("wav", "tanh", {}),
    ],
)
def test_block_writers_equal_save_audio(tmp_path, ext, clip, options):
    """A loud stem (peak > 1, so ``rescale`` divides) written in blocks == save_audio of
    the whole stem; mp3 byte for byte."""
    stem = noise(20000, seed=7, amplitude=0.7)
    save_audio(stem, tmp_path / f"whole.{ext}", RATE, clip=clip, **options)
    writer = open_stem_writer(tmp_path / f"blocks.{ext}", RATE, 2, clip=clip, **options)
    for start in range(0, stem.shape[1], 3001):
        writer.write(stem[:, start : start + 3001].numpy())
    writer.close()
    ours = sf.read(str(tmp_path / f"blocks.{ext}"), dtype="float32")[0]
    theirs = sf.read(str(tmp_path / f"whole.{ext}"), dtype="float32")[0]
    assert ours.shape == (20000, 2)
    if ext == "mp3":
        assert (tmp_path / "blocks.mp3").read_bytes() == (tmp_path / "whole.mp3").read_bytes()
    else:  # PCM: at most one step apart (tanh may differ by one ulp before rounding)
        assert np.abs(ours - theirs).max() <= 1.5 / 2**15
        if clip == "rescale":
            assert 0.9 < np.abs(theirs).max() <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"blocks.{ext}", f"whole.{ext}"]


def test_aborted_writers_leave_nothing(tmp_path):
    for ext in ("wav", "mp3"):
        for clip in ("rescale", "clamp"):
            writer = open_stem_writer(tmp_path / f"a.{ext}", RATE, 2, clip=clip)
            writer.write(np.zeros((2, 1000), np.float32))
            writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_open_track_errors(tmp_path):
    from demucs.audio import LoadAudioError

    (tmp_path / "bad.wav").write_text("not audio at all\n" * 20)
    with pytest.raises(LoadAudioError, match="cannot decode"):
        open_track(tmp_path / "bad.wav", RATE, 2)
    with pytest.raises(LoadAudioError, match="does not exist"):
        open_track(tmp_path / "missing.wav", RATE, 2)
