"""The two STFT backends: conv (both implementations) vs torch.stft/istft, exactness."""

import pytest
import torch

from demucs import spec as S
from demucs.spec import conv_ispectro, conv_spectro, dft_bases, ispectro, spectro
from tests.compare import snr_db

IMPLS = pytest.mark.parametrize("impl", S.STFT_IMPLS)


@IMPLS
@pytest.mark.parametrize("n_fft,length", [(64, 100), (512, 3000), (4096, 44100), (1024, 1024)])
def test_conv_stft_matches_torch(n_fft, length, impl):
    x = torch.randn(2, 3, length)
    ref = torch.view_as_real(spectro(x, n_fft))
    out = conv_spectro(x, n_fft, impl=impl)
    assert out.shape == ref.shape
    assert snr_db(ref, out) > 110


@IMPLS
@pytest.mark.parametrize("n_fft,length", [(64, 96), (64, 40), (512, 3000), (4096, 44100)])
def test_conv_istft_matches_torch(n_fft, length, impl):
    # (64, 40): too few frames for a periodic window envelope (whole envelope used).
    z = spectro(torch.randn(2, length), n_fft)
    ref = ispectro(z, n_fft // 4, length)
    out = conv_ispectro(torch.view_as_real(z), n_fft // 4, length, impl=impl)
    assert out.shape == ref.shape == (2, length)
    assert snr_db(ref, out) > 110


@IMPLS
@pytest.mark.parametrize("n_fft", [64, 512, 4096])
def test_conv_round_trip(n_fft, impl):
    hop = n_fft // 4
    x = torch.randn(1, 2, hop * 20)
    back = conv_ispectro(conv_spectro(x, n_fft, impl=impl), hop, x.shape[-1], impl=impl)
    assert snr_db(x, back) > 110


@IMPLS
def test_partial_bins_treat_nyquist_as_zero(impl):
    n_fft = 256
    z = spectro(torch.randn(3, 2000), n_fft)
    z[..., -1, :] = 0
    ref = ispectro(z, n_fft // 4, 2000)
    out = conv_ispectro(
        torch.view_as_real(z)[..., :-1, :, :], n_fft // 4, 2000, n_fft=n_fft, impl=impl
    )
    assert snr_db(ref, out) > 110


def test_imaginary_dc_and_nyquist_are_ignored():
    # torch.istft (irfft) ignores them; the factored inverse must too.
    n_fft = 512
    z = spectro(torch.randn(2, 4000), n_fft)
    ref = ispectro(z, n_fft // 4, 4000)
    z[..., 0, :] += 5j
    z[..., -1, :] += 3j
    assert snr_db(ref, conv_ispectro(torch.view_as_real(z), n_fft // 4, 4000)) > 110


@pytest.mark.parametrize("n_fft,hop", [(4096, 1024), (512, 128), (384, 96), (100, 25)])
def test_factored_sizes(n_fft, hop):
    # Non-power-of-two sizes factor too (384 = 24 x 16, 100 = 20 x 5).
    x = torch.randn(2, 30 * hop)
    out = conv_spectro(x, n_fft, hop, impl="factored")
    assert snr_db(torch.view_as_real(spectro(x, n_fft, hop)), out) > 110
    back = conv_ispectro(out, hop, x.shape[-1], impl="factored")
    assert snr_db(x, back) > 110
    n1, n2 = S._factor(n_fft, hop)
    assert n1 * n2 == n_fft and hop % n2 == 0


def test_factored_bases_are_small():
    # No n_fft x n_fft basis: ~50 K floats per direction for n_fft 4096.
    for inverse in (False, True):
        bases = S.factored_bases(4096, 1024, 2048, inverse, torch.device("cpu"), torch.float32)
        assert sum(t.numel() for t in bases) < 60_000
        assert max(t.numel() for t in bases) <= 8192


def test_hop_not_dividing_n_fft_falls_back_to_conv():
    x = torch.randn(1, 3000)
    assert S._resolve_impl("factored", 512, 100) == "conv"
    out = conv_spectro(x, 512, 100)
    assert snr_db(torch.view_as_real(spectro(x, 512, 100)), out) > 110
    with pytest.raises(ValueError, match="unknown STFT implementation"):
        conv_spectro(x, 512, impl="fft")


@IMPLS
def test_planar_layout(impl):
    x = torch.randn(3, 5000)
    z = S.planar_spectro(x, 512, 128, 256, impl)
    assert z.shape == (3, 2, 256, 5000 // 128 + 1)
    expected = conv_spectro(x, 512, 128, n_bins=256, impl="conv")
    assert snr_db(expected, z.permute(0, 2, 3, 1)) > 110
    back = S.planar_ispectro(z, 512, 128, 5000, impl)
    assert snr_db(conv_ispectro(expected, 128, 5000, n_fft=512, impl="conv"), back) > 110


@pytest.mark.parametrize("cac", [True, False])
def test_model_backends_agree(cac):
    from demucs.htdemucs import HTDemucs
    from demucs.configs import TINY_HTDEMUCS

    torch.manual_seed(0)
    model = HTDemucs(**dict(TINY_HTDEMUCS, cac=cac, wiener_iters=0, end_iters=0)).eval()
    mix = torch.randn(1, 2, 8000)
    with torch.no_grad():
        ref = model(mix)
        model.use_conv_stft = True
        outs = {}
        for impl in S.STFT_IMPLS:
            model.stft_impl = impl
            outs[impl] = model(mix)
    for out in outs.values():
        assert snr_db(ref, out) > 100


def test_bases_are_exact_for_large_ffts():
    # Without reducing k*n modulo n_fft first, float32 angles lose ~3 digits at 4096.
    analysis, _ = dft_bases(4096, 2049, torch.device("cpu"), torch.float32)
    n = torch.arange(4096, dtype=torch.float64)
    k = 2047
    window = 0.5 - 0.5 * torch.cos(2 * torch.pi * n / 4096)
    expected = torch.cos(2 * torch.pi * k * n / 4096) * window / 64
    assert (analysis[k, 0].double() - expected).abs().max() < 1e-7


def test_bases_are_not_parameters():
    from demucs.spec import SpectralMixin

    class M(SpectralMixin, torch.nn.Module):
        pass

    assert M().state_dict() == {}


def test_istft_rejects_bad_layout():
    with pytest.raises(ValueError, match="trailing"):
        conv_ispectro(torch.zeros(2, 33, 5, 3), 16, 64)
