"""demucs.io.readers and demucs.io.resample: hostile inputs get one clear line or a
warning, odd sample rates are resampled in bounded time and memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demucs.io.errors import AudioWarning, LoadAudioError
from demucs.io.readers import open_track, read_array
from demucs.io.resample import (
    PolyphaseResampler,
    SoxrResampler,
    make_resampler,
    output_length,
    resample,
    uses_polyphase,
)

ROOT = Path(__file__).resolve().parent.parent


def noise(samplerate: int, seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((channels, int(samplerate * seconds)))).astype(np.float32)


def reason(path: Path) -> str:
    with pytest.raises(LoadAudioError) as info:
        read_array(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# ---------------------------------------------------------------- messages


def test_fifo_and_devices_are_not_regular_files(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    start = time.perf_counter()
    assert "not a regular file" in reason(fifo)  # and does not block on the pipe
    assert time.perf_counter() - start < 5
    if Path("/dev/zero").exists():
        assert "not a regular file" in reason(Path("/dev/zero"))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("song.flac", "not a FLAC file"),
        ("song.wav", "not a WAV file"),
        ("song.mp3", "not an MP3 file"),
        ("song.ogg", "not an Ogg file"),
    ],
)
def test_text_file_with_an_audio_extension(tmp_path, name, expected):
    path = tmp_path / name
    path.write_text("definitely not audio\n" * 50)
    assert expected in reason(path)


def test_video_without_audio_says_so(tmp_path):
    import av

    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            image = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")
            image.pts = i
            for packet in stream.encode(image):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert "no audio track" in reason(path)


def test_truncated_wav_warns(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(str(path), noise(8000, 2).T, 8000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: 44 + 4 * 3000])
    with pytest.warns(AudioWarning, match="truncated: decoded 3000 of the 16000"):
        data, _ = read_array(path)
    assert data.shape == (2, 3000)


def test_truncated_flac_is_read_in_part_with_a_warning(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(str(path), noise(16000, 2).T, 16000, subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.warns(AudioWarning, match="truncated"):
        data, samplerate = read_array(path)
    assert samplerate == 16000 and 0 < data.shape[1] < 32000


def test_complete_files_do_not_warn(tmp_path):
    path = tmp_path / "fine.flac"
    sf.write(str(path), noise(8000, 1).T, 8000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_array(path)


def test_nonfinite_samples_are_replaced_with_one_warning(tmp_path):
    wav = noise(8000, 1)
    wav[0, 10], wav[1, 20], wav[0, 30] = np.nan, np.inf, -np.inf
    path = tmp_path / "nan.wav"
    sf.write(str(path), wav.T, 8000, subtype="FLOAT")
    with pytest.warns(AudioWarning, match="3 non-finite samples") as record:
        data, _ = read_array(path)
    assert len(record) == 1
    assert data[0, 10] == 0 and data[1, 20] == 1 and data[0, 30] == -1
    assert np.isfinite(data).all()
    # Streaming reads (validation pass + separation pass) warn once too.
    with pytest.warns(AudioWarning) as record:
        track = open_track(path, 8000, 2)
        assert np.isfinite(np.concatenate(list(track.source.blocks()), axis=1)).all()
    assert len(record) == 1


def test_channel_conversion_error_is_one_line(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(str(path), noise(8000, 0.1).T, 8000)
    assert "cannot convert 2-channel audio to 3" in str(
        pytest.raises(LoadAudioError, open_track, path, 8000, 3).value
    )


# ---------------------------------------------------------------- resampling


def test_usual_rates_keep_julius_filters():
    import julius
    import torch

    assert uses_polyphase(48000, 44100) and uses_polyphase(44100, 16000)
    wav = noise(48000, 0.5)
    ours = resample(wav, 48000, 44100, block=5000)
    ref = julius.resample_frac(torch.from_numpy(wav), 48000, 44100).numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5
    assert isinstance(make_resampler(48000, 44100, 2), PolyphaseResampler)


@pytest.mark.parametrize("rate", [44101, 48001])
def test_odd_rates_are_bounded_and_accurate(rate):
    assert not uses_polyphase(rate, 44100)
    assert isinstance(make_resampler(rate, 44100, 2), SoxrResampler)
    t = np.arange(rate) / rate
    wav = (
        np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)]).astype(np.float32)
        * 0.5
    )
    start = time.perf_counter()
    out = resample(wav, rate, 44100, block=4096)
    assert time.perf_counter() - start < 3
    assert out.shape == (2, output_length(rate, rate, 44100))
    t_out = np.arange(out.shape[1]) / 44100
    ideal = np.stack([np.sin(2 * np.pi * 440 * t_out), np.sin(2 * np.pi * 1000 * t_out)]) * 0.5
    middle = slice(1000, -1000)
    error = out[:, middle] - ideal[:, middle]
    snr = 10 * np.log10((ideal[:, middle] ** 2).sum() / (error**2).sum())
    assert snr > 80, snr


def test_soxr_streaming_is_blocking_independent():
    wav = noise(44101, 1.0)
    whole = resample(wav, 44101, 48000, block=wav.shape[1])
    small = resample(wav, 44101, 48000, block=777)
    assert whole.shape == small.shape == (2, output_length(44101, 44101, 48000))
    assert np.abs(whole - small).max() < 1e-6


def test_odd_rate_file_in_bounded_time_and_memory(tmp_path):
    """1 s at 44,101 Hz through the file reader in a fresh process (no torch): a few
    seconds and a small peak RSS (julius's filters would take ~8 GB)."""
    path = tmp_path / "odd.wav"
    sf.write(str(path), noise(44101, 1).T, 44101, subtype="PCM_16")
    # Peak RSS from VmHWM: ru_maxrss would carry over the forking parent's (pytest + torch).
    code = textwrap.dedent(f"""
        import time
        from demucs.io.readers import open_track
        start = time.perf_counter()
        track = open_track({str(path)!r}, 44100, 2)
        status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
        print(track.length, time.perf_counter() - start, int(status) // 1024)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    length, seconds, rss_mb = out.stdout.split()
    assert int(length) == 44100
    assert float(seconds) < 5
    assert int(rss_mb) < 300


def test_odd_rate_tensor_in_bounded_time():
    """The tensor API (``convert_audio``, used by ``Separator.separate_tensor``) takes the
    same bounded path."""
    import torch

    from demucs.audio import convert_audio

    start = time.perf_counter()
    out = convert_audio(torch.zeros(2, 48001), 48001, 44100, 2)
    assert out.shape == (2, 44100) and out.dtype == torch.float32
    assert time.perf_counter() - start < 3


def test_odd_rate_through_ffmpeg(tmp_path):
    """A Matroska file at 44,101 Hz is read by FFmpeg and converted like any other file."""
    import av

    path = tmp_path / "odd.mka"
    wav = noise(44101, 0.5)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=44101, layout="stereo")
        frame = av.AudioFrame.from_ndarray(
            (np.clip(wav, -1, 1).T * 32767).astype(np.int16).reshape(1, -1),
            format="s16",
            layout="stereo",
        )
        frame.sample_rate, frame.pts, frame.time_base = 44101, 0, Fraction(1, 44101)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    track = open_track(path, 44100, 1)
    assert track.length == output_length(wav.shape[1], 44101, 44100)


def test_io_layer_does_not_import_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import demucs.io, demucs.io.audiofile, demucs.io.ffmpeg, demucs.io.mp3
        from demucs.io import open_track, write_array
        write_array(np.zeros((2, 800), np.float32), {str(tmp_path / "x.mp3")!r}, 8000)
        open_track({str(tmp_path / "x.mp3")!r}, 16000, 1)
        assert "torch" not in sys.modules and "julius" not in sys.modules
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr


def test_warning_format_for_the_command_line(tmp_path, capsys):
    from demucs.io.errors import install_warning_format

    path = tmp_path / "nan.wav"
    sf.write(str(path), np.full((10, 1), np.nan, np.float32), 8000, subtype="FLOAT")
    previous = warnings.showwarning
    try:
        install_warning_format("demucs")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            read_array(path)
    finally:
        warnings.showwarning = previous
    err = capsys.readouterr().err
    assert err == f"demucs: warning: {path}: 10 non-finite samples (NaN/Inf) replaced by 0 / +-1\n"
