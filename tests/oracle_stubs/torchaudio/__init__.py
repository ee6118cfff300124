"""Test-only stand-in for torchaudio, so upstream demucs 4.0.1 can run as an oracle.

Only what upstream's separate.py / audio.py call: load, save (soundfile based).
Never on the import path of our own package.
"""

import numpy as np
import soundfile as sf
import torch

__version__ = "0.0-oracle-stub"


def load(path, *args, **kwargs):
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), sr


def save(path, wav, sample_rate, encoding=None, bits_per_sample=None, **kwargs):
    path = str(path)
    wav = wav.detach().cpu().numpy().T
    if path.endswith(".flac"):
        subtype = "PCM_24" if bits_per_sample == 24 else "PCM_16"
    elif encoding == "PCM_F" or bits_per_sample == 32:
        subtype = "FLOAT"
    elif bits_per_sample == 24:
        subtype = "PCM_24"
    else:
        subtype = "PCM_16"
    sf.write(path, wav, sample_rate, subtype=subtype)
