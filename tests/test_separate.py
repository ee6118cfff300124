"""The ``demucs`` command end to end, with tiny models in a --repo folder.

The checkpoints are made by upstream 4.0.1 (the oracle) when it is installed, else by our
own ``serialize_model``; both are the upstream format. Audio is short and at 8 kHz.
"""
from __future__ import annotations

import os
import subprocess
import sys
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs import separate
from tests import oracle as _oracle

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["drums", "bass", "other", "vocals"]
RATE = 8000
TINY_DEMUCS = dict(sources=SOURCES, audio_channels=2, channels=4, depth=2, samplerate=RATE,
                   segment=1, lstm_layers=0, dconv_comp=2)
TINY_HTDEMUCS = dict(sources=SOURCES, audio_channels=2, channels=4, nfft=256, depth=2,
                     t_layers=1, t_heads=2, samplerate=RATE, segment=1, dconv_comp=4)


def _make_checkpoint(klass: str, kwargs: dict, path: Path) -> None:
    if _oracle.available():
        _oracle.make_model(klass, kwargs, None, path.parent / "work", checkpoint=path)
        return
    import importlib

    from demucs.states import serialize_model
    module, name = klass.rsplit(".", 1)
    torch.manual_seed(0)
    model = getattr(importlib.import_module(f"demucs.{module}"), name)(**kwargs)
    torch.save(serialize_model(model, {}), path)


def _htdemucs_importable() -> bool:
    try:
        import demucs.htdemucs  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """A repo with bag ``tiny`` (one tiny Demucs) and, when HTDemucs is there, ``tinyht``."""
    repo = tmp_path_factory.mktemp("repo")
    _make_checkpoint("demucs.Demucs", TINY_DEMUCS, repo / "tinyd.th")
    (repo / "tiny.yaml").write_text("models: ['tinyd']\n")
    if _htdemucs_importable():
        _make_checkpoint("htdemucs.HTDemucs", TINY_HTDEMUCS, repo / "tinyh.th")
        (repo / "tinyht.yaml").write_text("models: ['tinyh']\n")
    return repo


def write_mix(path: Path, seconds: float = 1.5, channels: int = 2, amplitude: float = 0.2,
              seed: int = 0, samplerate: int = RATE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((int(seconds * samplerate), channels)) * amplitude)
    data = np.clip(data, -0.9, 0.9).astype(np.float32)
    sf.write(str(path), data, samplerate, subtype="FLOAT")
    return data


def run_main(args: tp.Sequence[tp.Any], capsys) -> tp.Tuple[int, str, str]:
    """Runs ``demucs.separate.main`` in process; returns (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        separate.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def run_cli(args: tp.Sequence[tp.Any], cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``python -m demucs.separate`` (ours) in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "demucs.separate", *map(str, args)],
                          cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300)


def leftovers(folder: Path) -> tp.List[Path]:
    """Temporary files that an atomic write would leave behind."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


# ---------------------------------------------------------------------- happy paths

@pytest.mark.parametrize("name", ["tiny", "tinyht"])
def test_matches_upstream_cli(tmp_path, tiny_repo, capsys, name):
    if not (tiny_repo / f"{name}.yaml").exists():
        pytest.skip("demucs.htdemucs not importable yet")
    mix = write_mix(tmp_path / "song.wav", seconds=2.2)
    common = ["--repo", tiny_repo, "-n", name, "--shifts", "0"]
    code, out, err = run_main([*common, "-o", tmp_path / "ours", tmp_path / "song.wav"], capsys)
    assert code == 0, err
    assert "Separated tracks will be stored in" in out
    for stem in SOURCES:
        data, sr = sf.read(str(tmp_path / "ours" / name / "song" / f"{stem}.wav"), dtype="int16")
        info = sf.info(str(tmp_path / "ours" / name / "song" / f"{stem}.wav"))
        assert sr == RATE and info.subtype == "PCM_16" and data.shape == mix.shape
    if not _oracle.available():
        pytest.skip("upstream oracle not installed")
    _oracle.run_cli([*common, "-o", tmp_path / "upstream", tmp_path / "song.wav"], tmp_path)
    for stem in SOURCES:
        ours, _ = sf.read(str(tmp_path / "ours" / name / "song" / f"{stem}.wav"), dtype="int16")
        theirs, _ = sf.read(str(tmp_path / "upstream" / name / "song" / f"{stem}.wav"),
                            dtype="int16")
        assert ours.shape == theirs.shape
        assert np.abs(ours.astype(int) - theirs).max() <= 1, stem


def _read_float(path: Path) -> np.ndarray:
    return sf.read(str(path), dtype="float32")[0]


def test_two_stems_methods(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav", amplitude=0.05)
    base = ["--repo", tiny_repo, "-n", "tiny", "--shifts", "0", "--float32", "-q"]
    assert run_main([*base, "-o", tmp_path / "full", tmp_path / "a.wav"], capsys)[0] == 0
    full = {s: _read_float(tmp_path / "full/tiny/a" / f"{s}.wav") for s in SOURCES}
    for method in ("add", "minus", "none"):
        out = tmp_path / method
        code, stdout, err = run_main([*base, "--two-stems", "vocals", "--other-method", method,
                                      "-o", out, tmp_path / "a.wav"], capsys)
        assert code == 0, err
        assert stdout == ""  # -q
        files = sorted(p.name for p in (out / "tiny" / "a").iterdir())
        expected = ["vocals.wav"] if method == "none" else ["no_vocals.wav", "vocals.wav"]
        assert files == expected
        np.testing.assert_allclose(_read_float(out / "tiny/a/vocals.wav"), full["vocals"],
                                   atol=1e-6)
    others = full["drums"] + full["bass"] + full["other"]
    np.testing.assert_allclose(_read_float(tmp_path / "add/tiny/a/no_vocals.wav"), others,
                               atol=1e-5)
    mix = _read_float(tmp_path / "a.wav")
    np.testing.assert_allclose(_read_float(tmp_path / "minus/tiny/a/no_vocals.wav"),
                               mix - full["vocals"], atol=1e-5)


def test_jobs_runs_segments_in_parallel_with_the_same_result(tmp_path, tiny_repo, capsys):
    """-j N keeps upstream's meaning (parallel segments, in memory); same stems."""
    write_mix(tmp_path / "a.wav", amplitude=0.05)
    base = ["--repo", tiny_repo, "-n", "tiny", "--shifts", "0", "--float32", "-q"]
    for name, extra in (("stream", []), ("jobs", ["-j", "2"])):
        code, _, err = run_main([*base, *extra, "-o", tmp_path / name, tmp_path / "a.wav"],
                                capsys)
        assert code == 0, err
    for stem in SOURCES:
        np.testing.assert_allclose(_read_float(tmp_path / "jobs/tiny/a" / f"{stem}.wav"),
                                   _read_float(tmp_path / "stream/tiny/a" / f"{stem}.wav"),
                                   atol=1e-5)


def test_unknown_two_stem(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "--two-stems", "piano",
                             "-o", tmp_path / "out", tmp_path / "a.wav"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "piano" in err


@pytest.mark.parametrize("flags,ext,subtype", [
    (["--mp3", "--mp3-bitrate", "64", "--mp3-preset", "7"], "mp3", None),
    (["--flac"], "flac", "PCM_16"),
    (["--flac", "--int24"], "flac", "PCM_24"),
    (["--int24"], "wav", "PCM_24"),
    (["--float32", "--clip-mode", "clamp"], "wav", "FLOAT"),
])
def test_output_formats(tmp_path, tiny_repo, capsys, flags, ext, subtype):
    mix = write_mix(tmp_path / "a.wav")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-q", *flags,
                             "-o", tmp_path / "out", tmp_path / "a.wav"], capsys)
    assert code == 0, err
    for stem in SOURCES:
        path = tmp_path / "out" / "tiny" / "a" / f"{stem}.{ext}"
        info = sf.info(str(path))
        assert info.samplerate == RATE and info.channels == 2 and info.frames == len(mix)
        if subtype:
            assert info.subtype == subtype
    assert leftovers(tmp_path / "out") == []


def test_filename_template(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "my song.wav")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-q",
                             "--filename", "{stem}/{track}_{trackext}.{ext}",
                             "-o", tmp_path / "out", tmp_path / "my song.wav"], capsys)
    assert code == 0, err
    for stem in SOURCES:
        assert (tmp_path / "out" / "tiny" / stem / "my song_wav.wav").is_file()


@pytest.mark.parametrize("template,needle", [
    ("{track}/{instrument}.{ext}", "unknown key {instrument}"),
    ("{track}.{ext}", "{stem}"),
    ("{track}/{stem.{ext}", "invalid"),
    ("{0}/{stem}.{ext}", "invalid"),
])
def test_bad_filename_template(tmp_path, tiny_repo, capsys, template, needle):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "--filename", template,
                             "-o", tmp_path / "out", tmp_path / "a.wav"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--filename" in lines[0]
    assert not (tmp_path / "out").exists()


def test_video_input(tmp_path, tiny_repo, capsys):
    from tests.test_audio import encode_pyav, tones
    encode_pyav(tmp_path / "clip.mp4", tones(RATE * 4, 0.5), 32000, "aac", "mpeg4")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-q", "-o", tmp_path / "out",
                             tmp_path / "clip.mp4"], capsys)
    assert code == 0, err
    info = sf.info(str(tmp_path / "out" / "tiny" / "clip" / "vocals.wav"))
    assert info.samplerate == RATE and info.frames == RATE // 2


def test_mono_and_other_rates_are_converted(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "mono.wav", seconds=1.0, channels=1, samplerate=16000)
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-q", "-o", tmp_path / "out",
                             tmp_path / "mono.wav"], capsys)
    assert code == 0, err
    info = sf.info(str(tmp_path / "out" / "tiny" / "mono" / "bass.wav"))
    assert (info.samplerate, info.channels, info.frames) == (RATE, 2, RATE)


def test_list_models(tiny_repo, capsys):
    code, out, _ = run_main(["--list-models", "--repo", tiny_repo], capsys)
    assert code == 0 and "tiny" in out and "tinyd" in out


# ---------------------------------------------------------------------- failures

def _bad_tracks(folder: Path) -> tp.Dict[str, str]:
    """Bad input files -> a word that their error line must contain."""
    good = folder / "good.wav"
    write_mix(good)
    raw = good.read_bytes()
    (folder / "text.mp3").write_text("definitely not an mp3\n" * 30)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "truncated.wav").write_bytes(raw[:40])
    (folder / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(3000))
    sf.write(str(folder / "zero.wav"), np.zeros((0, 2), np.float32), RATE)
    return {"missing.wav": "does not exist", "empty.wav": "empty",
            "text.mp3": "cannot decode", "truncated.wav": "cannot decode",
            "corrupt.flac": "cannot decode", "zero.wav": "no audio samples"}


def test_bad_inputs_are_reported_and_skipped(tmp_path, tiny_repo):
    """Each bad file: one stderr line naming it; good files (tiny, silent, one sample
    long, before and after the bad ones) are still separated; exit status 1."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = _bad_tracks(inputs)
    write_mix(inputs / "first.wav")
    sf.write(str(inputs / "silent.wav"), np.zeros((RATE, 2), np.float32), RATE)
    sf.write(str(inputs / "short.wav"), np.full((10, 2), 0.1, np.float32), RATE)
    sf.write(str(inputs / "one.wav"), np.full((1, 2), 0.1, np.float32), RATE)
    good = ["first.wav", "silent.wav", "short.wav", "one.wav", "good.wav"]
    order = [good[0], *bad, *good[1:]]
    proc = run_cli(["--repo", tiny_repo, "-n", "tiny", "-o", tmp_path / "out",
                    *[inputs / name for name in order]], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(bad), proc.stderr
    for line, (name, reason) in zip(lines, bad.items()):
        assert name in line and reason in line, line
    for name in good:
        track = Path(name).stem
        for stem in SOURCES:
            data, sr = sf.read(str(tmp_path / "out" / "tiny" / track / f"{stem}.wav"))
            assert sr == RATE and len(data) == sf.info(str(inputs / name)).frames
            assert np.isfinite(data).all()
    produced = sorted(p.name for p in (tmp_path / "out" / "tiny").iterdir())
    assert produced == sorted(Path(name).stem for name in good)
    assert leftovers(tmp_path / "out") == []


def test_unknown_model(tmp_path, tiny_repo):
    write_mix(tmp_path / "a.wav")
    proc = run_cli(["--repo", tiny_repo, "-n", "nosuchmodel", "-o", tmp_path / "out",
                    tmp_path / "a.wav"], tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchmodel" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_repo(tmp_path, capsys):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(["--repo", tmp_path / "norepo", "-n", "x", tmp_path / "a.wav"],
                            capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "norepo" in err


def test_output_folder_not_writable(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav")
    (tmp_path / "afile").write_text("x")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-o", tmp_path / "afile",
                             tmp_path / "a.wav"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0]


def test_track_output_not_writable(tmp_path, tiny_repo, capsys):
    """A file in the way of one track's folder fails that track only."""
    write_mix(tmp_path / "a.wav")
    write_mix(tmp_path / "b.wav", seed=1)
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "a").write_text("in the way")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-q", "-o", tmp_path / "out",
                             tmp_path / "a.wav", tmp_path / "b.wav"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "a.wav" in lines[0] and "cannot write" in lines[0]
    assert all((tmp_path / "out" / "tiny" / "b" / f"{s}.wav").is_file() for s in SOURCES)


@pytest.mark.parametrize("streaming", [True, False])
def test_ctrl_c_leaves_no_partial_files(tmp_path, tiny_repo, capsys, monkeypatch, streaming):
    """Interrupted while writing the third stem: exit 130, the track's finished stems
    are removed and no temporary file is left. The default (streaming) path writes
    through ``soundfile.SoundFile.write``, ``--no-split`` through ``soundfile.write``."""
    write_mix(tmp_path / "a.wav")
    calls = {"n": 0}

    def interrupt_third(file: tp.Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            Path(file).write_bytes(b"RIFF partial")
            raise KeyboardInterrupt

    if streaming:
        real_method = sf.SoundFile.write

        def flaky_method(self, data, *args, **kwargs):
            interrupt_third(self.name)
            return real_method(self, data, *args, **kwargs)

        monkeypatch.setattr(sf.SoundFile, "write", flaky_method)
    else:
        real_write = sf.write

        def flaky_write(file, data, *args, **kwargs):
            interrupt_third(file)
            return real_write(file, data, *args, **kwargs)

        monkeypatch.setattr(sf, "write", flaky_write)
    extra = [] if streaming else ["--no-split"]
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tiny", "-q", *extra,
                             "-o", tmp_path / "out", tmp_path / "a.wav"], capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    track = tmp_path / "out" / "tiny" / "a"
    assert list(track.iterdir()) == []


def test_segment_too_long(tmp_path, tiny_repo, capsys):
    if not (tiny_repo / "tinyht.yaml").exists():
        pytest.skip("demucs.htdemucs not importable yet")
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(["--repo", tiny_repo, "-n", "tinyht", "--segment", "5",
                             "-o", tmp_path / "out", tmp_path / "a.wav"], capsys)
    assert code == 1 and "segment" in err and len(err.strip().splitlines()) == 1


def test_parser_defaults():
    args = separate.get_parser().parse_args(["x.wav"])
    assert args.out == Path("separated") and args.filename == "{track}/{stem}.{ext}"
    assert (args.shifts, args.overlap, args.split, args.segment) == (1, 0.25, True, None)
    assert (args.stem, args.int24, args.float32, args.clip_mode) == (None, False, False,
                                                                     "rescale")
    assert (args.flac, args.mp3, args.mp3_bitrate, args.mp3_preset, args.jobs) == (
        False, False, 320, 2, 0)
    assert args.other_method == "add" and not args.quiet and not args.verbose


class _FakeWriter:
    """Stem writer whose close takes a while (or fails); records what ran at once."""

    running: tp.List[int] = []
    overlap = 0

    def __init__(self, path: Path, fail: bool = False) -> None:
        self.path = path
        self.fail = fail
        self.closed = False

    def close(self) -> None:
        import time

        _FakeWriter.running.append(1)
        _FakeWriter.overlap = max(_FakeWriter.overlap, len(_FakeWriter.running))
        time.sleep(0.05)
        _FakeWriter.running.pop()
        if self.fail:
            raise OSError(28, "No space left on device", str(self.path))
        self.closed = True

    def write(self, block: np.ndarray) -> None:  # pragma: no cover - unused
        pass

    def abort(self) -> None:  # pragma: no cover - unused
        pass


def test_finish_writers_closes_stems_in_parallel(tmp_path):
    _FakeWriter.overlap = 0
    writers = [_FakeWriter(tmp_path / f"{name}.wav") for name in SOURCES]
    done: tp.List[Path] = []
    separate.finish_writers(writers, done, workers=2)
    assert all(writer.closed for writer in writers)
    assert done == [writer.path for writer in writers]  # writer order, whatever finished first
    assert _FakeWriter.overlap == 2


def test_finish_writers_reports_the_first_failure_after_the_others(tmp_path):
    """Every close started is waited for; the finished stems are listed (so that the
    caller can remove them) and the failure is raised."""
    writers = [_FakeWriter(tmp_path / "a.wav"), _FakeWriter(tmp_path / "b.wav", fail=True),
               _FakeWriter(tmp_path / "c.wav")]
    done: tp.List[Path] = []
    with pytest.raises(OSError, match="No space left"):
        separate.finish_writers(writers, done, workers=2)
    assert done == [tmp_path / "a.wav", tmp_path / "c.wav"]
    assert writers[0].closed and writers[2].closed
