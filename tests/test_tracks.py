"""demucs.tracks: which files a folder holds, their track names, collisions, resume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from demucs import tracks


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_folder_recursive_sorted_media_only(tmp_path):
    root = tmp_path / "music"
    for name in [
        "b.mp3",
        "a.wav",
        "sub/a.wav",
        "sub/deeper/z.FLAC",
        "clip.mp4",
        "notes.txt",
        "cover.jpg",
        "noext",
        ".hidden.wav",
        ".git/x.wav",
        "sub/._a.wav",
        "Ä.ogg",
    ]:
        _touch(root / name)
    (root / "link").symlink_to(root / "sub")  # a link to a folder is not followed
    found = tracks.discover([root])
    assert [(str(t.path.relative_to(root)), t.track, t.trackext) for t in found] == [
        ("a.wav", "a", "wav"),
        ("b.mp3", "b", "mp3"),
        ("clip.mp4", "clip", "mp4"),
        ("sub/a.wav", "sub/a", "wav"),
        ("sub/deeper/z.FLAC", "sub/deeper/z", "FLAC"),
        ("Ä.ogg", "Ä", "ogg"),
    ]
    assert tracks.discover([root]) == found  # stable
    _touch(root / "separated" / "tiny" / "a" / "vocals.wav")  # an earlier run's output
    assert tracks.discover([root], exclude=[root / "separated"]) == found


def test_plain_files_keep_upstream_names_and_missing_ones_are_kept(tmp_path):
    found = tracks.discover(
        [
            _touch(tmp_path / "x" / "song.mp3"),
            tmp_path / "missing.wav",
            _touch(tmp_path / "readme.txt"),
        ]
    )
    assert [(t.track, t.trackext) for t in found] == [
        ("song", "mp3"),
        ("missing", "wav"),
        ("readme", "txt"),
    ]


def test_lists(tmp_path):
    _touch(tmp_path / "lists" / "rel.wav")
    _touch(tmp_path / "other" / "abs.mp3")
    _touch(tmp_path / "folder" / "sub" / "f.wav")
    listing = _touch(
        tmp_path / "lists" / "todo.txt",
        f"# tracks\nrel.wav\n\n  {tmp_path / 'other' / 'abs.mp3'}  \n{tmp_path / 'folder'}\n",
    )
    found = tracks.discover([listing], lists=True)
    assert [(t.path, t.track) for t in found] == [
        (tmp_path / "lists" / "rel.wav", "rel"),
        (tmp_path / "other" / "abs.mp3", "abs"),
        (tmp_path / "folder" / "sub" / "f.wav", "sub/f"),
    ]
    assert [t.track for t in tracks.discover([listing])] == ["todo"]  # demucs: a track
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(tracks.InputError, match="cannot read list"):
        tracks.discover([tmp_path / "bad.txt"], lists=True)


def test_duplicates_kept_once(tmp_path):
    song = _touch(tmp_path / "d" / "a.wav")
    found = tracks.discover([song, tmp_path / "d" / ".." / "d" / "a.wav", tmp_path / "d"])
    assert len(found) == 1


@pytest.mark.parametrize(
    "name,track",
    [
        ("..wav", "..wav"),
        ("...mp3", "...mp3"),
        (".wav", ".wav"),
        ("a..wav", "a."),
        ("..", "tmp"),
        (".", "tmp"),
    ],
)
def test_dot_names_stay_in_their_folder(tmp_path, name, track):
    item = tracks.plain_track(tmp_path / name)
    if name in ("..", "."):
        assert item.track not in ("", ".", "..")
        return
    assert item.track == track
    out = tmp_path / "out"
    for path in tracks.stem_paths(item, ["vocals", "bass"], "{track}/{stem}.{ext}", "wav", out):
        resolved = Path(os.path.normpath(path))
        assert resolved.parent.parent == out and resolved.parent.name == track


def test_templates_leaving_the_output_are_refused(tmp_path):
    item = tracks.plain_track(tmp_path / "a.wav")
    for template in ("../{track}/{stem}.{ext}", "/abs/{stem}.{ext}", "{track}/../../{stem}"):
        with pytest.raises(ValueError, match="outside the output folder"):
            tracks.stem_paths(item, ["vocals"], template, "wav", tmp_path)


def test_collisions(tmp_path):
    a = _touch(tmp_path / "a.wav")
    sub_a = _touch(tmp_path / "sub" / "a.wav")
    song_wav = _touch(tmp_path / "songs" / "song.wav")
    _touch(tmp_path / "songs" / "song.mp3")
    template = "{track}/{stem}.{ext}"
    plain = tracks.discover([a, sub_a])
    collisions = tracks.find_collisions(plain, ["{stem}"], template, "wav")
    assert len(collisions) == 1 and collisions[0].inputs == (a, sub_a)
    message = tracks.describe_collisions(collisions)
    assert str(a) in message and str(sub_a) in message and "Nothing was separated" in message
    assert (
        tracks.find_collisions(tracks.discover([tmp_path]), ["vocals", "bass"], template, "wav")
        != []
    )  # song.wav and song.mp3
    folder = tracks.discover([tmp_path / "songs"])
    assert [c.inputs for c in tracks.find_collisions(folder, ["{stem}"], template, "wav")] == [
        (tmp_path / "songs" / "song.mp3", song_wav)
    ]
    distinct = "{track}_{trackext}/{stem}.{ext}"
    assert tracks.find_collisions(folder, ["{stem}"], distinct, "wav") == []
    nested = tracks.discover([tmp_path / "sub", tmp_path / "a.wav"])  # sub/a -> "a" too
    assert len(tracks.find_collisions(nested, ["{stem}"], template, "wav")) == 1


def test_complete_and_stale_temporaries(tmp_path):
    paths = [tmp_path / "t" / f"{stem}.wav" for stem in ("drums", "bass")]
    assert not tracks.is_complete(paths)
    _touch(paths[0])
    stale = _touch(tmp_path / "t" / ".bass.wav.k2j3.tmp")
    _touch(tmp_path / "t" / ".other.wav.k2j3.tmp")  # not a stem of this track
    assert not tracks.is_complete(paths)
    assert tracks.stale_temporaries(paths) == [stale]
    _touch(paths[1])
    assert tracks.is_complete(paths)
