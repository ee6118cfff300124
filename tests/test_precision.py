"""Reduced precision (demucs.precision): close to float32, float32 untouched, clear errors."""

import pytest
import torch
from torch import nn

from demucs import precision
from demucs.export_onnx import snr_db
from demucs.htdemucs import HTDemucs

from demucs.configs import TINY_HTDEMUCS

#: bf16 keeps 8 bits of mantissa (~48 dB per rounding); the tiny model measures ~52 dB.
MIN_BF16_SNR_DB = 40.0


def _model(use_conv_stft: bool = False) -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(**TINY_HTDEMUCS, use_conv_stft=use_conv_stft).eval()


def _mix() -> torch.Tensor:
    return torch.randn(1, 2, 8000, generator=torch.Generator().manual_seed(1))


def _cpuinfo(tmp_path, flags: str, key: str = "flags"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\n{key}\t\t: fpu sse2 avx2 {flags}\n\n")
    return path


@pytest.mark.parametrize("use_conv_stft", [False, True])
def test_bf16_close_to_fp32(use_conv_stft):
    model, mix = _model(use_conv_stft), _mix()
    with torch.no_grad():
        reference = model(mix)
        # check=False: this test must also run on CPUs without native bf16 (slowly).
        with precision.precision_context("bf16", "cpu", check=False):
            out = model(mix)
    assert out.dtype == torch.float32
    assert snr_db(reference.numpy(), out.numpy()) >= MIN_BF16_SNR_DB


def test_norms_stay_float32_under_bf16():
    model, dtypes = _model(), set()
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    assert norms
    handles = [
        m.register_forward_hook(lambda mod, args, out: dtypes.add((args[0].dtype, out.dtype)))
        for m in norms
    ]
    with torch.no_grad(), precision.precision_context("bf16", "cpu", check=False):
        model(_mix())
    for handle in handles:
        handle.remove()
    assert dtypes == {(torch.float32, torch.float32)}


def test_fp32_unchanged_bit_for_bit():
    model, mix = _model(), _mix()
    with torch.no_grad():
        reference = model(mix)
        with precision.precision_context("fp32", "cpu"):
            same = model(mix)
        with precision.precision_context("bf16", "cpu", check=False):
            model(mix)
        after = model(mix)  # nothing of the bf16 context is left behind
    assert torch.equal(reference, same)
    assert torch.equal(reference, after)


def test_bf16_without_cpu_feature_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path, "avx512f"))
    assert not precision.cpu_supports_bf16()
    with pytest.raises(ValueError, match="bf16 needs a CPU with native bf16"):
        precision.check_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="bf16"):
        with precision.precision_context("bf16", torch.device("cpu")):
            pass


@pytest.mark.parametrize(
    "flag,key", [("avx512_bf16", "flags"), ("amx_bf16", "flags"), ("bf16", "Features")]
)
def test_bf16_with_cpu_feature_passes(tmp_path, monkeypatch, flag, key):
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path, flag, key))
    assert precision.cpu_supports_bf16()
    precision.check_precision("bf16", "cpu")


def test_other_precision_errors():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        precision.check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        precision.check_precision("int8", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        with precision.precision_context("half", "cpu", check=False):
            pass
    precision.check_precision("fp32", "cpu")
    precision.check_precision("fp16", "cuda:0")  # checked by name; no GPU needed


@pytest.mark.parametrize("use_conv_stft", [False, True])
def test_stft_stays_float32_under_bf16(use_conv_stft):
    model, mix = _model(use_conv_stft), _mix()
    with torch.no_grad(), precision.precision_context("bf16", "cpu", check=False):
        spec = model._spec(mix)
        back = model._ispec(spec, mix.shape[-1])
    assert spec.dtype in (torch.float32, torch.complex64)
    assert back.dtype == torch.float32


def test_bf16_hdemucs_with_lstm_and_local_attention():
    from demucs.hdemucs import HDemucs

    torch.manual_seed(0)
    model = HDemucs(
        sources=["a", "b"],
        channels=4,
        nfft=256,
        depth=4,
        norm_starts=2,
        norm_groups=2,
        dconv_attn=3,
        dconv_lstm=3,
    ).eval()
    mix = torch.randn(1, 2, 8000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(mix)
        with precision.precision_context("bf16", "cpu", check=False):
            out = model(mix)  # the LSTMs run in float32 (no bf16 LSTM in oneDNN on AVX2)
    assert snr_db(reference.numpy(), out.float().numpy()) >= MIN_BF16_SNR_DB
