"""``demucs DIR``, ``--skip-existing``, colliding inputs and dot names (in process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import SOURCES, leftovers, make_tiny_repo, run_main, write_mix

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("repo"))


def _catalogue(root: Path) -> None:
    """Nested same-named tracks, a corrupt file, a text file."""
    write_mix(root / "a.wav", seed=1)
    write_mix(root / "sub" / "a.wav", seed=2)
    write_mix(root / "sub" / "deeper" / "b.flac", seed=3)
    (root / "sub" / "broken.mp3").write_bytes(b"ID3" + bytes(range(256)) * 8)
    (root / "notes.txt").write_text("not audio\n")


def test_folder(tmp_path, repo, capsys):
    _catalogue(tmp_path / "in")
    out = tmp_path / "out"
    code, stdout, err = run_main(
        ["--repo", repo, "-n", "tiny", "--shifts", "0", "-o", out, tmp_path / "in"], capsys
    )
    assert code == 1
    assert err.count("\n") == 1 and "broken.mp3" in err and "Traceback" not in err
    assert stdout.strip().splitlines()[-1] == "3 separated, 0 skipped, 1 failed"
    expected = {"a", "sub/a", "sub/deeper/b"}
    found = {str(p.parent.relative_to(out / "tiny")) for p in (out / "tiny").rglob("*.wav")}
    assert found == expected
    for track, source in (("a", "a.wav"), ("sub/a", "sub/a.wav")):
        # The same track alone, as upstream names it: the same stems.
        single = tmp_path / "single" / track
        assert (
            run_main(
                [
                    "--repo",
                    repo,
                    "-n",
                    "tiny",
                    "--shifts",
                    "0",
                    "-q",
                    "-o",
                    single,
                    tmp_path / "in" / source,
                ],
                capsys,
            )[0]
            == 0
        )
        for stem in SOURCES:
            ours = sf.read(str(out / "tiny" / track / f"{stem}.wav"))[0]
            alone = sf.read(str(single / "tiny" / "a" / f"{stem}.wav"))[0]
            np.testing.assert_array_equal(ours, alone)
    assert leftovers(out) == []


def test_skip_existing_resumes_a_killed_run(tmp_path, repo, capsys):
    """A killed run leaves complete tracks, tracks with some stems renamed into place and
    hidden temporaries: --skip-existing skips the first, finishes the others, cleans up."""
    for name in ("one", "two", "three"):
        write_mix(tmp_path / "in" / f"{name}.wav", seed=len(name))
    out = tmp_path / "out"
    base = ["--repo", repo, "-n", "tiny", "--shifts", "0", "-o", out]
    assert run_main([*base, "-q", tmp_path / "in"], capsys)[0] == 0
    reference = {p: p.read_bytes() for p in (out / "tiny").rglob("*.wav")}
    # State of a run killed in "two" (two stems renamed, one temporary left) before "three".
    (out / "tiny" / "two" / "vocals.wav").unlink()
    (out / "tiny" / "two" / "other.wav").unlink()
    (out / "tiny" / "two" / ".vocals.wav.x8f2a.tmp").write_bytes(b"RIFF partial")
    for path in (out / "tiny" / "three").iterdir():
        path.unlink()
    one = out / "tiny" / "one" / "drums.wav"
    mtime = one.stat().st_mtime_ns
    code, stdout, err = run_main([*base, "--skip-existing", tmp_path / "in"], capsys)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == "2 separated, 1 skipped, 0 failed"
    assert one.stat().st_mtime_ns == mtime
    assert {p: p.read_bytes() for p in (out / "tiny").rglob("*.wav")} == reference
    assert leftovers(out) == []
    code, stdout, _ = run_main([*base, "--skip-existing", tmp_path / "in"], capsys)
    assert code == 0 and stdout.strip().splitlines()[-1] == "0 separated, 3 skipped, 0 failed"


@pytest.mark.parametrize("names", [("a.wav", "sub/a.wav"), ("song.wav", "song.mp3")])
def test_colliding_inputs_are_refused_before_separating(tmp_path, repo, capsys, names):
    for index, name in enumerate(names):
        write_mix(tmp_path / name, seed=index)
    code, _, err = run_main(
        [
            "--repo",
            repo,
            "-n",
            "tiny",
            "-o",
            tmp_path / "out",
            *[tmp_path / name for name in names],
        ],
        capsys,
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and all(str(tmp_path / name) in lines[0] for name in names)
    assert not (tmp_path / "out").exists()


def test_colliding_folder_entries_can_be_told_apart(tmp_path, repo, capsys):
    write_mix(tmp_path / "in" / "song.wav", seed=0)
    write_mix(tmp_path / "in" / "song.flac", seed=1)
    base = ["--repo", repo, "-n", "tiny", "-q", "-o", tmp_path / "out"]
    assert run_main([*base, tmp_path / "in"], capsys)[0] == 1
    assert not (tmp_path / "out").exists()
    code, _, err = run_main(
        [*base, "--filename", "{track}_{trackext}/{stem}.{ext}", tmp_path / "in"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "tiny").iterdir()) == [
        "song_flac",
        "song_wav",
    ]


@pytest.mark.parametrize("name", ["..wav", "...wav", ".wav"])
def test_dot_track_names_write_inside_their_folder(tmp_path, repo, capsys, name):
    write_mix(tmp_path / "in" / name)
    out = tmp_path / "deep" / "out"
    code, _, err = run_main(
        ["--repo", repo, "-n", "tiny", "-q", "-o", out, tmp_path / "in" / name], capsys
    )
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        [Path("in") / name] + [Path("deep/out/tiny") / name / f"{stem}.wav" for stem in SOURCES]
    )


def test_escaping_template_is_refused(tmp_path, repo, capsys):
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            repo,
            "-n",
            "tiny",
            "-o",
            tmp_path / "out",
            "--filename",
            "../{track}/{stem}.{ext}",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 1 and "outside the output folder" in err and len(err.splitlines()) == 1
