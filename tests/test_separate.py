"""The ``demucs`` command end to end, with tiny models in a --repo folder.

Fixtures and helpers (tiny checkpoints, ``tiny_repo``, ``run_main``) are in tests/helpers.py
and tests/conftest.py. ``run_main`` calls ``main()`` as library callers do: it returns on
success and raises ``SystemExit`` only on failure.
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

from demucs import separate
from tests import oracle as _oracle
from tests.helpers import (  # noqa: F401  (re-exported for the other command tests)
    RATE,
    SOURCES,
    TINY_DEMUCS,
    TINY_HTDEMUCS,
    run_console,
    run_main,
    write_mix,
)

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: tp.Sequence[tp.Any], cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``python -m demucs.separate`` (ours) in a subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "demucs.separate", *map(str, args)],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
        theirs, _ = sf.read(
            str(tmp_path / "upstream" / name / "song" / f"{stem}.wav"), dtype="int16"
        )
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
        code, stdout, err = run_main(
            [
                *base,
                "--two-stems",
                "vocals",
                "--other-method",
                method,
                "-o",
                out,
                tmp_path / "a.wav",
            ],
            capsys,
        )
        assert code == 0, err
        assert stdout == ""  # -q
        files = sorted(p.name for p in (out / "tiny" / "a").iterdir())
        rest = {"add": ["no_vocals.wav"], "minus": ["minus_vocals.wav"], "none": []}[method]
        expected = sorted(["vocals.wav", *rest])
        assert files == expected
        np.testing.assert_allclose(
            _read_float(out / "tiny/a/vocals.wav"), full["vocals"], atol=1e-6
        )
    others = full["drums"] + full["bass"] + full["other"]
    np.testing.assert_allclose(
        _read_float(tmp_path / "add/tiny/a/no_vocals.wav"), others, atol=1e-5
    )
    mix = _read_float(tmp_path / "a.wav")
    np.testing.assert_allclose(
        _read_float(tmp_path / "minus/tiny/a/minus_vocals.wav"), mix - full["vocals"], atol=1e-5
    )


def test_jobs_runs_segments_in_parallel_with_the_same_result(tmp_path, tiny_repo, capsys):
    """-j N keeps upstream's meaning (parallel segments, in memory); same stems."""
    write_mix(tmp_path / "a.wav", amplitude=0.05)
    base = ["--repo", tiny_repo, "-n", "tiny", "--shifts", "0", "--float32", "-q"]
    for name, extra in (("stream", []), ("jobs", ["-j", "2"])):
        code, _, err = run_main([*base, *extra, "-o", tmp_path / name, tmp_path / "a.wav"], capsys)
        assert code == 0, err
    for stem in SOURCES:
        np.testing.assert_allclose(
            _read_float(tmp_path / "jobs/tiny/a" / f"{stem}.wav"),
            _read_float(tmp_path / "stream/tiny/a" / f"{stem}.wav"),
            atol=1e-5,
        )


def test_unknown_two_stem(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "--two-stems",
            "piano",
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "piano" in err


@pytest.mark.parametrize(
    "flags,ext,subtype",
    [
        (["--mp3", "--mp3-bitrate", "64", "--mp3-preset", "7"], "mp3", None),
        (["--flac"], "flac", "PCM_16"),
        (["--flac", "--int24"], "flac", "PCM_24"),
        (["--int24"], "wav", "PCM_24"),
        (["--float32", "--clip-mode", "clamp"], "wav", "FLOAT"),
    ],
)
def test_output_formats(tmp_path, tiny_repo, capsys, flags, ext, subtype):
    mix = write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "-q",
            *flags,
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
        ],
        capsys,
    )
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
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "-q",
            "--filename",
            "{stem}/{track}_{trackext}.{ext}",
            "-o",
            tmp_path / "out",
            tmp_path / "my song.wav",
        ],
        capsys,
    )
    assert code == 0, err
    for stem in SOURCES:
        assert (tmp_path / "out" / "tiny" / stem / "my song_wav.wav").is_file()


@pytest.mark.parametrize(
    "template,needle",
    [
        ("{track}/{instrument}.{ext}", "unknown key {instrument}"),
        ("{track}.{ext}", "{stem}"),
        ("{track}/{stem.{ext}", "invalid"),
        ("{0}/{stem}.{ext}", "invalid"),
    ],
)
def test_bad_filename_template(tmp_path, tiny_repo, capsys, template, needle):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "--filename",
            template,
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--filename" in lines[0]
    assert not (tmp_path / "out").exists()


def test_video_input(tmp_path, tiny_repo, capsys):
    from tests.helpers import encode_pyav, tones

    encode_pyav(tmp_path / "clip.mp4", tones(RATE * 4, 0.5), 32000, "aac", "mpeg4")
    code, _, err = run_main(
        ["--repo", tiny_repo, "-n", "tiny", "-q", "-o", tmp_path / "out", tmp_path / "clip.mp4"],
        capsys,
    )
    assert code == 0, err
    info = sf.info(str(tmp_path / "out" / "tiny" / "clip" / "vocals.wav"))
    assert info.samplerate == RATE and info.frames == RATE // 2


def test_mono_and_other_rates_are_converted(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "mono.wav", seconds=1.0, channels=1, samplerate=16000)
    code, _, err = run_main(
        ["--repo", tiny_repo, "-n", "tiny", "-q", "-o", tmp_path / "out", tmp_path / "mono.wav"],
        capsys,
    )
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
    return {
        "missing.wav": "does not exist",
        "empty.wav": "empty",
        "text.mp3": "cannot decode",
        "truncated.wav": "cannot decode",
        "corrupt.flac": "cannot decode",
        "zero.wav": "no audio samples",
    }


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
    proc = run_cli(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "-o",
            tmp_path / "out",
            *[inputs / name for name in order],
        ],
        tmp_path,
    )
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
    proc = run_cli(
        ["--repo", tiny_repo, "-n", "nosuchmodel", "-o", tmp_path / "out", tmp_path / "a.wav"],
        tmp_path,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchmodel" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_repo(tmp_path, capsys):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(["--repo", tmp_path / "norepo", "-n", "x", tmp_path / "a.wav"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "norepo" in err


def test_output_folder_not_writable(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav")
    (tmp_path / "afile").write_text("x")
    code, _, err = run_main(
        ["--repo", tiny_repo, "-n", "tiny", "-o", tmp_path / "afile", tmp_path / "a.wav"], capsys
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0]


def test_track_output_not_writable(tmp_path, tiny_repo, capsys):
    """A file in the way of one track's folder fails that track only."""
    write_mix(tmp_path / "a.wav")
    write_mix(tmp_path / "b.wav", seed=1)
    (tmp_path / "out" / "tiny").mkdir(parents=True)
    (tmp_path / "out" / "tiny" / "a").write_text("in the way")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "-q",
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
            tmp_path / "b.wav",
        ],
        capsys,
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "a.wav" in lines[0] and "cannot write" in lines[0]
    assert all((tmp_path / "out" / "tiny" / "b" / f"{s}.wav").is_file() for s in SOURCES)


@pytest.mark.parametrize("streaming", [True, False])
def test_ctrl_c_leaves_no_partial_files(tmp_path, tiny_repo, capsys, monkeypatch, streaming):
    """Interrupted while writing the third stem: the console script exits 130, the
    track's finished stems are removed and no temporary file is left. Both paths
    (streaming and ``--no-split``) write through :class:`demucs.io.writers.SoundfileWriter`."""
    from demucs.io import writers

    write_mix(tmp_path / "a.wav")
    calls = {"n": 0}
    real_method = writers.SoundfileWriter.write

    def flaky_method(self, block, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            real_method(self, block)  # a partial temporary file exists
            raise KeyboardInterrupt
        return real_method(self, block, *args, **kwargs)

    monkeypatch.setattr(writers.SoundfileWriter, "write", flaky_method)
    extra = [] if streaming else ["--no-split"]
    code, _, err = run_console(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "-q",
            *extra,
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    track = tmp_path / "out" / "tiny" / "a"
    assert list(track.iterdir()) == []


def test_segment_too_long(tmp_path, tiny_repo, capsys):
    if not (tiny_repo / "tinyht.yaml").exists():
        pytest.skip("demucs.htdemucs not importable yet")
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tinyht",
            "--segment",
            "5",
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 1 and "segment" in err and len(err.strip().splitlines()) == 1


def test_parser_defaults():
    args = separate.get_parser().parse_args(["x.wav"])
    assert args.out == Path("separated") and args.filename == "{track}/{stem}.{ext}"
    assert (args.shifts, args.overlap, args.split, args.segment) == (1, 0.25, True, None)
    assert (args.stem, args.int24, args.float32, args.clip_mode) == (None, False, False, "rescale")
    assert (args.flac, args.mp3, args.mp3_bitrate, args.mp3_preset, args.jobs) == (
        False,
        False,
        320,
        2,
        0,
    )
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
    writers = [
        _FakeWriter(tmp_path / "a.wav"),
        _FakeWriter(tmp_path / "b.wav", fail=True),
        _FakeWriter(tmp_path / "c.wav"),
    ]
    done: tp.List[Path] = []
    with pytest.raises(OSError, match="No space left"):
        separate.finish_writers(writers, done, workers=2)
    assert done == [tmp_path / "a.wav", tmp_path / "c.wav"]
    assert writers[0].closed and writers[2].closed


def test_main_returns_on_success_and_raises_only_on_failure(tmp_path, tiny_repo, capsys):
    """Library callers run ``main`` and carry on: ``None`` on success, ``SystemExit(1)``
    (one line on stderr) on failure; the console script turns both into statuses."""
    write_mix(tmp_path / "a.wav")
    args = ["--repo", str(tiny_repo), "-n", "tiny", "-q", "-o", str(tmp_path / "out")]
    assert separate.main([*args, str(tmp_path / "a.wav")]) is None
    assert separate.main(["--list-models", "--repo", str(tiny_repo)]) is None
    with pytest.raises(SystemExit) as info:
        separate.main([*args, str(tmp_path / "missing.wav")])
    assert info.value.code == 1
    assert "missing.wav" in capsys.readouterr().err
    assert run_console([*args, tmp_path / "a.wav"], capsys)[0] == 0
    assert run_console([*args, tmp_path / "missing.wav"], capsys)[0] == 1
    assert run_console(["--shifts", "x"], capsys)[0] == 2


def test_main_ctrl_c_in_process_raises_keyboard_interrupt(tmp_path, tiny_repo, monkeypatch):
    """In process, Ctrl-C is not turned into an exit status (a caller that handles
    failures must still stop): partial outputs are removed, then it propagates."""
    write_mix(tmp_path / "a.wav")

    def interrupt(*args: tp.Any, **kwargs: tp.Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sf.SoundFile, "write", interrupt)
    with pytest.raises(KeyboardInterrupt):
        separate.main(
            [
                "--repo",
                str(tiny_repo),
                "-n",
                "tiny",
                "-q",
                "-o",
                str(tmp_path / "out"),
                str(tmp_path / "a.wav"),
            ]
        )
    assert list((tmp_path / "out" / "tiny" / "a").iterdir()) == []


def test_console_script_and_python_m_exit_statuses(tmp_path):
    ok = run_cli(["--list-models", "--repo", tmp_path], tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(["--repo", tmp_path / "nope", "-n", "x", tmp_path / "a.wav"], tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "demucs", "--shifts", "x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2


# ---------------------------------------------------------------------- 4.1.0 and new flags


def _float_stems(folder: Path) -> tp.Dict[str, np.ndarray]:
    return {p.stem: sf.read(str(p), dtype="float32")[0] for p in sorted(folder.glob("*.wav"))}


def test_keep_samplerate(tmp_path, tiny_repo, capsys):
    """48 kHz in -> 48 kHz out, same length, close to the model-rate stems resampled."""
    from demucs.io import resample

    mix = write_mix(tmp_path / "a.wav", seconds=1.3, samplerate=48000)
    base = [
        "--repo",
        tiny_repo,
        "-n",
        "tiny",
        "--shifts",
        "0",
        "--float32",
        "--clip-mode",
        "none",
        "-q",
        tmp_path / "a.wav",
    ]
    assert run_main([*base, "-o", tmp_path / "model"], capsys)[0] == 0
    assert run_main([*base, "--keep-samplerate", "-o", tmp_path / "kept"], capsys)[0] == 0
    for jobs in ([], ["-j", "2"]):
        code, _, err = run_main([*base, *jobs, "--keep-samplerate", "-o", tmp_path / "j"], capsys)
        assert code == 0, err
    at_model = _float_stems(tmp_path / "model/tiny/a")
    kept = _float_stems(tmp_path / "kept/tiny/a")
    assert sf.info(str(tmp_path / "kept/tiny/a/vocals.wav")).samplerate == 48000
    assert sf.info(str(tmp_path / "model/tiny/a/vocals.wav")).samplerate == RATE
    for name, wav in kept.items():
        assert wav.shape == mix.shape
        back = resample(at_model[name].T, RATE, 48000)[:, : mix.shape[0]].T
        err = np.abs(back - wav)[200:-200].max()  # edges: the resampler's padding
        assert err < 1e-4, (name, err)
        np.testing.assert_allclose(_float_stems(tmp_path / "j/tiny/a")[name], wav, atol=1e-5)


def test_seed_makes_runs_identical(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav", seconds=2)
    outs = []
    for run, seed in enumerate((["--seed", "7"], ["--seed", "7"], [])):
        out = tmp_path / f"o{run}"
        assert (
            run_main(
                [
                    "--repo",
                    tiny_repo,
                    "-n",
                    "tiny",
                    "--shifts",
                    "1",
                    "--float32",
                    "-q",
                    *seed,
                    "-o",
                    out,
                    tmp_path / "a.wav",
                ],
                capsys,
            )[0]
            == 0
        )
        outs.append(_float_stems(out / "tiny/a"))
    for name in outs[0]:
        assert np.array_equal(outs[0][name], outs[1][name])
    assert any(not np.array_equal(outs[0][n], outs[2][n]) for n in outs[0])


def test_clip_mode_none_writes_as_computed(tmp_path, tiny_repo, capsys):
    """--clip-mode none (upstream 4.1.0): the float32 stems are the separation's output,
    untouched (the writers' tests check values beyond 1 are kept)."""
    from demucs.api import Separator

    write_mix(tmp_path / "a.wav")
    assert (
        run_main(
            [
                "--repo",
                tiny_repo,
                "-n",
                "tiny",
                "--shifts",
                "0",
                "--float32",
                "-q",
                "--clip-mode",
                "none",
                "-o",
                tmp_path / "o",
                tmp_path / "a.wav",
            ],
            capsys,
        )[0]
        == 0
    )
    _, stems = Separator("tiny", repo=tiny_repo, device="cpu", shifts=0).separate_audio_file(
        tmp_path / "a.wav"
    )
    for name, wav in _float_stems(tmp_path / "o/tiny/a").items():
        np.testing.assert_allclose(wav, stems[name].numpy().T, atol=1e-6)


def test_single_model_is_not_called_a_bag(tmp_path, tiny_repo, capsys):
    write_mix(tmp_path / "a.wav")
    code, out, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "--shifts",
            "0",
            "-o",
            tmp_path / "o",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 0, err
    assert "bag of" not in out


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--segment", "0"], "--segment"),
        (["--segment", "-2"], "--segment"),
        (["--segment", "nan"], "--segment"),
        (["--shifts", "-1"], "--shifts"),
        (["--overlap", "1"], "--overlap"),
        (["-n", "tinyht", "--segment", "1e9"], "Maximum segment"),
        (["-n", "tinyht", "--no-split"], "drop --no-split"),
    ],
)
def test_bad_separation_flags_get_one_line(tmp_path, tiny_repo, capsys, flags, message):
    if "tinyht" in flags and not (tiny_repo / "tinyht.yaml").exists():
        pytest.skip("demucs.htdemucs not importable")
    write_mix(tmp_path / "a.wav", seconds=3)
    code, _, err = run_main(
        ["--repo", tiny_repo, "-n", "tiny", *flags, "-q", "-o", tmp_path / "o", tmp_path / "a.wav"],
        capsys,
    )
    assert code == 1 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_huge_segment_on_a_waveform_model_is_bounded(tmp_path, tiny_repo, capsys):
    """A segment far longer than the track (Demucs has no training limit) separates the
    track in one segment instead of allocating for the segment; many shifts warn."""
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "--segment",
            "1e9",
            "--shifts",
            "11",
            "-q",
            "-o",
            tmp_path / "o",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 0, err
    assert "warning: --shifts 11" in err


def test_one_stem_of_a_one_hot_bag_runs_one_member(tmp_path, capsys):
    """--two-stems vocals --other-method minus on an htdemucs_ft-like bag (one member per
    source) runs only the vocals member, with the vocals of the full run."""
    from tests.helpers import make_checkpoint

    repo = tmp_path / "repo"
    repo.mkdir()
    for k in range(4):
        make_checkpoint("demucs.Demucs", dict(TINY_DEMUCS, channels=4 + k), repo / f"m{k}.th")
    weights = [[1.0 if k == i else 0.0 for k in range(4)] for i in range(4)]
    (repo / "ft.yaml").write_text(f"models: [m0, m1, m2, m3]\nweights: {weights}\n")
    write_mix(tmp_path / "a.wav")
    base = [
        "--repo",
        repo,
        "-n",
        "ft",
        "--shifts",
        "1",
        "--seed",
        "3",
        "--float32",
        "--clip-mode",
        "none",
        tmp_path / "a.wav",
    ]
    code, out, err = run_main([*base, "-o", tmp_path / "full"], capsys)
    assert code == 0, err
    assert "bag of 4 models" in out and "of which" not in out
    code, out, err = run_main(
        [*base, "--two-stems", "vocals", "--other-method", "minus", "-o", tmp_path / "one"], capsys
    )
    assert code == 0, err
    assert "bag of 4 models, 1 of which make vocals" in out
    full = _float_stems(tmp_path / "full/ft/a")["vocals"]
    one = _float_stems(tmp_path / "one/ft/a")
    assert sorted(one) == ["minus_vocals", "vocals"]
    from demucs.onnx.verify import snr_db

    assert snr_db(full, one["vocals"]) >= 100


def test_random_weights_without_any_download(tmp_path, capsys, monkeypatch):
    """`demucs --random-weights` builds the release architecture (here a tiny stand-in)."""
    from demucs import configs

    monkeypatch.setitem(
        configs.RELEASE_CONFIGS, "tiny_random", dict(configs.TINY_HTDEMUCS, samplerate=RATE)
    )
    write_mix(tmp_path / "a.wav")
    code, out, err = run_main(
        [
            "--random-weights",
            "-n",
            "tiny_random",
            "--shifts",
            "0",
            "-q",
            "-o",
            tmp_path / "o",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.stem for p in (tmp_path / "o/tiny_random/a").iterdir()) == sorted(SOURCES)
    code, _, err = run_main(
        ["--random-weights", "-n", "nosuch", "-o", tmp_path / "o", tmp_path / "a.wav"], capsys
    )
    assert code == 1 and "--random-weights knows" in err


def test_precision_flag(tmp_path, tiny_repo, capsys, monkeypatch):
    """--precision bf16: one line where the CPU lacks native bf16; close to fp32 where it
    has it (emulated here: only the plumbing is tested)."""
    from demucs import precision

    write_mix(tmp_path / "a.wav")
    base = [
        "--repo",
        tiny_repo,
        "-n",
        "tiny",
        "--shifts",
        "0",
        "--float32",
        "-q",
        tmp_path / "a.wav",
    ]
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *_: False)
    code, _, err = run_main([*base, "--precision", "bf16", "-o", tmp_path / "no"], capsys)
    assert code == 1 and "bf16" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda *_: True)
    assert run_main([*base, "--precision", "bf16", "-o", tmp_path / "bf16"], capsys)[0] == 0
    assert run_main([*base, "-o", tmp_path / "fp32"], capsys)[0] == 0
    from demucs.onnx.verify import snr_db

    for name, wav in _float_stems(tmp_path / "fp32/tiny/a").items():
        assert snr_db(wav, _float_stems(tmp_path / "bf16/tiny/a")[name]) > 20
