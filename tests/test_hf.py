"""Upstream 4.1.0's model format (``NAME.yaml`` + ``SIG.safetensors``, demucs.hf).

Folders are written by :func:`demucs.hf.export_bag` from ``.th`` checkpoints (an HTDemucs
and two DiffQ-quantized HDemucs), then loaded three ways: by us (``--repo DIR``,
``hf://`` through huggingface_hub's offline cache, a patched download) and by upstream
4.1.0's own loader in a subprocess (``make oracle`` installs it in ``.oracle/site410``).
All must give the outputs of the ``.th`` files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
import typing as tp
from pathlib import Path

import pytest
import torch

from demucs import hf
from demucs.errors import ModelLoadingError
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model
from demucs.states import get_quantizer, save_model
from demucs import configs

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(__file__).resolve().parent / "oracle_stubs"
SITE_410 = Path(os.environ.get("DEMUCS_ORACLE410_SITE", ROOT / ".oracle" / "site410"))

TINY_HDEMUCS: tp.Dict[str, tp.Any] = dict(
    sources=configs.SOURCES_4,
    channels=4,
    nfft=256,
    depth=4,
    norm_starts=2,
    norm_groups=2,
    dconv_attn=3,
    dconv_lstm=3,
    samplerate=16000,
)
QUANTIZERS = {
    "hq": dict(diffq=1e-4, qat=0, min_size=0.0001, group_size=4),
    "hu": dict(diffq=0, qat=8, min_size=0.0, group_size=8),
}
BAG_YAML = {
    "htdemucs": "models: [ht]\n",
    "qbag": "models: [hq, hu]\nweights: [[1, 0, 1, 0], [0, 1, 0, 1]]\nsegment: 2\n",
}
BAG_MEMBERS = {"htdemucs": ["ht"], "qbag": ["hq", "hu"]}
HAS_DIFFQ = importlib.util.find_spec("diffq") is not None

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(
        importlib.util.find_spec("safetensors") is None,
        reason="safetensors is not installed (pip install demucs[hf])",
    ),
]


def _mix() -> torch.Tensor:
    return torch.randn(1, 2, 8000, generator=torch.Generator().manual_seed(7))


def _outputs(model: tp.Any) -> tp.List[torch.Tensor]:
    """Each member's output on :func:`_mix` (a bag's members, or the single model)."""
    members = list(getattr(model, "models", [model]))
    with torch.no_grad():
        return [member.eval()(_mix()) for member in members]


@pytest.fixture(scope="module")
def th_repo(tmp_path_factory) -> Path:
    """``.th`` checkpoints (float16 weights, as released) and the bag files."""
    root = tmp_path_factory.mktemp("th")
    torch.manual_seed(0)
    save_model(HTDemucs(**configs.TINY_HTDEMUCS), root / "ht.th")
    names = ["htdemucs"]
    if HAS_DIFFQ:
        for sig, qargs in QUANTIZERS.items():
            model = HDemucs(**TINY_HDEMUCS)
            quantizer = get_quantizer(model, types.SimpleNamespace(**qargs))
            save_model(model, root / f"{sig}.th", quantizer=quantizer)
        names.append("qbag")
    for name in names:
        (root / f"{name}.yaml").write_text(BAG_YAML[name])
    return root


@pytest.fixture(scope="module")
def hf_repo(th_repo, tmp_path_factory) -> Path:
    """The same models in upstream 4.1.0's layout (one folder holding every name)."""
    out = tmp_path_factory.mktemp("hf")
    for name in BAG_YAML:
        if (th_repo / f"{name}.yaml").exists():
            hf.export_bag(name, out, repo=th_repo)
    return out


def _names(th_repo: Path) -> tp.List[str]:
    return [name for name in BAG_YAML if (th_repo / f"{name}.yaml").exists()]


def _assert_same(
    outs: tp.List[torch.Tensor], refs: tp.List[torch.Tensor], tol: float = 0.0
) -> None:
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= tol


def test_export_writes_upstream_layout(hf_repo, th_repo):
    from safetensors import safe_open

    files = sorted(path.name for path in hf_repo.iterdir())
    expected = {"htdemucs.yaml", "ht.safetensors"}
    if HAS_DIFFQ:
        expected |= {"qbag.yaml", "hq.safetensors", "hu.safetensors"}
    assert set(files) == expected
    with safe_open(str(hf_repo / "ht.safetensors"), framework="pt") as file:
        meta = file.metadata()
        assert file.get_tensor(next(iter(file.keys()))).dtype == torch.float16
    assert meta["klass"] == "demucs.htdemucs.HTDemucs" and "structure" not in meta
    segment = json.loads(meta["kwargs"])["segment"]
    assert segment == {"_type": "fraction", "numerator": 1, "denominator": 2}


@pytest.mark.parametrize("name", list(BAG_YAML))
def test_folder_gives_the_outputs_of_the_th_files(th_repo, hf_repo, name):
    if name not in _names(th_repo):
        pytest.skip("diffq is not installed")
    ref = get_model(name, repo=th_repo)
    ours = get_model(name, repo=hf_repo)
    assert type(ours) is type(ref) and ours.weights == ref.weights
    assert [m.segment for m in ours.models] == [m.segment for m in ref.models]
    _assert_same(_outputs(ours), _outputs(ref))


def test_hf_scheme_with_patched_download(th_repo, hf_repo, monkeypatch):
    asked: tp.List[tp.Tuple[str, str]] = []

    def download(repo_id: str, filename: str) -> Path:
        asked.append((repo_id, filename))
        return hf_repo / filename

    monkeypatch.setattr(hf, "hf_download", download)
    bag = get_model("hf://htdemucs")
    assert asked == [
        ("adefossez/HTDemucs", "htdemucs.yaml"),
        ("adefossez/HTDemucs", "ht.safetensors"),
    ]
    _assert_same(_outputs(bag), _outputs(get_model("htdemucs", repo=th_repo)))
    asked.clear()
    get_model("hf://someone/htdemucs", repo=th_repo)  # repo is ignored for hf:// names
    assert asked[0] == ("someone/HTDemucs", "htdemucs.yaml")
    with pytest.raises(ModelLoadingError, match="hub namespace"):
        get_model("hf://../htdemucs")
    with pytest.raises(ModelLoadingError, match="model name"):
        get_model("hf://a/b/c")


def test_hf_repo_names_follow_upstream():
    assert hf.hf_repo_name("htdemucs") == "HTDemucs"
    assert hf.hf_repo_name("htdemucs_ft") == "HTDemucs-ft"
    assert hf.hf_repo_name("mdx_extra_q") == "Demucs-mdx_extra_q"


@pytest.mark.skipif(
    importlib.util.find_spec("huggingface_hub") is None,
    reason="huggingface_hub is not installed (pip install demucs[hf])",
)
def test_hf_scheme_offline_from_the_hub_cache(th_repo, hf_repo, tmp_path):
    """``HF_HUB_OFFLINE=1`` with files in huggingface_hub's cache layout: no network."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "cache" / "models--ns--HTDemucs"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for name in ["htdemucs.yaml", "ht.safetensors"]:
        shutil.copy(hf_repo / name, snapshot / name)
    out = tmp_path / "out.pt"
    code = f"""
        import torch
        from demucs.pretrained import get_model
        bag = get_model("hf://ns/htdemucs")
        mix = torch.load({str(tmp_path / 'mix.pt')!r})
        with torch.no_grad():
            torch.save([m.eval()(mix) for m in bag.models], {str(out)!r})
    """
    torch.save(_mix(), tmp_path / "mix.pt")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    _assert_same(torch.load(out, weights_only=True), _outputs(get_model("htdemucs", repo=th_repo)))


def test_missing_huggingface_hub_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ModelLoadingError, match=r"pip install 'demucs\[hf\]'"):
        get_model("hf://htdemucs")


# ------------------------------------------------------------------ upstream 4.1.0


@pytest.fixture(scope="module")
def upstream_410(th_repo, hf_repo, tmp_path_factory) -> tp.Dict[str, tp.Any]:
    """4.1.0's ``get_hf_model`` on our exported folder (download patched to read it),
    and its ``load_safetensors_model`` on each file, in one subprocess."""
    if not (SITE_410 / "demucs" / "hf.py").exists():
        if os.environ.get("DEMUCS_REQUIRE_ORACLE"):
            pytest.fail("upstream 4.1.0 oracle missing: run `make oracle`")
        pytest.skip("upstream 4.1.0 not installed (make oracle)")
    work = tmp_path_factory.mktemp("oracle410")
    torch.save(_mix(), work / "mix.pt")
    code = f"""
        import torch, huggingface_hub
        from pathlib import Path
        folder = Path({str(hf_repo)!r})
        huggingface_hub.hf_hub_download = lambda repo_id, filename: str(folder / filename)
        from demucs.hf import get_hf_model, load_safetensors_model
        mix = torch.load({str(work / 'mix.pt')!r})
        results = {{}}
        for name in {_names(th_repo)!r}:
            bag = get_hf_model("someone/" + name)
            with torch.no_grad():
                outs = [m.eval()(mix) for m in bag.models]
            results[name] = {{"outs": outs, "weights": bag.weights,
                             "segments": [float(m.segment) for m in bag.models]}}
        for file in sorted(folder.glob("*.safetensors")):
            model = load_safetensors_model(file).eval()
            with torch.no_grad():
                results[file.stem] = model(mix)
        torch.save(results, {str(work / 'out.pt')!r})
    """
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(STUBS), str(SITE_410)]),
        OMP_NUM_THREADS="1",
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(work),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"4.1.0 oracle failed:\n{proc.stdout}\n{proc.stderr}")
    return torch.load(work / "out.pt", weights_only=True)


def test_upstream_410_loads_our_folders_with_the_same_outputs(upstream_410, th_repo):
    for name in _names(th_repo):
        ref = get_model(name, repo=th_repo)
        got = upstream_410[name]
        assert got["weights"] == ref.weights
        assert got["segments"] == [float(m.segment) for m in ref.models]
        _assert_same(got["outs"], _outputs(ref), tol=1e-5)
        for sig, model in zip(BAG_MEMBERS[name], ref.models):
            _assert_same([upstream_410[sig]], _outputs(model), tol=1e-5)


# ------------------------------------------------------------------ hostile files


def _write_safetensors(
    path: Path, metadata: tp.Dict[str, str], tensors: tp.Optional[tp.Dict[str, torch.Tensor]] = None
) -> Path:
    from safetensors.torch import save_file

    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata=metadata)
    return path


def _ht_metadata(hf_repo: Path) -> tp.Dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(hf_repo / "ht.safetensors"), framework="pt") as file:
        return dict(file.metadata())


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(klass="os.system"), "not one of"),
        (dict(klass="builtins.eval"), "not one of"),
        (dict(klass="fractions.Fraction"), "not one of"),
        (dict(structure=json.dumps({"_class": "os.system"})), "not a DiffQ quantizer"),
        (dict(structure=json.dumps({"_dict": [["a", {"_tensor": "nope"}]]})), "missing tensor"),
        (dict(structure="{not json"), "not valid JSON"),
        (dict(kwargs=json.dumps({"sources": ["../evil", "b"]})), "path separator"),
        (
            dict(
                kwargs=json.dumps(
                    {
                        "sources": ["a"],
                        "segment": {"_type": "fraction", "numerator": 1, "denominator": 0},
                    }
                )
            ),
            "invalid fraction",
        ),
        (dict(kwargs=json.dumps({"sources": ["a"], "depth": 50})), "depth"),
        (
            dict(
                args="[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, "
                "22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, "
                "41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, "
                "60, 61, 62, 63, 64, 65, 66, 67, 68]"
            ),
            "wrong constructor arguments",
        ),
    ],
)
def test_hostile_metadata_is_refused(hf_repo, tmp_path, change, match):
    metadata = dict(_ht_metadata(hf_repo), **change)
    path = _write_safetensors(tmp_path / "evil.safetensors", metadata)
    with pytest.raises(ModelLoadingError, match=match) as info:
        hf.load_safetensors_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(os.urandom(64))
    with pytest.raises(ModelLoadingError, match="not a valid safetensors file"):
        hf.load_safetensors_model(path)
    path = _write_safetensors(tmp_path / "y.safetensors", {"other": "1"})
    with pytest.raises(ModelLoadingError, match="no 'klass'"):
        hf.load_safetensors_model(path)


def test_safetensors_is_preferred_to_th_in_one_folder(hf_repo, tmp_path):
    for name in ["htdemucs.yaml", "ht.safetensors"]:
        shutil.copy(hf_repo / name, tmp_path / name)
    (tmp_path / "ht-0123abcd.th").write_bytes(b"not even a checkpoint")
    bag = get_model("htdemucs", repo=tmp_path)
    assert isinstance(bag.models[0], HTDemucs)


def test_export_command_line(th_repo, tmp_path, capsys):
    assert hf.main(["htdemucs", str(tmp_path / "out"), "--repo", str(th_repo)]) == 0
    assert (tmp_path / "out" / "ht.safetensors").is_file()
    assert hf.main(["nope", str(tmp_path / "out2"), "--repo", str(th_repo)]) == 1
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
