"""The two STFT backends: conv vs torch.stft/istft, round trips, exactness."""
import pytest
import torch

from demucs.spec import conv_ispectro, conv_spectro, dft_bases, ispectro, spectro


def snr_db(ref: torch.Tensor, est: torch.Tensor) -> float:
    noise = (ref - est).pow(2).sum()
    return float(10 * torch.log10(ref.pow(2).sum() / noise.clamp_min(1e-30)))


@pytest.mark.parametrize("n_fft,length", [(64, 100), (512, 3000), (4096, 44100), (1024, 1024)])
def test_conv_stft_matches_torch(n_fft, length):
    x = torch.randn(2, 3, length)
    ref = torch.view_as_real(spectro(x, n_fft))
    out = conv_spectro(x, n_fft)
    assert out.shape == ref.shape
    assert snr_db(ref, out) > 110


@pytest.mark.parametrize("n_fft,length", [(64, 96), (512, 3000), (4096, 44100)])
def test_conv_istft_matches_torch(n_fft, length):
    z = spectro(torch.randn(2, length), n_fft)
    ref = ispectro(z, n_fft // 4, length)
    out = conv_ispectro(torch.view_as_real(z), n_fft // 4, length)
    assert out.shape == ref.shape == (2, length)
    assert snr_db(ref, out) > 110


@pytest.mark.parametrize("n_fft", [64, 512, 4096])
def test_conv_round_trip(n_fft):
    hop = n_fft // 4
    x = torch.randn(1, 2, hop * 20)
    back = conv_ispectro(conv_spectro(x, n_fft), hop, x.shape[-1])
    assert snr_db(x, back) > 110


def test_partial_bins_treat_nyquist_as_zero():
    n_fft = 256
    z = spectro(torch.randn(3, 2000), n_fft)
    z[..., -1, :] = 0
    ref = ispectro(z, n_fft // 4, 2000)
    out = conv_ispectro(torch.view_as_real(z)[..., :-1, :, :], n_fft // 4, 2000, n_fft=n_fft)
    assert snr_db(ref, out) > 110


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
