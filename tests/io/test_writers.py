"""demucs.io.writers: permissions, long names, signals, full disks, NaN, clip modes."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
import typing as tp
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs.audio import encode_ffmpeg, encode_mp3, encode_wav, save_audio
from demucs.io import mp3 as io_mp3
from demucs.io import writers
from demucs.io.errors import AudioWarning
from demucs.io.tempfiles import live_temporary_files
from demucs.io.writers import CLAMP_LIMIT, RESCALE_HEADROOM, open_stem_writer

ROOT = Path(__file__).resolve().parent.parent
RATE = 16000


def noise(seconds: float = 0.25, channels: int = 2, amplitude: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (amplitude * rng.standard_normal((channels, int(RATE * seconds)))).astype(np.float32)


def stream_to(path: Path, wav: np.ndarray, **options: tp.Any) -> None:
    writer = open_stem_writer(path, RATE, wav.shape[0], **options)
    try:
        for start in range(0, wav.shape[1], 1000):
            writer.write(wav[:, start : start + 1000])
    except BaseException:
        writer.abort()
        raise
    writer.close()


WRITERS: tp.Dict[str, tp.Callable[[Path], None]] = {
    "save wav": lambda p: save_audio(torch.from_numpy(noise()), p.with_suffix(".wav"), RATE),
    "save flac": lambda p: save_audio(
        torch.from_numpy(noise()), p.with_suffix(".flac"), RATE, clip="clamp", bits_per_sample=24
    ),
    "save mp3": lambda p: save_audio(torch.from_numpy(noise()), p.with_suffix(".mp3"), RATE),
    "stem wav rescale": lambda p: stream_to(p.with_suffix(".wav"), noise()),
    "stem flac none": lambda p: stream_to(p.with_suffix(".flac"), noise(), clip="none"),
    "stem mp3 tanh": lambda p: stream_to(p.with_suffix(".mp3"), noise(), clip="tanh"),
    "encode_mp3": lambda p: encode_mp3(torch.from_numpy(noise()), p.with_suffix(".mp3"), RATE),
    "encode_wav": lambda p: encode_wav(torch.from_numpy(noise()), p.with_suffix(".wav"), RATE),
    "encode_ffmpeg": lambda p: encode_ffmpeg(
        torch.from_numpy(noise()), p.with_suffix(".ogg"), RATE
    ),
}


@contextlib.contextmanager
def umask(mask: int) -> tp.Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def only_file(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("kind", list(WRITERS))
def test_files_honour_the_umask(tmp_path, kind):
    for mask, mode in [(0o022, 0o644), (0o027, 0o640)]:
        folder = tmp_path / oct(mask)
        folder.mkdir()
        with umask(mask):
            WRITERS[kind](folder / "out")
        assert only_file(folder).stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("kind", ["save wav", "stem mp3 tanh"])
def test_overwriting_keeps_normal_permissions(tmp_path, kind):
    with umask(0o022):
        WRITERS[kind](tmp_path / "out")
        target = only_file(tmp_path)
        target.chmod(0o644)
        WRITERS[kind](tmp_path / "out")
    assert only_file(tmp_path).stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3"])
def test_longest_valid_name_works(tmp_path, ext):
    name = "é" * ((255 - len(ext) - 1) // 2) + "x" * ((255 - len(ext) - 1) % 2) + f".{ext}"
    assert len(name.encode()) == 255
    stream_to(tmp_path / name, noise())  # rescale: two temporary files in turn
    save_audio(torch.from_numpy(noise()), tmp_path / name, RATE, clip="clamp")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_errors_name_the_final_path(tmp_path):
    target = tmp_path / "missing" / "vocals.wav"
    with pytest.raises(OSError) as info:
        save_audio(torch.from_numpy(noise()), target, RATE)
    assert info.value.filename == str(target)
    assert (
        ".tmp" not in str(info.value)
        and "No such file" in str(info.value)
        or "no such file" in str(info.value)
    )


# ---------------------------------------------------------------- signals

SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from demucs.io.writers import open_stem_writer
    from demucs.io.tempfiles import install_signal_cleanup
    install_signal_cleanup()
    folder = sys.argv[1]
    writers = [open_stem_writer(f"{folder}/a.wav", 16000, 2),
               open_stem_writer(f"{folder}/b.mp3", 16000, 2, clip="clamp"),
               open_stem_writer(f"{folder}/c.flac", 16000, 2, clip="none")]
    for writer in writers:
        writer.write(np.zeros((2, 4000), np.float32))
    print("writing", flush=True)
    while True:
        for writer in writers:
            writer.write(np.zeros((2, 100), np.float32))
        time.sleep(0.01)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_removes_temporary_files(tmp_path, signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        assert len(list(tmp_path.iterdir())) == 3  # the three hidden temporaries
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert list(tmp_path.iterdir()) == []
    assert "Traceback" not in err


def test_registry_forgets_finished_and_aborted_files(tmp_path):
    writer = open_stem_writer(tmp_path / "a.wav", RATE, 2)
    assert len(live_temporary_files()) == 1
    writer.write(noise())
    writer.close()
    aborted = open_stem_writer(tmp_path / "b.mp3", RATE, 2, clip="none")
    aborted.write(noise())
    aborted.abort()
    assert live_temporary_files() == []
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


# ---------------------------------------------------------------- full disk


@contextlib.contextmanager
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tp.Iterator[Path]:
    """A 1 MiB tmpfs, 600 KiB of it taken, when this process may mount one (root);
    otherwise a folder whose writes fail with ENOSPC after 64 KiB."""
    folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:

        class Full:
            def __init__(self, path: Path) -> None:
                self.raw = open(path, "r+b")
                self.size = 0

            def write(self, data: bytes) -> int:
                self.size += len(data)
                if self.size > 1 << 16:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.raw.write(data)

            def __getattr__(self, name: str) -> tp.Any:
                return getattr(self.raw, name)

        for module in (writers, io_mp3):
            monkeypatch.setattr(module, "open_output", Full)
    (folder / "filler.bin").write_bytes(bytes(600 << 10))
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize(
    "ext,clip", [("wav", "rescale"), ("flac", "clamp"), ("mp3", "none"), ("wav", "none")]
)
def test_disk_full_says_so(tmp_path, monkeypatch, ext, clip):
    wav = noise(seconds=30, amplitude=0.5)  # > 1 MiB in every format
    with small_disk(tmp_path, monkeypatch) as folder:
        target = folder / f"vocals.{ext}"
        with pytest.raises(OSError) as info:
            stream_to(target, wav, clip=clip, bitrate=320)
        message = str(info.value)
        assert "no space left on device" in message and str(target) in message
        assert ".tmp" not in message
        assert [p.name for p in folder.iterdir()] == ["filler.bin"]
        stream_to(folder / "small.wav", wav[:, :1000])  # the space was given back
        assert live_temporary_files() == []


# ---------------------------------------------------------------- samples


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3"])
@pytest.mark.parametrize("clip", ["rescale", "clamp", "none"])
def test_nan_and_inf_follow_one_policy(tmp_path, ext, clip):
    wav = noise(0.5, amplitude=0.2)
    wav[0, 100], wav[1, 200], wav[0, 300] = np.nan, np.inf, -np.inf
    path = tmp_path / f"x.{ext}"
    with pytest.warns(AudioWarning, match="3 non-finite samples") as record:
        save_audio(torch.from_numpy(wav), path, RATE, clip=clip)
    assert len([w for w in record if issubclass(w.category, AudioWarning)]) == 1
    back, _ = sf.read(str(path), always_2d=True, dtype="float32")
    assert np.isfinite(back).all()
    peak = np.abs(back).max()
    assert peak < 1.0001  # a NaN neither spreads nor becomes full-scale DC
    if ext != "mp3":  # +Inf became +1, then the clip mode applied; NaN became 0
        expected = {"rescale": 1 / RESCALE_HEADROOM, "clamp": CLAMP_LIMIT, "none": 1.0}[clip]
        assert abs(back[200, 1] - expected) < 1e-3
        assert abs(back[100, 0]) < 1e-4


def test_clip_none_float_keeps_values_beyond_one(tmp_path):
    wav = noise() * 10
    path = tmp_path / "loud.wav"
    stream_to(path, wav, clip="none", as_float=True)
    back, _ = sf.read(str(path), always_2d=True, dtype="float32")
    np.testing.assert_array_equal(back.T, wav)
    assert np.abs(back).max() > 1
    stream_to(tmp_path / "pcm.wav", wav, clip="none")  # PCM saturates, never wraps
    back, _ = sf.read(str(tmp_path / "pcm.wav"), always_2d=True, dtype="float32")
    assert (
        np.abs(back).max() <= 1
        and np.sign(back[np.abs(wav.T) > 1]).tolist() == np.sign(wav.T[np.abs(wav.T) > 1]).tolist()
    )


def test_clip_modes_use_the_named_constants(tmp_path):
    wav = np.array([[0.5, -2.0, 1.5]], np.float32)
    for clip, expected in [
        ("rescale", wav / (RESCALE_HEADROOM * 2)),
        ("clamp", np.clip(wav, -CLAMP_LIMIT, CLAMP_LIMIT)),
        ("tanh", np.tanh(wav)),
        ("none", wav),
    ]:
        stream_to(tmp_path / f"{clip}.wav", wav, clip=clip, as_float=True)
        back, _ = sf.read(str(tmp_path / f"{clip}.wav"), always_2d=True, dtype="float32")
        np.testing.assert_allclose(back.T, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="clip mode"):
        open_stem_writer(tmp_path / "x.wav", RATE, 2, clip="fold")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clamp.wav",
        "none.wav",
        "rescale.wav",
        "tanh.wav",
    ]


def test_save_audio_and_stem_writer_write_the_same_bytes(tmp_path):
    """One implementation: the in-memory and streaming paths give identical files."""
    wav = noise(1.0, amplitude=0.8)
    for ext in ["wav", "flac", "mp3"]:
        save_audio(torch.from_numpy(wav), tmp_path / f"a.{ext}", RATE)
        stream_to(tmp_path / f"b.{ext}", wav)
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()
