"""Writing other formats (ogg, opus, m4a, aiff...) with PyAV's FFmpeg encoders.

Used by :func:`demucs.audio.encode_ffmpeg` (upstream 4.1.0 ran the ``ffmpeg`` program);
wav, flac and mp3 go through :mod:`demucs.io.writers` instead. The file is written to a
temporary file and renamed, like every other output (:mod:`demucs.io.tempfiles`).
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import numpy as np

from .errors import NonFinite, PathLike, one_line
from .tempfiles import atomic_write, open_output, output_error

#: FFmpeg container (muxer) for each extension this module writes.
CONTAINERS = {
    ".ogg": "ogg",
    ".oga": "ogg",
    ".opus": "opus",
    ".m4a": "ipod",
    ".mp4": "mp4",
    ".aac": "adts",
    ".mka": "matroska",
    ".aiff": "aiff",
    ".aif": "aiff",
    ".ac3": "ac3",
    ".au": "au",
    ".caf": "caf",
    ".wma": "asf",
}
#: FFmpeg channel layout names by channel count.
LAYOUTS = {1: "mono", 2: "stereo"}
#: Samples per encoded frame handed to FFmpeg.
FRAME = 4096


def write_with_ffmpeg(wav: np.ndarray, path: PathLike, samplerate: int) -> None:
    """Encodes float ``(channels, T)`` audio with the container's default audio codec."""
    import av

    path = Path(path)
    container_format = CONTAINERS.get(path.suffix.lower())
    if container_format is None:
        raise ValueError(
            f"cannot save {path}: unknown extension {path.suffix!r} "
            f"(FFmpeg output supports {', '.join(sorted(CONTAINERS))})"
        )
    nonfinite = NonFinite()
    data = np.ascontiguousarray(nonfinite.clean(np.asarray(wav, np.float32)).clip(-1, 1))
    channels = data.shape[0]
    with atomic_write(path) as tmp:
        try:
            with open_output(tmp) as handle, av.open(handle, "w", format=container_format) as out:
                layout = av.AudioLayout(LAYOUTS.get(channels, f"{channels}c"))
                stream: tp.Any = out.add_stream(
                    out.default_audio_codec, rate=int(samplerate), layout=layout.name
                )
                for start in range(0, data.shape[1], FRAME):
                    frame = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(data[:, start : start + FRAME]),
                        format="fltp",
                        layout=layout.name,
                    )
                    frame.sample_rate = int(samplerate)
                    frame.pts = start
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode(None):
                    out.mux(packet)
        except OSError as err:
            raise output_error(err, path) from None
        except av.error.FFmpegError as err:
            raise ValueError(f"cannot save {path}: {one_line(err)}") from None
    nonfinite.report(path)


__all__: tp.List[str] = ["write_with_ffmpeg", "CONTAINERS"]
