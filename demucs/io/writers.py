"""Audio output: every file the package writes goes through :func:`open_stem_writer`.

wav (16/24-bit PCM or float32) and flac (16/24-bit) through ``soundfile``, mp3 through
:class:`demucs.io.mp3.Mp3Writer`. Writers take ``(channels, n)`` float32 blocks and
create the file only when complete (:mod:`demucs.io.tempfiles`: temporary file, umask
respected, removed on error or termination). Before anything else, non-finite samples are
replaced (:mod:`demucs.io.errors`), then the clip mode is applied:

* ``rescale``: divide the whole stem by ``max(RESCALE_HEADROOM * peak, 1)``; when the
  peak is not known in advance the stem is spilled as raw float32 to a temporary file and
  converted at :meth:`close`, so memory stays bounded;
* ``clamp``: hard clip to ``[-CLAMP_LIMIT, CLAMP_LIMIT]``; ``tanh``: soft clip;
* ``none``: unchanged (float32 wav keeps values beyond 1; PCM formats saturate at full
  scale rather than wrap around).
"""

from __future__ import annotations

import contextlib
import typing as tp
from pathlib import Path

import numpy as np

from .errors import NonFinite, PathLike
from .tempfiles import (
    TempFileWriter,
    create_temporary,
    open_output,
    output_error,
    library_callback,
    raise_if_terminating,
    remove_temporary,
)

Array = np.ndarray
ClipMode = tp.Literal["rescale", "clamp", "tanh", "none"]

#: Output formats, by extension.
SAVE_FORMATS = ("wav", "flac", "mp3")
CLIP_MODES = ("rescale", "clamp", "tanh", "none")
#: ``rescale`` divides by ``max(RESCALE_HEADROOM * peak, 1)``: 1% below full scale.
RESCALE_HEADROOM = 1.01
#: ``clamp`` clips to this magnitude.
CLAMP_LIMIT = 0.99
#: Frames per block when a whole array or a spilled stem is written.
WRITE_BLOCK = 1 << 16


class StemWriter(tp.Protocol):
    """Writes one stem block by block; the file appears at ``close`` only."""

    path: Path

    def write(self, block: Array) -> None: ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover

    def abort(self) -> None: ...  # pragma: no cover


def check_clip_mode(mode: tp.Optional[str]) -> str:
    """``mode`` as one of :data:`CLIP_MODES` (None means ``none``), or ``ValueError``."""
    mode = "none" if mode is None else mode
    if mode not in CLIP_MODES:
        raise ValueError(f"invalid clip mode {mode!r}: use rescale, clamp, tanh or none")
    return mode


def rescale_divisor(peak: float) -> float:
    """What ``rescale`` divides a signal of absolute peak ``peak`` by."""
    return max(RESCALE_HEADROOM * float(peak), 1.0)


def clip_block(block: Array, mode: tp.Optional[str], divisor: float = 1.0) -> Array:
    """Applies a clip mode to a block (``rescale`` divides by ``divisor``)."""
    mode = check_clip_mode(mode)
    if mode == "rescale":
        return block / np.float32(divisor) if divisor != 1 else block
    if mode == "clamp":
        return np.clip(block, -CLAMP_LIMIT, CLAMP_LIMIT)
    if mode == "tanh":
        return np.tanh(block)
    return block


def pcm_subtype(suffix: str, bits_per_sample: int, as_float: bool) -> str:
    """libsndfile subtype for a wav/flac output, or ``ValueError``."""
    if suffix == ".flac":
        if bits_per_sample not in (16, 24):
            raise ValueError(f"flac supports 16 or 24 bits per sample, not {bits_per_sample}")
        return f"PCM_{bits_per_sample}"
    if as_float or bits_per_sample == 32:
        return "FLOAT"
    if bits_per_sample not in (16, 24):
        raise ValueError(f"wav supports 16, 24 or 32 (float) bits, not {bits_per_sample}")
    return f"PCM_{bits_per_sample}"


class _GuardedFile:
    """File object for libsndfile's virtual I/O that keeps the first ``OSError`` (libsndfile
    would only report "System error") so that it can be raised with the final path."""

    def __init__(self, raw: tp.BinaryIO) -> None:
        self.raw = raw
        self.error: tp.Optional[OSError] = None

    @library_callback
    def _guard(self, call: tp.Callable[..., tp.Any], *args: tp.Any, failed: tp.Any) -> tp.Any:
        try:
            return call(*args)
        except OSError as err:
            self.error = self.error or err
            return failed

    @library_callback
    def write(self, data: bytes) -> int:
        return self._guard(self.raw.write, data, failed=0)

    @library_callback
    def read(self, size: int = -1) -> bytes:
        return self._guard(self.raw.read, size, failed=b"")

    @library_callback
    def seek(self, offset: int, whence: int = 0) -> int:
        return self._guard(self.raw.seek, offset, whence, failed=-1)

    @library_callback
    def tell(self) -> int:
        return self._guard(self.raw.tell, failed=-1)

    @library_callback
    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()


class SoundfileWriter(TempFileWriter):
    """wav/flac through ``soundfile``, to a temporary file renamed at ``close``."""

    def __init__(
        self,
        path: PathLike,
        samplerate: int,
        channels: int,
        subtype: str,
        format: tp.Optional[str] = None,
    ) -> None:
        import soundfile as sf

        self.path = Path(path)
        self.pcm = subtype != "FLOAT"
        self._tmp = create_temporary(self.path)
        try:
            self._raw = _GuardedFile(open_output(self._tmp))
            self._file: tp.Any = sf.SoundFile(
                self._raw,
                "w",
                samplerate=int(samplerate),
                channels=channels,
                subtype=subtype,
                format=format or ("FLAC" if self.path.suffix.lower() == ".flac" else "WAV"),
            )
        except OSError as err:
            remove_temporary(self._tmp)
            raise output_error(err, self.path) from None
        except BaseException:
            remove_temporary(self._tmp)
            raise
        self._check()

    def _check(self) -> None:
        raise_if_terminating()
        if self._raw.error is not None:
            raise output_error(self._raw.error, self.path)

    def write(self, block: Array) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        if self.pcm:  # libsndfile would wrap around out-of-range samples
            block = np.clip(block, -1, 1)
        try:
            self._file.write(np.ascontiguousarray(block.T, dtype=np.float32))
            self._check()
        except Exception:
            error = self._raw.error
            self.abort()  # a failed write leaves nothing behind
            if error is not None:
                raise output_error(error, self.path) from None
            raise

    def _finish(self) -> None:
        try:
            self._file.close()  # libsndfile writes the final header through _raw
        finally:
            self._check()
        self._raw.close()

    def abort(self) -> None:
        super().abort()
        with contextlib.suppress(Exception):
            self._raw.close()  # releases the space of the removed file


def _final_writer(
    path: Path, suffix: str, samplerate: int, channels: int, bitrate: int, preset: int, subtype: str
) -> StemWriter:
    if suffix == ".mp3":
        from .mp3 import Mp3Writer

        return Mp3Writer(path, samplerate, channels, bitrate, preset)
    return SoundfileWriter(
        path, samplerate, channels, subtype, "FLAC" if suffix == ".flac" else "WAV"
    )


class ClippingWriter:
    """Non-finite policy, then a pointwise clip mode (or a known rescale divisor), then
    ``inner``."""

    def __init__(self, inner: StemWriter, clip: str, divisor: float = 1.0) -> None:
        self.inner = inner
        self.clip = check_clip_mode(clip)
        self.divisor = divisor
        self.path = inner.path
        self._nonfinite = NonFinite()

    def write(self, block: Array) -> None:
        self.inner.write(clip_block(self._nonfinite.clean(block), self.clip, self.divisor))

    def close(self) -> None:
        self.inner.close()
        self._nonfinite.report(self.path)

    def abort(self) -> None:
        self.inner.abort()


class RescalingWriter(TempFileWriter):
    """Clip mode ``rescale`` with the peak unknown: raw float32 to a temporary file while
    tracking the peak, then, at ``close``, a second pass divides by
    :func:`rescale_divisor` into the final writer."""

    def __init__(
        self,
        path: Path,
        channels: int,
        make_final: tp.Callable[[], StemWriter],
        block: int = WRITE_BLOCK,
    ) -> None:
        self.path = path
        self.channels = channels
        self.block = block
        self._make_final = make_final
        self._final: tp.Optional[StemWriter] = None
        self._nonfinite = NonFinite()
        self.peak = 0.0
        self._tmp = create_temporary(path)
        self._file: tp.Optional[tp.BinaryIO] = open_output(self._tmp)

    def write(self, block: Array) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        block = np.ascontiguousarray(self._nonfinite.clean(block).T, dtype=np.float32)
        if block.size:
            self.peak = max(self.peak, float(np.abs(block).max()))
        try:
            self._file.write(block.tobytes())
        except OSError as err:
            self.abort()  # a failed write leaves nothing behind
            raise output_error(err, self.path) from None

    def _publish(self) -> None:
        """Second pass: the raw float32 file, rescaled, into the final writer."""
        divisor = np.float32(rescale_divisor(self.peak))
        self._final = self._make_final()
        frame_bytes = 4 * self.channels
        with open(self._tmp, "rb") as raw:
            while True:
                data = raw.read(self.block * frame_bytes)
                if not data:
                    break
                self._final.write(
                    np.frombuffer(data, np.float32).reshape(-1, self.channels).T / divisor
                )
        self._final.close()
        remove_temporary(self._tmp)
        self._nonfinite.report(self.path)

    def abort(self) -> None:
        if self._final is not None:
            self._final.abort()
        super().abort()


class ResamplingWriter:
    """Resamples blocks from ``old_sr`` to ``new_sr`` before handing them to ``inner``,
    and pads or trims the stem to exactly ``length`` samples (the input's own length, for
    stems written at the input's rate)."""

    def __init__(
        self, inner: StemWriter, old_sr: int, new_sr: int, channels: int, length: int
    ) -> None:
        from .resample import make_resampler

        self.inner = inner
        self.path = inner.path
        self._resampler = make_resampler(old_sr, new_sr, channels)
        self._channels = channels
        self._left = length

    def _forward(self, block: Array) -> None:
        block = block[:, : self._left]
        if block.shape[1]:
            self.inner.write(block)
            self._left -= block.shape[1]

    def write(self, block: Array) -> None:
        self._forward(self._resampler.push(block))

    def close(self) -> None:
        self._forward(self._resampler.finish())
        if self._left > 0:
            self.inner.write(np.zeros((self._channels, self._left), np.float32))
            self._left = 0
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()


def open_stem_writer(
    path: PathLike,
    samplerate: int,
    channels: int,
    *,
    bitrate: int = 320,
    preset: int = 2,
    clip: tp.Optional[str] = "rescale",
    bits_per_sample: int = 16,
    as_float: bool = False,
    peak: tp.Optional[float] = None,
    format: tp.Optional[str] = None,
) -> StemWriter:
    """A block-by-block writer; the format comes from the extension of ``path``.

    ``.wav``: 16 or 24-bit PCM, or float32 with ``as_float`` (or ``bits_per_sample=32``);
    ``.flac``: 16 or 24-bit; ``.mp3``: CBR ``bitrate`` kbps with LAME ``preset`` (2 = best
    quality, 7 = fastest). ``clip``: see the module docstring; with ``rescale``, pass the
    stem's ``peak`` if it is known (after the non-finite policy) to avoid the spill pass.
    ``format`` (one of :data:`SAVE_FORMATS`) overrides the extension.
    Raises ``ValueError`` for an unknown extension or unsupported options, ``OSError``
    naming ``path`` when the file cannot be written.
    """
    path = Path(path)
    suffix = f".{format}" if format else path.suffix.lower()
    if suffix not in tuple(f".{ext}" for ext in SAVE_FORMATS):
        raise ValueError(
            f"cannot save {path}: unknown extension {suffix!r} (use .wav, .flac or .mp3)"
        )
    clip = check_clip_mode(clip)
    subtype = "" if suffix == ".mp3" else pcm_subtype(suffix, bits_per_sample, as_float)

    def make_final() -> StemWriter:
        return _final_writer(
            path, suffix, int(samplerate), int(channels), int(bitrate), int(preset), subtype
        )

    if clip == "rescale" and peak is None:
        return RescalingWriter(path, int(channels), make_final)
    divisor = rescale_divisor(peak) if clip == "rescale" and peak is not None else 1.0
    return ClippingWriter(make_final(), clip, divisor)


def write_array(wav: Array, path: PathLike, samplerate: int, **options: tp.Any) -> None:
    """Writes a whole ``(channels, T)`` array through :func:`open_stem_writer` (same
    options); the peak for ``rescale`` is computed up front."""
    wav = np.asarray(wav)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ValueError(f"expected audio of shape [channels, time], got {tuple(wav.shape)}")
    if wav.dtype.kind != "f":
        wav = wav.astype(np.float32) / np.float32(2**15 - 1)
    # The peak after the non-finite policy; the writer applies it (and warns) itself.
    peak = float(np.abs(NonFinite().clean(wav)).max()) if wav.size else 0.0
    writer = open_stem_writer(path, samplerate, wav.shape[0], peak=peak, **options)
    try:
        for start in range(0, wav.shape[1], WRITE_BLOCK):
            writer.write(wav[:, start : start + WRITE_BLOCK])
    except BaseException:
        writer.abort()
        raise
    writer.close()
