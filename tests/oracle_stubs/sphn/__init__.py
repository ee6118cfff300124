"""Test-only stand-in for sphn, so upstream demucs 4.1.0 can run as an oracle.

Upstream 4.1.0 only calls ``sphn.read(path)`` (in ``api.Separator._load_audio``), which
returns ``(float32 array (channels, samples), samplerate)``; soundfile does the decoding
here. Never on the import path of our own package.
"""

import numpy as np
import soundfile as sf

__version__ = "0.0-oracle-stub"


def read(path, *args, **kwargs):
    data, samplerate = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), samplerate
