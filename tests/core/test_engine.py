"""demucs.core.engine: the same separation in memory (apply_model) and streamed, with
any backend's arrays, in bounded memory.

Tiny HTDemucs models (16 kHz, 0.5 s segments) on generated noise; every comparison is an
SNR against ``apply_model`` (>= 100 dB).
"""

from __future__ import annotations

import random
import tracemalloc
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs.api import Separator
from demucs.apply import BagOfModels, TensorChunk, apply_model, torch_members
from demucs.core import BlockInput, Member, TrackStats, separate
from demucs.htdemucs import HTDemucs
from demucs.io import ArraySource, open_stem_writer
from tests.compare import snr_db
from demucs.configs import TINY_HTDEMUCS
from tests.helpers import GeneratedSource, noise, traced_stream_peak

RATE = 16000
SEGMENT = int(TINY_HTDEMUCS["segment"] * RATE)  # 8000 samples, stride 6000

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model() -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(**TINY_HTDEMUCS).eval()


def in_memory(
    model: torch.nn.Module, wav: torch.Tensor, shifts: int, seed: int
) -> tp.Tuple[torch.Tensor, tp.Any]:
    """``apply_model`` on the normalised track, and the random state it leaves."""
    stats = TrackStats.of_array(wav.numpy())
    random.seed(seed)
    out = apply_model(model, ((wav - stats.mean) / stats.std)[None], shifts=shifts)[0]
    return out * stats.std + stats.mean, random.getstate()


def streamed(
    model: torch.nn.Module,
    wav: torch.Tensor,
    shifts: int,
    seed: int,
    batch: int = 1,
    block: int = 1777,
) -> tp.Tuple[np.ndarray, np.ndarray, tp.Any]:
    stats = TrackStats.of_blocks(ArraySource(wav, RATE, block).blocks())
    members = torch_members(model, max_batch=batch)
    for member in members:
        member.run = (lambda run: lambda x: run(torch.from_numpy(x)).numpy())(member.run)
    random.seed(seed)
    blocks = list(
        separate(
            members,
            BlockInput(ArraySource(wav, RATE, block).blocks(), 2, wav.shape[-1]),
            sources=4,
            samplerate=RATE,
            shifts=shifts,
            mean=stats.mean,
            std=stats.std,
        )
    )
    origin = np.concatenate([b[1][0] for b in blocks], axis=-1)
    stems = np.concatenate([b[2][0] for b in blocks], axis=-1)
    return origin, stems, random.getstate()


def test_stats_equal_whole_track():
    wav = noise(50000, seed=2) + 0.05
    stats = TrackStats.of_blocks(ArraySource(wav, RATE, block=4096).blocks())
    mono = wav.mean(0)
    assert stats.length == 50000
    assert stats.mean == pytest.approx(mono.mean().item(), rel=1e-5)
    assert stats.std == pytest.approx(mono.std().item(), rel=1e-6)
    silent = TrackStats.of_blocks([np.zeros((2, 100), np.float32)])
    assert (silent.mean, silent.std) == (0.0, 1.0)


@pytest.mark.parametrize(
    "length,shifts,batch",
    [
        (3000, 1, 1),  # shorter than one segment
        (SEGMENT * 3 + 1234, 0, 1),  # not a multiple of the stride
        (SEGMENT * 2 + 77, 2, 3),  # shifts with a fixed seed, batched segments
    ],
)
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


def _one_hot_bag(count: int = 4) -> BagOfModels:
    """An htdemucs_ft-like bag: member k makes source k only."""
    torch.manual_seed(2)
    models = [HTDemucs(**TINY_HTDEMUCS).eval() for _ in range(count)]
    weights = [[1.0 if k == i else 0.0 for k in range(4)] for i in range(count)]
    return BagOfModels(models, weights)


def test_one_stem_runs_only_the_members_it_needs():
    """stems=["vocals"] on a one-hot bag runs one member of four, with the vocals of the
    full run under the same seed (the skipped members' draws are still made)."""
    bag = _one_hot_bag()
    wav = noise(SEGMENT + 4000, seed=4)
    runs: tp.List[int] = []
    for index, sub in enumerate(bag.models):
        sub.register_forward_hook(lambda *_, _i=index: runs.append(_i))
    full = Separator(bag, device="cpu", shifts=1)
    random.seed(9)
    _, everything = full.separate_tensor(wav)
    all_runs = list(runs)
    runs.clear()
    single = Separator(bag, device="cpu", shifts=1, stems=["vocals"])
    random.seed(9)
    _, vocals = single.separate_tensor(wav)
    assert list(vocals) == ["vocals"]
    assert set(runs) == {3} and set(all_runs) == {0, 1, 2, 3}
    assert len(runs) == all_runs.count(3)
    assert snr_db(everything["vocals"], vocals["vocals"]) >= 100
    with pytest.raises(ValueError, match="unknown stems"):
        single.update_parameter(stems=["kazoo"])


def test_callback_keys_and_offsets(model):
    """Upstream 4.1.0's callback dicts: one start/end pair per forward pass, in order."""
    calls: tp.List[tp.Dict[str, tp.Any]] = []
    wav = noise(SEGMENT * 2, seed=6)[None]
    random.seed(1)
    apply_model(model, wav, shifts=2, callback=calls.append, callback_arg={"x": 1})
    assert {"model_idx_in_bag", "shift_idx", "segment_offset", "models", "state", "x"} <= set(
        calls[0]
    )
    assert [c["state"] for c in calls[:2]] == ["start", "end"]
    assert {c["shift_idx"] for c in calls} == {0, 1}
    offsets = [c["segment_offset"] for c in calls if c["shift_idx"] == 0 and c["state"] == "start"]
    assert offsets == list(range(0, len(offsets) * 6000, 6000))

    def abort(info: tp.Dict[str, tp.Any]) -> None:
        if info["segment_offset"] > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply_model(model, wav, shifts=0, callback=abort)


def test_tensor_chunk_pads_from_its_tensor(model):
    """apply_model on a TensorChunk reads its context from the whole tensor, like
    upstream; the same as slicing when the chunk is the whole tensor."""
    wav = noise(SEGMENT * 2, seed=8)[None]
    whole = apply_model(model, TensorChunk(wav), shifts=0)
    assert torch.equal(whole, apply_model(model, wav, shifts=0))
    part = apply_model(model, TensorChunk(wav, 3000, 5000), shifts=0, split=False)
    assert part.shape == (1, 4, 2, 5000)
    sliced = apply_model(model, wav[..., 3000:8000], shifts=0, split=False)
    assert not torch.allclose(part, sliced)  # real context, not zeros


def test_numpy_and_torch_arrays_agree(model):
    """The same plan on numpy (streamed) and on tensors (in memory)."""
    wav = noise(SEGMENT + 3000, seed=7)
    reference, _ = in_memory(model, wav, 0, seed=0)
    members = torch_members(model)
    for member in members:
        member.run = (lambda run: lambda x: run(torch.from_numpy(x)).numpy())(member.run)
    stats = TrackStats.of_array(wav.numpy())
    from demucs.core import ArrayInput, NUMPY

    blocks = list(
        separate(
            members,
            ArrayInput(wav.numpy()[None], NUMPY),
            sources=4,
            samplerate=RATE,
            shifts=0,
            mean=stats.mean,
            std=stats.std,
            order="memory",
        )
    )
    assert [start for start, _, _ in blocks][0] == 0
    assert snr_db(reference, np.concatenate([b[2][0] for b in blocks], axis=-1)) > 100


# ---------------------------------------------------------------------- memory


def _toy_members(samplerate: int) -> tp.List[Member]:
    """A "model" costing next to nothing (a fixed gain per source, numpy only), with
    1 s segments padded by 0.25 s of context, so that only the engine is measured."""
    gains = np.array([0.1, 0.2, 0.3, 0.4], np.float32)[None, :, None, None]

    def run(batch: np.ndarray) -> np.ndarray:
        return batch[:, None] * gains

    return [
        Member(
            run=run,
            segment_length=samplerate,
            valid_length=lambda n: samplerate + samplerate // 4,
            weights=[1.0] * 4,
            max_batch=2,
        )
    ]


def _peak_traced_bytes(seconds: float, folder: Path, samplerate: int = 8000) -> int:
    """tracemalloc peak (numpy buffers included) of the statistics pass, the streaming
    separation (2 shifts) and writing four 16-bit wav stems with clip mode rescale."""
    source = GeneratedSource(seconds, samplerate)
    tracemalloc.start()
    try:
        stats = TrackStats.of_blocks(source.blocks())
        writers = [open_stem_writer(folder / f"{seconds}_{k}.wav", samplerate, 2) for k in range(4)]
        for _, _, stems in separate(
            _toy_members(samplerate),
            BlockInput(source.blocks(), 2, stats.length),
            sources=4,
            samplerate=samplerate,
            shifts=2,
            mean=stats.mean,
            std=stats.std,
        ):
            for writer, block in zip(writers, stems[0]):
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
        peaks.append(traced_stream_peak(separator, path))
    assert peaks[1] < 1.25 * peaks[0], peaks
