"""Drop-in compatibility of the model loading modules (``states``, ``pretrained``,
``repo``, ``hf``) with upstream 4.0.1 and 4.1.0, and offline use through ``DEMUCS_REPO``.

The surface test lists upstream's public names and signatures from the installed oracles
(``make oracle``: 4.0.1 in ``.oracle/site``, 4.1.0 in ``.oracle/site410``), in a
subprocess since both packages are called ``demucs``, and fails on any name we lack or
any signature a caller of upstream could not use unchanged.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import types
import typing as tp
from pathlib import Path

import pytest
import torch

from demucs import pretrained, repo
from demucs.errors import ModelLoadingError
from demucs.htdemucs import HTDemucs
from demucs.states import save_model, serialize_model
from demucs import configs

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(__file__).resolve().parent / "oracle_stubs"
ORACLES = {
    "4.0.1": Path(os.environ.get("DEMUCS_ORACLE_SITE", ROOT / ".oracle" / "site")),
    "4.1.0": Path(os.environ.get("DEMUCS_ORACLE410_SITE", ROOT / ".oracle" / "site410")),
}
MODULES = ["states", "pretrained", "repo", "hf"]
#: Upstream names we do not provide, and why.
NOT_PROVIDED: tp.Dict[str, str] = {}

_DUMP = """
import importlib, inspect, json, sys, types
out = {}
for mod in MODULES:
    try:
        module = importlib.import_module("demucs." + mod)
    except ImportError:
        continue
    names = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if name.isupper():
            names[name] = None
            continue
        if not (getattr(obj, "__module__", "") or "").startswith("demucs"):
            continue
        targets = {name: obj}
        if inspect.isclass(obj):
            targets.update({f"{name}.{key}": value for key, value in vars(obj).items()
                            if (not key.startswith("_") or key == "__init__")
                            and inspect.isfunction(value)})
        for key, value in targets.items():
            try:
                params = inspect.signature(value).parameters.values()
            except (TypeError, ValueError):
                names[key] = None
                continue
            names[key] = [[p.name, p.kind.name, p.default is not p.empty] for p in params]
    out[mod] = names
print(json.dumps(out))
"""


def _signatures(pythonpath: tp.Optional[str]) -> tp.Dict[str, tp.Any]:
    code = f"MODULES = {MODULES!r}\n" + textwrap.dedent(_DUMP)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ours() -> tp.Dict[str, tp.Any]:
    return _signatures(str(ROOT))


def _incompatible(up: tp.List[tp.Any], our: tp.List[tp.Any]) -> tp.Optional[str]:
    """Why a call written for ``up`` could fail on ``our`` (None if it cannot)."""
    ours_by_name = {name: (kind, default) for name, kind, default in our}
    positional = [
        name for name, kind, _ in our if kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")
    ]
    index = 0
    for name, kind, default in up:
        if kind in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            continue
        if name not in ours_by_name:
            return f"no parameter {name!r}"
        our_kind, our_default = ours_by_name[name]
        if default and not our_default:
            return f"{name!r} lost its default"
        if kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD"):
            if index >= len(positional) or positional[index] != name:
                return f"{name!r} is not positional argument {index}"
            index += 1
    upstream_names = {name for name, _, _ in up}
    for name, kind, default in our:
        if (
            name not in upstream_names
            and not default
            and kind not in ("VAR_POSITIONAL", "VAR_KEYWORD")
        ):
            return f"extra required parameter {name!r}"
    return None


@pytest.mark.parametrize("version", list(ORACLES))
def test_upstream_names_and_signatures_exist(ours, version):
    site = ORACLES[version]
    if not (site / "demucs" / "states.py").exists():
        if os.environ.get("DEMUCS_REQUIRE_ORACLE"):
            pytest.fail(f"upstream {version} oracle missing: run `make oracle`")
        pytest.skip(f"upstream {version} not installed (make oracle)")
    upstream = _signatures(os.pathsep.join([str(STUBS), str(site)]))
    problems = []
    for module, names in upstream.items():
        for name, params in names.items():
            qualified = f"{module}.{name}"
            if qualified in NOT_PROVIDED:
                continue
            if name not in ours.get(module, {}):
                problems.append(f"{qualified}: missing")
            elif params is not None and ours[module][name] is not None:
                why = _incompatible(params, ours[module][name])
                if why:
                    problems.append(f"{qualified}: {why}")
    assert not problems, "\n".join(problems)


def test_incompatibility_rules():
    up = [["path", "POSITIONAL_OR_KEYWORD", False], ["strict", "POSITIONAL_OR_KEYWORD", True]]
    assert _incompatible(up, up + [["trust", "KEYWORD_ONLY", True]]) is None
    assert _incompatible(up, up[:1]) == "no parameter 'strict'"
    assert "positional" in _incompatible(up, up[::-1])
    assert "required" in _incompatible(up, up + [["x", "KEYWORD_ONLY", False]])


# ------------------------------------------------------------------ DEMUCS_REPO


@pytest.fixture
def folder(tmp_path) -> Path:
    torch.manual_seed(0)
    save_model(HTDemucs(**configs.TINY_HTDEMUCS), tmp_path / "sig1.th")
    (tmp_path / "mybag.yaml").write_text("models: [sig1]\n")
    return tmp_path


def test_demucs_repo_makes_the_default_catalog_local(folder, monkeypatch):
    monkeypatch.setenv(pretrained.REPO_ENV, str(folder))
    bag = pretrained.get_model("mybag")  # as a program that cannot pass --repo would
    assert isinstance(bag.models[0], HTDemucs)
    assert pretrained.list_models() == ["mybag", "sig1"]
    assert isinstance(pretrained.get_model("sig1"), HTDemucs)
    with pytest.raises(ModelLoadingError, match="htdemucs"):
        pretrained.get_model("htdemucs")  # not in the folder: nothing is downloaded


def test_explicit_repo_wins_over_demucs_repo(folder, tmp_path_factory, monkeypatch):
    empty = tmp_path_factory.mktemp("empty")
    monkeypatch.setenv(pretrained.REPO_ENV, str(empty))
    assert isinstance(pretrained.get_model("mybag", repo=folder).models[0], HTDemucs)


def test_bad_demucs_repo_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.REPO_ENV, str(tmp_path / "missing"))
    with pytest.raises(ModelLoadingError, match="DEMUCS_REPO=.*must exist") as info:
        pretrained.get_model("htdemucs")
    assert "\n" not in str(info.value)


def test_empty_demucs_repo_means_the_remote_catalog(monkeypatch):
    monkeypatch.setenv(pretrained.REPO_ENV, "")
    assert "htdemucs" in pretrained.list_models()


# ------------------------------------------------------------------ 4.1.0 names


def test_list_model_returns_upstream_410_shape(folder):
    model_repo = repo.LocalRepo(folder)
    bag_repo = repo.BagOnlyRepo(folder, model_repo)
    assert model_repo.list_model() == {"sig1": folder / "sig1.th"}
    assert bag_repo.list_model() == {"mybag": folder / "mybag.yaml"}
    assert repo.AnyModelRepo(model_repo, bag_repo).list_model() == {
        "sig1": folder / "sig1.th",
        "mybag": folder / "mybag.yaml",
    }
    remote = repo.RemoteRepo({"abc": "https://example.invalid/abc-12345678.th"})
    assert remote.list_model() == {"abc": "https://example.invalid/abc-12345678.th"}


def test_get_model_from_sig(folder):
    model = pretrained.get_model_from_sig("sig1", repo=folder)
    assert isinstance(model, HTDemucs) and not model.training
    with pytest.raises(ModelLoadingError, match="training experiments"):
        pretrained.get_model_from_sig("mybag", repo=folder)


def test_get_model_from_args_upstream_style(folder):
    args = types.SimpleNamespace(name="mybag", repo=folder, sig=None)
    assert isinstance(pretrained.get_model_from_args(args).models[0], HTDemucs)


def test_modules_keep_upstream_attributes():
    for module, names in {
        "pretrained": ["ROOT_URL", "REMOTE_ROOT", "SOURCES", "DEFAULT_MODEL", "HDemucs"],
        "hf": ["DEFAULT_NAMESPACE", "BagOfModels", "load_model"],
    }.items():
        loaded = importlib.import_module(f"demucs.{module}")
        for name in names:
            assert hasattr(loaded, name), f"{module}.{name}"
    assert inspect.signature(pretrained.get_model).parameters["repo"].default is None


def test_local_repo_checksum_follows_the_last_dash(folder):
    """``my-model-CHECKSUM.th`` is signature ``my-model``, as upstream 4.1.0 reads it."""
    from demucs.states import save_with_checksum

    torch.manual_seed(0)
    save_with_checksum(
        serialize_model(HTDemucs(**configs.TINY_HTDEMUCS), {}), folder / "my-model.th"
    )
    local = repo.LocalRepo(folder)
    assert local.has_model("my-model")
    assert isinstance(local.get_model("my-model"), HTDemucs)
