"""Helpers shared by test modules (test modules never import each other)."""
from __future__ import annotations

import tracemalloc
import typing as tp
from pathlib import Path

import numpy as np
import torch


def noise(length: int, channels: int = 2, seed: int = 0, amplitude: float = 0.2) -> torch.Tensor:
    """Reproducible Gaussian noise ``(channels, length)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, length, generator=gen) * amplitude


class GeneratedSource:
    """Noise made block by block: a long track that never exists in memory."""

    def __init__(self, seconds: float, samplerate: int, block: int = 4096) -> None:
        self.samplerate, self.channels, self.block = samplerate, 2, block
        self.length = int(seconds * samplerate)

    def blocks(self) -> tp.Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for start in range(0, self.length, self.block):
            size = min(self.block, self.length - start)
            yield (rng.standard_normal((2, size)) * 0.1).astype(np.float32)


def traced_stream_peak(separator: tp.Any, path: Path) -> int:
    """Peak of Python-traced memory while ``separator`` streams the file ``path``
    (decoded in blocks of 4096 samples, so that a block is smaller than the tracks)."""
    from demucs.stream import open_track

    track = open_track(path, separator.samplerate, separator.audio_channels, block=4096)
    tracemalloc.start()
    try:
        for _ in separator.stream_track(track):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
