"""Upstream Demucs's ``AudioFile`` reader (multi-stream, seek, duration), on PyAV.

Upstream runs the ``ffprobe`` and ``ffmpeg`` programs; this module decodes with PyAV's
bundled FFmpeg instead (no external binary) and keeps upstream's interface and shapes:
``read`` returns ``(streams, channels, samples)`` for a slice or list of streams and
``(channels, samples)`` for one stream index; ``seek_time`` starts at that time;
``duration`` keeps ``int(samplerate * duration)`` samples (fewer if the file ends first);
``samplerate`` resamples (with :func:`demucs.io.resample.make_resampler`); ``channels``
converts after decoding (mono is the plain mean). The arrays here are numpy;
:class:`demucs.audio.AudioFile` returns torch tensors.
"""

from __future__ import annotations

import math
import typing as tp
from pathlib import Path

import numpy as np

from .errors import LoadAudioError, NonFinite, PathLike, one_line
from .readers import check_input, open_container
from .resample import convert_channels, resample

Array = np.ndarray
#: Seconds decoded (and dropped) before a seek position: mp3 and AAC frames depend on the
#: previous ones, so decoding starts that much earlier.
SEEK_PREROLL = 0.5


def _stream_duration(stream: tp.Any) -> tp.Optional[float]:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


class MediaFile:
    """A media file's audio streams: metadata (:attr:`info`, ffprobe-like) and reading."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._info: tp.Optional[tp.Dict[str, tp.Any]] = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path}, samplerate={self.samplerate()}, "
            f"channels={self.channels()}, streams={len(self)})"
        )

    def _probe(self) -> tp.Dict[str, tp.Any]:
        import av

        check_input(self.path)
        try:
            with open_container(self.path) as container:
                duration = (
                    container.duration / av.time_base if container.duration is not None else None
                )
                streams = []
                for stream in container.streams:
                    entry: tp.Dict[str, tp.Any] = {
                        "index": stream.index,
                        "codec_type": stream.type,
                        "codec_name": stream.codec_context.name,
                    }
                    if stream.type == "audio":
                        entry["sample_rate"] = str(stream.codec_context.sample_rate)
                        entry["channels"] = int(stream.codec_context.channels)
                    seconds = _stream_duration(stream)
                    if seconds is not None:
                        entry["duration"] = f"{seconds:.6f}"
                    streams.append(entry)
                return {
                    "format": {
                        "filename": str(self.path),
                        "format_name": container.format.name,
                        "nb_streams": len(streams),
                        "duration": None if duration is None else f"{duration:.6f}",
                    },
                    "streams": streams,
                }
        except LoadAudioError:
            raise
        except Exception as err:  # noqa: BLE001 - any FFmpeg failure: not a media file
            raise LoadAudioError(self.path, f"cannot decode: {one_line(err)}") from None

    @property
    def info(self) -> tp.Dict[str, tp.Any]:
        """``{"format": {..., "duration"}, "streams": [{"codec_type", "channels",
        "sample_rate", ...}]}``, the fields of ``ffprobe -show_format -show_streams``
        that upstream reads."""
        if self._info is None:
            self._info = self._probe()
        return self._info

    @property
    def duration(self) -> float:
        """Duration of the file in seconds (from the container)."""
        value = self.info["format"]["duration"]
        if value is None:
            raise LoadAudioError(self.path, "the container does not declare a duration")
        return float(value)

    @property
    def _audio_streams(self) -> tp.List[int]:
        return [
            index
            for index, stream in enumerate(self.info["streams"])
            if stream["codec_type"] == "audio"
        ]

    def __len__(self) -> int:
        """Number of audio streams."""
        return len(self._audio_streams)

    def _audio(self, stream: int) -> tp.Dict[str, tp.Any]:
        audio = self._audio_streams
        if not audio:
            raise LoadAudioError(self.path, "has no audio track (a video without sound?)")
        return self.info["streams"][audio[stream]]

    def channels(self, stream: int = 0) -> int:
        """Channels of the ``stream``-th audio stream."""
        return int(self._audio(stream)["channels"])

    def samplerate(self, stream: int = 0) -> int:
        """Sample rate of the ``stream``-th audio stream."""
        return int(self._audio(stream)["sample_rate"])

    def _decode(self, stream_index: int, start: int, count: tp.Optional[int]) -> Array:
        """Native-rate samples ``[start, start + count)`` of the ``stream_index``-th audio
        stream, as float32 ``(channels, n)``."""
        import av

        pieces: tp.List[Array] = []
        have = 0
        nonfinite = NonFinite()
        with open_container(self.path) as container:
            stream = container.streams.audio[stream_index]
            rate = stream.codec_context.sample_rate
            declared = None
            if stream.duration and stream.time_base is not None:
                declared = int(round(float(stream.duration * stream.time_base) * rate))
            end = None if count is None else start + count
            if declared is not None:
                end = declared if end is None else min(end, declared)
            origin = stream.start_time or 0  # time 0 of the track (e.g. after encoder delay)
            if start > SEEK_PREROLL * rate:  # decoders need a few frames to settle
                try:
                    target = (start / rate - SEEK_PREROLL) / stream.time_base
                    container.seek(
                        origin + int(target), stream=stream, backward=True, any_frame=False
                    )
                except av.error.FFmpegError:
                    container.seek(0)
            converter = av.AudioResampler(format="fltp")
            position: tp.Optional[int] = None
            for frame in container.decode(stream):
                if position is None:
                    position = (
                        0
                        if frame.pts is None
                        else max(0, round(float((frame.pts - origin) * stream.time_base) * rate))
                    )
                for out in converter.resample(frame):
                    data = out.to_ndarray()
                    begin, stop = position, position + data.shape[1]
                    position = stop
                    lo, hi = max(begin, start), stop if end is None else min(stop, end)
                    if hi > lo:
                        pieces.append(nonfinite.clean(data[:, lo - begin : hi - begin]))
                        have += hi - lo
                if end is not None and position is not None and position >= end:
                    break
            channels = stream.codec_context.channels
        nonfinite.report(self.path)
        if not pieces:
            return np.zeros((channels, 0), np.float32)
        return np.concatenate(pieces, axis=1).astype(np.float32, copy=False)

    def read_array(
        self,
        seek_time: tp.Optional[float] = None,
        duration: tp.Optional[float] = None,
        streams: tp.Union[int, slice, tp.Sequence[int]] = slice(None),
        samplerate: tp.Optional[int] = None,
        channels: tp.Optional[int] = None,
    ) -> Array:
        """Reads audio streams as float32 numpy arrays (see the module docstring)."""
        selected = np.arange(len(self))[streams]
        single = np.ndim(selected) == 0
        indices = [int(selected)] if single else [int(i) for i in selected]
        if not indices and len(self) == 0:
            raise LoadAudioError(self.path, "has no audio track (a video without sound?)")
        target_size = None
        if duration is not None:
            target_size = int((samplerate or self.samplerate()) * duration)
        wavs = []
        for index in indices:
            rate = self.samplerate(index)
            start = int(round(seek_time * rate)) if seek_time else 0
            count = None
            if target_size is not None:
                # one output sample more than asked, as upstream, then trimmed
                count = math.ceil((target_size + 1) * rate / (samplerate or rate))
            wav = self._decode(index, start, count)
            if samplerate is not None and samplerate != rate:
                wav = resample(wav, rate, samplerate)
            if channels is not None:
                wav = convert_channels(wav, channels)
            if target_size is not None:
                wav = wav[..., :target_size]
            wavs.append(wav)
        stacked = np.stack(wavs, axis=0)
        return stacked[0] if single else stacked
