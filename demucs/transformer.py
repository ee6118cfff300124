"""Cross-domain transformer used at the bottleneck of Hybrid Transformer Demucs.

Parameter names and shapes match upstream demucs 4.0.1, so upstream checkpoints load
with ``strict=True``.
"""
from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel learnt rescaling of a residual branch (Touvron et al. 2021, CaiT).

    The scale starts small (``init``) so that each residual block is close to the
    identity at initialisation.

    Args:
        channels: number of channels ``C``.
        init: initial value of every scale coefficient.
        channel_last: if False the input is ``(B, C, T)``; if True the channels are the
            last dimension, e.g. ``(T, B, C)`` or ``(B, T, C)``.
    """

    def __init__(self, channels: int, init: float = 0, channel_last: bool = False) -> None:
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, T)`` (or ``(..., C)`` if ``channel_last``); same shape out."""
        if self.channel_last:
            return self.scale * x
        return self.scale[:, None] * x
