"""Parity of demucs.hdemucs (HDemucs and its layers) with upstream 4.0.1."""

from __future__ import annotations

import typing as tp

import pytest
import torch

from demucs.hdemucs import HDecLayer, HDemucs, HEncLayer, MultiWrap, ScaledEmbedding, pad1d
from tests.compare import max_diff, run_with_upstream_state, snr_db

SOURCES = ["drums", "bass", "other", "vocals"]

# nfft = 256: 3 frequency layers (128 -> 32 -> 8 -> 1 bins) match the hop of 64 = 4 ** 3
# of the time branch; a 4th layer works over time.
TINY: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES,
    channels=4,
    nfft=256,
    depth=4,
    norm_starts=2,
    norm_groups=2,
    dconv_attn=3,
    dconv_lstm=3,
)

CONFIGS: tp.Dict[str, tp.Tuple[tp.Dict[str, tp.Any], int]] = {
    "hybrid_cac": (dict(TINY), 3001),
    "hybrid_mask_wiener0": (dict(TINY, cac=False, dconv_mode=3, channels_time=6), 2900),
    "hybrid_mask_phase": (
        dict(
            TINY, cac=False, wiener_iters=-1, end_iters=-1, freq_emb=0, rewrite=False, context_enc=1
        ),
        2000,
    ),
    "hybrid_old": (
        dict(
            TINY,
            hybrid_old=True,
            emb_smooth=False,
            growth=1.5,
            norm_groups=1,
            dconv_attn=9,
            dconv_lstm=9,
        ),
        2222,
    ),
    "multi_freqs": (dict(TINY, multi_freqs=[0.25, 0.5], multi_freqs_depth=2, norm_starts=3), 3001),
    # Frequency only, nfft = 512 (hop 128): 256 -> 64 -> 16 -> 4 -> 1 bins, then time.
    "freq_only": (
        dict(TINY, hybrid=False, nfft=512, depth=5, audio_channels=1, dconv_attn=4, dconv_lstm=4),
        2999,
    ),
    # Frequency only with masks refined by one Wiener EM iteration (torch STFT only).
    "freq_only_wiener": (
        dict(TINY, hybrid=False, cac=False, wiener_iters=1, depth=2, wiener_residual=True),
        1500,
    ),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(name: str) -> torch.Tensor:
    kwargs, length = CONFIGS[name]
    gen = torch.Generator().manual_seed(len(name))
    return torch.randn(2, kwargs.get("audio_channels", 2), length, generator=gen)


@pytest.fixture(scope="module")
def upstream(oracle, tmp_path_factory):
    """All upstream models of this module, built in one oracle subprocess."""
    jobs = {
        name: ("hdemucs.HDemucs", kwargs, _inputs(name), 2) for name, (kwargs, _) in CONFIGS.items()
    }
    jobs["init"] = ("hdemucs.HDemucs", CONFIGS["multi_freqs"][0], None, 5)
    return oracle.make_model_dict(jobs, tmp_path_factory.mktemp("upstream"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hdemucs_parity(upstream, name):
    kwargs, length = CONFIGS[name]
    ref = upstream[name]
    mix = _inputs(name)
    model, out = run_with_upstream_state(HDemucs, kwargs, ref, mix)
    assert out.shape == (2, len(SOURCES), mix.shape[1], length)

    model.use_conv_stft = True  # Wiener EM iterations included
    with torch.no_grad():
        out_conv = model(mix)
    assert snr_db(out, out_conv) >= 100


def test_same_init_as_upstream(upstream):
    """Same seed, same construction order (MultiWrap re-inits included): same weights."""
    ref = upstream["init"]
    torch.manual_seed(5)
    state = HDemucs(**CONFIGS["multi_freqs"][0]).state_dict()
    assert list(state) == list(ref["state"])
    for key, value in ref["state"].items():
        assert max_diff(state[key], value) < 1e-7, key


# Layer-level parity: each case is (name, constructor code, kwargs, call code with `x`,
# `skip`, `inject`), evaluated with upstream's and with our hdemucs module.
_DKW = dict(depth=2, compress=2, lstm=True, attn=True, init=1e-3)
LAYER_CASES: tp.List[tp.Tuple[str, str, tp.Dict[str, tp.Any], tp.Tuple[int, ...], str]] = [
    (
        "enc_freq_inject",
        "HEncLayer(4, 8, **kw)",
        dict(norm_groups=2, context=1, dconv_kw=_DKW),
        (2, 4, 32, 9),
        "layer(x, inject)",
    ),
    (
        "enc_time_4d",
        "HEncLayer(8, 8, **kw)",
        dict(freq=False, norm=False, dconv_kw=_DKW),
        (2, 2, 4, 101),
        "layer(x)",
    ),
    ("enc_empty", "HEncLayer(4, 8, **kw)", dict(freq=False, empty=True), (2, 4, 101), "layer(x)"),
    (
        "enc_last_freq",
        "HEncLayer(4, 8, **kw)",
        dict(kernel_size=4, pad=False, rewrite=False),
        (2, 4, 4, 9),
        "layer(x)",
    ),
    (
        "dec_freq",
        "HDecLayer(8, 4, **kw)",
        dict(norm_groups=4, dconv_kw=_DKW),
        (2, 8, 8, 9),
        "layer(x, skip, None)",
    ),
    (
        "dec_freq_3d_last",
        "HDecLayer(8, 4, **kw)",
        dict(last=True, context_freq=False, kernel_size=4, pad=False),
        (2, 8, 9),
        "layer(x, skip.view(2, 8, 1, 9), None)",
    ),
    (
        "dec_time",
        "HDecLayer(8, 4, **kw)",
        dict(freq=False, dconv=False),
        (2, 8, 26),
        "layer(x, skip, 101)",
    ),
    (
        "dec_empty",
        "HDecLayer(8, 4, **kw)",
        dict(freq=False, empty=True),
        (2, 8, 26),
        "layer(x, None, 101)",
    ),
    (
        "multi_enc",
        "MultiWrap(HEncLayer(4, 8, **kw), [0.3, 0.6])",
        dict(norm=False, dconv_kw=_DKW),
        (2, 4, 64, 7),
        "layer(x)",
    ),
    (
        "multi_dec",
        "MultiWrap(HDecLayer(8, 4, **kw), [0.3, 0.6])",
        dict(norm=False, context_freq=False, dconv=False),
        (2, 8, 16, 7),
        "layer(x, skip)",
    ),
    (
        "multi_dec_last",
        "MultiWrap(HDecLayer(8, 4, **kw), [0.5])",
        dict(norm=False, context_freq=False, last=True, stride=2, kernel_size=4),
        (2, 8, 16, 7),
        "layer(x, skip)",
    ),
]

_LAYER_SCRIPT = """
import torch
from demucs.hdemucs import HEncLayer, HDecLayer, MultiWrap, ScaledEmbedding, pad1d
cases = torch.load({inp!r})
results = {{}}
for name, ctor, kw, shape, call in cases["layers"]:
    torch.manual_seed(0)
    layer = eval(ctor).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    skip = torch.randn(*shape, generator=gen)
    inject = torch.randn(shape[0], 8, shape[-1], generator=gen)
    with torch.no_grad():
        out = eval(call)
    if isinstance(out, tuple):
        out = [o for o in out if o is not None]
    results[name] = {{"state": layer.state_dict(), "out": out}}
torch.manual_seed(0)
emb = ScaledEmbedding(16, 6, scale=3.0, smooth=True)
results["embedding"] = {{"state": emb.state_dict(), "out": emb(torch.arange(16)),
                         "weight": emb.weight}}
results["pad1d"] = [pad1d(x, p, mode=m) for x, p, m in cases["pad1d"]]
torch.save(results, {out!r})
"""

PAD_CASES = [
    (torch.arange(5.0).view(1, 5), (7, 2), "reflect"),
    (torch.arange(3.0).view(1, 1, 3), (2, 6), "reflect"),
    (torch.arange(8.0).view(2, 1, 4), (3, 3), "reflect"),
    (torch.arange(4.0).view(2, 2), (5, 1), "constant"),
    (torch.arange(9.0).view(1, 9), (4, 4), "reflect"),
]


@pytest.fixture(scope="module")
def upstream_layers(tmp_path_factory):
    from tests import oracle as _oracle

    if not _oracle.available():
        pytest.skip("upstream oracle not installed (make oracle)")
    work = tmp_path_factory.mktemp("layers")
    inp, out = work / "cases.pt", work / "results.pt"
    torch.save({"layers": LAYER_CASES, "pad1d": PAD_CASES}, inp)
    _oracle.run(_LAYER_SCRIPT.format(inp=str(inp), out=str(out)), cwd=work)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("case", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_layer_parity(upstream_layers, case):
    name, ctor, kw, shape, call = case
    ref = upstream_layers[name]
    torch.manual_seed(0)
    layer = eval(
        ctor, {"HEncLayer": HEncLayer, "HDecLayer": HDecLayer, "MultiWrap": MultiWrap, "kw": kw}
    ).eval()
    # Seeded construction follows upstream's order: even the init matches.
    assert list(layer.state_dict()) == list(ref["state"])
    for key, value in ref["state"].items():
        assert max_diff(layer.state_dict()[key], value) < 1e-7, key
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    skip = torch.randn(*shape, generator=gen)
    inject = torch.randn(shape[0], 8, shape[-1], generator=gen)
    with torch.no_grad():
        out = eval(call, {"layer": layer, "x": x, "skip": skip, "inject": inject})
    if isinstance(out, tuple):
        out = [o for o in out if o is not None]
        assert len(out) == len(ref["out"])
        for ours, theirs in zip(out, ref["out"]):
            assert max_diff(ours, theirs) < 1e-5
    else:
        assert max_diff(out, ref["out"]) < 1e-5


def test_scaled_embedding_parity(upstream_layers):
    ref = upstream_layers["embedding"]
    torch.manual_seed(0)
    emb = ScaledEmbedding(16, 6, scale=3.0, smooth=True)
    assert max_diff(emb.embedding.weight, ref["state"]["embedding.weight"]) < 1e-7
    assert max_diff(emb(torch.arange(16)), ref["out"]) < 1e-6
    assert max_diff(emb.weight, ref["weight"]) < 1e-6


def test_pad1d_parity(upstream_layers):
    for (x, paddings, mode), ref in zip(PAD_CASES, upstream_layers["pad1d"]):
        out = pad1d(x, paddings, mode=mode)
        assert torch.equal(out, ref), (paddings, mode)
        left = paddings[0]
        assert torch.equal(out[..., left : left + x.shape[-1]], x)


def test_multiwrap_equal_replicas_equal_whole_layer():
    """With identical weights, the band-split layer is exactly the unsplit one."""
    torch.manual_seed(0)
    enc = HEncLayer(4, 8, norm=False, dconv=False)
    wrapped = MultiWrap(enc, [0.3, 0.6])
    for replica in wrapped.layers:
        replica.load_state_dict(enc.state_dict())
    x = torch.randn(1, 4, 64, 5)
    with torch.no_grad():
        assert max_diff(wrapped(x), enc(x)) < 1e-5

    dec = HDecLayer(8, 4, norm=False, dconv=False, context_freq=False)
    wrapped_dec = MultiWrap(dec, [0.3, 0.6])
    for replica in wrapped_dec.layers:
        replica.load_state_dict(dec.state_dict())
    y, skip = torch.randn(1, 8, 16, 5), torch.randn(1, 8, 16, 5)
    with torch.no_grad():
        out, pre = wrapped_dec(y, skip)
        assert pre is None
        assert max_diff(out, dec(y, skip, None)[0]) < 1e-5


def test_use_conv_stft_is_not_a_checkpoint_argument():
    model = HDemucs(**dict(TINY, use_conv_stft=True))
    assert model.use_conv_stft is True
    args, kwargs = model._init_args_kwargs
    assert "use_conv_stft" not in kwargs
    assert HDemucs(**TINY).use_conv_stft is False


def test_argument_errors():
    with pytest.raises(ValueError):
        HDemucs(sources=SOURCES, hybrid=False, hybrid_old=True)
    with pytest.raises(ValueError):
        HDemucs(sources=SOURCES, wiener_iters=1, end_iters=0)
    with pytest.raises(ValueError):
        MultiWrap(HEncLayer(4, 8), [0.5])  # has norm
    with pytest.raises(ValueError):
        MultiWrap(HDecLayer(8, 4, norm=False), [0.5])  # context_freq
    with pytest.raises(ValueError):
        HDecLayer(8, 4, freq=False, empty=True)(torch.zeros(1, 8, 4), torch.zeros(1, 8, 4), 10)


@pytest.mark.slow
def test_hdemucs_onnx_export_conv_stft(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    kwargs = dict(CONFIGS["multi_freqs"][0], cac=False, wiener_iters=-1, end_iters=-1)
    model = HDemucs(**kwargs, use_conv_stft=True).eval()
    mix = torch.randn(1, 2, 3001)
    path = tmp_path / "hdemucs.onnx"
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
