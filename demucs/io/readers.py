"""Block readers: every audio input of the package is decoded here.

``soundfile`` (libsndfile) reads wav, flac, ogg/vorbis, ogg/opus, mp3 and a few more;
anything else (m4a/aac, the audio track of mp4/mkv/webm/mov videos, ...) is decoded with
PyAV, which ships its own FFmpeg. Decoders are tried in turn (:func:`decoder_order`): one
failing anywhere in the file hands over to the next. Every failure is a
:class:`LoadAudioError` whose one-line message names the file and says what is wrong.

A source (:class:`BlockSource`) yields ``(channels, n)`` float32 blocks and can be read
again from the start, so a track is validated in a first pass and separated in a second
one without being held in memory. Non-finite samples follow the policy of
:mod:`demucs.io.errors`; a file that ends before the length its header declares is read as
far as it goes, with an :class:`AudioWarning` that it is truncated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import struct
import typing as tp
from pathlib import Path

import numpy as np

from .errors import LoadAudioError, NonFinite, PathLike, one_line, warn
from .resample import convert_channels, make_resampler

Array = np.ndarray

#: Samples per decoded block.
DEFAULT_BLOCK = 1 << 16
#: Extensions that libsndfile cannot read: FFmpeg (PyAV) is tried first.
FFMPEG_FIRST = frozenset(
    {
        ".m4a",
        ".aac",
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".mka",
        ".webm",
        ".avi",
        ".wma",
        ".ac3",
        ".alac",
        ".3gp",
    }
)
#: Samples a decoder may fall short of the declared length before the file counts as
#: truncated (codec priming and padding are not always declared exactly).
TRUNCATION_TOLERANCE = 4096
#: Formats whose headers state the exact length (libsndfile and FFmpeg names): only
#: these are checked for truncation (mp3 or ogg lengths are often estimates).
EXACT_LENGTH_FORMATS = frozenset({"WAV", "FLAC", "wav", "flac", "mp4", "mov", "m4a"})
#: Leading bytes that identify a format, for "not a FLAC file" style messages.
_MAGIC: tp.Dict[str, tp.Tuple[str, tp.Tuple[bytes, ...]]] = {
    ".wav": ("a WAV", (b"RIFF", b"RF64", b"BW64")),
    ".flac": ("a FLAC", (b"fLaC",)),
    ".ogg": ("an Ogg", (b"OggS",)),
    ".opus": ("an Ogg Opus", (b"OggS",)),
    ".mp3": (
        "an MP3",
        (b"ID3", b"\xff\xfb", b"\xff\xfa", b"\xff\xf3", b"\xff\xf2", b"\xff\xe3", b"\xff\xe2"),
    ),
}


class NoAudioStream(ValueError):
    """The container holds no audio track (e.g. a video without sound)."""


class PartialDecode(Exception):
    """A decoder failed after ``produced`` samples (a truncated or damaged file)."""

    def __init__(self, produced: int, error: BaseException) -> None:
        self.produced = produced
        self.error = error
        super().__init__(f"failed after {produced} samples: {one_line(error)}")


@contextlib.contextmanager
def quiet_native_stderr() -> tp.Iterator[None]:
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


def check_input(path: Path) -> None:
    """Raises :class:`LoadAudioError` if ``path`` is missing, a folder, not a regular file
    (a FIFO, a device such as ``/dev/zero``) or empty."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LoadAudioError(path, "file does not exist") from None
    except PermissionError:
        raise LoadAudioError(path, "permission denied") from None
    except OSError as err:
        raise LoadAudioError(path, f"cannot access file ({one_line(err)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise LoadAudioError(path, "is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise LoadAudioError(path, "is not a regular file (a pipe or a device cannot be read)")
    if info.st_size == 0:
        raise LoadAudioError(path, "file is empty")


def _wav_declared_frames(path: Path) -> tp.Optional[int]:
    """Frames the ``data`` chunk of a RIFF/WAVE header announces (libsndfile reports the
    frames actually present instead)."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, block_align = 12, 0
    while offset + 8 <= len(head):
        name, size = (
            head[offset : offset + 4],
            struct.unpack("<I", head[offset + 4 : offset + 8])[0],
        )
        if name == b"fmt " and offset + 22 <= len(head):
            block_align = struct.unpack("<H", head[offset + 20 : offset + 22])[0]
        if name == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):
                return None
            return size // block_align
        offset += 8 + size + (size & 1)
    return None


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
            yield self.wav[:, start : start + self.block]


class _FileSource:
    """What the file readers share: the non-finite policy and the truncation check, with
    warnings on the first complete pass only.

    A decoding error after some samples raises :class:`PartialDecode`; with ``tolerant``
    set, the samples before it are the whole track instead (and a warning says so).
    """

    path: Path
    block: int
    declared: tp.Optional[int] = None
    exact_length = False  # whether ``declared`` is exact (not estimated from a bit rate)
    tolerant = False
    _warned = False

    def _raw_blocks(self) -> tp.Iterator[Array]:
        raise NotImplementedError

    def blocks(self) -> tp.Iterator[Array]:
        nonfinite = NonFinite()
        produced = 0
        failure: tp.Optional[BaseException] = None
        raw = self._raw_blocks()
        while True:
            try:
                block = next(raw)
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001 - decoders raise all sorts
                if produced == 0:
                    raise
                if not self.tolerant:
                    raise PartialDecode(produced, err) from err
                failure = err
                break
            produced += block.shape[1]
            yield nonfinite.clean(block)
        if not self._warned:
            self._warned = True
            nonfinite.report(self.path)
            if failure is not None:
                warn(
                    self.path,
                    f"file is truncated or damaged: decoding stopped after "
                    f"{produced} samples ({one_line(failure)})",
                )
            elif (
                self.exact_length
                and self.declared
                and produced + TRUNCATION_TOLERANCE < self.declared
            ):
                warn(
                    self.path,
                    f"file is truncated: decoded {produced} of the "
                    f"{self.declared} samples its header declares",
                )


class SoundfileSource(_FileSource):
    """A file read block by block with libsndfile (wav, flac, ogg, mp3...)."""

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        import soundfile as sf

        self.path = path
        self.block = block
        with quiet_native_stderr():
            info = sf.info(str(path))
        self.samplerate = int(info.samplerate)
        self.channels = int(info.channels)
        self.declared = _wav_declared_frames(path) if info.format == "WAV" else int(info.frames)
        self.exact_length = info.format in EXACT_LENGTH_FORMATS

    def _raw_blocks(self) -> tp.Iterator[Array]:
        import soundfile as sf

        with quiet_native_stderr():
            handle = sf.SoundFile(str(self.path))
        with handle:
            while True:
                with quiet_native_stderr():
                    data = handle.read(self.block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    return
                yield np.ascontiguousarray(data.T)


def _declared_length(stream: tp.Any, samplerate: int) -> tp.Optional[int]:
    """Samples announced by the container for ``stream``, if it says (mp4 does)."""
    if not stream.duration or stream.time_base is None or not samplerate:
        return None
    return int(round(float(stream.duration * stream.time_base) * samplerate))


def open_container(path: Path) -> tp.Any:
    """``av.open`` for reading (metadata in odd encodings ignored)."""
    import av  # lazy: only needed for formats libsndfile lacks

    return av.open(str(path), metadata_errors="ignore")


def decode_stream(container: tp.Any, stream: tp.Any) -> tp.Iterator[Array]:
    """Decodes ``stream`` of ``container`` as planar float32 ``(channels, n)`` frames at
    the stream's own rate and layout."""
    import av

    resampler = av.AudioResampler(format="fltp")
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            yield out.to_ndarray()
    for out in resampler.resample(None):
        yield out.to_ndarray()


class PyAVSource(_FileSource):
    """A file decoded frame by frame with PyAV (FFmpeg): m4a/aac, video soundtracks...

    Samples past the length the container declares (codec end padding) are dropped.
    """

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        self.path = path
        self.block = block
        with open_container(path) as container:
            if not container.streams.audio:
                raise NoAudioStream("no audio stream")
            stream = container.streams.audio[0]
            self.samplerate = int(stream.codec_context.sample_rate or stream.rate or 0)
            self.channels = int(stream.codec_context.channels or 0)
            self.declared = _declared_length(stream, self.samplerate)
            self.exact_length = bool(set(container.format.name.split(",")) & EXACT_LENGTH_FORMATS)

    def _raw_blocks(self) -> tp.Iterator[Array]:
        remaining = self.declared if self.declared else None
        pending: tp.List[Array] = []
        size = 0
        with open_container(self.path) as container:
            frames = decode_stream(container, container.streams.audio[0])
            while True:
                try:
                    frame = next(frames, None)
                except Exception:
                    if size:  # what was decoded before the damage, then the error
                        yield np.concatenate(pending, axis=1)
                    raise
                if frame is None:
                    break
                if remaining is not None:
                    frame = frame[:, :remaining]
                    remaining -= frame.shape[1]
                if frame.shape[1]:
                    pending.append(frame.astype(np.float32, copy=False))
                    size += frame.shape[1]
                if size >= self.block:
                    yield np.concatenate(pending, axis=1)
                    pending, size = [], 0
        if size:
            yield np.concatenate(pending, axis=1)


class ConvertedSource:
    """``source`` converted to ``channels`` channels then resampled to ``samplerate``,
    blockwise (:func:`demucs.io.resample.make_resampler`)."""

    def __init__(self, source: BlockSource, samplerate: int, channels: int) -> None:
        self.source = source
        self.samplerate = int(samplerate)
        self.channels = int(channels)

    def blocks(self) -> tp.Iterator[Array]:
        resampler = None
        if self.source.samplerate != self.samplerate:
            resampler = make_resampler(self.source.samplerate, self.samplerate, self.channels)
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


Decoder = tp.Callable[[Path, int], BlockSource]
DECODERS: tp.Tuple[tp.Tuple[str, Decoder], ...] = (
    ("soundfile", SoundfileSource),
    ("ffmpeg", PyAVSource),
)


def decoder_order(path: Path) -> tp.List[tp.Tuple[str, Decoder]]:
    """Decoders to try for ``path``: libsndfile first, FFmpeg first for video/aac."""
    order = list(DECODERS)
    if path.suffix.lower() in FFMPEG_FIRST:
        order.reverse()
    return order


def _not_what_it_says(path: Path) -> tp.Optional[str]:
    """``"not a FLAC file"`` when the extension names a format the bytes are not."""
    known = _MAGIC.get(path.suffix.lower())
    if known is None:
        return None
    name, magics = known
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        head = handle.read(16)
        if not any(head.startswith(magic) for magic in magics):
            return f"not {name} file"
    return None


T = tp.TypeVar("T")


@dataclasses.dataclass
class AudioTrack(tp.Generic[T]):
    """A validated input: ``source`` yields it converted (rate, channels) block by block."""

    path: Path
    source: BlockSource
    length: int  # samples of the converted track
    scanned: T  # what ``scan`` returned on the validation pass
    input_samplerate: int = 0  # the file's own rate
    input_length: int = 0  # samples at the file's own rate


class _CountingSource:
    """``source``, counting the samples of the last full pass (the file's own length)."""

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.samplerate = source.samplerate
        self.channels = source.channels
        self.length = 0

    def blocks(self) -> tp.Iterator[Array]:
        count = 0
        for block in self.source.blocks():
            count += block.shape[1]
            yield block
        self.length = count


def _count(blocks: tp.Iterable[Array], counter: tp.List[int]) -> tp.Iterator[Array]:
    for block in blocks:
        counter[0] += block.shape[1]
        yield block


def _consume(blocks: tp.Iterable[Array]) -> None:
    for _ in blocks:
        pass


def open_track(
    path: PathLike,
    samplerate: tp.Optional[int] = None,
    channels: tp.Optional[int] = None,
    block: int = DEFAULT_BLOCK,
    scan: tp.Optional[tp.Callable[[tp.Iterable[Array]], T]] = None,
) -> AudioTrack[T]:
    """Opens and validates ``path``, decoding it once block by block.

    The blocks are converted to ``channels`` (see :func:`convert_channels`) and resampled
    to ``samplerate`` (None keeps the file's own). ``scan``, if given, consumes the blocks
    of this validation pass (e.g. to compute statistics); its result is ``scanned``.
    Decoders are tried in :func:`decoder_order`; a decoder failing anywhere in the file
    hands over to the next. Raises :class:`LoadAudioError` (one line naming the file).
    """
    path = Path(path)
    check_input(path)
    errors: tp.List[str] = []
    no_audio = False
    best: tp.Tuple[int, tp.Optional[tp.Tuple[str, Decoder]]] = (0, None)
    attempts = decoder_order(path)
    for attempt, (name, decoder) in enumerate(attempts):
        try:
            raw = decoder(path, block)
            if attempt >= len(DECODERS):  # the retry below: keep what could be decoded
                tp.cast(_FileSource, raw).tolerant = True
            if raw.samplerate <= 0 or raw.channels <= 0:
                raise ValueError(
                    f"invalid sample rate ({raw.samplerate}) or channels ({raw.channels})"
                )
            target = raw.channels if channels is None else int(channels)
            if raw.channels != 1 and target > raw.channels:
                raise LoadAudioError(
                    path,
                    f"cannot convert {raw.channels}-channel audio to "
                    f"{target} channels (only mono can be upmixed)",
                )
            counting = _CountingSource(raw)
            converted = ConvertedSource(counting, samplerate or raw.samplerate, target)
            counter = [0]
            scanned = (scan or _consume)(_count(converted.blocks(), counter))
        except LoadAudioError:
            raise
        except PermissionError:
            raise LoadAudioError(path, "permission denied") from None
        except NoAudioStream as err:
            no_audio = True
            errors.append(f"{name}: {one_line(err)}")
            continue
        except Exception as err:  # noqa: BLE001 - any decoder failure means "try the next"
            errors.append(f"{name}: {one_line(err)}")
            if isinstance(err, PartialDecode) and err.produced > best[0]:
                best = (err.produced, (name, decoder))
            if attempt == len(DECODERS) - 1 and best[1] is not None:
                attempts.append(best[1])  # every decoder failed midway: retry the best one
            continue
        if counter[0] == 0:
            if errors:  # a fallback decoder "succeeding" with nothing: keep the first error
                errors.append(f"{name}: decoded no samples")
                break
            raise LoadAudioError(path, "contains no audio samples")
        return AudioTrack(
            path=path,
            source=converted,
            length=counter[0],
            scanned=tp.cast(T, scanned),
            input_samplerate=raw.samplerate,
            input_length=counting.length,
        )
    if no_audio:
        raise LoadAudioError(path, "has no audio track (a video without sound?)", errors)
    wrong = _not_what_it_says(path)
    if wrong is not None:
        raise LoadAudioError(path, f"cannot decode: {wrong}", errors)
    raise LoadAudioError(
        path,
        "cannot decode: not a supported audio format, or the file is corrupt or truncated",
        errors,
    )


def read_array(path: PathLike) -> tp.Tuple[Array, int]:
    """Reads a whole file (or a video's first audio track) as float32 ``(channels, T)``
    at its own rate; see :func:`open_track` for the errors."""
    track = open_track(path, scan=list)
    data = np.concatenate(track.scanned, axis=1)
    return data, track.source.samplerate
