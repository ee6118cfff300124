"""The whole upstream catalog, offline: every name through ``--repo`` with tiny stand-ins.

A repo folder gets the shipped ``demucs/remote/*.yaml`` bags and one tiny model per
catalog signature, of the family of the real checkpoint (HTDemucs, HDemucs or the
waveform Demucs; diffq-quantized for mdx_q / mdx_extra_q), written as ``SIG.th`` by
upstream 4.0.1 when the oracle is installed. Checked here:

* each name resolves to the bag upstream resolves (classes, weights, segment, sources);
* ``demucs -n NAME --repo DIR`` separates a short wav into the right stems;
* a bag mixing Demucs and HDemucs members (mdx) matches upstream's ``apply_model``.

The parsing of the shipped catalog itself is tested in ``test_pretrained.py``.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs import pretrained
from demucs.apply import BagOfModels, apply_model
from demucs.pretrained import get_model, list_models
from demucs.repo import read_bag
from tests import oracle as _oracle
from tests.helpers import TINY_HTDEMUCS, run_main, write_mix
from tests.compare import max_diff

ROOT = Path(__file__).resolve().parent.parent
RATE = 8000
SOURCES_4 = ["drums", "bass", "other", "vocals"]
SOURCES_6 = SOURCES_4 + ["guitar", "piano"]

HT = TINY_HTDEMUCS  # the tiny HTDemucs of the command tests
HT_6S = dict(HT, sources=SOURCES_6)
HD = dict(
    sources=SOURCES_4,
    channels=4,
    nfft=256,
    depth=4,
    norm_starts=2,
    norm_groups=2,
    dconv_attn=3,
    dconv_lstm=3,
    samplerate=RATE,
)
D = dict(
    sources=SOURCES_4,
    channels=4,
    depth=2,
    lstm_layers=1,
    dconv_comp=2,
    dconv_mode=3,
    samplerate=RATE,
)
# Quantizer settings (upstream training args) that fit the tiny models' parameter sizes.
DIFFQ_D = dict(diffq=1e-4, qat=0, min_size=0.0001, group_size=4)
DIFFQ_HD = dict(diffq=1e-4, qat=0, min_size=0.0005, group_size=8)

_HTDEMUCS = "htdemucs.HTDemucs"
_HDEMUCS = "hdemucs.HDemucs"
_DEMUCS = "demucs.Demucs"

#: signature -> (upstream class, kwargs, quantizer args or None). Families of the real
#: checkpoints: mdx and repro_mdx_a are 2 waveform Demucs + 2 Hybrid Demucs (in that
#: order, cf. repro_mdx_a_time_only / _hybrid_only), mdx_extra is 4 Hybrid Demucs.
SIGNATURES: tp.Dict[str, tp.Tuple[str, tp.Dict[str, tp.Any], tp.Optional[tp.Dict]]] = {
    **{
        sig: (_HTDEMUCS, HT, None)
        for sig in ("955717e8", "f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d")
    },
    "5c90dfd2": (_HTDEMUCS, HT_6S, None),
    **{
        sig: (_HDEMUCS, HD, None)
        for sig in (
            "75fc33f5",
            "c511e2ab",
            "7d865c68",
            "e51eebcc",
            "a1d90b5c",
            "5d2d6c55",
            "cfa93e08",
            "fa0cb7f9",
            "902315c2",
        )
    },
    **{sig: (_DEMUCS, D, None) for sig in ("0d19c1c6", "7ecf8ec1", "9a6b4851", "1ef250f1")},
    **{sig: (_DEMUCS, D, DIFFQ_D) for sig in ("6b9c2ca1", "b72baf4e")},
    **{
        sig: (_HDEMUCS, HD, DIFFQ_HD)
        for sig in ("42e558d4", "305bc58f", "83fc094f", "464b36d7", "14fc6a69", "7fd6ef75")
    },
}

CATALOG = sorted(p.stem for p in pretrained.REMOTE_ROOT.glob("*.yaml"))
QUANTIZED_NAMES = ("mdx_q", "mdx_extra_q")
HAS_DIFFQ = importlib.util.find_spec("diffq") is not None
NO_DIFFQ = "diffq is not installed (pip install demucs[quantized])"

#: mdx with a short bag segment, so chunking is exercised on a short mix.
SMALL_MDX = "mdx_small"
SMALL_SEGMENT = 0.5


pytestmark = pytest.mark.usefixtures("single_thread")


_BUILD = """
import importlib
import types
from pathlib import Path
import torch
from demucs.states import get_quantizer, serialize_model

spec = torch.load({inp!r})
repo = Path(spec["repo"])
for seed, (sig, (klass, kwargs, qargs)) in enumerate(spec["models"].items()):
    module, cls = klass.rsplit(".", 1)
    torch.manual_seed(seed)
    model = getattr(importlib.import_module("demucs." + module), cls)(**kwargs)
    quantizer = get_quantizer(model, types.SimpleNamespace(**qargs)) if qargs else None
    torch.save(serialize_model(model, {{}}, quantizer), repo / (sig + ".th"))
"""

_UPSTREAM = """
import random
from pathlib import Path
import torch
from demucs.apply import apply_model
from demucs.pretrained import get_model

spec = torch.load({inp!r})
repo = Path(spec["repo"])
out = {{"bags": {{}}}}
for name in spec["names"]:
    bag = get_model(name, repo=repo)
    out["bags"][name] = {{
        "classes": [type(m).__name__ for m in bag.models],
        "weights": bag.weights, "segments": [float(m.segment) for m in bag.models],
        "sources": list(bag.sources), "samplerate": bag.samplerate}}
mix = spec["mix"]
mdx = get_model("mdx", repo=repo)
random.seed(0)
out["split"] = apply_model(mdx, mix, shifts=0, segment={segment})
random.seed(0)
out["shifts"] = apply_model(mdx, mix, shifts=2, overlap=0.5, segment={segment})
out["whole"] = apply_model(mdx, mix, shifts=0, split=False)
random.seed(0)
out["bag_segment"] = apply_model(get_model({small!r}, repo=repo), mix, shifts=0)
torch.save(out, {out!r})
"""


def _expected_sources(name: str) -> tp.List[str]:
    return SOURCES_6 if name == "htdemucs_6s" else SOURCES_4


def _mix() -> torch.Tensor:
    return 0.3 * torch.randn(1, 2, int(1.3 * RATE), generator=torch.Generator().manual_seed(4))


def _build(code: str, work: Path) -> None:
    """Runs the checkpoint builder with upstream (oracle) if installed, else with ours."""
    if _oracle.available():
        _oracle.run(code, cwd=work)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(work),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the catalog repo failed:\n{proc.stderr}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The catalog's yaml files plus one tiny model per signature (quantized if diffq)."""
    work = tmp_path_factory.mktemp("catalog")
    folder = work / "repo"
    folder.mkdir()
    for yaml_file in pretrained.REMOTE_ROOT.glob("*.yaml"):
        shutil.copy(yaml_file, folder / yaml_file.name)
    mdx = (folder / "mdx.yaml").read_text()
    (folder / f"{SMALL_MDX}.yaml").write_text(
        mdx.replace("segment: 44", f"segment: {SMALL_SEGMENT}")
    )
    models = {sig: spec for sig, spec in SIGNATURES.items() if HAS_DIFFQ or spec[2] is None}
    torch.save({"repo": str(folder), "models": models}, work / "build.pt")
    _build(_BUILD.format(inp=str(work / "build.pt")), work)
    return folder


@pytest.fixture(scope="module")
def upstream(oracle, repo) -> tp.Dict[str, tp.Any]:
    """Upstream's view of the repo (every bag) and its mdx separations, in one subprocess."""
    work = repo.parent
    names = [name for name in CATALOG if HAS_DIFFQ or name not in QUANTIZED_NAMES]
    torch.save({"repo": str(repo), "names": names, "mix": _mix()}, work / "upstream_in.pt")
    oracle.run(
        _UPSTREAM.format(
            inp=str(work / "upstream_in.pt"),
            out=str(work / "upstream_out.pt"),
            segment=SMALL_SEGMENT,
            small=SMALL_MDX,
        ),
        cwd=work,
    )
    return torch.load(work / "upstream_out.pt", weights_only=True)


def _skip_if_quantized(name: str) -> None:
    if name in QUANTIZED_NAMES and not HAS_DIFFQ:
        pytest.skip(NO_DIFFQ)


def test_every_signature_has_a_stand_in():
    sigs = {
        sig
        for name in CATALOG
        for sig in read_bag(pretrained.REMOTE_ROOT / f"{name}.yaml")["models"]
    }
    assert sigs == set(SIGNATURES)


@pytest.mark.parametrize("name", CATALOG)
def test_name_resolves_like_upstream(repo, upstream, name):
    _skip_if_quantized(name)
    bag = get_model(name, repo=repo)
    yaml_bag = read_bag(pretrained.REMOTE_ROOT / f"{name}.yaml")
    assert isinstance(bag, BagOfModels) and not bag.training
    ours = {
        "classes": [type(m).__name__ for m in bag.models],
        "weights": bag.weights,
        "segments": [float(m.segment) for m in bag.models],
        "sources": list(bag.sources),
        "samplerate": bag.samplerate,
    }
    assert ours == upstream["bags"][name]
    assert ours["classes"] == [SIGNATURES[sig][0].rsplit(".", 1)[1] for sig in yaml_bag["models"]]
    assert ours["sources"] == _expected_sources(name)
    if yaml_bag["segment"] is not None:
        assert ours["segments"] == [float(yaml_bag["segment"])] * len(bag.models)
    if yaml_bag["weights"] is not None:
        assert ours["weights"] == yaml_bag["weights"]


def test_list_models_in_repo(repo):
    names = list_models(repo, signatures=False)
    assert set(CATALOG) <= set(names)


@pytest.mark.parametrize("name", CATALOG)
def test_cli_separates_with_every_name(repo, tmp_path, capsys, name):
    _skip_if_quantized(name)
    mix = write_mix(tmp_path / "song.wav", seconds=1.0, samplerate=RATE)
    code, out, err = run_main(
        [
            "-n",
            name,
            "--repo",
            repo,
            "--shifts",
            "0",
            "-o",
            tmp_path / "out",
            tmp_path / "song.wav",
        ],
        capsys,
    )
    assert code == 0, err
    folder = tmp_path / "out" / name / "song"
    stems = sorted(p.stem for p in folder.iterdir())
    assert stems == sorted(_expected_sources(name))
    for stem in stems:
        data, rate = sf.read(str(folder / f"{stem}.wav"))
        assert rate == RATE and data.shape == mix.shape
        assert np.isfinite(data).all()


@pytest.mark.skipif(not HAS_DIFFQ, reason=NO_DIFFQ)
def test_cli_quantized_without_diffq_says_how_to_install(repo, tmp_path, capsys, monkeypatch):
    for module in [m for m in sys.modules if m == "diffq" or m.startswith("diffq.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "diffq", None)
    write_mix(tmp_path / "song.wav", seconds=0.5, samplerate=RATE)
    code, _, err = run_main(
        ["-n", "mdx_q", "--repo", repo, "-o", tmp_path / "out", tmp_path / "song.wav"], capsys
    )
    assert code == 1
    assert "pip install demucs[quantized]" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


def test_mixed_bag_matches_upstream_apply_model(repo, upstream):
    mdx = get_model("mdx", repo=repo)
    assert {type(m).__name__ for m in mdx.models} == {"Demucs", "HDemucs"}
    mix = _mix()
    random.seed(0)
    split = apply_model(mdx, mix, shifts=0, segment=SMALL_SEGMENT)
    random.seed(0)
    shifted = apply_model(mdx, mix, shifts=2, overlap=0.5, segment=SMALL_SEGMENT)
    whole = apply_model(mdx, mix, shifts=0, split=False)
    random.seed(0)
    bag_segment = apply_model(get_model(SMALL_MDX, repo=repo), mix, shifts=0)
    assert max_diff(split, upstream["split"]) < 1e-4
    assert max_diff(shifted, upstream["shifts"]) < 1e-4
    assert max_diff(whole, upstream["whole"]) < 1e-4
    assert max_diff(bag_segment, upstream["bag_segment"]) < 1e-4
    # The small bag segment is what --segment 0.5 would do.
    assert max_diff(bag_segment, split) < 1e-6


def _export_and_run(model: torch.nn.Module, mix: torch.Tensor, path: Path) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    return torch.from_numpy(session.run(None, {"mix": mix.numpy()})[0])


#: Catalog stand-ins whose export is not already covered by test_hdemucs / test_demucs:
#: HDemucs with the default complex-as-channels output (hdemucs_mmi), and a model
#: dequantized from a diffq checkpoint (mdx_extra_q).
EXPORTED = {"hdemucs_mmi": "75fc33f5", "mdx_extra_q": "83fc094f"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_catalog_member_exports_to_onnx(repo, tmp_path, name):
    _skip_if_quantized(name)
    model = get_model(EXPORTED[name], repo=repo, use_conv_stft=True)
    mix = 0.3 * torch.randn(1, 2, 3001, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(mix)
    out = _export_and_run(model, mix, tmp_path / f"{name}.onnx")
    assert max_diff(out, expected) < 1e-4


@pytest.mark.slow
def test_masked_hdemucs_with_wiener_init_exports_to_onnx(tmp_path):
    """Masks with ``wiener_iters=0`` (the default of cac=False models): conv STFT exports."""
    from demucs.hdemucs import HDemucs

    torch.manual_seed(0)
    model = HDemucs(**dict(HD, cac=False), use_conv_stft=True).eval()
    mix = 0.3 * torch.randn(1, 2, 3001, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(mix)
    out = _export_and_run(model, mix, tmp_path / "masked.onnx")
    assert max_diff(out, expected) < 1e-4 * max(1.0, expected.abs().max().item())
