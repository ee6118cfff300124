"""``demucs --onnx FILE`` and ``Separator(onnx=FILE)``: an exported graph in ONNX Runtime.

One tiny HTDemucs (random weights, seed 0) is exported once for the module and saved as a
checkpoint in a --repo folder (bag ``tinyx``), so the same weights run both ways.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from demucs import export_onnx as E  # noqa: E402
from demucs.api import Separator  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.onnx_runtime import OnnxSeparator, SegmentSpec  # noqa: E402
from demucs.states import save_model  # noqa: E402
from demucs.core import BlockInput, TrackStats, separate  # noqa: E402
from demucs.onnx.runtime import onnx_members  # noqa: E402
from demucs.io import ArraySource  # noqa: E402
from demucs.configs import TINY_HTDEMUCS  # noqa: E402
from tests.helpers import run_main, write_mix  # noqa: E402
from tests.helpers import traced_stream_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = int(TINY_HTDEMUCS["samplerate"])
SOURCES = list(TINY_HTDEMUCS["sources"])
NAME = "tinyx"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return HTDemucs(**TINY_HTDEMUCS).eval()


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory) -> Path:
    return E.export_model(
        model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", name=NAME, exporter="torchscript"
    )


@pytest.fixture(scope="module")
def repo(model, tmp_path_factory) -> Path:
    """The same weights as a checkpoint (float32) in a repo with the bag ``tinyx``."""
    folder = tmp_path_factory.mktemp("repo")
    save_model(model, folder / "tinyw.th", half=False)
    (folder / f"{NAME}.yaml").write_text("models: ['tinyw']\n")
    return folder


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    """2.3 s at 16 kHz: about six overlapping 0.5 s segments, the last one partial."""
    path = tmp_path_factory.mktemp("audio") / "song.wav"
    write_mix(path, seconds=2.3, amplitude=0.1, samplerate=RATE)
    return path


def _stems(
    folder: Path, names: tp.Sequence[str] = SOURCES, ext: str = "wav"
) -> tp.Dict[str, np.ndarray]:
    return {name: sf.read(str(folder / f"{name}.{ext}"), dtype="float32")[0].T for name in names}


def _run(args: tp.Sequence[tp.Any], capsys, seed: int = 0) -> tp.Tuple[int, str, str]:
    random.seed(seed)  # the shift offsets
    return run_main(args, capsys)


def _files(folder: Path) -> tp.List[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- the command


def test_onnx_matches_pytorch_repo(tmp_path, onnx_file, repo, song, capsys):
    common = ["--float32", "--clip-mode", "clamp", "--shifts", "1", "--overlap", "0.3"]
    code, out, err = _run(["--onnx", onnx_file, *common, "-o", tmp_path / "onnx", song], capsys)
    assert code == 0, err
    assert "Separated tracks will be stored in" in out and err == ""
    code, _, err = _run(
        ["--repo", repo, "-n", NAME, *common, "-o", tmp_path / "torch", song], capsys
    )
    assert code == 0, err
    assert (
        _files(tmp_path / "onnx")
        == _files(tmp_path / "torch")
        == [f"{NAME}/song/{stem}.wav" for stem in sorted(SOURCES)]
    )
    got = _stems(tmp_path / "onnx" / NAME / "song")
    expected = _stems(tmp_path / "torch" / NAME / "song")
    for stem in SOURCES:
        assert got[stem].shape == (2, int(2.3 * RATE))
        assert E.snr_db(expected[stem], got[stem]) >= 60, stem


@pytest.mark.parametrize(
    "flags,files,subtype",
    [
        (
            ["--two-stems", "vocals", "--flac", "--int24", "--filename", "{stem}-{track}.{ext}"],
            ["vocals-song.flac", "no_vocals-song.flac"],
            "PCM_24",
        ),
        (
            ["--two-stems", "bass", "--other-method", "minus", "--mp3", "--mp3-bitrate", "64"],
            ["song/bass.mp3", "song/minus_bass.mp3"],
            None,
        ),
    ],
)
def test_formats_and_two_stems_like_pytorch(
    tmp_path, onnx_file, repo, song, capsys, flags, files, subtype
):
    for kind, model_flags in (
        ("onnx", ["--onnx", onnx_file]),
        ("torch", ["--repo", repo, "-n", NAME]),
    ):
        code, _, err = _run([*model_flags, *flags, "-q", "-o", tmp_path / kind, song], capsys)
        assert code == 0, err
    assert (
        _files(tmp_path / "onnx")
        == _files(tmp_path / "torch")
        == sorted(f"{NAME}/{name}" for name in files)
    )
    for name in files:
        onnx_info = sf.info(str(tmp_path / "onnx" / NAME / name))
        torch_info = sf.info(str(tmp_path / "torch" / NAME / name))
        assert (onnx_info.samplerate, onnx_info.channels) == (RATE, 2)
        assert onnx_info.subtype == torch_info.subtype
        assert subtype is None or onnx_info.subtype == subtype


def test_streaming_equals_in_memory_runtime(tmp_path, onnx_file, song, capsys):
    """The CLI streams (blockwise decode, overlap-add, incremental writes); the result is
    OnnxSeparator.separate on the whole track, with the same shift offsets."""
    code, _, err = _run(
        [
            "--onnx",
            onnx_file,
            "--shifts",
            "2",
            "--float32",
            "--clip-mode",
            "clamp",
            "-q",
            "-o",
            tmp_path,
            song,
        ],
        capsys,
        seed=7,
    )
    assert code == 0, err
    mix = sf.read(str(song), dtype="float32")[0].T
    random.seed(7)
    expected = OnnxSeparator(onnx_file, threads=1).separate(mix, shifts=2, rng=random)
    got = _stems(tmp_path / NAME / "song")
    for index, stem in enumerate(SOURCES):
        assert E.snr_db(np.clip(expected[index], -0.99, 0.99), got[stem]) >= 100, stem


def test_bad_onnx_files(tmp_path, song, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a protobuf at all" * 10)
    for path, needle in (
        (tmp_path / "missing.onnx", "no such file"),
        (corrupt, "cannot load ONNX model"),
        (tmp_path, "directory"),
    ):
        code, out, err = run_main(["--onnx", path, "-o", tmp_path / "out", song], capsys)
        assert code == 1 and needle in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "demucs", "--onnx", str(corrupt), str(song)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("demucs: error: cannot load ONNX model")
    assert len(result.stderr.strip().splitlines()) == 1


NO_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "julius"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from demucs.separate import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("resampled", [False, True])
def test_onnx_command_runs_without_torch(tmp_path, onnx_file, song, resampled):
    """`demucs --onnx` parses, decodes, resamples, separates and writes with numpy and ONNX
    Runtime alone (no PyTorch start-up time or memory), and gives the in-process
    command's result (resampled: a 48 kHz mono file, converted as PyTorch/julius do)."""
    if resampled:
        from demucs.audio import convert_audio

        wav48 = convert_audio(
            torch.from_numpy(sf.read(str(song), dtype="float32")[0].T), RATE, 48000, 1
        )
        song = tmp_path / "song.wav"
        sf.write(str(song), wav48[0].numpy(), 48000, subtype="FLOAT")
        mix = convert_audio(wav48, 48000, RATE, 2).numpy()
    else:
        mix = sf.read(str(song), dtype="float32")[0].T
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH,
            "--onnx",
            str(onnx_file),
            "--shifts",
            "0",
            "-q",
            "--float32",
            "-o",
            str(tmp_path / "bare"),
            str(song),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    expected = OnnxSeparator(onnx_file, threads=1).separate(mix, shifts=0)
    got = _stems(tmp_path / "bare" / NAME / "song")
    for index, stem in enumerate(SOURCES):
        rescale = max(1.01 * float(np.abs(expected[index]).max()), 1.0)
        assert E.snr_db(expected[index] / rescale, got[stem]) >= 100, stem


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--segment", "0.25"], "--segment cannot be used with --onnx"),
        (["-n", "htdemucs"], "--onnx replaces -n/--name"),
        (["--repo", "."], "--onnx replaces --repo"),
        (["-s", "abcd1234"], "--onnx replaces -s/--sig"),
        (["--no-split"], "--no-split cannot be used with --onnx"),
        (["-d", "mps"], "not supported with an ONNX model"),
        (["--two-stems", "guitar"], 'stem "guitar" is not in selected model'),
        (["--list-models"], "does not take --onnx"),
    ],
)
def test_flags_that_do_not_apply(tmp_path, onnx_file, song, capsys, flags, needle):
    code, _, err = run_main(["--onnx", onnx_file, *flags, "-o", tmp_path / "out", song], capsys)
    assert code == 1 and needle in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cuda_without_onnxruntime_gpu(tmp_path, onnx_file, song, capsys):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    code, _, err = run_main(["--onnx", onnx_file, "-d", "cuda", song], capsys)
    assert code == 1 and "onnxruntime-gpu" in err and len(err.strip().splitlines()) == 1


def test_track_errors_are_one_line_and_skipped(tmp_path, onnx_file, song, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEjunk")
    code, _, err = run_main(
        ["--onnx", onnx_file, "-q", "-o", tmp_path / "out", tmp_path / "missing.wav", broken, song],
        capsys,
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "missing.wav" in lines[0] and "broken.wav" in lines[1], err
    assert _files(tmp_path / "out") == [f"{NAME}/song/{stem}.wav" for stem in sorted(SOURCES)]


def test_folder_name_falls_back_to_the_file_stem(tmp_path, model, song, capsys):
    path = E.export_model(model, tmp_path / "my_graph.onnx", name="../escape")
    code, _, err = run_main(
        ["--onnx", path, "-q", "--shifts", "0", "-o", tmp_path / "out", song], capsys
    )
    assert code == 0, err
    assert (tmp_path / "out" / "my_graph" / "song" / "vocals.wav").exists()


# ---------------------------------------------------------------------- the pieces


def test_onnx_members_batch(onnx_file):
    runtime = OnnxSeparator(onnx_file, threads=1)
    assert not runtime.spec.dynamic_batch
    (member,) = onnx_members(runtime, max_batch=4)
    assert member.max_batch == 1 and member.draws == ()
    assert member.segment_length == runtime.spec.segment_samples
    assert member.valid_length(10) == member.valid_length(8000) == runtime.spec.input_samples

    class Dynamic:
        spec = runtime.spec._replace(dynamic_batch=True)
        run_segment = staticmethod(runtime.run_segment)

    assert onnx_members(Dynamic(), max_batch=4)[0].max_batch == 4
    with pytest.raises(ValueError):
        onnx_members(runtime, max_batch=0)


def test_dynamic_batch_graph(tmp_path, model, onnx_file, song):
    """A graph with a dynamic batch runs several segments per call (stream_batch), with
    the result of one segment per call."""
    dynamic = E.export_model(model, tmp_path / "dynamic.onnx", name=NAME, dynamic_batch=True)
    separators = [
        Separator(onnx=path, device="cpu", shifts=1, onnx_threads=1)
        for path in (onnx_file, dynamic)
    ]
    batches: tp.List[int] = []
    runtime = separators[1].runtime
    assert runtime is not None and runtime.spec.dynamic_batch
    original = runtime.run_segment

    def counting(mix: np.ndarray) -> np.ndarray:
        batches.append(mix.shape[0])
        return original(mix)

    runtime.run_segment = counting  # type: ignore[method-assign]
    separators[1].stream_batch = 3
    results = []
    for separator in separators:
        random.seed(5)
        results.append(separator.separate_audio_file(song)[1])
    assert max(batches) == 3
    for stem in SOURCES:
        assert E.snr_db(results[0][stem], results[1][stem]) >= 100


def test_runtime_errors_become_runtime_error():
    """ONNX Runtime's exceptions only derive from Exception: the CLI would not catch them."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    class Failing:
        spec = SegmentSpec(RATE, 2, SOURCES, 100, 120, False, "x", "fp32")

        def run_segment(self, mix: np.ndarray) -> np.ndarray:
            raise Fail("out of memory\nsomewhere")

    (member,) = onnx_members(Failing())
    with pytest.raises(RuntimeError, match="ONNX Runtime: out of memory somewhere"):
        member.run(np.zeros((1, 2, 120), np.float32))


def test_stream_core_equals_runtime(onnx_file):
    """The core streaming the graph's member == OnnxSeparator.separate (2 shifts,
    blocks smaller than a segment, a length that is not a multiple of anything)."""
    runtime = OnnxSeparator(onnx_file, threads=1)
    mix = np.random.default_rng(1).standard_normal((2, 21001)).astype(np.float32) * 0.1
    stats = TrackStats.of_blocks([mix])
    random.seed(3)
    track = BlockInput(ArraySource(mix, RATE, block=3000).blocks(), 2, mix.shape[1])
    blocks = [
        stems
        for _, _, stems in separate(
            onnx_members(runtime),
            track,
            sources=4,
            samplerate=RATE,
            shifts=2,
            overlap=0.25,
            mean=stats.mean,
            std=stats.std,
        )
    ]
    state = random.getstate()
    got = np.concatenate(blocks, axis=-1)[0]
    random.seed(3)
    expected = runtime.separate(mix, shifts=2, rng=random)
    assert random.getstate() == state
    assert E.snr_db(expected, got) >= 100


def test_api_separator(onnx_file, song, model):
    calls: tp.List[tp.Dict[str, tp.Any]] = []
    separator = Separator(onnx=onnx_file, device="cpu", shifts=0, onnx_threads=1)
    assert separator.name == NAME and "onnx='tinyx'" in repr(separator)
    assert (separator.samplerate, separator.audio_channels, separator.sources) == (RATE, 2, SOURCES)
    assert separator.runtime is not None
    with pytest.raises(RuntimeError, match="ONNX"):
        separator.model
    with pytest.raises(ValueError, match="fixed in the ONNX file"):
        separator.update_parameter(segment=0.25)
    with pytest.raises(ValueError, match="not both"):
        Separator("other", onnx=onnx_file)

    origin, streamed = separator.separate_audio_file(song)
    _, in_memory = separator.separate_tensor(origin, RATE)
    for stem in SOURCES:
        assert E.snr_db(in_memory[stem], streamed[stem]) >= 100

    separator.update_parameter(callback=calls.append, callback_arg={"track": "x"})
    separator.separate_audio_file(song)
    assert calls and calls[0]["state"] == "start" and calls[-1]["state"] == "end"
    assert calls[0]["track"] == "x" and calls[0]["models"] == 1
    assert "run_segment" not in vars(separator.runtime)  # hook removed


def test_memory_is_flat(tmp_path, onnx_file):
    """A 4x longer file keeps the same traced peak (ORT's buffers are not traced, but
    they do not depend on the length either)."""
    separator = Separator(onnx=onnx_file, device="cpu", shifts=0, onnx_threads=1)
    peaks = []
    for seconds in (4, 16):
        path = tmp_path / f"{seconds}.wav"
        write_mix(path, seconds=seconds, samplerate=RATE)
        peaks.append(traced_stream_peak(separator, path))
    assert peaks[1] < 1.25 * peaks[0], peaks


# ---------------------------------------------------------------------- one-stem graphs


@pytest.fixture(scope="module")
def one_hot_bag() -> torch.nn.Module:
    """An htdemucs_ft-like bag of tiny HTDemucs: member k makes source k."""
    from demucs.apply import BagOfModels

    models = []
    for seed in range(4):
        torch.manual_seed(10 + seed)
        models.append(HTDemucs(**TINY_HTDEMUCS).eval())
    return BagOfModels(models, [[1.0 if k == i else 0.0 for k in range(4)] for i in range(4)])


def test_stems_graph_holds_only_the_members_it_needs(tmp_path, one_hot_bag, song, capsys):
    whole = E.export_model(one_hot_bag, tmp_path / "bag.onnx", name="bag")
    vocals = E.export_model(one_hot_bag, tmp_path / "vocals.onnx", name="bagv", stems=["vocals"])
    ratio = vocals.stat().st_size / whole.stat().st_size
    assert 0.2 < ratio < 0.32, ratio
    runtime = OnnxSeparator(vocals, threads=1)
    assert runtime.sources == ["vocals"] and runtime.spec.model_name == "bagv"
    mix = np.random.default_rng(0).standard_normal((1, 2, runtime.spec.input_samples))
    mix = mix.astype(np.float32) * 0.1
    full = OnnxSeparator(whole, threads=1).run_segment(mix)[:, 3:]
    assert E.snr_db(full, runtime.run_segment(mix)) >= 90
    with pytest.raises(E.ExportError, match="unknown stems"):
        E.export_model(one_hot_bag, tmp_path / "x.onnx", stems=["kazoo"])

    out = tmp_path / "out"
    code, _, err = run_main(["--onnx", vocals, "--shifts", "0", "-q", "-o", out, song], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out / "bagv" / "song").iterdir()) == ["vocals.wav"]
    code, _, err = run_main(
        [
            "--onnx",
            vocals,
            "--shifts",
            "0",
            "-q",
            "--two-stems",
            "vocals",
            "--other-method",
            "minus",
            "-o",
            out,
            song,
        ],
        capsys,
    )
    assert code == 0, err
    assert (out / "bagv" / "song" / "minus_vocals.wav").exists()
    code, _, err = run_main(["--onnx", vocals, "--two-stems", "vocals", "-o", out, song], capsys)
    assert code == 1 and "--other-method minus" in err


def test_onnx_seed_and_keep_samplerate(tmp_path, onnx_file, capsys):
    """--seed gives identical runs and --keep-samplerate 48 kHz stems of the input's length,
    with --onnx as with PyTorch (the same command code)."""
    mix = write_mix(tmp_path / "in48.wav", seconds=1.1, amplitude=0.1, samplerate=48000)
    outs = []
    for run in range(2):
        out = tmp_path / f"o{run}"
        code, _, err = run_main(
            [
                "--onnx",
                onnx_file,
                "--seed",
                "4",
                "--keep-samplerate",
                "--float32",
                "-q",
                "-o",
                out,
                tmp_path / "in48.wav",
            ],
            capsys,
        )
        assert code == 0, err
        outs.append(out / NAME / "in48")
    for stem in SOURCES:
        first, rate = sf.read(str(outs[0] / f"{stem}.wav"), dtype="float32")
        second, _ = sf.read(str(outs[1] / f"{stem}.wav"), dtype="float32")
        assert rate == 48000 and first.shape == mix.shape
        assert np.array_equal(first, second)
