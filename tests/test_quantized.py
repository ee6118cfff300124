"""DiffQ-quantized checkpoints (mdx_q, mdx_extra_q): safe loading and upstream parity.

The checkpoints are written by upstream 4.0.1 (``states.get_quantizer`` +
``serialize_model``) in the oracle subprocess, from tiny Demucs / HDemucs models and both
diffq quantizers, then loaded by our safe loader and compared with upstream's
``load_model`` on the same file. Needs the optional ``quantized`` extra (``diffq``).
"""

from __future__ import annotations

import importlib.util
import sys
import typing as tp
from pathlib import Path

import pytest
import torch

from demucs.states import MissingDiffQError, load_model, load_package

SOURCES = ["drums", "bass", "other", "vocals"]
TINY_DEMUCS: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES, channels=4, depth=2, lstm_layers=1, dconv_comp=2, dconv_mode=3
)
TINY_HDEMUCS: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES,
    channels=4,
    nfft=256,
    depth=4,
    norm_starts=2,
    norm_groups=2,
    dconv_attn=3,
    dconv_lstm=3,
)

#: name -> (upstream class, kwargs, quantizer args as in upstream's training config, length)
CASES: tp.Dict[str, tp.Tuple[str, tp.Dict[str, tp.Any], tp.Dict[str, tp.Any], int]] = {
    "demucs_diffq": (
        "demucs.Demucs",
        TINY_DEMUCS,
        dict(diffq=1e-4, qat=0, min_size=0.0001, group_size=4),
        1500,
    ),
    "demucs_uniform": (
        "demucs.Demucs",
        TINY_DEMUCS,
        dict(diffq=0, qat=8, min_size=0.0, group_size=8),
        1500,
    ),
    "hdemucs_diffq": (
        "hdemucs.HDemucs",
        TINY_HDEMUCS,
        dict(diffq=1e-4, qat=0, min_size=0.0005, group_size=8),
        2100,
    ),
    "hdemucs_uniform": (
        "hdemucs.HDemucs",
        TINY_HDEMUCS,
        dict(diffq=0, qat=6, min_size=0.0, group_size=8),
        2100,
    ),
}


pytestmark = pytest.mark.usefixtures("single_thread")


_SCRIPT = """
import importlib
import types
import torch
from demucs.states import get_quantizer, load_model, serialize_model

results = {{}}
for name, (klass, kwargs, qargs, mix, path, seed) in torch.load({inp!r}).items():
    module, cls = klass.rsplit(".", 1)
    torch.manual_seed(seed)
    model = getattr(importlib.import_module("demucs." + module), cls)(**kwargs)
    quantizer = get_quantizer(model, types.SimpleNamespace(**qargs))
    assert quantizer is not None
    torch.save(serialize_model(model, {{}}, quantizer), path)
    float_state = {{k: v.clone() for k, v in model.state_dict().items()}}
    loaded = load_model(path).eval()
    with torch.no_grad():
        output = loaded(mix)
    results[name] = {{"output": output, "state": loaded.state_dict(),
                      "float_state": float_state}}
torch.save(results, {out!r})
"""


def _diffq_missing_reason() -> tp.Optional[str]:
    if importlib.util.find_spec("diffq") is None:
        return "diffq is not installed (pip install demucs[quantized])"
    return None


needs_diffq = pytest.mark.skipif(
    _diffq_missing_reason() is not None, reason=_diffq_missing_reason() or ""
)


def _mix(name: str) -> torch.Tensor:
    length = CASES[name][3]
    return torch.randn(1, 2, length, generator=torch.Generator().manual_seed(len(name)))


@pytest.fixture(scope="module")
def quantized(oracle, tmp_path_factory) -> tp.Dict[str, tp.Dict[str, tp.Any]]:
    """All quantized checkpoints, written and re-loaded by upstream in one subprocess."""
    if _diffq_missing_reason():
        pytest.skip(_diffq_missing_reason())
    work = tmp_path_factory.mktemp("quantized")
    jobs = {
        name: (klass, kwargs, qargs, _mix(name), str(work / f"{name}.th"), 3)
        for name, (klass, kwargs, qargs, _) in CASES.items()
    }
    torch.save(jobs, work / "in.pt")
    oracle.run(_SCRIPT.format(inp=str(work / "in.pt"), out=str(work / "out.pt")), cwd=work)
    results = torch.load(work / "out.pt", weights_only=True)
    for name in CASES:
        results[name]["path"] = work / f"{name}.th"
    return results


def _block_diffq(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``import diffq`` (and its submodules) fail, as if it were not installed."""
    for module in [m for m in sys.modules if m == "diffq" or m.startswith("diffq.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "diffq", None)


@needs_diffq
@pytest.mark.parametrize("name", sorted(CASES))
def test_quantized_checkpoint_matches_upstream(quantized, name):
    ref = quantized[name]
    package = load_package(ref["path"])  # the safe loader, no trust needed
    assert package["state"]["__quantized"] is True
    model = load_model(ref["path"]).eval()
    assert type(model).__name__ == CASES[name][0].rsplit(".", 1)[1]
    state = model.state_dict()
    assert state.keys() == ref["state"].keys()
    for key, value in state.items():
        assert torch.equal(value, ref["state"][key]), key
    # The weights really went through the quantizer.
    assert any(not torch.equal(state[k], v) for k, v in ref["float_state"].items())
    with torch.no_grad():
        out = model(_mix(name))
    diff = (out - ref["output"]).abs().max().item()
    assert diff < 1e-5, diff


@needs_diffq
def test_quantized_trust_path_matches_safe_path(quantized):
    ref = quantized["hdemucs_diffq"]
    safe = load_model(ref["path"]).state_dict()
    trusted = load_model(ref["path"], trust=True).state_dict()
    assert all(torch.equal(safe[key], trusted[key]) for key in safe)


@needs_diffq
@pytest.mark.parametrize("trust", [False, True])
def test_quantized_without_diffq_says_how_to_install(quantized, monkeypatch, trust):
    path: Path = quantized["demucs_uniform"]["path"]
    _block_diffq(monkeypatch)
    with pytest.raises(MissingDiffQError) as info:
        load_model(path, trust=trust)
    message = str(info.value)
    assert str(path) in message
    assert "pip install demucs[quantized]" in message and "pip install diffq" in message
