"""Parity of demucs.demucs (waveform Demucs, DConv, BLSTM, LocalState) with upstream 4.0.1."""

from __future__ import annotations

import typing as tp

import pytest
import torch

from demucs.demucs import BLSTM, DConv, Demucs, LocalState, rescale_module
from demucs.utils import center_trim, unfold
from tests.compare import max_diff, run_with_upstream_state

SOURCES = ["drums", "bass", "other", "vocals"]

TINY: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES,
    channels=8,
    depth=2,
    norm_starts=1,
    norm_groups=2,
    dconv_attn=1,
    dconv_lstm=1,
)

CONFIGS = {
    # DConv with BLSTM (framed: > 200 steps) and LocalState in layer 1, resampling on.
    "resample_attn_lstm": (dict(TINY, dconv_mode=3, lstm_layers=1), 2001),
    # No resampling, ReLU everywhere, no normalization, DConv in the decoder only.
    "plain": (
        dict(
            TINY,
            resample=False,
            gelu=False,
            glu=False,
            normalize=False,
            dconv_mode=2,
            dconv_comp=2,
            dconv_attn=0,
            dconv_lstm=5,
            context=0,
        ),
        1001,
    ),
    # Deeper, no rewrite convs, growth 1.5, odd kernel/stride, mono.
    "no_rewrite": (
        dict(
            sources=["a", "b"],
            audio_channels=1,
            channels=4,
            growth=1.5,
            depth=3,
            rewrite=False,
            kernel_size=6,
            stride=3,
            dconv_depth=-2,
            dconv_comp=2,
            dconv_attn=9,
            dconv_lstm=9,
        ),
        777,
    ),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(name: str) -> torch.Tensor:
    kwargs, length = CONFIGS[name]
    gen = torch.Generator().manual_seed(len(name))
    return torch.randn(2, kwargs.get("audio_channels", 2), length, generator=gen)


INIT_KWARGS = dict(TINY, dconv_mode=3, lstm_layers=1)


@pytest.fixture(scope="module")
def upstream(oracle, tmp_path_factory):
    """All upstream models of this module, built in one oracle subprocess."""
    jobs = {
        name: ("demucs.Demucs", kwargs, _inputs(name), 1) for name, (kwargs, _) in CONFIGS.items()
    }
    jobs["init"] = ("demucs.Demucs", INIT_KWARGS, None, 3)
    return oracle.make_model_dict(jobs, tmp_path_factory.mktemp("upstream"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_demucs_parity(upstream, name):
    kwargs, length = CONFIGS[name]
    ref = upstream[name]
    mix = _inputs(name)
    model, out = run_with_upstream_state(Demucs, kwargs, ref, mix)
    assert out.shape == (2, len(kwargs["sources"]), mix.shape[1], length)


def test_demucs_same_init_as_upstream(upstream):
    """Same seed, same construction order: the random init itself matches upstream."""
    ref = upstream["init"]
    torch.manual_seed(3)
    state = Demucs(**INIT_KWARGS).state_dict()
    assert list(state) == list(ref["state"])
    for key, value in ref["state"].items():
        assert max_diff(state[key], value) < 1e-7, key


def test_valid_length_matches_upstream(oracle, tmp_path):
    configs = [
        dict(sources=SOURCES),
        dict(sources=SOURCES, resample=False, depth=4),
        dict(sources=SOURCES, kernel_size=6, stride=3, depth=3),
    ]
    lengths = [1, 2, 7, 100, 1001, 4096, 44100 + 3]
    proc = oracle.run(
        f"""
        from demucs.demucs import Demucs
        for kw in {configs!r}:
            m = Demucs(**kw, channels=4)
            print(*[m.valid_length(n) for n in {lengths!r}])
    """,
        cwd=tmp_path,
    )
    expected = [list(map(int, line.split())) for line in proc.stdout.strip().splitlines()]
    for kw, exp in zip(configs, expected):
        model = Demucs(**kw, channels=4)
        assert [model.valid_length(n) for n in lengths] == exp


def test_old_checkpoint_keys_are_renamed():
    model = Demucs(sources=["a"], audio_channels=1, channels=4, depth=2, dconv_mode=0)
    state = model.state_dict()
    # In this config index 2 of each layer is parameter-free; move the rewrite conv there.
    old = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] in ("encoder", "decoder") and parts[2] == "3":
            parts[2] = "2"
        old[".".join(parts)] = value
    assert old != state
    fresh = Demucs(sources=["a"], audio_channels=1, channels=4, depth=2, dconv_mode=0)
    fresh.load_state_dict(old)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key])


def test_blstm_framing_equals_whole_for_short_inputs():
    blstm = BLSTM(3, layers=1, max_steps=16, skip=True).eval()
    x = torch.randn(2, 3, 16)
    ref = blstm.linear(blstm.lstm(x.permute(2, 0, 1))[0]).permute(1, 2, 0) + x
    with torch.no_grad():
        assert max_diff(blstm(x), ref) < 1e-6
        assert blstm(torch.randn(2, 3, 53)).shape == (2, 3, 53)


def test_argument_errors():
    with pytest.raises(ValueError):
        BLSTM(4, max_steps=10)
    with pytest.raises(ValueError):
        LocalState(6, heads=4)
    with pytest.raises(ValueError):
        DConv(8, kernel=4)
    with pytest.raises(ValueError):
        center_trim(torch.zeros(3), 5)
    with pytest.raises(ValueError):
        Demucs(sources=["a"], depth=0)


def test_utils_shapes():
    x = torch.arange(10.0).view(1, 10)
    frames = unfold(x, 4, 3)
    assert frames.shape == (1, 4, 4)
    assert frames[0, 3].tolist() == [9, 0, 0, 0]
    assert center_trim(torch.arange(7.0), 4).tolist() == [1, 2, 3, 4]


def test_rescale_module_targets_reference_std():
    conv = torch.nn.Conv1d(16, 16, 5)
    before = conv.weight.std().item()
    rescale_module(torch.nn.Sequential(conv), reference=0.1)
    after = conv.weight.std().item()
    assert after == pytest.approx((before * 0.1) ** 0.5, rel=1e-4)


@pytest.mark.slow
def test_demucs_onnx_export(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = Demucs(**dict(TINY, dconv_mode=3, lstm_layers=1)).eval()
    mix = torch.randn(1, 2, 2001)
    path = tmp_path / "demucs.onnx"
    with torch.no_grad():
        expected = model(mix)
        torch.onnx.export(
            model,
            (mix,),
            str(path),
            input_names=["mix"],
            output_names=["sources"],
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"mix": mix.numpy()})
    assert max_diff(torch.from_numpy(out), expected) < 1e-4
