"""Parity of demucs.hdemucs (HDemucs and its layers) with upstream 4.0.1."""
from __future__ import annotations

import typing as tp

import pytest
import torch

from demucs.hdemucs import HDecLayer, HDemucs, HEncLayer, MultiWrap, ScaledEmbedding, pad1d

SOURCES = ["drums", "bass", "other", "vocals"]

# nfft = 256: 3 frequency layers (128 -> 32 -> 8 -> 1 bins) match the hop of 64 = 4 ** 3
# of the time branch; a 4th layer works over time.
TINY: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES, channels=4, nfft=256, depth=4, norm_starts=2, norm_groups=2,
    dconv_attn=3, dconv_lstm=3,
)

CONFIGS: tp.Dict[str, tp.Tuple[tp.Dict[str, tp.Any], int]] = {
    "hybrid_cac": (dict(TINY), 3001),
    "hybrid_mask_wiener0": (dict(TINY, cac=False, dconv_mode=3, channels_time=6), 2900),
    "hybrid_mask_phase": (dict(TINY, cac=False, wiener_iters=-1, end_iters=-1, freq_emb=0,
                               rewrite=False, context_enc=1), 2000),
    "hybrid_old": (dict(TINY, hybrid_old=True, emb_smooth=False, growth=1.5, norm_groups=1,
                        dconv_attn=9, dconv_lstm=9), 2222),
    "multi_freqs": (dict(TINY, multi_freqs=[0.25, 0.5], multi_freqs_depth=2, norm_starts=3),
                    3001),
    # Frequency only, nfft = 512 (hop 128): 256 -> 64 -> 16 -> 4 -> 1 bins, then time.
    "freq_only": (dict(TINY, hybrid=False, nfft=512, depth=5, audio_channels=1,
                       dconv_attn=4, dconv_lstm=4), 2999),
}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    noise = (ref - est).pow(2).sum().clamp_min(1e-30)
    return 10 * torch.log10(ref.pow(2).sum() / noise).item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hdemucs_parity(oracle, tmp_path, name):
    kwargs, length = CONFIGS[name]
    channels = kwargs.get("audio_channels", 2)
    mix = torch.randn(2, channels, length)
    ref = oracle.make_model("hdemucs.HDemucs", kwargs, mix, tmp_path, seed=2)
    model = HDemucs(**kwargs).eval()
    model.load_state_dict(ref["state"], strict=True)
    assert list(model.state_dict()) == list(ref["state"])
    with torch.no_grad():
        out = model(mix)
    assert out.shape == (2, len(SOURCES), channels, length)
    assert _max_diff(out, ref["output"]) < 1e-5

    if model.wiener_iters > 0:
        return
    model.use_conv_stft = True
    with torch.no_grad():
        out_conv = model(mix)
    assert _snr_db(out, out_conv) >= 100
