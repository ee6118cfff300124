"""Pretrained catalog, get_model, command line flags."""

import argparse
import json
import shutil
from fractions import Fraction

import pytest
import torch

from demucs import pretrained
from demucs.apply import BagOfModels
from demucs.pretrained import (
    ROOT_URL,
    ModelLoadingError,
    _parse_remote_files,
    add_model_flags,
    get_model,
    get_model_from_args,
    list_models,
)
from demucs.repo import BagOnlyRepo, RemoteRepo
from demucs.states import save_with_checksum, serialize_model
from tests.helpers import TinyNet, closed_port, serve

CATALOG_NAMES = [
    "hdemucs_mmi",
    "htdemucs",
    "htdemucs_6s",
    "htdemucs_ft",
    "mdx",
    "mdx_extra",
    "mdx_extra_q",
    "mdx_q",
    "repro_mdx_a",
    "repro_mdx_a_hybrid_only",
    "repro_mdx_a_time_only",
]


@pytest.fixture
def no_remote_override(monkeypatch):
    monkeypatch.delenv(pretrained.ROOT_URL_ENV, raising=False)


def _catalog():
    """{bag name: {"urls", "weights", "segment"}} for the shipped catalog (nothing fetched)."""
    models = _parse_remote_files(pretrained.REMOTE_ROOT / "files.txt")
    bags = BagOnlyRepo(pretrained.REMOTE_ROOT, RemoteRepo(models))
    out = {}
    for name in bags.list_models():
        bag = bags.get_bag_description(name)
        out[name] = {
            "urls": [models[sig] for sig in bag["models"]],
            "weights": bag["weights"],
            "segment": bag["segment"],
        }
    return out


def test_catalog_resolves(no_remote_override):
    catalog = _catalog()
    assert sorted(catalog) == CATALOG_NAMES
    assert catalog["htdemucs"]["urls"] == [ROOT_URL + "hybrid_transformer/955717e8-8726e21a.th"]
    assert catalog["htdemucs_6s"]["urls"] == [ROOT_URL + "hybrid_transformer/5c90dfd2-34c22ccb.th"]
    assert catalog["hdemucs_mmi"] == {
        "urls": [ROOT_URL + "hybrid_transformer/75fc33f5-1941ce65.th"],
        "weights": None,
        "segment": 44,
    }
    ft = catalog["htdemucs_ft"]
    assert len(ft["urls"]) == 4 and ft["weights"] == [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
    assert catalog["mdx_extra_q"]["urls"][0] == ROOT_URL + "mdx_final/83fc094f-4a16d450.th"
    for name, bag in catalog.items():
        assert bag["urls"], name
        if bag["weights"] is not None:
            assert len(bag["weights"]) == len(bag["urls"]), name


def test_catalog_matches_upstream(oracle, tmp_path, no_remote_override):
    proc = oracle.run(
        """
        import json
        from demucs.pretrained import REMOTE_ROOT, _parse_remote_files
        from demucs.repo import BagOnlyRepo, RemoteRepo
        import yaml
        models = _parse_remote_files(REMOTE_ROOT / "files.txt")
        bags = BagOnlyRepo(REMOTE_ROOT, RemoteRepo(models))
        out = {}
        for name, path in bags._bags.items():
            bag = yaml.safe_load(open(path))
            out[name] = {"urls": [models[s] for s in bag["models"]],
                         "weights": bag.get("weights"), "segment": bag.get("segment")}
        print(json.dumps(out))
    """,
        cwd=tmp_path,
    )
    assert json.loads(proc.stdout) == _catalog()


def test_remote_root_override(monkeypatch):
    monkeypatch.setenv(pretrained.ROOT_URL_ENV, "http://127.0.0.1:1/mirror")
    models = _parse_remote_files(pretrained.REMOTE_ROOT / "files.txt")
    assert models["955717e8"] == "http://127.0.0.1:1/mirror/hybrid_transformer/955717e8-8726e21a.th"


def test_parse_remote_files_duplicates(tmp_path):
    (tmp_path / "files.txt").write_text("# x\n\nroot: a/\naaaa-1.th\nroot: b/\naaaa-2.th\n")
    with pytest.raises(ModelLoadingError, match="duplicate"):
        _parse_remote_files(tmp_path / "files.txt")


def _local_repo(folder, sigs=("aaaa1111", "bbbb2222")):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, sig in enumerate(sigs):
        torch.manual_seed(seed)
        paths.append(save_with_checksum(serialize_model(TinyNet(), {}), folder / f"{sig}.th"))
    (folder / "mybag.yaml").write_text(
        f"models: {list(sigs)!r}\nweights: [[1., 0.], [1., 1.]]\nsegment: 1\n"
    )
    return paths


def test_get_model_local_repo(tmp_path):
    _local_repo(tmp_path)
    bag = get_model("mybag", repo=tmp_path)
    assert isinstance(bag, BagOfModels) and not bag.training
    assert bag.weights == [[1.0, 0.0], [1.0, 1.0]]
    single = get_model("bbbb2222", repo=tmp_path, use_conv_stft=True)
    assert isinstance(single, TinyNet) and single.use_conv_stft is True
    assert list_models(tmp_path) == ["mybag", "aaaa1111", "bbbb2222"]
    with pytest.raises(ModelLoadingError, match="neither"):
        get_model("nope", repo=tmp_path)
    with pytest.raises(ModelLoadingError, match="must exist"):
        get_model("mybag", repo=tmp_path / "missing")


def test_list_models_remote():
    assert list_models() == CATALOG_NAMES
    assert "955717e8" in list_models(signatures=True)


def test_model_flags(tmp_path):
    _local_repo(tmp_path)
    parser = argparse.ArgumentParser()
    add_model_flags(parser)
    args = parser.parse_args([])
    assert args.name == "htdemucs" and args.repo is None and args.sig is None
    args = parser.parse_args(["-n", "mybag", "--repo", str(tmp_path)])
    assert isinstance(get_model_from_args(args), BagOfModels)
    args = parser.parse_args(["-sig", "aaaa1111", "--repo", str(tmp_path)])
    assert isinstance(get_model_from_args(args), TinyNet)
    assert parser.parse_args(["--signature", "x"]).sig == "x"
    with pytest.raises(SystemExit):
        parser.parse_args(["-n", "a", "-s", "b"])


def test_get_model_downloads(tmp_path, monkeypatch):
    served = tmp_path / "served"
    paths = _local_repo(served / "sub", sigs=("cccc3333", "dddd4444"))
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "files.txt").write_text(
        "# test catalog\nroot: sub/\n" + "".join(p.name + "\n" for p in paths)
    )
    shutil.copy(served / "sub" / "mybag.yaml", catalog / "remotebag.yaml")
    monkeypatch.setattr(pretrained, "REMOTE_ROOT", catalog)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    with serve(served) as url:
        monkeypatch.setenv(pretrained.ROOT_URL_ENV, url)
        bag = get_model("remotebag")
    assert isinstance(bag, BagOfModels) and len(bag.models) == 2
    cached = sorted(p.name for p in (tmp_path / "home" / "hub" / "checkpoints").iterdir())
    assert cached == sorted(p.name for p in paths)


def test_get_model_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(pretrained.ROOT_URL_ENV, f"http://127.0.0.1:{closed_port()}/")
    with pytest.raises(ModelLoadingError) as info:
        get_model("htdemucs")
    message = str(info.value)
    assert message.startswith("cannot download htdemucs (model 955717e8): no network (")
    assert message.endswith("place the files in a folder and pass --repo DIR")
    assert "\n" not in message


def test_demucs_unittest():
    pytest.importorskip("demucs.hdemucs")
    model = get_model("demucs_unittest")
    assert model.sources == pretrained.SOURCES and not model.training


def test_get_model_tiny_htdemucs_repo(tmp_path):
    htdemucs = pytest.importorskip("demucs.htdemucs")
    torch.manual_seed(0)
    model = htdemucs.HTDemucs(
        sources=["a", "b"],
        channels=4,
        depth=2,
        nfft=512,
        t_layers=1,
        t_heads=2,
        dconv_comp=2,
        samplerate=8000,
        segment=Fraction(1, 2),
    )
    save_with_checksum(serialize_model(model, {}), tmp_path / "eeee5555.th")
    (tmp_path / "tiny.yaml").write_text("models: ['eeee5555']\n")
    for flag in (False, True):
        bag = get_model("tiny", repo=tmp_path, use_conv_stft=flag)
        assert bag.models[0].use_conv_stft is flag
        assert bag.max_allowed_segment == 0.5
