"""Track normalisation: the mix is separated as ``(mix - mean) / std`` and the stems are
scaled back with ``stems * std + mean``, where ``mean`` and ``std`` (unbiased) are those of
the mono downmix of the whole track, as upstream's command line does."""

from __future__ import annotations

import dataclasses
import math
import typing as tp

import numpy as np

__all__ = ["TrackStats"]


@dataclasses.dataclass(frozen=True)
class TrackStats:
    """Length and normalisation of a track (``std`` is 1 for a constant or silent mix,
    which has no spread to divide by)."""

    length: int
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def of_blocks(cls, blocks: tp.Iterable[np.ndarray]) -> "TrackStats":
        """Statistics of ``(channels, n)`` blocks, merged block by block in float64 (Chan
        et al.), so that a streamed track gets the statistics of the whole array."""
        count, mean, m2 = 0, 0.0, 0.0
        for block in blocks:
            mono = np.asarray(block).mean(axis=0, dtype=np.float32).astype(np.float64)
            n = mono.shape[0]
            if not n:
                continue
            block_mean = float(mono.mean())
            block_m2 = float(((mono - block_mean) ** 2).sum())
            total = count + n
            delta = block_mean - mean
            mean += delta * n / total
            m2 += block_m2 + delta * delta * count * n / total
            count = total
        std = math.sqrt(m2 / (count - 1)) if count > 1 else 0.0
        if not (std > 0 and math.isfinite(std)):
            std = 1.0
        return cls(length=count, mean=float(np.float32(mean)), std=float(np.float32(std)))

    @classmethod
    def of_array(cls, wav: np.ndarray, block: int = 1 << 20) -> "TrackStats":
        """Statistics of a whole ``(channels, T)`` array."""
        return cls.of_blocks(
            wav[:, start : start + block] for start in range(0, wav.shape[-1], block)
        )
