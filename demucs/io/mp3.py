"""MP3 output: an incremental CBR encoder (``lameenc``) and the LAME "Info" tag.

The tag, written in front of the stream when it is complete, records the encoder delay and
the end padding, so gapless-aware decoders (libsndfile / mpg123, FFmpeg) return exactly the
samples that were encoded, aligned with the input.
"""

from __future__ import annotations

import struct
import typing as tp
from pathlib import Path

import numpy as np

from .errors import PathLike
from .tempfiles import TempFileWriter, create_temporary, open_output, output_error

MP3_RATES_BY_VERSION = {  # version bits -> sample rates by index
    3: (44100, 48000, 32000),
    2: (22050, 24000, 16000),
    0: (11025, 12000, 8000),
}
MP3_BITRATES = {
    3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
MP3_SAMPLERATES = tuple(sorted(r for rates in MP3_RATES_BY_VERSION.values() for r in rates))
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
    bitrate = MP3_BITRATES[3 if version == 3 else 2][bitrate_index] * 1000
    factor = 144 if version == 3 else 72
    return factor * bitrate // samplerate + padding


def _parse_frame(data: bytes, offset: int) -> _Frame:
    if offset + 4 > len(data):
        raise ValueError("truncated mp3 frame header")
    header = struct.unpack(">I", data[offset : offset + 4])[0]
    version = (header >> 19) & 3
    if (header >> 21) != 0x7FF or version == 1 or ((header >> 17) & 3) != 1:
        raise ValueError(f"not an MPEG layer III frame at byte {offset}")
    bitrate_index = (header >> 12) & 15
    rate_index = (header >> 10) & 3
    if bitrate_index in (0, 15) or rate_index == 3:
        raise ValueError(f"unsupported mp3 frame at byte {offset}")
    samplerate = MP3_RATES_BY_VERSION[version][rate_index]
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
                del self._pending[: frame.size]
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
    """Float ``[..]`` audio to int16 PCM: clamp to [-1, 1], scale by 32767, round."""
    return np.rint(np.clip(pcm, -1, 1) * (2**15 - 1)).astype(np.int16)


class Mp3Writer(TempFileWriter):
    """Incremental CBR mp3 encoder (``lameenc``) writing to ``path`` atomically.

    ``write`` takes ``[channels, n]`` float (or int16) blocks; ``close`` flushes the encoder,
    writes the LAME Info tag in front (space for it is reserved as soon as the first frame
    is known) and renames the temporary file onto ``path``. ``abort`` (or any exception in
    ``close``) removes the temporary file. Memory use does not depend on the length.
    """

    def __init__(
        self,
        path: PathLike,
        samplerate: int,
        channels: int,
        bitrate: int = 320,
        quality: int = 2,
        verbose: bool = False,
    ) -> None:
        import lameenc

        if channels not in (1, 2):
            raise ValueError(f"mp3 supports 1 or 2 channels, got {channels}")
        if samplerate not in MP3_SAMPLERATES:
            raise ValueError(
                f"mp3 does not support a sample rate of {samplerate} Hz "
                f"(supported: {', '.join(map(str, MP3_SAMPLERATES))})"
            )
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
        self._tmp = create_temporary(self.path)
        self._file: tp.Optional[tp.BinaryIO] = open_output(self._tmp)

    def write(self, block: np.ndarray) -> None:
        """Encodes ``[channels, n]`` audio (float in [-1, 1], or int16)."""
        if not isinstance(block, np.ndarray):  # a torch.Tensor
            block = block.detach().cpu().numpy()
        if block.ndim != 2 or block.shape[0] != self.channels:
            raise ValueError(f"expected a [{self.channels}, n] block, got {block.shape}")
        pcm = block if block.dtype == np.int16 else _float_to_i16(block)
        self.samples += pcm.shape[1]
        self._emit(bytes(self._encoder.encode(np.ascontiguousarray(pcm.T).astype("<i2").tobytes())))

    def _emit(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: writer is closed")
        if not data:
            return
        try:
            self._put(data)
        except OSError as err:
            self.abort()  # a failed write leaves nothing behind
            raise output_error(err, self.path) from None

    def _put(self, data: bytes) -> None:
        handle = tp.cast(tp.BinaryIO, self._file)
        self._stats.feed(data)
        if self._head is not None:
            self._head += data
            if self._stats.first is None:
                return
            handle.write(bytes(_info_frame_size(self._stats.first)))  # reserved
            data, self._head = bytes(self._head), None  # type: ignore[assignment]
        handle.write(data)

    def _finish(self) -> None:
        """Flushes the encoder and writes the LAME Info tag into the reserved space."""
        self._emit(bytes(self._encoder.flush()))
        tag = _lame_info_frame_for(self._stats, self.samples, self.bitrate)
        handle = tp.cast(tp.BinaryIO, self._file)
        try:
            handle.seek(0)
            handle.write(tag)
            handle.close()
        except OSError as err:
            raise output_error(err, self.path) from None
