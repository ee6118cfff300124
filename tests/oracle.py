"""Runs upstream demucs (the reference: 4.0.1 by default, or 4.1.0) in a subprocess.

Upstream and our package are both called ``demucs``, and pickled checkpoints name
``demucs.*`` classes, so the two must never share an interpreter. Each upstream version
lives in its own folder (``make oracle``): 4.0.1 in ``.oracle/site`` (or wherever
``DEMUCS_ORACLE_SITE`` points), 4.1.0 in ``.oracle/site410`` (``DEMUCS_ORACLE_SITE_410``).
Both run with stub ``torchaudio``/``dora``/``omegaconf``/``sphn`` modules from
``tests/oracle_stubs``.

Module-level functions run 4.0.1; :func:`version` gives the same functions for another
version (``oracle.version("4.1.0").run(...)``). Data goes in and out through files
written with ``torch.save`` (plain tensors and dicts), which our side reads back with
``weights_only=True``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(__file__).resolve().parent / "oracle_stubs"

DEFAULT_VERSION = "4.0.1"
#: Upstream version -> (environment variable overriding its folder, default folder).
SITES = {
    "4.0.1": ("DEMUCS_ORACLE_SITE", ROOT / ".oracle" / "site"),
    "4.1.0": ("DEMUCS_ORACLE_SITE_410", ROOT / ".oracle" / "site410"),
}
VERSIONS = tuple(SITES)


def oracle_site(version: str = DEFAULT_VERSION) -> Path:
    if version not in SITES:
        raise ValueError(f"unknown upstream version {version!r}, expected one of {VERSIONS}")
    variable, default = SITES[version]
    return Path(os.environ.get(variable, default))


def available(version: str = DEFAULT_VERSION) -> bool:
    return (oracle_site(version) / "demucs" / "htdemucs.py").exists()


def require(version: str = DEFAULT_VERSION) -> None:
    """The one oracle policy, for every version: a missing install skips the calling
    test locally and fails it in CI (``DEMUCS_REQUIRE_ORACLE=1``)."""
    import pytest

    if not available(version):
        if os.environ.get("DEMUCS_REQUIRE_ORACLE"):
            pytest.fail(f"upstream oracle {version} missing: run `make oracle`")
        pytest.skip(f"upstream oracle {version} not installed (make oracle)")


def env(version: str = DEFAULT_VERSION) -> dict:
    """Environment for a subprocess that imports upstream ``demucs`` of ``version``."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(STUBS), str(oracle_site(version))])
    # Upstream calls torch.load without weights_only; only ever on files tests made.
    out["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def run(
    code: str, cwd: Path, timeout: float = 600, version: str = DEFAULT_VERSION
) -> subprocess.CompletedProcess:
    """Runs ``code`` with upstream demucs importable; raises with its stderr on failure."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(cwd),
        env=env(version),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"oracle failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli(
    args: list, cwd: Path, timeout: float = 600, version: str = DEFAULT_VERSION
) -> subprocess.CompletedProcess:
    """Runs upstream's ``python -m demucs.separate ARGS``."""
    proc = subprocess.run(
        [sys.executable, "-m", "demucs.separate", *map(str, args)],
        cwd=str(cwd),
        env=env(version),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"oracle CLI failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_model(
    klass: str,
    kwargs: dict,
    inputs: Optional[torch.Tensor],
    workdir: Path,
    seed: int = 0,
    checkpoint: Optional[Path] = None,
) -> dict:
    """Builds upstream ``klass`` (e.g. "htdemucs.HTDemucs") with ``kwargs`` and ``seed``.

    Returns ``{"state": state_dict, "output": model(inputs) or None}``. If ``checkpoint``
    is given, also saves the model there with upstream's ``states.save_model`` format
    (``{"klass", "args", "kwargs", "state", "training_args"}``) via ``serialize_model``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    module, name = klass.rsplit(".", 1)
    inp = workdir / "oracle_in.pt"
    out = workdir / "oracle_out.pt"
    torch.save({"kwargs": kwargs, "inputs": inputs}, inp)
    ckpt = repr(str(checkpoint)) if checkpoint is not None else "None"
    run(
        f"""
        import torch
        from demucs.{module} import {name} as Klass
        from demucs.states import serialize_model
        data = torch.load({str(inp)!r})
        torch.manual_seed({seed})
        model = Klass(**data["kwargs"])
        model.eval()
        output = None
        if data["inputs"] is not None:
            with torch.no_grad():
                output = model(data["inputs"])
        if {ckpt} is not None:
            torch.save(serialize_model(model, {{}}), {ckpt})
        torch.save({{"state": model.state_dict(), "output": output}}, {str(out)!r})
    """,
        cwd=workdir,
    )
    return torch.load(out, weights_only=True)


def make_models(specs: list, workdir: Path) -> list:
    """Several :func:`make_model` calls in ONE subprocess (saves the interpreter start).

    ``specs``: dicts with keys ``klass``, ``kwargs``, ``inputs`` and optionally ``seed``
    (default 0). Returns one ``{"state", "output"}`` dict per spec, in order.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    inp = workdir / "oracle_batch_in.pt"
    out = workdir / "oracle_batch_out.pt"
    torch.save([{"seed": 0, **spec} for spec in specs], inp)
    run(
        f"""
        import importlib
        import torch
        results = []
        for spec in torch.load({str(inp)!r}):
            module, name = spec["klass"].rsplit(".", 1)
            Klass = getattr(importlib.import_module("demucs." + module), name)
            torch.manual_seed(spec["seed"])
            model = Klass(**spec["kwargs"]).eval()
            output = None
            if spec["inputs"] is not None:
                with torch.no_grad():
                    output = model(spec["inputs"])
            results.append({{"state": model.state_dict(), "output": output}})
        torch.save(results, {str(out)!r})
    """,
        cwd=workdir,
    )
    return torch.load(out, weights_only=True)


def make_model_dict(jobs: dict, workdir: Path) -> dict:
    """:func:`make_models` keyed by name: ``{name: (klass, kwargs, inputs, seed)}`` ->
    ``{name: {"state", "output"}}``."""
    specs = [
        dict(klass=klass, kwargs=kwargs, inputs=inputs, seed=seed)
        for klass, kwargs, inputs, seed in jobs.values()
    ]
    return dict(zip(jobs, make_models(specs, workdir)))


def load_result(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def run_script(
    script: Path, args: list, cwd: Path, timeout: float = 600, version: str = DEFAULT_VERSION
) -> subprocess.CompletedProcess:
    """Runs ``python SCRIPT ARGS`` with upstream demucs importable (script from tests/)."""
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=str(cwd),
        env=env(version),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"oracle script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def version(name: str) -> SimpleNamespace:
    """The runners of this module bound to upstream ``name`` (e.g. "4.1.0")."""
    oracle_site(name)  # validates the name

    def bind(func: Any) -> Any:
        def bound(*args: Any, **kwargs: Any) -> Any:
            return func(*args, version=name, **kwargs)

        bound.__doc__ = func.__doc__
        return bound

    return SimpleNamespace(
        name=name,
        site=oracle_site(name),
        available=lambda: available(name),
        require=lambda: require(name),
        env=lambda: env(name),
        run=bind(run),
        run_cli=bind(run_cli),
        run_script=bind(run_script),
        load_result=load_result,
    )
