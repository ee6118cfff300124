"""HTDemucs: parity with upstream 4.0.1, and the conv-STFT backend against torch's."""

from fractions import Fraction

import pytest
import torch

from demucs.htdemucs import HTDemucs
from demucs import configs
from tests.compare import snr_db

TINY_CASES = {
    "cac": dict(),
    "magnitude_wiener0": dict(cac=False),
    "magnitude_phase": dict(cac=False, wiener_iters=-1, end_iters=-1),
    "bottom_channels": dict(bottom_channels=16),
    "multi_freqs_dconv3": dict(multi_freqs=[0.5], multi_freqs_depth=1, dconv_mode=3),
    "cape_cross_first": dict(t_emb="cape", t_cross_first=True, t_layers=2),
    "no_emb_no_rewrite": dict(freq_emb=0.0, rewrite=False, context_enc=1),
    "mono": dict(audio_channels=1),
    "no_train_segment": dict(use_train_segment=False),
    "merged_branches": dict(depth=4, nfft=256, t_layers=0),
}
RELEASE_CASES = ["HTDEMUCS", "HTDEMUCS_6S"]


def _tiny_kwargs(name: str) -> dict:
    return dict(configs.TINY_HTDEMUCS, **TINY_CASES[name])


def _tiny_mix(name: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    channels = _tiny_kwargs(name).get("audio_channels", 2)
    return torch.randn(2, channels, 8000 - 37, generator=gen)  # batch 2, odd length


def _release_mix() -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(1, 2, 44100 * 2 + 123, generator=gen)  # padded to the segment inside


@pytest.fixture(scope="module")
def upstream(oracle, tmp_path_factory):
    """Upstream states and outputs for every case, from one oracle subprocess."""
    specs = [
        dict(klass="htdemucs.HTDemucs", kwargs=_tiny_kwargs(name), inputs=_tiny_mix(name))
        for name in TINY_CASES
    ]
    results = oracle.make_models(specs, tmp_path_factory.mktemp("tiny"))
    return dict(zip(TINY_CASES, results))


@pytest.fixture(scope="module")
def upstream_release(oracle, tmp_path_factory):
    specs = [
        dict(klass="htdemucs.HTDemucs", kwargs=getattr(configs, name), inputs=_release_mix())
        for name in RELEASE_CASES
    ]
    results = oracle.make_models(specs, tmp_path_factory.mktemp("release"))
    return dict(zip(RELEASE_CASES, results))


def _check(kwargs: dict, ref: dict, mix: torch.Tensor) -> None:
    model = HTDemucs(**kwargs)
    model.load_state_dict(ref["state"], strict=True)
    model.eval()
    with torch.no_grad():
        out = model(mix)
        model.use_conv_stft = True
        out_conv = model(mix)
    assert out.shape == ref["output"].shape
    assert (out - ref["output"]).abs().max() < 1e-5
    assert snr_db(out, out_conv) > 100


@pytest.mark.parametrize("name", list(TINY_CASES))
def test_parity_tiny(upstream, name):
    _check(_tiny_kwargs(name), upstream[name], _tiny_mix(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", RELEASE_CASES)
def test_parity_release_configs(upstream_release, name):
    _check(getattr(configs, name), upstream_release[name], _release_mix())


def test_conv_flag_is_not_in_state_or_kwargs():
    model = HTDemucs(**configs.TINY_HTDEMUCS, use_conv_stft=True)
    ref = HTDemucs(**configs.TINY_HTDEMUCS)
    assert model.state_dict().keys() == ref.state_dict().keys()
    assert all("dft" not in key and "basis" not in key for key in model.state_dict())


def test_conv_backend_is_real_valued():
    model = HTDemucs(**configs.TINY_HTDEMUCS, use_conv_stft=True).eval()
    mix = torch.randn(1, 2, 4000)
    z = model._spec(mix)
    assert not z.is_complex() and z.shape[-1] == 2
    m = model._magnitude(z)
    assert m.shape[1] == 4
    with torch.no_grad():
        out = model(mix)
    assert out.shape == (1, 4, 2, 4000)


def test_conv_backend_runs_wiener_iterations():
    torch.manual_seed(0)
    model = HTDemucs(**dict(configs.TINY_HTDEMUCS, cac=False, wiener_iters=1, end_iters=1))
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        reference = model.eval()(mix)
        model.use_conv_stft = True
        assert snr_db(reference, model(mix)) >= 100


def test_valid_length_and_errors():
    model = HTDemucs(**configs.TINY_HTDEMUCS)
    assert model.valid_length(100) == 8000
    with pytest.raises(ValueError, match="longer than"):
        model.valid_length(9000)
    with pytest.raises(ValueError, match="end_iters"):
        HTDemucs(sources=["a"], wiener_iters=1, end_iters=0)


def test_training_mode_records_segment():
    model = HTDemucs(**configs.TINY_HTDEMUCS).train()
    model(torch.randn(1, 2, 4000))
    assert model.segment == Fraction(4000, 16000)


@pytest.mark.parametrize("name", ["multi_freqs_dconv3", "cac"])
def test_same_init_as_upstream(upstream, name):
    """The U-Net layers shared with HDemucs are built in upstream's order (MultiWrap
    re-initialisations included): the same seed gives upstream's initial weights."""
    torch.manual_seed(0)
    state = HTDemucs(**_tiny_kwargs(name)).state_dict()
    ref = upstream[name]["state"]
    assert list(state) == list(ref)
    for key, value in ref.items():
        assert (state[key] - value).abs().max() < 1e-7, key
