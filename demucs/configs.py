"""Constructor arguments of the released architectures, and of tiny test models.

One place for what ``python -m demucs.export_onnx --random-weights``, the tests and the
benchmarks build when no checkpoint is at hand. No torch import here.

* ``HTDEMUCS``: the released htdemucs (and each member of htdemucs_ft): 48 channels,
  DConv in encoder and decoder (``dconv_mode=3``), 512 bottom channels around a 5-layer
  cross-domain transformer, 7.8 s training segment.
* ``HTDEMUCS_6S``: the same architecture with six sources (htdemucs_6s; taken to share
  htdemucs's training grid, not checked against its checkpoint).
* ``TINY_*``: the same family shrunk so that a forward pass takes milliseconds.

:data:`RELEASE_PARAMETERS` holds the exact parameter count of each release
architecture (a test builds them and checks).
"""

from __future__ import annotations

import typing as tp
from fractions import Fraction

__all__ = [
    "SOURCES_4",
    "SOURCES_6",
    "HTDEMUCS",
    "HTDEMUCS_6S",
    "RELEASE_CONFIGS",
    "RELEASE_PARAMETERS",
    "TINY_HTDEMUCS",
    "TINY_HTDEMUCS_MAG",
]

SOURCES_4 = ["drums", "bass", "other", "vocals"]
SOURCES_6 = ["drums", "bass", "other", "vocals", "guitar", "piano"]

HTDEMUCS: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES_4,
    segment=Fraction(39, 5),
    channels=48,
    dconv_mode=3,
    bottom_channels=512,
    t_layers=5,
)
HTDEMUCS_6S: tp.Dict[str, tp.Any] = dict(HTDEMUCS, sources=SOURCES_6)

#: ``HTDemucs`` arguments by pretrained name (bags: the architecture of each member).
RELEASE_CONFIGS: tp.Dict[str, tp.Dict[str, tp.Any]] = {
    "htdemucs": HTDEMUCS,
    "htdemucs_ft": HTDEMUCS,
    "htdemucs_6s": HTDEMUCS_6S,
}
#: Parameters of one model of each release architecture.
RELEASE_PARAMETERS: tp.Dict[str, int] = {
    "htdemucs": 41_984_456,
    "htdemucs_ft": 41_984_456,
    "htdemucs_6s": 41_989_076,
}

# 16 kHz, nfft 512 (hop 128): three frequency layers, 256 -> 64 -> 16 -> 4 bins.
TINY_HTDEMUCS: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES_4,
    channels=8,
    depth=3,
    nfft=512,
    t_layers=1,
    t_heads=2,
    samplerate=16000,
    segment=Fraction(1, 2),
    norm_starts=2,
    dconv_comp=4,
)
TINY_HTDEMUCS_MAG: tp.Dict[str, tp.Any] = dict(TINY_HTDEMUCS, cac=False)
