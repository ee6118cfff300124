"""Audio input/output, without torch.

* :mod:`~demucs.io.readers`: block readers (libsndfile, PyAV), the decoder order and
  fallback, input checks, :func:`open_track` (validated, converted block source);
* :mod:`~demucs.io.resample`: channel conversion and block resampling (julius's filters,
  libsoxr for unusual rate pairs);
* :mod:`~demucs.io.writers`: stem writers for wav/flac/mp3, clip modes;
* :mod:`~demucs.io.mp3`: the incremental mp3 encoder and its LAME tag;
* :mod:`~demucs.io.tempfiles`: write-then-rename, the registry of temporary files and
  their cleanup on SIGTERM/SIGHUP;
* :mod:`~demucs.io.errors`: :class:`LoadAudioError`, :class:`AudioWarning` and the one
  policy for NaN/Inf samples;
* :mod:`~demucs.io.audiofile`: upstream's multi-stream ``AudioFile`` reader on PyAV;
* :mod:`~demucs.io.ffmpeg`: other output formats through PyAV's encoders.

:mod:`demucs.audio` wraps these for torch tensors under upstream's names.
"""

from .errors import AudioWarning, LoadAudioError, install_warning_format
from .readers import (
    DEFAULT_BLOCK,
    ArraySource,
    AudioTrack,
    BlockSource,
    ConvertedSource,
    PyAVSource,
    SoundfileSource,
    check_input,
    open_track,
    read_array,
)
from .resample import convert_channels, make_resampler, resample
from .tempfiles import atomic_write, install_signal_cleanup
from .writers import (
    CLAMP_LIMIT,
    CLIP_MODES,
    RESCALE_HEADROOM,
    SAVE_FORMATS,
    StemWriter,
    open_stem_writer,
    write_array,
)

__all__ = [
    "AudioWarning",
    "LoadAudioError",
    "install_warning_format",
    "DEFAULT_BLOCK",
    "ArraySource",
    "AudioTrack",
    "BlockSource",
    "ConvertedSource",
    "PyAVSource",
    "SoundfileSource",
    "check_input",
    "open_track",
    "read_array",
    "convert_channels",
    "make_resampler",
    "resample",
    "atomic_write",
    "install_signal_cleanup",
    "CLAMP_LIMIT",
    "CLIP_MODES",
    "RESCALE_HEADROOM",
    "SAVE_FORMATS",
    "StemWriter",
    "open_stem_writer",
    "write_array",
]
