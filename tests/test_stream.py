"""demucs.stream: streaming separation equals the in-memory path, in bounded memory.

Tiny HTDemucs models (16 kHz, 0.5 s segments) on generated noise; every comparison is an
SNR against ``apply_model`` / :meth:`Separator.separate_tensor` (>= 100 dB).
"""
from __future__ import annotations

import random
import tracemalloc
import typing as tp
from pathlib import Path

import julius
import numpy as np
import pytest
import soundfile as sf
import torch

from demucs.api import Separator
from demucs.apply import BagOfModels, apply_model
from demucs.audio import save_audio
from demucs.htdemucs import HTDemucs
from demucs.stream import (ArraySource, ConvertedSource, StreamMember, TrackStats,
                           members_for, open_stem_writer, open_track, stream_separate)
from tests.configs import TINY_HTDEMUCS
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


def in_memory(model: torch.nn.Module, wav: torch.Tensor, shifts: int, seed: int
              ) -> tp.Tuple[torch.Tensor, tp.Any]:
    """``apply_model`` on the normalised track, as the Separator does; and the random
    state it leaves."""
    stats = TrackStats.of_blocks([wav.numpy()])
    random.seed(seed)
    out = apply_model(model, ((wav - stats.mean) / stats.std)[None], shifts=shifts)[0]
    return out * stats.std + stats.mean, random.getstate()


def streamed(model: torch.nn.Module, wav: torch.Tensor, shifts: int, seed: int,
             batch: int = 1, block: int = 1777) -> tp.Tuple[np.ndarray, np.ndarray, tp.Any]:
    stats = TrackStats.of_blocks(ArraySource(wav, RATE, block).blocks())
    random.seed(seed)
    blocks = list(stream_separate(
        members_for(model, max_batch=batch), ArraySource(wav, RATE, block).blocks(),
        wav.shape[-1], sources=4, channels=2, samplerate=RATE, shifts=shifts,
        mean=stats.mean, std=stats.std))
    origin = np.concatenate([b[0] for b in blocks], axis=-1)
    stems = np.concatenate([b[1] for b in blocks], axis=-1)
    return origin, stems, random.getstate()


# ---------------------------------------------------------------------- building blocks

@pytest.mark.parametrize("old,new", [(44100, 16000), (8000, 16000), (48000, 44100)])
def test_block_resampling_equals_julius(old, new):
    wav = noise(9001, seed=1)
    reference = julius.resample_frac(wav, old, new)
    blocks = ConvertedSource(ArraySource(wav, old, block=997), new, 2).blocks()
    out = np.concatenate(list(blocks), axis=1)
    assert out.shape == tuple(reference.shape)
    assert snr_db(reference, out) > 120


def test_stats_equal_whole_track():
    wav = noise(50000, seed=2) + 0.05
    stats = TrackStats.of_blocks(ArraySource(wav, RATE, block=4096).blocks())
    mono = wav.mean(0)
    assert stats.length == 50000
    assert stats.mean == pytest.approx(mono.mean().item(), rel=1e-5)
    assert stats.std == pytest.approx(mono.std().item(), rel=1e-6)
    silent = TrackStats.of_blocks([np.zeros((2, 100), np.float32)])
    assert (silent.mean, silent.std) == (0.0, 1.0)


# ---------------------------------------------------------------------- equality

@pytest.mark.parametrize("length,shifts,batch", [
    (3000, 1, 1),              # shorter than one segment
    (SEGMENT * 3 + 1234, 0, 1),  # not a multiple of the stride
    (SEGMENT * 2 + 77, 2, 3),  # shifts with a fixed seed, batched segments
])
def test_stream_equals_apply_model(model, length, shifts, batch):
    wav = noise(length, seed=length)
    reference, state = in_memory(model, wav, shifts, seed=5)
    origin, stems, stream_state = streamed(model, wav, shifts, seed=5, batch=batch)
    assert stems.shape == tuple(reference.shape)
    assert np.array_equal(origin, wav.numpy())
    assert snr_db(reference, stems) > 100
    assert stream_state == state  # the random stream ends where apply_model leaves it


def test_bag_with_weights_and_drawing_transformer():
    """A bag whose second member draws its positional shift (sin_random_shift=3) in
    every forward pass: the draws are replayed, so even shifts match apply_model."""
    torch.manual_seed(1)
    first = HTDemucs(**TINY_HTDEMUCS).eval()
    second = HTDemucs(**dict(TINY_HTDEMUCS, t_sin_random_shift=3)).eval()
    bag = BagOfModels([first, second], weights=[[1.0, 0.5, 0.0, 2.0], [1.0, 1.5, 1.0, 0.5]])
    wav = noise(SEGMENT * 2 + 500, seed=3)
    reference, state = in_memory(bag, wav, shifts=2, seed=11)
    _, stems, stream_state = streamed(bag, wav, shifts=2, seed=11, batch=2)
    assert snr_db(reference, stems) > 100
    assert stream_state == state


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


@pytest.mark.parametrize("ext,clip,options", [
    ("flac", "rescale", {}),
    ("wav", "clamp", {"bits_per_sample": 24}),
    ("wav", "rescale", {"as_float": True}),
])
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
    writers = [open_stem_writer(out / f"{name}.{ext}", RATE, 2, clip=clip, **options)
               for name in separator.sources]
    for _, stems in separator.stream_track(track):
        for writer, block in zip(writers, stems):
            writer.write(block)
    for writer in writers:
        writer.close()
    for name in separator.sources:
        save_audio(reference[name], tmp_path / f"ref_{name}.{ext}", RATE, clip=clip,
                   **options)
        ours = sf.read(str(out / f"{name}.{ext}"), dtype="float32")[0]
        theirs = sf.read(str(tmp_path / f"ref_{name}.{ext}"), dtype="float32")[0]
        assert ours.shape == theirs.shape == (wav.shape[1], 2)
        assert snr_db(theirs, ours) > 100
        if not options.get("as_float"):  # integer PCM: at most one step apart
            assert np.abs(ours - theirs).max() <= 1.5 / 2 ** 15
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{name}.{ext}" for name in separator.sources)  # no temporary left


@pytest.mark.parametrize("ext,clip,options", [
    ("mp3", "rescale", {"bitrate": 64}),
    ("mp3", "clamp", {"bitrate": 64}),
    ("flac", "rescale", {"bits_per_sample": 24}),
    ("wav", "rescale", {"as_float": True}),
    ("wav", "tanh", {}),
])
def test_block_writers_equal_save_audio(tmp_path, ext, clip, options):
    """A loud stem (peak > 1, so ``rescale`` divides) written in blocks == save_audio of
    the whole stem; mp3 byte for byte."""
    stem = noise(20000, seed=7, amplitude=0.7)
    save_audio(stem, tmp_path / f"whole.{ext}", RATE, clip=clip, **options)
    writer = open_stem_writer(tmp_path / f"blocks.{ext}", RATE, 2, clip=clip, **options)
    for start in range(0, stem.shape[1], 3001):
        writer.write(stem[:, start:start + 3001].numpy())
    writer.close()
    ours = sf.read(str(tmp_path / f"blocks.{ext}"), dtype="float32")[0]
    theirs = sf.read(str(tmp_path / f"whole.{ext}"), dtype="float32")[0]
    assert ours.shape == (20000, 2)
    if ext == "mp3":
        assert (tmp_path / "blocks.mp3").read_bytes() == (tmp_path / "whole.mp3").read_bytes()
    else:  # PCM: at most one step apart (tanh may differ by one ulp before rounding)
        assert np.abs(ours - theirs).max() <= 1.5 / 2 ** 15
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


# ---------------------------------------------------------------------- memory

class GeneratedSource:
    """Noise made block by block: a long track that never exists in memory."""

    def __init__(self, seconds: float, samplerate: int, block: int = 4096) -> None:
        self.samplerate, self.channels, self.block = samplerate, 2, block
        self.length = int(seconds * samplerate)

    def blocks(self) -> tp.Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for start in range(0, self.length, self.block):
            size = min(self.block, self.length - start)
            yield (rng.standard_normal((2, size)) * 0.1).astype(np.float32)


def _toy_members(samplerate: int) -> tp.List[StreamMember]:
    """A "model" costing next to nothing (a fixed gain per source, numpy only), with
    1 s segments padded by 0.25 s of context, so that only the streaming machinery is
    measured."""
    gains = np.array([0.1, 0.2, 0.3, 0.4], np.float32)[None, :, None, None]

    def run(batch: np.ndarray) -> np.ndarray:
        return batch[:, None] * gains

    return [StreamMember(run=run, segment_length=samplerate,
                         valid_length=lambda n: samplerate + samplerate // 4,
                         weights=[1.0] * 4, max_batch=2)]


def _peak_traced_bytes(seconds: float, folder: Path, samplerate: int = 8000) -> int:
    """tracemalloc peak (numpy buffers included) of the statistics pass, the streaming
    separation (2 shifts) and writing four 16-bit wav stems with clip mode rescale."""
    source = GeneratedSource(seconds, samplerate)
    tracemalloc.start()
    try:
        stats = TrackStats.of_blocks(source.blocks())
        writers = [open_stem_writer(folder / f"{seconds}_{k}.wav", samplerate, 2)
                   for k in range(4)]
        for _, stems in stream_separate(_toy_members(samplerate), source.blocks(),
                                        stats.length, sources=4, channels=2,
                                        samplerate=samplerate, shifts=2, mean=stats.mean,
                                        std=stats.std):
            for writer, block in zip(writers, stems):
                writer.write(block)
        for writer in writers:
            writer.close()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_length(tmp_path):
    """A 16x longer track (15 s vs 4 min at 8 kHz) keeps the same traced peak, far below
    the size of its stems in memory."""
    short = _peak_traced_bytes(15, tmp_path)
    long = _peak_traced_bytes(240, tmp_path)
    stems_bytes = 4 * 2 * 240 * 8000 * 4
    assert long < 1.25 * short, (short, long)
    assert long < stems_bytes / 20, (long, stems_bytes)
    assert sf.info(str(tmp_path / "240_0.wav")).frames == 240 * 8000


def traced_stream_peak(separator: Separator, path: Path, rate: int) -> int:
    """Peak of Python-traced memory while ``separator`` streams the stereo file ``path``."""
    tracemalloc.start()
    try:
        for _ in separator.stream_track(open_track(path, rate, 2, block=4096)):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_torch_model_memory_is_flat(tmp_path):
    """The same with the tiny HTDemucs on a real file (decode, statistics, separate):
    the traced peak for 16 s is that for 4 s (torch's own buffers are not traced, but
    they do not depend on the length)."""
    torch.manual_seed(0)
    small = HTDemucs(**dict(TINY_HTDEMUCS, channels=4, t_layers=0)).eval()
    separator = Separator(small, device="cpu", shifts=0)
    peaks = []
    for seconds in (4, 16):
        path = tmp_path / f"{seconds}.flac"
        with sf.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16") as handle:
            for block in GeneratedSource(seconds, RATE).blocks():
                handle.write(block.T)
        peaks.append(traced_stream_peak(separator, path, RATE))
    assert peaks[1] < 1.25 * peaks[0], peaks
