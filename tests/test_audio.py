"""demucs.audio: reading every supported container, conversion, clipping, atomic writes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import encode_pyav, tones
from demucs.audio import (
    AudioFile,
    LoadAudioError,
    atomic_write,
    convert_audio,
    convert_audio_channels,
    encode_mp3,
    f32_pcm,
    i16_pcm,
    prevent_clip,
    read_audio,
    save_audio,
)


def assert_close_middle(got: torch.Tensor, ref: torch.Tensor, atol: float, margin: int = 1000):
    n = min(got.shape[-1], ref.shape[-1])
    assert n > 2 * margin
    diff = (got[:, margin : n - margin] - ref[:, margin : n - margin]).abs().max().item()
    assert diff < atol, diff


# ---------------------------------------------------------------- lossless round trips


@pytest.mark.parametrize("bits,subtype,atol", [(16, "PCM_16", 1 / 32767), (24, "PCM_24", 1e-6)])
def test_wav_pcm_round_trip(tmp_path, bits, subtype, atol):
    wav = tones()
    path = tmp_path / "x.wav"
    save_audio(wav, path, 8000, bits_per_sample=bits, clip="none")
    assert sf.info(str(path)).subtype == subtype
    back, sr = read_audio(path)
    assert sr == 8000 and back.shape == wav.shape and back.dtype == torch.float32
    assert (back - wav).abs().max() <= atol


def test_wav_float32_keeps_values_beyond_one(tmp_path):
    wav = tones() * 3
    path = tmp_path / "x.wav"
    save_audio(wav, path, 8000, as_float=True, clip="none")
    assert sf.info(str(path)).subtype == "FLOAT"
    back, _ = read_audio(path)
    torch.testing.assert_close(back, wav)


@pytest.mark.parametrize("bits", [16, 24])
def test_flac_round_trip(tmp_path, bits):
    wav = tones(channels=1)
    path = tmp_path / "x.flac"
    save_audio(wav, path, 8000, bits_per_sample=bits, clip="none")
    info = sf.info(str(path))
    assert info.format == "FLAC" and info.subtype == f"PCM_{bits}"
    back, sr = read_audio(path)
    assert sr == 8000 and back.shape == (1, 8000)
    assert (back - wav).abs().max() <= 1 / 32767


def test_flac_rejects_float(tmp_path):
    with pytest.raises(ValueError, match="flac"):
        save_audio(tones(), tmp_path / "x.flac", 8000, bits_per_sample=32)
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        save_audio(tones(), tmp_path / "x.aiff", 8000)


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_ogg_read(tmp_path, subtype):
    samplerate = 48000 if subtype == "OPUS" else 8000
    wav = tones(samplerate, 0.5)
    path = tmp_path / ("x.opus" if subtype == "OPUS" else "x.ogg")
    sf.write(str(path), wav.numpy().T, samplerate, format="OGG", subtype=subtype)
    back, sr = read_audio(path)
    assert sr == samplerate and back.shape[0] == 2
    assert abs(back.shape[1] - wav.shape[1]) < samplerate // 50
    assert_close_middle(back, wav, 0.1)


# ---------------------------------------------------------------- mp3


def test_mp3_round_trip(tmp_path):
    wav = tones(16000)
    path = tmp_path / "x.mp3"
    save_audio(wav, path, 16000, bitrate=128)
    back, sr = read_audio(path)
    assert sr == 16000 and back.shape == wav.shape
    assert_close_middle(back, wav / 1.01 if wav.abs().max() > 1 else wav, 0.05)


@pytest.mark.parametrize("samplerate,channels", [(44100, 2), (22050, 1), (8000, 2)])
def test_mp3_is_sample_aligned(tmp_path, samplerate, channels):
    """The LAME Info tag removes the encoder delay: a click decodes where it was encoded,
    and the decoded length is the input length, with libsndfile and with FFmpeg."""
    length, position = samplerate // 2 + 77, 3001
    wav = torch.zeros(channels, length)
    wav[:, position] = 0.9
    path = tmp_path / "click.mp3"
    encode_mp3(wav, path, samplerate, bitrate=128)
    data, sr = sf.read(str(path), always_2d=True)
    assert sr == samplerate and data.shape == (length, channels)
    assert abs(int(np.abs(data[:, 0]).argmax()) - position) <= 2

    from demucs.io.readers import PyAVSource

    decoded = np.concatenate(list(PyAVSource(path).blocks()), axis=1)
    assert decoded.shape == (channels, length)
    assert abs(int(np.abs(decoded[0]).argmax()) - position) <= 2


def test_mp3_rejects_bad_rate_and_channels(tmp_path):
    with pytest.raises(ValueError, match="sample rate"):
        save_audio(tones(), tmp_path / "x.mp3", 12345)
    with pytest.raises(ValueError, match="channels"):
        save_audio(tones(channels=3), tmp_path / "x.mp3", 8000)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- PyAV containers


@pytest.mark.parametrize(
    "ext,codec,video",
    [
        ("m4a", "aac", None),
        ("mp4", "aac", "mpeg4"),
        ("mov", "aac", "mpeg4"),
        ("mkv", "libopus", "mpeg4"),
        ("webm", "libopus", "libvpx"),
    ],
)
def test_pyav_containers(tmp_path, ext, codec, video):
    samplerate = 48000 if "opus" in codec else 44100
    wav = tones(samplerate, 0.5)
    path = tmp_path / f"clip.{ext}"
    encode_pyav(path, wav, samplerate, codec, video)
    back, sr = read_audio(path)
    assert sr == samplerate and back.shape[0] == 2
    assert back.shape[1] == wav.shape[1]  # priming and end padding removed
    assert_close_middle(back, wav, 0.1)
    # Wrong extension still works: soundfile fails, FFmpeg takes over.
    renamed = tmp_path / "clip.wav"
    path.rename(renamed)
    assert read_audio(renamed)[0].shape == back.shape


def test_audiofile_reader(tmp_path):
    path = tmp_path / "x.wav"
    save_audio(tones(channels=1), path, 8000, clip="none")
    reader = AudioFile(path)
    assert reader.samplerate() == 8000 and reader.channels() == 1
    wav = reader.read(samplerate=16000, channels=2)
    assert wav.shape == (1, 2, 16000)  # (streams, channels, samples), as upstream


# ---------------------------------------------------------------- bad inputs


def _bad_files(tmp_path: Path) -> dict:
    good = tmp_path / "good.wav"
    save_audio(tones(), good, 8000)
    raw = good.read_bytes()
    (tmp_path / "text.mp3").write_text("this is not audio\n" * 40)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "header.wav").write_bytes(raw[:30])
    (tmp_path / "noise.flac").write_bytes(os.urandom(4000))
    sf.write(str(tmp_path / "zero.wav"), np.zeros((0, 2)), 8000)
    (tmp_path / "folder.wav").mkdir()
    return {
        "missing.wav": "does not exist",
        "folder.wav": "directory",
        "empty.wav": "empty",
        "text.mp3": "cannot decode",
        "header.wav": "cannot decode",
        "noise.flac": "cannot decode",
        "zero.wav": "no audio samples",
    }


def test_bad_inputs_raise_one_line_errors(tmp_path, capfd):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(LoadAudioError) as info:
            read_audio(tmp_path / name)
        message = str(info.value)
        assert name in message and reason in message and "\n" not in message
    captured = capfd.readouterr()
    assert captured.err == "", captured.err  # native decoders stay quiet


def test_truncated_data_is_decoded_as_far_as_it_goes(tmp_path):
    path = tmp_path / "x.wav"
    save_audio(tones(), path, 8000)
    path.write_bytes(path.read_bytes()[: 44 + 4 * 1000])
    from demucs.audio import AudioWarning

    with pytest.warns(AudioWarning, match="truncated"):
        wav, _ = read_audio(path)
    assert wav.shape == (2, 1000)


# ---------------------------------------------------------------- conversion


def test_convert_channels():
    stereo = tones()
    mono = convert_audio_channels(stereo, 1)
    torch.testing.assert_close(mono, stereo.mean(0, keepdim=True))
    up = convert_audio_channels(mono, 2)
    assert up.shape == (2, 8000) and torch.equal(up[0], up[1])
    quad = tones(channels=4)
    torch.testing.assert_close(convert_audio_channels(quad, 2), quad[:2])
    batch = torch.randn(3, 1, 10)
    assert convert_audio_channels(batch, 2).shape == (3, 2, 10)
    with pytest.raises(ValueError):
        convert_audio_channels(stereo, 3)


def test_convert_audio_resamples():
    wav = tones(8000, channels=1)
    out = convert_audio(wav, 8000, 16000, 2)
    assert out.shape == (2, 16000)
    t = torch.arange(16000) / 16000
    assert_close_middle(out[:1], 0.4 * torch.sin(2 * math.pi * 220 * t)[None], 0.01)
    assert convert_audio(wav, 8000, 8000, 1) is wav


def test_pcm_helpers():
    wav = torch.tensor([[-2.0, -1.0, 0.0, 0.5, 1.0, 2.0]])
    pcm = i16_pcm(wav)
    assert pcm.dtype == torch.int16
    assert pcm.tolist() == [[-32767, -32767, 0, 16383, 32767, 32767]]
    assert wav[0, 0] == -2.0  # input untouched
    assert f32_pcm(pcm).dtype == torch.float32
    assert f32_pcm(pcm)[0, -1] == 1.0


def test_clip_modes(tmp_path):
    wav = torch.tensor([[0.5, -2.0, 1.5]])
    torch.testing.assert_close(prevent_clip(wav, "rescale"), wav / 2.02)
    torch.testing.assert_close(
        prevent_clip(torch.tensor([[0.5]]), "rescale"), torch.tensor([[0.5]])
    )
    torch.testing.assert_close(prevent_clip(wav, "clamp"), torch.tensor([[0.5, -0.99, 0.99]]))
    torch.testing.assert_close(prevent_clip(wav, "tanh"), torch.tanh(wav))
    assert prevent_clip(wav, "none") is wav and prevent_clip(wav, None) is wav
    with pytest.raises(ValueError):
        prevent_clip(wav, "fold")
    path = tmp_path / "x.wav"
    save_audio(wav, path, 8000, clip="clamp", as_float=True)
    torch.testing.assert_close(read_audio(path)[0], torch.tensor([[0.5, -0.99, 0.99]]))
    save_audio(wav, path, 8000, clip="none")  # out of range -> saturates, never wraps
    back = read_audio(path)[0]
    assert back[0, 1] < -0.999 and back[0, 2] > 0.999


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_cleans_up_on_interrupt(tmp_path):
    target = tmp_path / "out.wav"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_save_audio_interrupted_keeps_old_file(tmp_path, monkeypatch):
    from demucs.io import writers

    target = tmp_path / "out.wav"
    save_audio(tones(), target, 8000)
    before = target.read_bytes()
    original = writers.SoundfileWriter.write

    def boom(self, block):
        original(self, block)  # half a file in the temporary
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.SoundfileWriter, "write", boom)
    with pytest.raises(KeyboardInterrupt):
        save_audio(tones() * 0.5, target, 8000)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]
    assert target.read_bytes() == before


def test_save_to_unwritable_folder(tmp_path):
    with pytest.raises(OSError):
        save_audio(tones(), tmp_path / "missing" / "x.wav", 8000)
