"""apply_model / BagOfModels / TensorChunk: unit tests and parity with upstream 4.0.1."""

import random
import textwrap
from fractions import Fraction

import pytest
import torch

from demucs.apply import BagOfModels, TensorChunk, apply_model, max_allowed_segment, tensor_chunk
from demucs.states import load_model

# A tiny deterministic model, defined identically here and in the oracle interpreter.
# Its output depends on the statistics of the whole chunk, so chunking, padding and
# shifts all change the result: parity checks that they are done exactly as upstream.
TOY_SRC = textwrap.dedent("""
    import torch

    class Toy(torch.nn.Module):
        def __init__(self, sources=3, channels=2, samplerate=200, segment=1.0):
            super().__init__()
            self.sources = [f"s{i}" for i in range(sources)]
            self.audio_channels = channels
            self.samplerate = samplerate
            self.segment = segment
            self.conv = torch.nn.Conv1d(channels, sources * channels, 5, padding=2)

        def valid_length(self, length):
            return length + (-length) % 16

        def forward(self, x):
            batch, channels, length = x.shape
            n = len(self.sources)
            y = torch.tanh(self.conv(x)) * x.std(dim=-1, keepdim=True).repeat(1, n, 1)
            y = y + x.mean(dim=-1, keepdim=True).repeat(1, n, 1)
            return y.view(batch, len(self.sources), channels, length)
""")
_ns: dict = {}
exec(TOY_SRC, _ns)
Toy = _ns["Toy"]

# (name, model index or "bag", kwargs for apply_model, seed); "_length" crops the mix.
TOY_CASES = [
    ("noshift_split", 0, dict(shifts=0, split=True, overlap=0.25), 1),
    ("noshift_nosplit", 0, dict(shifts=0, split=False), 1),
    ("shift1", 0, dict(shifts=1, split=True, overlap=0.25), 2),
    ("shift2_overlap", 0, dict(shifts=2, split=True, overlap=0.5, transition_power=2.0), 3),
    ("segment_override", 0, dict(shifts=0, split=True, segment=0.7, overlap=0.1), 4),
    ("bag", "bag", dict(shifts=2, split=True, overlap=0.25), 5),
]
BAG_WEIGHTS = [[1.0, 0.5, 0.0], [0.25, 1.0, 1.0]]


def _toy_states(count: int = 2) -> list:
    states = []
    for seed in range(count):
        torch.manual_seed(100 + seed)
        states.append(Toy().state_dict())
    return states


def _run_ours_toy(states, mix):
    models = []
    for state in states:
        model = Toy()
        model.load_state_dict(state)
        models.append(model)
    results = {}
    for name, which, kwargs, seed in TOY_CASES:
        random.seed(seed)
        if which == "bag":
            target = BagOfModels([Toy(), Toy()], BAG_WEIGHTS)
            for member, state in zip(target.models, states):
                member.load_state_dict(state)
        else:
            target = models[which]
        results[name] = apply_model(target, mix, **kwargs)
    return results


def test_toy_parity_with_upstream(oracle, tmp_path):
    torch.manual_seed(0)
    mix = torch.randn(2, 2, 537)  # batch 2, odd length: several segments, partial last one
    states = _toy_states()
    torch.save(
        {"states": states, "mix": mix, "cases": TOY_CASES, "bag_weights": BAG_WEIGHTS},
        tmp_path / "in.pt",
    )
    oracle.run(
        TOY_SRC
        + textwrap.dedent(f"""
        import random
        from demucs.apply import apply_model, BagOfModels
        data = torch.load({str(tmp_path / "in.pt")!r})
        def build(state):
            model = Toy()
            model.load_state_dict(state)
            return model
        models = [build(s) for s in data["states"]]
        results = {{}}
        for name, which, kwargs, seed in data["cases"]:
            random.seed(seed)
            if which == "bag":
                target = BagOfModels([build(s) for s in data["states"]], data["bag_weights"])
            else:
                target = models[which]
            results[name] = apply_model(target, data["mix"], **kwargs)
        torch.save(results, {str(tmp_path / "out.pt")!r})
    """),
        cwd=tmp_path,
    )
    expected = oracle.load_result(tmp_path / "out.pt")
    ours = _run_ours_toy(states, mix)
    for name, *_ in TOY_CASES:
        assert ours[name].shape == expected[name].shape, name
        assert (ours[name] - expected[name]).abs().max() < 1e-5, name


def test_same_seed_same_shifts():
    model = Toy()
    mix = torch.randn(1, 2, 300)
    random.seed(3)
    first = apply_model(model, mix, shifts=2)
    random.seed(3)
    second = apply_model(model, mix, shifts=2)
    assert torch.equal(first, second)


def test_num_workers_and_progress_match_serial(capsys):
    model = Toy()
    mix = torch.randn(1, 2, 700)
    serial = apply_model(model, mix, shifts=0)
    threaded = apply_model(model, mix, shifts=0, num_workers=2, progress=True)
    assert torch.allclose(serial, threaded)
    assert "seconds" in capsys.readouterr().err


def test_output_stays_on_mix_device_and_is_not_inference_tensor():
    out = apply_model(Toy(), torch.randn(1, 2, 250), shifts=0)
    assert out.device == torch.device("cpu")
    out *= 2  # in-place works: not an inference-mode tensor


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(overlap=1.0), "overlap"),
        (dict(overlap=-0.1), "overlap"),
        (dict(transition_power=0.5), "transition_power"),
        (dict(shifts=-1), "shifts"),
        (dict(segment=0), "segment"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_model(Toy(), torch.randn(1, 2, 100), **kwargs)


def test_bad_mix_shape():
    with pytest.raises(ValueError, match="batch, channels, time"):
        apply_model(Toy(), torch.randn(2, 100))


def test_bag_validation():
    with pytest.raises(ValueError, match="at least one"):
        BagOfModels([])
    with pytest.raises(ValueError, match="samplerate"):
        BagOfModels([Toy(), Toy(samplerate=100)])
    with pytest.raises(ValueError, match="sources"):
        BagOfModels([Toy(), Toy(sources=2)])
    with pytest.raises(ValueError, match="2 models"):
        BagOfModels([Toy(), Toy()], [[1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="one per source"):
        BagOfModels([Toy(), Toy()], [[1.0, 1.0], [1.0, 1.0]])
    bag = BagOfModels([Toy(), Toy()], segment=0.5)
    assert [m.segment for m in bag.models] == [0.5, 0.5]
    assert bag.weights == [[1.0] * 3, [1.0] * 3]
    assert bag.max_allowed_segment == float("inf")
    with pytest.raises(NotImplementedError):
        bag(torch.randn(1, 2, 10))


def test_tensor_chunk_padding_uses_context():
    tensor = torch.arange(10.0).view(1, 1, 10)
    chunk = TensorChunk(tensor, 2, 4)
    assert chunk.shape == [1, 1, 4]
    assert chunk.padded(6).flatten().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    inner = TensorChunk(chunk, 1, 10)  # chunk of a chunk: clipped to the outer chunk
    assert inner.offset == 3 and inner.length == 3
    edge = TensorChunk(tensor, 8)
    assert edge.padded(6).flatten().tolist() == [6.0, 7.0, 8.0, 9.0, 0.0, 0.0]
    assert tensor_chunk(chunk) is chunk
    with pytest.raises(ValueError):
        TensorChunk(tensor, 10)
    with pytest.raises(ValueError):
        chunk.padded(2)
    with pytest.raises(ValueError):
        tensor_chunk([1, 2])


# ---------------------------------------------------------------------------------------
# Tiny HTDemucs: parity with upstream on the same checkpoint.
# ---------------------------------------------------------------------------------------

HT_KWARGS = dict(
    sources=["drums", "bass", "other"],
    audio_channels=2,
    channels=4,
    depth=2,
    nfft=512,
    t_layers=1,
    t_heads=2,
    dconv_comp=2,
    samplerate=8000,
    segment=Fraction(1, 2),
)

HT_CASES = [
    ("shift0_split", "m0", dict(shifts=0, split=True, overlap=0.25), 1),
    ("shift1_split", "m0", dict(shifts=1, split=True, overlap=0.25), 2),
    ("segment", "m0", dict(shifts=0, split=True, segment=0.3, overlap=0.25), 4),
    ("nosplit", "m0", dict(shifts=0, split=False, _length=3000), 5),
    ("bag", "bag", dict(shifts=0, split=True, overlap=0.25), 6),
]
# Upstream's transformer draws `random.randrange(sin_random_shift + 1)` on every forward,
# eval included, so the shift offsets drawn after the first forward depend on it.
HT_RNG_CASES = [
    ("shift2", "m0", dict(shifts=2, split=True, overlap=0.25), 3),
    ("bag_shift1", "bag", dict(shifts=1, split=True, overlap=0.25), 7),
]
CONV_STFT_CASES = ("shift1_split", "segment")
HT_BAG_WEIGHTS = [[1.0, 0.0, 0.5], [0.5, 1.0, 1.0]]


@pytest.fixture(scope="module")
def ht_upstream(tmp_path_factory):
    """Two tiny upstream HTDemucs checkpoints and upstream's apply_model results on them,
    made in a single oracle run. Returns ``(checkpoint paths, mix, {case: output})``."""
    import os

    from tests import oracle

    pytest.importorskip("demucs.htdemucs")
    if not oracle.available():
        if os.environ.get("DEMUCS_REQUIRE_ORACLE"):
            pytest.fail("upstream oracle missing: run `make oracle`")
        pytest.skip("upstream oracle not installed (make oracle)")
    workdir = tmp_path_factory.mktemp("ht_apply")
    torch.manual_seed(0)
    mix = torch.randn(2, 2, 4500)
    paths = [workdir / f"ht{seed}.th" for seed in range(2)]
    torch.save(
        {
            "mix": mix,
            "cases": HT_CASES + HT_RNG_CASES,
            "weights": HT_BAG_WEIGHTS,
            "kwargs": HT_KWARGS,
        },
        workdir / "in.pt",
    )
    oracle.run(
        f"""
        import random, torch
        from demucs.apply import apply_model, BagOfModels
        from demucs.htdemucs import HTDemucs
        from demucs.states import load_model, serialize_model
        data = torch.load({str(workdir / "in.pt")!r})
        paths = {[str(p) for p in paths]!r}
        for seed, path in enumerate(paths):
            torch.manual_seed(seed)
            torch.save(serialize_model(HTDemucs(**data["kwargs"]), {{}}), path)
        results = {{}}
        for name, which, kwargs, seed in data["cases"]:
            models = [load_model(p) for p in paths]
            target = BagOfModels(models, data["weights"]) if which == "bag" else models[0]
            random.seed(seed)
            kwargs = dict(kwargs)
            mix = data["mix"][..., :kwargs.pop("_length", None)]
            results[name] = apply_model(target, mix, **kwargs)
        torch.save(results, {str(workdir / "out.pt")!r})
    """,
        cwd=workdir,
    )
    return paths, mix, oracle.load_result(workdir / "out.pt")


def _ht_target(which, models):
    if which == "bag":
        return BagOfModels(models, HT_BAG_WEIGHTS)
    return models[0]


def _check_ht_cases(ht_upstream, cases, use_conv_stft=False):
    paths, mix, expected = ht_upstream
    models = [load_model(p, use_conv_stft=use_conv_stft) for p in paths]
    for name, which, kwargs, seed in cases:
        random.seed(seed)
        kwargs = dict(kwargs)
        cropped = mix[..., : kwargs.pop("_length", None)]
        ours = apply_model(_ht_target(which, models), cropped, **kwargs)
        assert ours.shape == expected[name].shape, name
        assert (ours - expected[name]).abs().max() < 1e-4, name


def test_htdemucs_parity_with_upstream(ht_upstream):
    _check_ht_cases(ht_upstream, HT_CASES)


def test_htdemucs_parity_with_upstream_conv_stft(ht_upstream):
    _check_ht_cases(ht_upstream, [c for c in HT_CASES if c[0] in CONV_STFT_CASES], True)


def test_htdemucs_parity_random_stream(ht_upstream):
    # Upstream draws random.randrange(sin_random_shift + 1) in every forward pass, which
    # advances the stream apply_model draws its shifts from: ours must draw the same.
    model = load_model(ht_upstream[0][0]).eval()
    state = random.getstate()
    with torch.no_grad():
        model(torch.zeros(1, 2, 4000))
    assert random.getstate() != state
    _check_ht_cases(ht_upstream, HT_RNG_CASES)


def test_htdemucs_segment_limit(ht_upstream):
    ht_checkpoints = ht_upstream[0]
    model = load_model(ht_checkpoints[0])
    assert max_allowed_segment(model) == 0.5
    bag = BagOfModels([model, load_model(ht_checkpoints[1])])
    assert bag.max_allowed_segment == 0.5
    with pytest.raises(ValueError, match="longer segment"):
        apply_model(model, torch.randn(1, 2, 4000), segment=0.6)
    with pytest.raises(ValueError, match="longer segment"):
        apply_model(bag, torch.randn(1, 2, 4000), segment=1)
