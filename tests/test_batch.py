"""``demucs-batch`` with both engines: manifest, same stems as ``demucs``, resume, a worker
process killed mid-track (SIGKILL). Ray runs as a local instance started here (2 CPUs)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demucs import batch, separate
from tests.helpers import SOURCES, leftovers, make_tiny_repo, write_mix

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ["local", "ray"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs whose workers import this checkout."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def _engine(request, engine: str) -> tp.List[str]:
    if engine == "ray":
        request.getfixturevalue("ray_local")
    return ["--engine", engine, "--workers", "2"]


def run_batch(args: tp.Sequence[tp.Any], capsys) -> tp.Tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        batch.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def manifest(out: Path) -> tp.List[tp.Dict[str, tp.Any]]:
    return [json.loads(line) for line in (out / batch.MANIFEST).read_text().splitlines()]


def _catalogue(root: Path) -> tp.Dict[str, str]:
    """Nested same-named tracks, a corrupt file, a text file, a list; input -> track."""
    write_mix(root / "in" / "a.wav", seed=1)
    write_mix(root / "in" / "sub" / "a.wav", seed=2)
    write_mix(root / "in" / "sub" / "b.flac", seed=3)
    (root / "in" / "sub" / "broken.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)
    (root / "in" / "notes.txt").write_text("not audio\n")
    write_mix(root / "listed" / "c.wav", seed=4)
    (root / "todo.txt").write_text("# more tracks\nlisted/c.wav\n")
    return {
        "in/a.wav": "a",
        "in/sub/a.wav": "sub/a",
        "in/sub/b.flac": "sub/b",
        "in/sub/broken.mp3": "",
        "listed/c.wav": "c",
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_catalogue(tmp_path, repo, capsys, request, engine):
    expected = _catalogue(tmp_path)
    out = tmp_path / "out"
    common = ["--repo", repo, "-n", "tiny", "--shifts", "0"]
    code, stdout, err = run_batch(
        [*common, *_engine(request, engine), "-o", out, tmp_path / "in", tmp_path / "todo.txt"],
        capsys,
    )
    assert code == 1
    assert "broken.mp3" in err and "Traceback" not in err
    assert "5 tracks: 4 separated, 0 skipped, 1 failed" in stdout.strip().splitlines()[-1]
    rows = {Path(row["input"]).relative_to(tmp_path).as_posix(): row for row in manifest(out)}
    assert sorted(rows) == sorted(expected)
    for name, track in expected.items():
        row = rows[name]
        if not track:
            assert row["status"] == "failed" and "broken.mp3" in row["error"]
            assert row["stems"] == []
            continue
        assert row["status"] == "done" and row["error"] is None
        assert row["stems"] == [str(out / "tiny" / track / f"{s}.wav") for s in SOURCES]
        assert row["audio_seconds"] == pytest.approx(1.5)
        assert row["wall_seconds"] > 0 and row["worker"].count(":") == 1
    assert leftovers(out) == []
    # The same tracks through the demucs command: the same stems.
    with pytest.raises(SystemExit) as info:
        separate.main(
            [
                *map(str, common),
                "-q",
                "-o",
                str(tmp_path / "cli"),
                str(tmp_path / "in"),
                str(tmp_path / "listed" / "c.wav"),
            ]
        )
    assert info.value.code == 1  # broken.mp3
    for track in filter(None, expected.values()):
        for stem in SOURCES:
            np.testing.assert_array_equal(
                sf.read(str(out / "tiny" / track / f"{stem}.wav"))[0],
                sf.read(str(tmp_path / "cli" / "tiny" / track / f"{stem}.wav"))[0],
            )
    # Rerun: everything done is skipped, the bad file fails again; rows are appended.
    capsys.readouterr()
    code, stdout, _ = run_batch(
        [*common, *_engine(request, engine), "-o", out, tmp_path / "in", tmp_path / "todo.txt"],
        capsys,
    )
    assert code == 1 and "0 separated, 4 skipped, 1 failed" in stdout
    again = manifest(out)[len(expected) :]
    assert sorted(row["status"] for row in again) == ["failed"] + ["skipped"] * 4


def _writer_of(folder: Path) -> tp.Optional[tp.Tuple[int, str]]:
    """(pid, temporary file) of a process, not this one, writing a stem under ``folder``."""
    prefix = str(folder)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            for fd in fds:
                target = os.readlink(fd)
                if target.startswith(prefix) and target.endswith(".tmp"):
                    return int(entry.name), target
        except OSError:
            continue
    return None


class _Killer(threading.Thread):
    """Kills (SIGKILL) the first worker process seen writing a stem under ``folder``."""

    def __init__(self, folder: Path, timeout: float = 240.0) -> None:
        super().__init__(daemon=True)
        self.folder, self.timeout = folder, timeout
        self.killed: tp.Optional[tp.Tuple[int, str]] = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            found = _writer_of(self.folder)
            if found is not None:
                os.kill(found[0], signal.SIGKILL)
                self.killed = found
                return
            time.sleep(0.02)


@pytest.mark.parametrize("engine", ENGINES)
def test_worker_killed_mid_track(tmp_path, repo, capsys, request, engine):
    """Every good track is separated once, with no partial file; a rerun skips all."""
    names = [f"t{index}.wav" for index in range(5)]
    for index, name in enumerate(names):
        write_mix(tmp_path / "in" / name, seconds=12, seed=index)
    out = tmp_path / "out"
    args = [
        "--repo",
        repo,
        "-n",
        "tiny",
        "--shifts",
        "0",
        *_engine(request, engine),
        "-o",
        out,
        tmp_path / "in",
    ]
    killer = _Killer(out)
    killer.start()
    try:
        code, stdout, err = run_batch(args, capsys)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no worker was seen writing a stem"
    assert code == 0, err
    assert "5 separated, 0 skipped, 0 failed" in stdout
    rows = manifest(out)
    assert sorted(Path(row["input"]).name for row in rows) == names  # once each
    assert all(row["status"] == "done" for row in rows)
    killed_pid, temporary = killer.killed
    track = Path(temporary).parent.name
    retried = [row for row in rows if Path(row["input"]).stem == track]
    assert int(retried[0]["worker"].rsplit(":", 1)[1]) != killed_pid  # done elsewhere
    for name in names:
        for stem in SOURCES:
            assert sf.info(str(out / "tiny" / Path(name).stem / f"{stem}.wav")).frames == 12 * 8000
    assert leftovers(out) == []
    code, stdout, _ = run_batch(args, capsys)
    assert code == 0 and "0 separated, 5 skipped, 0 failed" in stdout
    assert [row["status"] for row in manifest(out)[len(names) :]] == ["skipped"] * 5


def test_bad_flags(tmp_path, repo, capsys):
    write_mix(tmp_path / "a.wav")
    for extra, needle in (
        (["-j", "2"], "--workers"),
        (["--workers", "0"], "--workers"),
        (["--gpus-per-worker", "1"], "--engine ray"),
    ):
        code, _, err = run_batch(
            ["--repo", repo, "-n", "tiny", "-o", tmp_path / "out", *extra, tmp_path / "a.wav"],
            capsys,
        )
        assert code == 1 and needle in err and len(err.strip().splitlines()) == 1
    code, _, err = run_batch(
        ["--repo", repo, "-n", "nosuchmodel", "-o", tmp_path / "out", tmp_path / "a.wav"], capsys
    )
    assert code == 1 and "nosuchmodel" in err and "Traceback" not in err
    assert manifest(tmp_path / "out") == []


def test_collisions_refused(tmp_path, repo, capsys):
    write_mix(tmp_path / "a.wav")
    write_mix(tmp_path / "sub" / "a.wav")
    code, _, err = run_batch(
        [
            "--repo",
            repo,
            "-n",
            "tiny",
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
            tmp_path / "sub" / "a.wav",
        ],
        capsys,
    )
    assert code == 1 and "overwrite" in err and not (tmp_path / "out").exists()


def test_parser_shares_the_cli_flags():
    cli = {action.dest for action in separate.get_parser()._actions}
    ours = {action.dest for action in batch.get_parser()._actions}
    assert cli < ours and {"engine", "workers", "address", "gpus_per_worker"} <= ours
    assert batch.get_parser().parse_args(["x"]).skip_existing


def test_lazy_imports():
    """The driver imports neither torch nor ray (the Ray engine imports ray when chosen)."""
    import subprocess
    import sys

    code = (
        "import sys, demucs.batch, demucs.tracks\n"
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
