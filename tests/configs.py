"""Model configurations shared by the tests and benchmarks.

``HTDEMUCS`` / ``HTDEMUCS_6S`` are the architecture of the released htdemucs /
htdemucs_6s models (7.8 s training segment; htdemucs adds 512 bottom channels around
the transformer: 42 M parameters, 168 MB in float32; htdemucs_6s keeps upstream's
defaults: 27 M); ``TINY_*`` are the same families shrunk so a forward pass takes
milliseconds.
"""
from fractions import Fraction

SOURCES_4 = ["drums", "bass", "other", "vocals"]
SOURCES_6 = ["drums", "bass", "other", "vocals", "guitar", "piano"]

HTDEMUCS = dict(sources=SOURCES_4, segment=Fraction(39, 5), bottom_channels=512)
HTDEMUCS_6S = dict(sources=SOURCES_6, segment=Fraction(39, 5))

# 16 kHz, nfft 512 (hop 128): three frequency layers, 256 -> 64 -> 16 -> 4 bins.
TINY_HTDEMUCS = dict(
    sources=SOURCES_4, channels=8, depth=3, nfft=512, t_layers=1, t_heads=2,
    samplerate=16000, segment=Fraction(1, 2), norm_starts=2, dconv_comp=4,
)
TINY_HTDEMUCS_MAG = dict(TINY_HTDEMUCS, cac=False)
