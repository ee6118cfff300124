"""Which files to separate and where their stems go (no torch import: pure path logic).

Used by ``demucs`` and ``demucs-batch``. The rules, also documented in README:

- A file given by its path is always separated, whatever its extension (as upstream).
  Its track name (``{track}`` of ``--filename``) is the file name without its extension:
  ``music/song.mp3`` -> ``song`` (upstream's layout).
- A folder is searched recursively in a stable order (sorted by relative path); only
  files with an audio or video extension (:data:`MEDIA_EXTENSIONS`, any case) are kept,
  the others are skipped without error, as are hidden files and folders (names starting
  with a dot, such as macOS ``._song.mp3`` or our own temporary files) and symbolic links
  to folders (no loops). A file found under ``DIR`` mirrors its folders below ``DIR``:
  ``DIR/sub/a.wav`` -> track ``sub/a``, so ``DIR/a.wav`` and ``DIR/sub/a.wav`` never share
  an output.
- ``demucs-batch`` also reads lists: a given file ending in ``.txt`` holds one path per
  line (blank lines and lines starting with ``#`` are ignored; relative paths are taken
  from the list's folder), each treated as if given on the command line.
- A name that would be ``.``, ``..`` or empty once its extension is removed (``..wav``,
  ``...mp3``) keeps its whole file name as track name, so no track name can point
  outside its own folder.
- Two inputs whose stems would land on the same paths (``a.wav`` and ``sub/a.wav`` given
  as files, ``song.wav`` and ``song.mp3``) are refused before anything is separated:
  :func:`find_collisions` lists them and the commands stop with a message that names
  both inputs (nothing is renamed behind the user's back, and no output of the run is
  ever overwritten by another input of the same run). The same file given twice under the
  same track name is separated once.
- Stems are renamed into place only once complete, so a track is complete when every
  expected stem exists (:func:`is_complete`, used by ``--skip-existing``).
"""

from __future__ import annotations

import dataclasses
import os
import typing as tp
from pathlib import Path

from .io.tempfiles import is_temporary_of

__all__ = [
    "AUDIO_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "MEDIA_EXTENSIONS",
    "LIST_EXTENSION",
    "TrackInput",
    "Collision",
    "InputError",
    "plain_track",
    "discover",
    "read_list",
    "stem_paths",
    "find_collisions",
    "describe_collisions",
    "is_complete",
    "stale_temporaries",
    "check_relative",
]

AUDIO_EXTENSIONS = frozenset(
    {
        "aac",
        "ac3",
        "aif",
        "aifc",
        "aiff",
        "alac",
        "amr",
        "ape",
        "au",
        "caf",
        "dts",
        "eac3",
        "flac",
        "m4a",
        "m4b",
        "mka",
        "mp2",
        "mp3",
        "mpc",
        "oga",
        "ogg",
        "opus",
        "ra",
        "snd",
        "tta",
        "w64",
        "wav",
        "wave",
        "weba",
        "wma",
        "wv",
    }
)
VIDEO_EXTENSIONS = frozenset(
    {
        "3g2",
        "3gp",
        "asf",
        "avi",
        "f4v",
        "flv",
        "m2ts",
        "m4v",
        "mkv",
        "mov",
        "mp4",
        "mpeg",
        "mpg",
        "mts",
        "mxf",
        "ogv",
        "ts",
        "vob",
        "webm",
        "wmv",
    }
)
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS | VIDEO_EXTENSIONS
LIST_EXTENSION = ".txt"
# Our atomic writers put a stem in progress in ``.NAME.<random>.tmp`` next to NAME
# (demucs.audio); a process killed mid-track leaves it behind.
_UNSAFE_NAMES = ("", ".", "..")


class InputError(ValueError):
    """An input that cannot be listed (unreadable folder or list file)."""


@dataclasses.dataclass(frozen=True)
class TrackInput:
    """One file to separate: where to read it and the name of its outputs.

    Attributes:
        path: the file to read.
        track: ``{track}`` of ``--filename``: ``/``-separated, never ``.``/``..``/empty in
            any component, never absolute.
        trackext: ``{trackext}``: the extension without its dot (may be empty).
    """

    path: Path
    track: str
    trackext: str


def _split_name(name: str) -> tp.Tuple[str, str]:
    """``song.mp3`` -> (``song``, ``mp3``); a name that would leave ``.``, ``..`` or
    nothing (``..wav``, ``.mp3``) keeps its whole name as track name."""
    stem, dot, ext = name.rpartition(".")
    if not dot or stem in _UNSAFE_NAMES:
        return name, ""
    return stem, ext


def plain_track(path: tp.Union[str, os.PathLike]) -> TrackInput:
    """A file given by its path: upstream's layout, ``{track}`` is its name without the
    extension."""
    path = Path(path)
    track, ext = _split_name(path.name)
    if track in _UNSAFE_NAMES:  # "", ".", ".." as the whole path: name it after its target
        track = _split_name(Path(os.path.abspath(path)).name or "track")[0] or "track"
    return TrackInput(path, track, ext)


def _nested_track(root: Path, path: Path) -> TrackInput:
    relative = path.relative_to(root)
    track, ext = _split_name(relative.name)
    parts = [*relative.parts[:-1], track]
    return TrackInput(path, "/".join(parts), ext)


def _walk(root: Path, exclude: tp.AbstractSet[str] = frozenset()) -> tp.List[Path]:
    found: tp.List[tp.Tuple[tp.Tuple[str, ...], Path]] = []

    def on_error(err: OSError) -> None:
        raise InputError(f"cannot read folder {err.filename or root}: {err.strerror or err}")

    for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=False):
        base = Path(folder)
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and os.path.realpath(base / d) not in exclude
        ]
        for name in files:
            if name.startswith("."):
                continue
            if name.rpartition(".")[2].lower() not in MEDIA_EXTENSIONS:
                continue
            path = base / name
            if path.is_file():
                found.append((path.relative_to(root).parts, path))
    found.sort(key=lambda item: item[0])
    return [path for _, path in found]


def read_list(path: Path) -> tp.List[Path]:
    """Paths listed in a text file, one per line, relative ones taken from its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"cannot read list {path}: {reason}") from None
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        result.append(entry if entry.is_absolute() else path.parent / entry)
    return result


def discover(
    inputs: tp.Iterable[tp.Union[str, os.PathLike]],
    *,
    lists: bool = False,
    exclude: tp.Iterable[tp.Union[str, os.PathLike]] = (),
) -> tp.List[TrackInput]:
    """Expands files, folders (and with ``lists``, ``.txt`` lists) into tracks, in order.

    Folders listed in ``exclude`` (the output folder: ``demucs .`` must not separate the
    stems of an earlier run) are not searched.

    Paths that do not exist are kept as plain files, so that separating them reports the
    problem in its place. Duplicates (same file, same track name) are kept once.
    Raises :class:`InputError` for a folder or list that cannot be read.
    """
    result: tp.List[TrackInput] = []
    seen: tp.Set[tp.Tuple[str, str, str]] = set()
    excluded = frozenset(os.path.realpath(path) for path in exclude)

    def add(item: TrackInput) -> None:
        key = (os.path.abspath(item.path), item.track, item.trackext)
        if key not in seen:
            seen.add(key)
            result.append(item)

    def expand(path: Path, depth: int) -> None:
        if path.is_dir():
            for found in _walk(path, excluded):
                add(_nested_track(path, found))
        elif lists and depth == 0 and path.suffix.lower() == LIST_EXTENSION and path.is_file():
            for entry in read_list(path):
                expand(entry, depth + 1)
        else:
            add(plain_track(path))

    for given in inputs:
        expand(Path(given), 0)
    return result


def check_relative(relative: str) -> None:
    """Raises ValueError if a formatted output path would leave the output folder."""
    normalized = os.path.normpath(relative)
    if os.path.isabs(relative) or normalized == ".." or normalized.startswith(".." + os.sep):
        raise ValueError(f"output name {relative!r} points outside the output folder")


def stem_paths(
    item: TrackInput, stems: tp.Sequence[str], template: str, ext: str, out: Path
) -> tp.List[Path]:
    """The final path of each stem of ``item`` under ``out`` (``--filename`` template)."""
    paths = []
    for stem in stems:
        relative = template.format(track=item.track, trackext=item.trackext, stem=stem, ext=ext)
        check_relative(relative)
        paths.append(out / relative)
    return paths


@dataclasses.dataclass(frozen=True)
class Collision:
    """Inputs (two or more) whose stems would be written to the same ``path``."""

    path: Path
    inputs: tp.Tuple[Path, ...]


def find_collisions(
    items: tp.Sequence[TrackInput],
    stems: tp.Sequence[str],
    template: str,
    ext: str,
    out: Path = Path(),
) -> tp.List[Collision]:
    """Output paths claimed by more than one input, in input order.

    ``stems``: the stem names when known; otherwise a placeholder such as ``["{stem}"]``
    finds every collision between two tracks' stems of the same name.
    """
    owners: tp.Dict[str, tp.List[TrackInput]] = {}
    for item in items:
        for path in stem_paths(item, stems, template, ext, out):
            owners.setdefault(os.path.normpath(path), []).append(item)
    collisions = []
    reported: tp.Set[tp.Tuple[str, ...]] = set()
    for shared, claimed in owners.items():
        inputs = tuple(dict.fromkeys(item.path for item in claimed))
        if len(claimed) > 1:
            key = tuple(str(p) for p in inputs)
            if key not in reported:
                reported.add(key)
                collisions.append(Collision(Path(shared), inputs))
    return collisions


def describe_collisions(collisions: tp.Sequence[Collision], limit: int = 3) -> str:
    """One line: which inputs collide and how to fix it."""
    shown = "; ".join(
        " and ".join(str(p) for p in c.inputs) + f" -> {c.path}" for c in collisions[:limit]
    )
    more = f" (and {len(collisions) - limit} more)" if len(collisions) > limit else ""
    return (
        f"inputs would overwrite each other's stems: {shown}{more}. Nothing was "
        "separated: give their folder instead of the files (its subfolders are kept), "
        'or add {trackext} to --filename (e.g. "{track}_{trackext}/{stem}.{ext}")'
    )


def is_complete(paths: tp.Iterable[Path]) -> bool:
    """True when every stem exists as a file (stems appear only once fully written)."""
    return all(path.is_file() for path in paths)


def stale_temporaries(paths: tp.Iterable[Path]) -> tp.List[Path]:
    """Hidden temporary files left next to these stems by a process killed while writing
    them (removed before the track is separated again)."""
    found: tp.List[Path] = []
    for path in paths:
        try:
            entries = list(path.parent.iterdir())
        except OSError:
            continue
        found.extend(entry for entry in entries if is_temporary_of(entry.name, path))
    return sorted(set(found))
