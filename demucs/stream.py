"""Block readers and writers for streaming separation (decode, convert, resample, write
stems incrementally); the separation itself is :mod:`demucs.core`."""
from __future__ import annotations

import dataclasses
import math
import os
import typing as tp
from pathlib import Path

import numpy as np

from .audio import (_FFMPEG_FIRST, LoadAudioError, Mp3Writer, _declared_length, _one_line,
                    check_input,
                    _pcm_subtype, _quiet_native_stderr, _temporary_path,
                    TempFileWriter)
from .core.stats import TrackStats

__all__ = [
    "BlockSource", "ArraySource", "SoundfileSource", "PyAVSource", "ConvertedSource",
    "BlockResampler", "TrackStats", "Track", "open_track", "open_stem_writer", "StemWriter",
    "DEFAULT_BLOCK",
]

#: Samples per decoded block.
DEFAULT_BLOCK = 1 << 16

Array = np.ndarray
SegmentRunner = tp.Callable[[Array], Array]


# ======================================================================================
# Sources: re-iterable producers of (channels, n) float32 blocks
# ======================================================================================

class BlockSource(tp.Protocol):
    """Audio as blocks. Each call of :meth:`blocks` starts again from the beginning."""

    samplerate: int
    channels: int

    def blocks(self) -> tp.Iterator[Array]:
        """Yields ``(channels, n)`` float32 blocks (``n > 0``) in order."""
        ...  # pragma: no cover


class ArraySource:
    """An in-memory ``(channels, T)`` array (or tensor) served in blocks."""

    def __init__(self, wav: tp.Any, samplerate: int, block: int = DEFAULT_BLOCK) -> None:
        array = wav.detach().cpu().numpy() if hasattr(wav, "detach") else np.asarray(wav)
        if array.ndim != 2:
            raise ValueError(f"expected audio of shape (channels, time), got {array.shape}")
        self.wav = np.ascontiguousarray(array, dtype=np.float32)
        self.samplerate = int(samplerate)
        self.channels = int(self.wav.shape[0])
        self.block = block

    def blocks(self) -> tp.Iterator[Array]:
        for start in range(0, self.wav.shape[1], self.block):
            yield self.wav[:, start:start + self.block]


def _finite(block: Array) -> Array:
    """Replaces NaN/inf like :func:`demucs.audio.read_audio` does."""
    if np.isfinite(block).all():
        return block
    return np.nan_to_num(block, nan=0.0, posinf=1.0, neginf=-1.0)


class SoundfileSource:
    """A file read block by block with libsndfile (wav, flac, ogg, mp3...)."""

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        import soundfile as sf

        self.path = path
        self.block = block
        with _quiet_native_stderr():
            info = sf.info(str(path))
        self.samplerate = int(info.samplerate)
        self.channels = int(info.channels)

    def blocks(self) -> tp.Iterator[Array]:
        import soundfile as sf

        with _quiet_native_stderr():
            handle = sf.SoundFile(str(self.path))
        with handle:
            while True:
                with _quiet_native_stderr():
                    data = handle.read(self.block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    return
                yield _finite(np.ascontiguousarray(data.T))


class PyAVSource:
    """A file decoded frame by frame with PyAV (FFmpeg): m4a/aac, video soundtracks...

    Samples past the length the container declares (codec end padding) are dropped, as
    :func:`demucs.audio.read_audio` does.
    """

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        import av

        self.path = path
        self.block = block
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            self.samplerate = int(stream.codec_context.sample_rate or stream.rate or 0)
            self.channels = int(stream.codec_context.channels or 0)
            self.declared = _declared_length(stream, self.samplerate)

    def _frames(self) -> tp.Iterator[Array]:
        import av

        with av.open(str(self.path), metadata_errors="ignore") as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray()
            for out in resampler.resample(None):
                yield out.to_ndarray()

    def blocks(self) -> tp.Iterator[Array]:
        remaining = self.declared if self.declared else None
        pending: tp.List[Array] = []
        size = 0
        for frame in self._frames():
            if remaining is not None:
                frame = frame[:, :remaining]
                remaining -= frame.shape[1]
            if frame.shape[1]:
                pending.append(frame.astype(np.float32, copy=False))
                size += frame.shape[1]
            if size >= self.block:
                yield _finite(np.concatenate(pending, axis=1))
                pending, size = [], 0
        if size:
            yield _finite(np.concatenate(pending, axis=1))


def convert_channels(block: Array, channels: int) -> Array:
    """Numpy twin of :func:`demucs.audio.convert_audio_channels` for ``(C, n)`` blocks."""
    source = block.shape[0]
    if source == channels:
        return block
    if channels == 1:
        return block.mean(axis=0, keepdims=True, dtype=np.float32)
    if source == 1:
        return np.repeat(block, channels, axis=0)
    if source > channels:
        return block[:channels]
    raise ValueError(f"cannot convert {source}-channel audio to {channels} channels "
                     "(only mono can be upmixed)")


def sinc_resample_kernels(old_sr: int, new_sr: int, zeros: int = 24,
                          rolloff: float = 0.945) -> tp.Tuple[int, int, int, Array]:
    """Polyphase windowed-sinc filters of ``julius.resample_frac`` (same defaults), in numpy.

    With the rates divided by their gcd (``old``, ``new``), output sample ``f * new + i``
    is the dot product of filter ``i`` with input samples ``[f * old - width,
    f * old + width + old)``. Each filter is a sinc cut off at ``rolloff`` times the
    lower Nyquist frequency, truncated after ``zeros`` zero crossings, shaped by a
    squared-cosine window and normalised to unit sum (a constant signal is preserved).
    Computed in float32 like julius: the filters agree with its to ~4e-7.

    Returns:
        ``(old, new, width, kernels)`` with ``kernels`` float32 ``(new, 2 * width + old)``.
    """
    gcd = math.gcd(int(old_sr), int(new_sr))
    old, new = int(old_sr) // gcd, int(new_sr) // gcd
    cutoff = min(old, new) * rolloff
    width = math.ceil(zeros * old / cutoff)
    taps = np.arange(-width, width + old, dtype=np.float32) / np.float32(old)
    kernels = np.empty((new, taps.size), np.float32)
    for phase in range(new):
        t = (np.float32(-phase / new) + taps) * np.float32(cutoff)
        t = np.clip(t, -zeros, zeros) * np.float32(math.pi)
        window = np.cos(t / np.float32(zeros) / np.float32(2)) ** 2
        safe = np.where(t == 0, np.float32(1), t)
        sinc = np.where(t == 0, np.float32(1), np.sin(safe) / safe)
        kernel = (sinc * window).astype(np.float32)
        kernels[phase] = kernel / kernel.sum(dtype=np.float32)
    return old, new, width, kernels


class BlockResampler:
    """``julius.resample_frac`` applied block by block with numpy (no PyTorch), equal
    to the whole-signal result (> 130 dB SNR).

    julius pads the signal by replicating its first and last samples and runs a strided
    convolution (:func:`sinc_resample_kernels`): output frame ``f`` (``new`` samples)
    reads input samples ``[f * old - width, f * old + width + old)``. Frames are
    computed as soon as their input is there; the right edge is replicated at
    :meth:`finish`.
    """

    def __init__(self, old_sr: int, new_sr: int, channels: int) -> None:
        self.old, self.new, self.width, self._kernels = sinc_resample_kernels(old_sr, new_sr)
        self.channels = channels
        self.identity = self.old == self.new
        self._kernel_size = self._kernels.shape[1]
        self._buffer: tp.Optional[Array] = None  # padded input not yet consumed
        self._consumed = 0  # input samples seen
        self._produced = 0  # output samples returned

    def _frames(self, padded: Array) -> Array:
        """Output samples ``(C, frames * new)`` of all complete frames in ``padded``."""
        count = (padded.shape[1] - self._kernel_size) // self.old + 1
        if count <= 0:
            self._buffer = padded
            return np.zeros((self.channels, 0), np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(
            padded, self._kernel_size, axis=1)[:, ::self.old][:, :count]
        # A contiguous copy lets the product run as one GEMM: (C, count, K) @ (K, new).
        frames = np.ascontiguousarray(windows, dtype=np.float32) @ self._kernels.T
        self._buffer = padded[:, count * self.old:]
        return frames.reshape(self.channels, -1)

    def push(self, block: Array) -> Array:
        """Feeds ``(C, n)`` samples; returns the output samples that are now final."""
        if self.identity:
            return block
        self._consumed += block.shape[1]
        if self._buffer is None:
            head = np.repeat(block[:, :1], self.width, axis=1)
            padded = np.concatenate([head, block], axis=1)
        else:
            padded = np.concatenate([self._buffer, block], axis=1)
        out = self._frames(padded)
        self._produced += out.shape[1]
        return out

    def finish(self) -> Array:
        """Replicates the last sample and returns the remaining output samples."""
        if self.identity or self._buffer is None:
            return np.zeros((self.channels, 0), np.float32)
        tail = np.repeat(self._buffer[:, -1:], self.width + self.old, axis=1)
        out = self._frames(np.concatenate([self._buffer, tail], axis=1))
        total = int(math.floor(self.new * self._consumed / self.old))
        keep = max(0, total - self._produced)
        return out[:, :keep]


class ConvertedSource:
    """``source`` converted to ``channels`` channels then resampled to ``samplerate``,
    blockwise (same result as :func:`demucs.audio.convert_audio` on the whole track)."""

    def __init__(self, source: BlockSource, samplerate: int, channels: int) -> None:
        self.source = source
        self.samplerate = int(samplerate)
        self.channels = int(channels)

    def blocks(self) -> tp.Iterator[Array]:
        resampler = None
        if self.source.samplerate != self.samplerate:
            resampler = BlockResampler(self.source.samplerate, self.samplerate, self.channels)
        for block in self.source.blocks():
            block = convert_channels(block, self.channels)
            if resampler is not None:
                block = resampler.push(block)
            if block.shape[1]:
                yield np.ascontiguousarray(block, dtype=np.float32)
        if resampler is not None:
            tail = resampler.finish()
            if tail.shape[1]:
                yield np.ascontiguousarray(tail, dtype=np.float32)


# ======================================================================================
# First pass: validation and statistics
# ======================================================================================

@dataclasses.dataclass
class Track:
    """A validated, converted track ready for :func:`stream_separate`."""

    path: Path
    source: BlockSource  # converted to the model's rate and channels
    stats: TrackStats

    @property
    def length(self) -> int:
        return self.stats.length


def open_track(path: tp.Union[str, os.PathLike], samplerate: int, channels: int,
               block: int = DEFAULT_BLOCK) -> Track:
    """Decodes ``path`` once (block by block) to validate it and compute its statistics.

    Decoders are tried in the order of :func:`demucs.audio.read_audio` (libsndfile first,
    FFmpeg first for video/aac containers); a decoder failing anywhere in the file hands
    over to the next one. Raises :class:`LoadAudioError` with the same messages.
    """
    path = Path(path)
    check_input(path)
    readers: tp.List[tp.Tuple[str, tp.Callable[[Path, int], BlockSource]]] = [
        ("soundfile", SoundfileSource), ("ffmpeg", PyAVSource)]
    if path.suffix.lower() in _FFMPEG_FIRST:
        readers.reverse()
    errors: tp.List[str] = []
    for name, reader in readers:
        try:
            raw = reader(path, block)
            if raw.samplerate <= 0:
                raise LoadAudioError(path, "has an invalid sample rate")
            converted = ConvertedSource(raw, samplerate, channels)
            stats = TrackStats.of_blocks(converted.blocks())
        except LoadAudioError:
            raise
        except PermissionError:
            raise LoadAudioError(path, "permission denied") from None
        except ValueError as err:
            if "cannot convert" in str(err):
                raise LoadAudioError(path, str(err)) from None
            errors.append(f"{name}: {_one_line(err)}")
            continue
        except Exception as err:  # noqa: BLE001 - any decoder failure means "try the next"
            errors.append(f"{name}: {_one_line(err)}")
            continue
        if stats.length == 0:
            if errors:
                errors.append(f"{name}: decoded no samples")
                break
            raise LoadAudioError(path, "contains no audio samples")
        return Track(path=path, source=converted, stats=stats)
    raise LoadAudioError(path, "cannot decode: not a supported audio format, or the file "
                         "is corrupt or truncated", errors)


# ======================================================================================
# Incremental stem writers
# ======================================================================================

class StemWriter(tp.Protocol):
    """Writes one stem block by block; the file appears at ``close`` only."""

    path: Path

    def write(self, block: Array) -> None: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover

    def abort(self) -> None: ...  # pragma: no cover


class _SoundfileWriter(TempFileWriter):
    """wav/flac through ``soundfile``, to a hidden temporary file renamed at ``close``."""

    def __init__(self, path: Path, samplerate: int, channels: int, subtype: str) -> None:
        import soundfile as sf

        self.path = path
        self.pcm = subtype != "FLOAT"
        self._tmp = _temporary_path(path)
        try:
            self._file: tp.Any = sf.SoundFile(
                str(self._tmp), "w", samplerate=int(samplerate), channels=channels,
                subtype=subtype, format="FLAC" if path.suffix.lower() == ".flac" else "WAV")
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def write(self, block: Array) -> None:
        if self.pcm:  # libsndfile would wrap around out-of-range samples
            block = np.clip(block, -1, 1)
        self._file.write(np.ascontiguousarray(block.T, dtype=np.float32))


def _clip_block(block: Array, clip: tp.Optional[str]) -> Array:
    """Pointwise clip modes of :func:`demucs.audio.prevent_clip`."""
    if clip is None or clip == "none":
        return block
    if clip == "clamp":
        return np.clip(block, -0.99, 0.99)
    if clip == "tanh":
        return np.tanh(block)
    raise ValueError(f"invalid clip mode {clip!r}: use rescale, clamp, tanh or none")


class _ClippingWriter:
    """Applies a pointwise clip mode before handing blocks to ``inner``."""

    def __init__(self, inner: StemWriter, clip: tp.Optional[str]) -> None:
        self.inner = inner
        self.clip = clip
        self.path = inner.path

    def write(self, block: Array) -> None:
        self.inner.write(_clip_block(block, self.clip))

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


class _RescalingWriter(TempFileWriter):
    """Clip mode ``rescale``: raw float32 to a temporary file while tracking the peak,
    then, at ``close``, a second pass divides by ``max(1.01 * peak, 1)`` into ``final``."""

    def __init__(self, path: Path, channels: int, make_final: tp.Callable[[], StemWriter],
                 block: int = DEFAULT_BLOCK) -> None:
        self.path = path
        self.channels = channels
        self.block = block
        self._make_final = make_final
        self._final: tp.Optional[StemWriter] = None
        self.peak = 0.0
        self._tmp = _temporary_path(path)
        self._file: tp.Optional[tp.BinaryIO] = open(self._tmp, "wb")

    def write(self, block: Array) -> None:
        assert self._file is not None
        block = np.ascontiguousarray(block.T, dtype=np.float32)  # interleaved
        if block.size:
            self.peak = max(self.peak, float(np.abs(block).max()))
        self._file.write(block.tobytes())

    def _publish(self) -> None:
        """Second pass: the raw float32 file, rescaled, into the final writer."""
        scale = np.float32(max(1.01 * self.peak, 1))
        self._final = self._make_final()
        frame_bytes = 4 * self.channels
        with open(self._tmp, "rb") as raw:
            while True:
                data = raw.read(self.block * frame_bytes)
                if not data:
                    break
                self._final.write(np.frombuffer(data, np.float32).reshape(-1, self.channels).T
                                  / scale)
        self._final.close()
        self._tmp.unlink()

    def abort(self) -> None:
        if self._final is not None:
            self._final.abort()
        super().abort()


def open_stem_writer(path: tp.Union[str, os.PathLike], samplerate: int, channels: int, *,
                     bitrate: int = 320, preset: int = 2, clip: str = "rescale",
                     bits_per_sample: int = 16, as_float: bool = False) -> StemWriter:
    """A block-by-block writer with the options (and results) of
    :func:`demucs.audio.save_audio`; the format comes from the extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".wav", ".flac", ".mp3"):
        raise ValueError(f"cannot save {path}: unknown extension {suffix!r} "
                         "(use .wav, .flac or .mp3)")
    subtype = "" if suffix == ".mp3" else _pcm_subtype(suffix, bits_per_sample, as_float)
    _clip_block(np.zeros((1, 1), np.float32), None if clip == "rescale" else clip)

    def make_final() -> StemWriter:
        if suffix == ".mp3":
            return Mp3Writer(path, samplerate, channels, bitrate, preset)
        return _SoundfileWriter(path, samplerate, channels, subtype)

    if clip == "rescale":
        return _RescalingWriter(path, channels, make_final)
    return _ClippingWriter(make_final(), clip)
