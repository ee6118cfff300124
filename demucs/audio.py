"""Upstream Demucs's audio functions, on torch tensors, over :mod:`demucs.io`.

Every function here is a thin wrapper: reading goes through the block readers of
:mod:`demucs.io.readers`, writing through the writers of :mod:`demucs.io.writers` (the
same ones the streaming command line uses), clipping uses the constants of
:mod:`demucs.io.writers`. torch and julius are imported only when a tensor is made or
resampled.
"""

from __future__ import annotations

import os
import tempfile
import typing as tp
from pathlib import Path

import numpy as np

from .io.audiofile import MediaFile
from .lazy import lazy_exports
from .io.errors import AudioWarning, LoadAudioError
from .io.mp3 import MP3_SAMPLERATES, Mp3Writer
from .io.readers import check_input, read_array
from .io.resample import convert_channels, uses_polyphase
from .io.resample import resample as resample_array
from .io.tempfiles import TempFileWriter, atomic_write
from .io.writers import (
    CLAMP_LIMIT,
    SAVE_FORMATS,
    ClipMode,
    check_clip_mode,
    rescale_divisor,
    write_array,
)

if tp.TYPE_CHECKING:  # pragma: no cover
    import torch

PathLike = tp.Union[str, os.PathLike]
#: Largest 16-bit PCM value: float full scale maps to it (as upstream).
I16_SCALE = 2**15 - 1

__all__ = [
    "AudioFile",
    "LoadAudioError",
    "AudioWarning",
    "read_audio",
    "convert_audio",
    "convert_audio_channels",
    "i16_pcm",
    "f32_pcm",
    "as_dtype_pcm",
    "prevent_clip",
    "encode_mp3",
    "encode_wav",
    "encode_ffmpeg",
    "save_audio",
    "atomic_write",
    "SAVE_FORMATS",
    "Mp3Writer",
    "TempFileWriter",
    "MP3_SAMPLERATES",
    "check_input",
    "ClipMode",
]


def _numpy(wav: "torch.Tensor") -> np.ndarray:
    return wav.detach().cpu().numpy()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def read_audio(path: PathLike) -> tp.Tuple["torch.Tensor", int]:
    """Reads a whole audio file (or a video's first audio track).

    Returns ``(wav, samplerate)`` with ``wav`` a float32 tensor of shape ``[channels, time]``.
    Raises :class:`LoadAudioError` (one-line message naming the file) when the file is
    missing, not a regular file, empty, cannot be decoded or holds no samples.
    """
    from torch import from_numpy

    data, samplerate = read_array(path)
    return from_numpy(np.ascontiguousarray(data)), samplerate


class AudioFile(MediaFile):
    """Upstream's reader: ``AudioFile(path).read(seek_time=None, duration=None,
    streams=slice(None), samplerate=None, channels=None)`` returns a float32 tensor,
    ``(streams, channels, samples)`` for a slice or list of streams, ``(channels,
    samples)`` for one stream index. Also ``samplerate(stream=0)``, ``channels(stream=0)``,
    ``info``, ``duration`` and ``len()``. Decoded with PyAV (see
    :mod:`demucs.io.audiofile`)."""

    def read(
        self,
        seek_time: tp.Optional[float] = None,
        duration: tp.Optional[float] = None,
        streams: tp.Union[int, slice, tp.Sequence[int]] = slice(None),
        samplerate: tp.Optional[int] = None,
        channels: tp.Optional[int] = None,
    ) -> "torch.Tensor":
        from torch import from_numpy

        return from_numpy(
            np.ascontiguousarray(
                self.read_array(seek_time, duration, streams, samplerate, channels)
            )
        )


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------


def convert_audio_channels(wav: "torch.Tensor", channels: int = 2) -> "torch.Tensor":
    """Converts ``[..., C, T]`` audio to ``channels`` channels (rules of
    :func:`demucs.io.resample.convert_channels`: mean to mono, mono replicated, extra
    channels dropped, anything else ``ValueError``)."""
    source = wav.shape[-2]
    if source == channels:
        return wav
    convert_channels(np.empty((source, 0), np.float32), channels)  # the rules, or raises
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if source == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1])
    return wav[..., :channels, :]


def convert_audio(
    wav: "torch.Tensor", from_samplerate: int, to_samplerate: int, channels: int
) -> "torch.Tensor":
    """Channel conversion (see :func:`convert_audio_channels`) then resampling: julius
    (as upstream, on the tensor's device) for the usual rate pairs, and the bounded
    resampler of :mod:`demucs.io.resample` for rates julius cannot handle in bounded
    time and memory (e.g. 44,101 Hz)."""
    wav = convert_audio_channels(wav, channels)
    if from_samplerate == to_samplerate:
        return wav
    if uses_polyphase(int(from_samplerate), int(to_samplerate)):
        import julius

        return julius.resample_frac(wav, int(from_samplerate), int(to_samplerate))
    import torch

    flat = _numpy(wav.reshape(-1, wav.shape[-1]).float())
    out = resample_array(flat, int(from_samplerate), int(to_samplerate))
    return torch.from_numpy(out).reshape(*wav.shape[:-1], -1).to(wav.device, wav.dtype)


def i16_pcm(wav: "torch.Tensor") -> "torch.Tensor":
    """Float audio to int16 PCM (clamped to [-1, 1], scaled by 32767). Ints pass through."""
    if not wav.dtype.is_floating_point:
        return wav
    return (wav.clamp(-1, 1) * I16_SCALE).short()


def f32_pcm(wav: "torch.Tensor") -> "torch.Tensor":
    """int16 PCM back to float (divided by 32767). Floats pass through."""
    if wav.dtype.is_floating_point:
        return wav
    return wav.float() / I16_SCALE


def as_dtype_pcm(wav: "torch.Tensor", dtype: "torch.dtype") -> "torch.Tensor":
    """Converts ``wav`` to float32 PCM if ``dtype`` is floating point, else to int16."""
    return f32_pcm(wav) if dtype.is_floating_point else i16_pcm(wav)


def prevent_clip(wav: "torch.Tensor", mode: tp.Optional[str] = "rescale") -> "torch.Tensor":
    """Keeps float audio inside [-1, 1] (modes of :mod:`demucs.io.writers`).

    ``rescale``: divide the whole signal by ``max(1.01 * peak, 1)``; ``clamp``: hard clip to
    [-0.99, 0.99]; ``tanh``: soft clip; ``none`` / None: unchanged.
    """
    mode = check_clip_mode(mode)
    if mode == "none":
        return wav
    if not wav.dtype.is_floating_point:
        raise ValueError("prevent_clip needs float audio (integer PCM is already clipped)")
    if mode == "rescale":
        return wav / rescale_divisor(wav.abs().max().item())
    if mode == "clamp":
        return wav.clamp(-CLAMP_LIMIT, CLAMP_LIMIT)
    return wav.tanh()


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _write_to(
    path: tp.Union[PathLike, tp.BinaryIO], suffix: str, write: tp.Callable[[Path], None]
) -> None:
    """Runs ``write`` on ``path``, or on a temporary file copied into a file object."""
    if hasattr(path, "write"):
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / f"out{suffix}"
            write(target)
            path.write(target.read_bytes())  # type: ignore[union-attr]
    else:
        write(Path(path))  # type: ignore[arg-type]


def encode_mp3(
    wav: "torch.Tensor",
    path: tp.Union[PathLike, tp.BinaryIO],
    samplerate: int = 44100,
    bitrate: int = 320,
    quality: int = 2,
    verbose: bool = False,
) -> None:
    """Encodes ``[channels, time]`` audio (1 or 2 channels) as a CBR mp3 with ``lameenc``.

    ``quality`` is LAME's preset (2 = best, 7 = fastest). A LAME Info tag compensates the
    encoder delay, so decoded stems stay sample-aligned with the input.
    """
    array = _numpy(f32_pcm(wav if wav.dim() == 2 else wav[None]))
    _write_to(
        path,
        ".mp3",
        lambda target: write_array(
            array, target, samplerate, bitrate=bitrate, preset=quality, clip="none"
        ),
    )


def encode_wav(
    wav: "torch.Tensor",
    path: PathLike,
    samplerate: int,
    bits_per_sample: int = 16,
    as_float: bool = False,
) -> None:
    """Saves ``[channels, time]`` audio as wav: 16/24-bit PCM, or float32 with
    ``as_float`` (as upstream 4.1.0, float samples are clamped to [-1, 1])."""
    data = _numpy(f32_pcm(wav)).clip(-1, 1)
    write_array(
        data,
        path,
        samplerate,
        clip="none",
        bits_per_sample=bits_per_sample,
        as_float=as_float,
        format="wav",
    )


def encode_ffmpeg(
    wav: "torch.Tensor", path: PathLike, samplerate: int, bits_per_sample: int = 16
) -> None:
    """Saves ``[channels, time]`` audio in the format of ``path``'s extension, with FFmpeg
    (PyAV's, no external program): flac, wav and mp3 go through :func:`save_audio`'s
    writers; other extensions (ogg, opus, m4a...) through FFmpeg's default encoder for the
    container."""
    path = Path(path)
    if path.suffix.lower() in tuple(f".{ext}" for ext in SAVE_FORMATS):
        write_array(
            _numpy(f32_pcm(wav)), path, samplerate, clip="none", bits_per_sample=bits_per_sample
        )
        return
    from .io.ffmpeg import write_with_ffmpeg

    write_with_ffmpeg(_numpy(f32_pcm(wav)), path, samplerate)


def save_audio(
    wav: "torch.Tensor",
    path: PathLike,
    samplerate: int,
    bitrate: int = 320,
    clip: ClipMode = "rescale",
    bits_per_sample: tp.Literal[16, 24, 32] = 16,
    as_float: bool = False,
    preset: tp.Literal[2, 3, 4, 5, 6, 7] = 2,
) -> None:
    """Saves ``[channels, time]`` audio to ``path``; the format comes from the extension.

    ``.wav``: 16 or 24-bit PCM, or float32 with ``as_float`` (or ``bits_per_sample=32``);
    ``.flac``: 16 or 24-bit; ``.mp3``: CBR ``bitrate`` kbps with LAME ``preset`` (2 = best
    quality, 7 = fastest). ``clip`` chooses how to avoid clipping first (see
    :func:`prevent_clip`). NaN/Inf samples are replaced by 0/±1 with a warning. The file
    appears only when complete. Raises ``ValueError`` for an unknown extension or
    unsupported options, ``OSError`` naming ``path`` when the file cannot be written.
    Same writers as the streaming command line (:func:`demucs.io.writers.open_stem_writer`).
    """
    write_array(
        _numpy(f32_pcm(wav)),
        path,
        samplerate,
        bitrate=bitrate,
        clip=clip,
        bits_per_sample=bits_per_sample,
        as_float=as_float,
        preset=preset,
    )


#: Upstream's name, from :mod:`demucs.utils` (which needs torch: loaded on first use).
__getattr__, __dir__ = lazy_exports(__name__, globals(), {"temp_filenames": "utils"})
