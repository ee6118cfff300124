"""Audio input/output for Demucs.

Reading: ``soundfile`` (libsndfile) handles wav, flac, ogg/vorbis, ogg/opus, mp3 and a few
more; anything else (m4a/aac, the audio track of mp4/mkv/webm/mov videos, ...) is decoded
with PyAV, which ships its own FFmpeg. Every reading failure is a :class:`LoadAudioError`
whose message names the file and says what is wrong with it.

Writing: :func:`save_audio` writes wav (16/24-bit PCM or float32), flac (16/24-bit) and mp3
(via ``lameenc``). Files are written atomically (temporary file in the target folder, then
``os.replace``), so an interrupted write never leaves a partial file behind. MP3 files carry
a LAME "Info" tag with the encoder delay and padding, so gapless-aware decoders (libsndfile
/ mpg123, FFmpeg) return exactly the samples that were encoded, aligned with the input.
"""
from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf

if tp.TYPE_CHECKING:  # pragma: no cover
    import torch

# torch and julius are imported where tensors are made or resampled: reading, writing and
# the streaming path (numpy only) work without them, e.g. for `demucs --onnx`.

PathLike = tp.Union[str, os.PathLike]
ClipMode = tp.Literal["rescale", "clamp", "tanh", "none"]

__all__ = [
    "AudioFile", "LoadAudioError", "read_audio", "convert_audio", "convert_audio_channels",
    "i16_pcm", "f32_pcm", "as_dtype_pcm", "prevent_clip", "encode_mp3", "save_audio",
    "atomic_write", "SAVE_FORMATS", "Mp3Writer",
]

# Extensions that libsndfile cannot read: go straight to FFmpeg (PyAV).
_FFMPEG_FIRST = {
    ".m4a", ".aac", ".mp4", ".m4v", ".mov", ".mkv", ".mka", ".webm", ".avi", ".wma", ".ac3",
    ".alac", ".3gp",
}
SAVE_FORMATS = ("wav", "flac", "mp3")


class LoadAudioError(Exception):
    """An audio file could not be read. ``str(err)`` is one line naming the file.

    ``details`` lists what each decoder said, for verbose diagnostics.
    """

    def __init__(self, path: PathLike, reason: str, details: tp.Sequence[str] = ()):
        self.path = Path(path)
        self.reason = reason
        self.details = list(details)
        super().__init__(f"{path}: {reason}")


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]


@contextlib.contextmanager
def _quiet_native_stderr() -> tp.Iterator[None]:
    """Silences C libraries (mpg123 inside libsndfile) that print notes on file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_soundfile(path: Path) -> tp.Tuple[np.ndarray, int]:
    with _quiet_native_stderr():
        data, samplerate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, int(samplerate)


def _read_pyav(path: Path) -> tp.Tuple[np.ndarray, int]:
    import av  # lazy: only needed for formats libsndfile lacks

    chunks: tp.List[np.ndarray] = []
    with av.open(str(path), metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        # Planar float keeps the source layout and rate: (channels, samples) per frame.
        resampler = av.AudioResampler(format="fltp")
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
        samplerate = stream.codec_context.sample_rate or stream.rate
        channels = stream.codec_context.channels
        declared = _declared_length(stream, samplerate)
    if not chunks:
        return np.zeros((channels or 1, 0), dtype=np.float32), int(samplerate or 0)
    data = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if declared and declared < data.shape[1]:
        data = data[:, :declared]  # drop the codec's end padding (e.g. AAC in mp4)
    return data, int(samplerate)


def _declared_length(stream: tp.Any, samplerate: int) -> tp.Optional[int]:
    """Samples announced by the container for ``stream``, if it says (mp4 does)."""
    if not stream.duration or stream.time_base is None or not samplerate:
        return None
    return int(round(float(stream.duration * stream.time_base) * samplerate))


def check_input(path: Path) -> None:
    """Raises :class:`LoadAudioError` if ``path`` is missing, a folder or empty."""
    if not path.exists():
        raise LoadAudioError(path, "file does not exist")
    if path.is_dir():
        raise LoadAudioError(path, "is a directory, not an audio file")
    try:
        if path.stat().st_size == 0:
            raise LoadAudioError(path, "file is empty")
    except OSError as err:
        raise LoadAudioError(path, f"cannot access file ({_one_line(err)})") from None


def read_audio(path: PathLike) -> tp.Tuple[torch.Tensor, int]:
    """Reads a whole audio file (or a video's first audio track).

    Returns ``(wav, samplerate)`` with ``wav`` a float32 tensor of shape ``[channels, time]``
    in [-1, 1]. Raises :class:`LoadAudioError` (one-line message naming the file) when the
    file is missing, is a folder, is empty, cannot be decoded or holds no samples.
    """
    path = Path(path)
    check_input(path)
    readers: tp.List[tp.Tuple[str, tp.Callable[[Path], tp.Tuple[np.ndarray, int]]]] = [
        ("soundfile", _read_soundfile), ("ffmpeg", _read_pyav)]
    if path.suffix.lower() in _FFMPEG_FIRST:
        readers.reverse()
    errors = []
    for name, reader in readers:
        try:
            data, samplerate = reader(path)
        except PermissionError:
            raise LoadAudioError(path, "permission denied") from None
        except Exception as err:  # noqa: BLE001 - any decoder failure means "try the next"
            errors.append(f"{name}: {_one_line(err)}")
            continue
        if data.shape[-1] == 0:
            if errors:  # a fallback decoder "succeeding" with nothing: keep the first error
                errors.append(f"{name}: decoded no samples")
                break
            raise LoadAudioError(path, "contains no audio samples")
        if samplerate <= 0:
            raise LoadAudioError(path, "has an invalid sample rate")
        if not np.isfinite(data).all():
            data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
        from torch import from_numpy

        return from_numpy(np.ascontiguousarray(data)), samplerate
    raise LoadAudioError(path, "cannot decode: not a supported audio format, or the file "
                         "is corrupt or truncated", errors)


class AudioFile:
    """Small reader object: ``AudioFile(path).read(samplerate=44100, channels=2)``."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._cache: tp.Optional[tp.Tuple[torch.Tensor, int]] = None

    def _load(self) -> tp.Tuple[torch.Tensor, int]:
        if self._cache is None:
            self._cache = read_audio(self.path)
        return self._cache

    def samplerate(self) -> int:
        return self._load()[1]

    def channels(self) -> int:
        return self._load()[0].shape[0]

    def __repr__(self) -> str:
        return f"AudioFile(path={self.path})"

    def read(self, samplerate: tp.Optional[int] = None,
             channels: tp.Optional[int] = None) -> torch.Tensor:
        """Returns ``[channels, time]`` float32, resampled / remixed when asked."""
        wav, sr = self._load()
        if channels is not None:
            wav = convert_audio_channels(wav, channels)
        if samplerate is not None and samplerate != sr:
            import julius

            wav = julius.resample_frac(wav, sr, samplerate)
        return wav.clone()


# --------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------

def convert_audio_channels(wav: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """Converts ``[..., C, T]`` audio to ``channels`` channels.

    Downmix to mono is the plain mean; mono is replicated to every channel; extra channels
    are dropped (the first ``channels`` are kept). Any other case raises ``ValueError``.
    """
    source = wav.shape[-2]
    if source == channels:
        return wav
    if channels == 1:
        return wav.mean(dim=-2, keepdim=True)
    if source == 1:
        return wav.expand(*wav.shape[:-2], channels, wav.shape[-1])
    if source > channels:
        return wav[..., :channels, :]
    raise ValueError(f"cannot convert {source}-channel audio to {channels} channels "
                     "(only mono can be upmixed)")


def convert_audio(wav: torch.Tensor, from_samplerate: int, to_samplerate: int,
                  channels: int) -> torch.Tensor:
    """Channel conversion (see :func:`convert_audio_channels`) then julius resampling."""
    wav = convert_audio_channels(wav, channels)
    if from_samplerate == to_samplerate:
        return wav
    import julius

    return julius.resample_frac(wav, int(from_samplerate), int(to_samplerate))


def i16_pcm(wav: torch.Tensor) -> torch.Tensor:
    """Float audio to int16 PCM (clamped to [-1, 1], scaled by 32767). Ints pass through."""
    if not wav.dtype.is_floating_point:
        return wav
    return (wav.clamp(-1, 1) * (2 ** 15 - 1)).short()


def f32_pcm(wav: torch.Tensor) -> torch.Tensor:
    """int16 PCM back to float (divided by 32767). Floats pass through."""
    if wav.dtype.is_floating_point:
        return wav
    return wav.float() / (2 ** 15 - 1)


def as_dtype_pcm(wav: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Converts ``wav`` to float32 PCM if ``dtype`` is floating point, else to int16."""
    return f32_pcm(wav) if dtype.is_floating_point else i16_pcm(wav)


def prevent_clip(wav: torch.Tensor, mode: tp.Optional[str] = "rescale") -> torch.Tensor:
    """Keeps float audio inside [-1, 1].

    ``rescale``: divide the whole signal by ``max(1.01 * peak, 1)``; ``clamp``: hard clip to
    [-0.99, 0.99]; ``tanh``: soft clip; ``none`` / None: unchanged.
    """
    if mode is None or mode == "none":
        return wav
    if not wav.dtype.is_floating_point:
        raise ValueError("prevent_clip needs float audio (integer PCM is already clipped)")
    if mode == "rescale":
        return wav / max(1.01 * wav.abs().max().item(), 1)
    if mode == "clamp":
        return wav.clamp(-0.99, 0.99)
    if mode == "tanh":
        return wav.tanh()
    raise ValueError(f"invalid clip mode {mode!r}: use rescale, clamp, tanh or none")


# --------------------------------------------------------------------------------------
# MP3
# --------------------------------------------------------------------------------------

_MP3_RATES = {  # version bits -> sample rates by index
    3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_BITRATES = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
MP3_SAMPLERATES = tuple(sorted(r for rates in _MP3_RATES.values() for r in rates))
_LAME_ENCODER_DELAY = 576  # samples LAME adds in front; decoders add 529 of their own.
_INFO_TAG_SIZE = 120 + 36  # Xing/Info fields with all flags, then the LAME extension.


class _Frame(tp.NamedTuple):
    header: int
    version: int
    bitrate_index: int
    samplerate: int
    mono: bool
    size: int

    @property
    def samples(self) -> int:
        return 1152 if self.version == 3 else 576

    @property
    def side_info(self) -> int:
        if self.version == 3:
            return 17 if self.mono else 32
        return 9 if self.mono else 17


def _frame_size(version: int, bitrate_index: int, samplerate: int, padding: int) -> int:
    bitrate = _MP3_BITRATES[3 if version == 3 else 2][bitrate_index] * 1000
    factor = 144 if version == 3 else 72
    return factor * bitrate // samplerate + padding


def _parse_frame(data: bytes, offset: int) -> _Frame:
    if offset + 4 > len(data):
        raise ValueError("truncated mp3 frame header")
    header = struct.unpack(">I", data[offset:offset + 4])[0]
    version = (header >> 19) & 3
    if (header >> 21) != 0x7FF or version == 1 or ((header >> 17) & 3) != 1:
        raise ValueError(f"not an MPEG layer III frame at byte {offset}")
    bitrate_index = (header >> 12) & 15
    rate_index = (header >> 10) & 3
    if bitrate_index in (0, 15) or rate_index == 3:
        raise ValueError(f"unsupported mp3 frame at byte {offset}")
    samplerate = _MP3_RATES[version][rate_index]
    size = _frame_size(version, bitrate_index, samplerate, (header >> 9) & 1)
    return _Frame(header, version, bitrate_index, samplerate, ((header >> 6) & 3) == 3, size)


def _crc16_table() -> tp.Tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def _crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16/ARC (polynomial 0x8005, reflected), as used by the LAME tag.

    ``crc`` continues a previous call, so long streams can be checksummed piece by piece.
    """
    table = _CRC16_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


class _Mp3Stats:
    """Running description of a CBR mp3 stream fed piece by piece: frames, bytes, CRC.

    Frame headers may straddle pieces; ``first`` is the first frame once it is known.
    """

    def __init__(self) -> None:
        self.first: tp.Optional[_Frame] = None
        self.frames = 0
        self.size = 0
        self.crc = 0
        self._pending = bytearray()  # bytes from the next frame header on
        self._skip = 0  # bytes of the current frame still to come

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        self.crc = _crc16(data, self.crc)
        view = memoryview(data)
        if self._skip:
            taken = min(self._skip, len(view))
            self._skip -= taken
            view = view[taken:]
        self._pending += view
        while len(self._pending) >= 4:
            frame = _parse_frame(bytes(self._pending[:4]), 0)
            if self.first is None:
                self.first = frame
            self.frames += 1
            if frame.size <= len(self._pending):
                del self._pending[:frame.size]
            else:
                self._skip = frame.size - len(self._pending)
                self._pending.clear()


def _info_frame_size(first: _Frame) -> int:
    """Size of the Info tag frame for a stream whose first frame is ``first``."""
    return _frame_size(first.version, _info_bitrate_index(first), first.samplerate, 0)


def _info_bitrate_index(first: _Frame) -> int:
    index = first.bitrate_index
    tag_start = 4 + first.side_info
    while _frame_size(first.version, index, first.samplerate, 0) < tag_start + _INFO_TAG_SIZE:
        index += 1
    return index


def _lame_info_frame_for(stats: _Mp3Stats, num_samples: int, bitrate: int) -> bytes:
    """Builds a LAME "Info" frame describing the CBR stream summarised by ``stats``.

    It records the frame count, byte count, a linear seek table and, in the LAME extension,
    the encoder delay and end padding, which gapless decoders use to trim the output to
    exactly ``num_samples`` samples starting at the first input sample.
    """
    first = stats.first
    if first is None:
        raise ValueError("encoder produced no mp3 frames")
    padding = stats.frames * first.samples - _LAME_ENCODER_DELAY - num_samples
    if not 0 <= padding < 4096:
        raise ValueError(f"unexpected mp3 end padding {padding}")

    # Tag frame: same stream parameters, no padding bit, CRC off, bitrate large enough.
    index = _info_bitrate_index(first)
    size = _frame_size(first.version, index, first.samplerate, 0)
    header = (first.header & ~(0xF << 12) & ~(1 << 9)) | (index << 12) | (1 << 16)

    total_bytes = size + stats.size
    toc = bytes(min(255, i * 256 // 100) for i in range(100))
    info = b"Info" + struct.pack(">III", 0xF, stats.frames, total_bytes) + toc
    info += struct.pack(">I", 0)  # quality indicator
    lame = b"LAME3.100"
    lame += bytes([0x01, 0])  # tag revision 0 / CBR; lowpass unknown
    lame += struct.pack(">fHH", 0.0, 0, 0)  # peak, radio and audiophile replay gain
    lame += bytes([0, min(bitrate, 255)])  # encoding flags / ATH; bitrate
    lame += ((_LAME_ENCODER_DELAY << 12) | padding).to_bytes(3, "big")
    lame += bytes([0, 0]) + struct.pack(">H", 0)  # misc, mp3 gain, preset/surround
    lame += struct.pack(">IH", total_bytes, stats.crc)
    body = struct.pack(">I", header) + bytes(first.side_info) + info + lame
    body += struct.pack(">H", _crc16(body))
    return body + bytes(size - len(body))


def _lame_info_frame(audio: bytes, num_samples: int, bitrate: int) -> bytes:
    """The Info frame for the complete CBR stream ``audio`` (see :func:`_lame_info_frame_for`)."""
    stats = _Mp3Stats()
    stats.feed(audio)
    return _lame_info_frame_for(stats, num_samples, bitrate)


def _float_to_i16(pcm: np.ndarray) -> np.ndarray:
    """Float ``[..]`` audio to int16 the way :func:`encode_mp3` does: clamp, scale, round."""
    return np.rint(np.clip(pcm, -1, 1) * (2 ** 15 - 1)).astype(np.int16)


class TempFileWriter:
    """Base of the incremental writers: output goes to a hidden temporary file beside
    ``path`` (:func:`_temporary_path`); :meth:`close` finishes it (:meth:`_finish`) and
    renames it onto ``path``; :meth:`abort`, or any exception while closing, removes it
    and leaves ``path`` untouched. Subclasses open ``self._file`` on ``self._tmp``."""

    path: Path
    _tmp: Path
    _file: tp.Any = None

    def _finish(self) -> None:
        """Completes and closes ``self._file`` (default: just closes it)."""
        self._file.close()

    def _publish(self) -> None:
        """Puts the finished temporary file in place (default: rename onto ``path``)."""
        os.replace(self._tmp, self.path)

    def close(self) -> None:
        """Finishes the file and puts it in place; idempotent."""
        if self._file is None:
            return
        try:
            self._finish()
            self._file = None
            self._publish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drops the partial output (temporary file removed, ``path`` untouched)."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._tmp.unlink()


class Mp3Writer(TempFileWriter):
    """Incremental CBR mp3 encoder (``lameenc``) writing to ``path`` atomically.

    ``write`` takes ``[channels, n]`` float (or int16) blocks; ``close`` flushes the encoder,
    writes the LAME Info tag in front (space for it is reserved as soon as the first frame
    is known) and renames the temporary file onto ``path``. ``abort`` (or any exception in
    ``close``) removes the temporary file. Memory use does not depend on the length.
    """

    def __init__(self, path: PathLike, samplerate: int, channels: int, bitrate: int = 320,
                 quality: int = 2, verbose: bool = False) -> None:
        import lameenc

        if channels not in (1, 2):
            raise ValueError(f"mp3 supports 1 or 2 channels, got {channels}")
        if samplerate not in MP3_SAMPLERATES:
            raise ValueError(f"mp3 does not support a sample rate of {samplerate} Hz "
                             f"(supported: {', '.join(map(str, MP3_SAMPLERATES))})")
        self.path = Path(path)
        self.channels = channels
        self.bitrate = int(bitrate)
        self.samples = 0
        self._stats = _Mp3Stats()
        self._head = bytearray()  # encoder output held back until the first frame is known
        self._encoder = lameenc.Encoder()
        self._encoder.set_bit_rate(self.bitrate)
        self._encoder.set_in_sample_rate(int(samplerate))
        self._encoder.set_out_sample_rate(int(samplerate))
        self._encoder.set_channels(channels)
        self._encoder.set_quality(int(quality))
        if not verbose:
            self._encoder.silence()
        self._tmp = _temporary_path(self.path)
        self._file: tp.Optional[tp.BinaryIO] = open(self._tmp, "wb")

    def write(self, block: tp.Union[np.ndarray, torch.Tensor]) -> None:
        """Encodes ``[channels, n]`` audio (float in [-1, 1], or int16)."""
        if not isinstance(block, np.ndarray):  # a torch.Tensor
            block = block.detach().cpu().numpy()
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a [{self.channels}, n] block, got {block.shape}")
        pcm = block if block.dtype == np.int16 else _float_to_i16(block)
        self.samples += pcm.shape[1]
        self._emit(bytes(self._encoder.encode(np.ascontiguousarray(pcm.T).astype("<i2").tobytes())))

    def _emit(self, data: bytes) -> None:
        assert self._file is not None
        if not data:
            return
        self._stats.feed(data)
        if self._head is not None:
            self._head += data
            if self._stats.first is None:
                return
            self._file.write(bytes(_info_frame_size(self._stats.first)))  # reserved
            data, self._head = bytes(self._head), None  # type: ignore[assignment]
        self._file.write(data)

    def _finish(self) -> None:
        """Flushes the encoder and writes the LAME Info tag into the reserved space."""
        self._emit(bytes(self._encoder.flush()))
        tag = _lame_info_frame_for(self._stats, self.samples, self.bitrate)
        self._file.seek(0)
        self._file.write(tag)
        self._file.close()


def encode_mp3(wav: torch.Tensor, path: tp.Union[PathLike, tp.BinaryIO], samplerate: int = 44100,
               bitrate: int = 320, quality: int = 2, verbose: bool = False) -> None:
    """Encodes ``[channels, time]`` audio (1 or 2 channels) as a CBR mp3 with ``lameenc``.

    ``quality`` is LAME's preset (2 = best, 7 = fastest). A LAME Info tag compensates the
    encoder delay, so decoded stems stay sample-aligned with the input.
    """
    if wav.dim() == 1:
        wav = wav[None]
    pcm = wav.detach().cpu()
    if pcm.dtype.is_floating_point:
        pcm = (pcm.clamp(-1, 1) * (2 ** 15 - 1)).round().short()
    if hasattr(path, "write"):
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "out.mp3"
            _encode_mp3_file(pcm, target, samplerate, bitrate, quality, verbose)
            path.write(target.read_bytes())  # type: ignore[union-attr]
    else:
        _encode_mp3_file(pcm, Path(path), samplerate, bitrate, quality, verbose)


def _encode_mp3_file(pcm: torch.Tensor, path: Path, samplerate: int, bitrate: int,
                     quality: int, verbose: bool) -> None:
    writer = Mp3Writer(path, samplerate, pcm.shape[0], bitrate, quality, verbose)
    try:
        writer.write(pcm.numpy())
    except BaseException:
        writer.abort()
        raise
    writer.close()


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def _temporary_path(path: Path) -> Path:
    """Creates an empty hidden temporary file next to ``path`` (same file system)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> tp.Iterator[Path]:
    """Yields a temporary path next to ``path``; renames it onto ``path`` on success.

    On any exception, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    tmp = _temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _pcm_subtype(suffix: str, bits_per_sample: int, as_float: bool) -> str:
    if suffix == ".flac":
        if bits_per_sample not in (16, 24):
            raise ValueError(f"flac supports 16 or 24 bits per sample, not {bits_per_sample}")
        return f"PCM_{bits_per_sample}"
    if as_float or bits_per_sample == 32:
        return "FLOAT"
    if bits_per_sample not in (16, 24):
        raise ValueError(f"wav supports 16, 24 or 32 (float) bits, not {bits_per_sample}")
    return f"PCM_{bits_per_sample}"


def save_audio(wav: torch.Tensor,
               path: PathLike,
               samplerate: int,
               bitrate: int = 320,
               clip: ClipMode = "rescale",
               bits_per_sample: tp.Literal[16, 24, 32] = 16,
               as_float: bool = False,
               preset: tp.Literal[2, 3, 4, 5, 6, 7] = 2) -> None:
    """Saves ``[channels, time]`` audio to ``path``; the format comes from the extension.

    ``.wav``: 16 or 24-bit PCM, or float32 with ``as_float`` (or ``bits_per_sample=32``);
    ``.flac``: 16 or 24-bit; ``.mp3``: CBR ``bitrate`` kbps with LAME ``preset`` (2 = best
    quality, 7 = fastest). ``clip`` chooses how to avoid clipping first (see
    :func:`prevent_clip`). The write is atomic. Raises ``ValueError`` for an unknown
    extension or unsupported options, ``OSError`` when the file cannot be written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".wav", ".flac", ".mp3"):
        raise ValueError(f"cannot save {path}: unknown extension {suffix!r} "
                         "(use .wav, .flac or .mp3)")
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"expected audio of shape [channels, time], got {tuple(wav.shape)}")
    wav = f32_pcm(wav.detach().cpu())
    wav = prevent_clip(wav, mode=clip)
    if suffix == ".mp3":
        encode_mp3(wav, path, samplerate, bitrate, preset)
        return
    subtype = _pcm_subtype(suffix, bits_per_sample, as_float)
    data = wav.float()
    if subtype != "FLOAT":
        data = data.clamp(-1, 1)  # libsndfile would wrap around out-of-range samples
    array = np.ascontiguousarray(data.t().numpy())
    with atomic_write(path) as tmp:
        sf.write(str(tmp), array, int(samplerate), subtype=subtype,
                 format="FLAC" if suffix == ".flac" else "WAV")
