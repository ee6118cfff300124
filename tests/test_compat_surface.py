"""Library surface against upstream 4.0.1 and 4.1.0, name by name and signature by signature.

``tests/compat_surface_dump.py`` describes the public names of the inference-side modules
and the model classes; it runs once with our package and once per installed oracle, and
every upstream name must exist here with a signature that accepts the same calls:
the same positional parameters in the same order, every keyword name, no newly required
parameter, the same defaults. Return values are checked by tests/test_compat_clients.py.

``KNOWN_GAPS`` lists what other areas still owe (module -> subjects); it is emptied as
their branches merge, and a warning names any entry that no longer fails.
Training-only modules are out of scope; importing them raises an ImportError that says so.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import typing as tp
import warnings
from pathlib import Path

import pytest

from tests import compat_surface_dump
from tests import oracle as upstream

ROOT = Path(__file__).resolve().parent.parent
DUMP = Path(__file__).resolve().parent / "compat_surface_dump.py"
MODULES = compat_surface_dump.MODULES  # the modules the dump script lists
#: Pseudo-module under which the model classes' problems are reported.
MODELS = "models"

#: Owed by other areas (module -> subjects: a name, ``Class.member``, or a model class),
#: found by this test on the wt-compat branch. The lead empties it as the owners'
#: branches merge (a warning names entries that no longer fail).
KNOWN_GAPS: tp.Dict[str, tp.Set[str]] = {}

#: Deliberate differences: (module, subject) -> why. Not gaps; they stay.
ON_PURPOSE: tp.Dict[tp.Tuple[str, str], str] = {
    (
        "utils",
        "DummyPoolExecutor.shutdown",
    ): "takes concurrent.futures.Executor.shutdown's (wait, *, cancel_futures); upstream "
    "takes and ignores anything",
    ("apply", "DummyPoolExecutor.shutdown"): "the same class, re-exported",
}

#: Deliberately different defaults: (module, subject, parameter) -> why.
DEFAULTS_ON_PURPOSE: tp.Dict[tp.Tuple[str, str, str], str] = {
    (
        "api",
        "Separator",
        "device",
    ): "None picks cuda when available at call time; upstream's default is the same "
    "choice made at import time",
    ("separate", "Separator", "device"): "the same class, re-exported",
}

#: Upstream modules used only for training; ours raise an ImportError that says so.
TRAINING_ONLY = (
    "augment",
    "distrib",
    "ema",
    "evaluate",
    "grids",
    "repitch",
    "solver",
    "svd",
    "train",
    "wav",
)

Params = tp.List[tp.List[tp.Optional[str]]]
POSITIONAL = ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")


def dump(env: dict, cwd: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(DUMP)],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"surface dump failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    env = {k: v for k, v in upstream.env().items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    env["PYTHONPATH"] = str(ROOT)
    return dump(env, tmp_path_factory.mktemp("ours"))


_UPSTREAM_CACHE: tp.Dict[str, dict] = {}


def theirs(version: str, tmp_path_factory) -> dict:
    upstream.require(version)
    if version not in _UPSTREAM_CACHE:
        _UPSTREAM_CACHE[version] = dump(
            upstream.env(version), tmp_path_factory.mktemp(f"upstream{version}")
        )
    return _UPSTREAM_CACHE[version]


def signature_problems(
    theirs_: Params, ours_: Params, other_defaults: tp.Collection[str] = ()
) -> tp.List[str]:
    """Why a call that binds to upstream's parameters might not bind (alike) to ours.
    ``other_defaults``: parameters whose default differs on purpose."""
    problems = []
    our_kinds = {p[1] for p in ours_}
    ours_by_name = {p[0]: p for p in ours_}
    their_pos = [p for p in theirs_ if p[1] in POSITIONAL]
    our_pos = [p for p in ours_ if p[1] in POSITIONAL]
    for index, (name, kind, _) in enumerate(their_pos):
        if index >= len(our_pos):
            if "VAR_POSITIONAL" not in our_kinds:
                problems.append(f"positional #{index} `{name}` missing")
        elif kind == "POSITIONAL_OR_KEYWORD" and our_pos[index][0] != name:
            problems.append(f"positional #{index} is `{our_pos[index][0]}`, upstream `{name}`")
    for name, kind, default in theirs_:
        if kind in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            if kind not in our_kinds:
                problems.append(f"no {'*args' if kind == 'VAR_POSITIONAL' else '**kwargs'}")
            continue
        mine = ours_by_name.get(name)
        if mine is None or mine[1] == "POSITIONAL_ONLY":
            if kind != "POSITIONAL_ONLY" and "VAR_KEYWORD" not in our_kinds:
                problems.append(f"keyword `{name}` not accepted")
            continue
        if default is not None and mine[2] is None:
            problems.append(f"`{name}` is required, upstream defaults to {default}")
        elif default is not None and mine[2] != default and name not in other_defaults:
            problems.append(f"`{name}` defaults to {mine[2]}, upstream {default}")
    their_names = {p[0] for p in theirs_}
    for index, (name, kind, default) in enumerate(ours_):
        if kind in ("VAR_POSITIONAL", "VAR_KEYWORD") or default is not None:
            continue
        if name not in their_names and not (kind in POSITIONAL and index < len(their_pos)):
            problems.append(f"new required parameter `{name}`")
    return problems


def positional_only(entry: dict) -> dict:
    if entry.get("params") is None:
        return entry
    params = [
        [name, "POSITIONAL_ONLY" if kind == "POSITIONAL_OR_KEYWORD" else kind, default]
        for name, kind, default in entry["params"]
    ]
    return dict(entry, params=params)


def entry_problems(
    subject: str, their: dict, our: tp.Optional[dict], module: str = ""
) -> tp.Dict[str, str]:
    if our is None:
        return {subject: f"missing ({their['kind']})"}
    if their["kind"] == "class" and our["kind"] != "class":
        return {subject: f"is a {our['kind']}, upstream a class (isinstance breaks)"}
    if their["kind"] in ("function", "method", "staticmethod", "classmethod", "class"):
        if our["kind"] in ("property", "attribute", "constant", "instance"):
            return {subject: f"is a {our['kind']}, upstream a callable {their['kind']}"}
    if their["kind"] == "property" and our["kind"] not in ("property", "attribute"):
        return {subject: f"is a {our['kind']}, upstream a property"}
    if their.get("params") is not None and our.get("params") is not None:
        on_purpose = {
            param for (mod, subj, param) in DEFAULTS_ON_PURPOSE if (mod, subj) == (module, subject)
        }
        problems = signature_problems(their["params"], our["params"], on_purpose)
        if problems:
            return {subject: "; ".join(problems)}
    return {}


def class_problems(
    prefix: str, their_members: dict, our_members: dict, module: str = ""
) -> tp.Dict[str, str]:
    out: tp.Dict[str, str] = {}
    for member, their in sorted(their_members.items()):
        if member == "__init__":
            continue  # compared through the class's own signature
        mine = our_members.get(member)
        if member.startswith("__") and mine is not None:
            # Dunders are called by the interpreter, positionally: names do not matter.
            their, mine = positional_only(their), positional_only(mine)
        out.update(entry_problems(f"{prefix}.{member}", their, mine, module))
    return out


def module_problems(module: str, their: dict, our: dict) -> tp.Dict[str, str]:
    if module == MODELS:
        out: tp.Dict[str, str] = {}
        for name, klass in sorted(their["model_classes"].items()):
            mine = our["model_classes"].get(name)
            if mine is None:
                out[name] = "missing"
                continue
            out.update(
                entry_problems(name, dict(klass, kind="class"), dict(mine, kind="class"), module)
            )
            out.update(class_problems(name, klass["members"], mine["members"], module))
        return out
    if module in their["absent"]:
        return {}
    if module in our["absent"]:
        return {module: "module missing"}
    if module in our["errors"]:
        return {module: f"import fails: {our['errors'][module]}"}
    their_names = their["modules"].get(module, {})
    our_names = our["modules"].get(module, {})
    out = {}
    for name, entry in sorted(their_names.items()):
        mine = our_names.get(name)
        out.update(entry_problems(name, entry, mine, module))
        if entry["kind"] == "class" and mine is not None and mine["kind"] == "class":
            out.update(
                class_problems(
                    name,
                    their["classes"][entry["qualname"]],
                    our["classes"][mine["qualname"]],
                    module,
                )
            )
    return out


@pytest.mark.parametrize("module", MODULES + (MODELS,))
@pytest.mark.parametrize("version", upstream.VERSIONS)
def test_surface_matches_upstream(version, module, ours, tmp_path_factory):
    their = theirs(version, tmp_path_factory)
    assert not their["errors"], f"upstream {version} failed to import: {their['errors']}"
    problems = module_problems(module, their, ours)
    gaps = KNOWN_GAPS.get(module, set())
    unexpected = {
        s: why for s, why in problems.items() if s not in gaps and (module, s) not in ON_PURPOSE
    }
    assert not unexpected, f"demucs.{module} differs from upstream {version}:\n" + "\n".join(
        f"  {s}: {why}" for s, why in sorted(unexpected.items())
    )


def test_known_gaps_are_still_gaps(ours, tmp_path_factory):
    """Warns (does not fail) about KNOWN_GAPS entries that pass against every version."""
    still_open: tp.Dict[str, tp.Set[str]] = {module: set() for module in KNOWN_GAPS}
    for version in upstream.VERSIONS:
        their = theirs(version, tmp_path_factory)
        for module in KNOWN_GAPS:
            still_open[module] |= set(module_problems(module, their, ours))
    stale = {
        module: sorted(gaps - still_open[module])
        for module, gaps in KNOWN_GAPS.items()
        if gaps - still_open[module]
    }
    if stale:
        warnings.warn(f"KNOWN_GAPS entries that now pass (remove them): {stale}")


@pytest.mark.parametrize("name", TRAINING_ONLY)
def test_training_modules_say_inference_fork(name):
    sys.modules.pop(f"demucs.{name}", None)
    with pytest.raises(ImportError, match="inference fork") as info:
        importlib.import_module(f"demucs.{name}")
    assert f"demucs.{name}" in str(info.value) and "training" in str(info.value)
    assert info.value.name == f"demucs.{name}"


def test_training_module_list_covers_upstream():
    """Every upstream module is either compared here, a model module, or training-only."""
    for version in upstream.VERSIONS:
        upstream.require(version)
        site = upstream.oracle_site(version) / "demucs"
        packages = {p.name for p in site.iterdir() if (p / "__init__.py").exists()}
        names = {p.stem for p in site.glob("*.py")} | packages
        inference = set(MODULES) | {
            "__init__",
            "__main__",
            "demucs",
            "hdemucs",
            "htdemucs",
            "transformer",
            "hf",
            "wdemucs",
        }
        assert names - inference - set(TRAINING_ONLY) == set(), version


def test_wdemucs_alias():
    from demucs.hdemucs import HDemucs
    from demucs.wdemucs import WDemucs

    assert WDemucs is HDemucs


def test_signature_checker_catches_incompatible_calls():
    upstream_params = [
        ["a", "POSITIONAL_OR_KEYWORD", None],
        ["kernel_size", "POSITIONAL_OR_KEYWORD", None],
        ["stride", "POSITIONAL_OR_KEYWORD", "1"],
        ["kwargs", "VAR_KEYWORD", None],
    ]
    assert signature_problems(upstream_params, upstream_params) == []
    extended = upstream_params[:3] + [
        ["extra", "KEYWORD_ONLY", "None"],
        ["kwargs", "VAR_KEYWORD", None],
    ]
    assert signature_problems(upstream_params, extended) == []
    renamed = [["signal", "POSITIONAL_OR_KEYWORD", None]] + upstream_params[1:3]
    problems = signature_problems(upstream_params[:3], renamed)
    assert any("`signal`" in p for p in problems) and any("`a` not" in p for p in problems)
    assert any(
        "defaults to 2" in p
        for p in signature_problems(
            upstream_params,
            upstream_params[:2] + [["stride", "POSITIONAL_OR_KEYWORD", "2"]] + upstream_params[3:],
        )
    )
    assert any(
        "new required" in p
        for p in signature_problems(
            upstream_params,
            upstream_params[:3] + [["mode", "KEYWORD_ONLY", None]] + upstream_params[3:],
        )
    )
    assert "no **kwargs" in signature_problems(upstream_params, upstream_params[:3])
    assert (
        signature_problems(
            upstream_params,
            upstream_params[:2] + [["stride", "POSITIONAL_OR_KEYWORD", "2"]] + upstream_params[3:],
            {"stride"},
        )
        == []
    )
