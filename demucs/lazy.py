"""Names a module re-exports from other modules, loaded on first use (PEP 562).

Upstream's modules expose names they import (``demucs.api.apply_model``,
``demucs.separate.HTDemucs``...); ours keep them without importing PyTorch or the model
code at import time, so that ``demucs --onnx`` and the torch-free layers stay light.
"""

from __future__ import annotations

import importlib
import typing as tp

__all__ = ["lazy_exports"]


def lazy_exports(
    module: str, namespace: tp.Dict[str, tp.Any], table: tp.Mapping[str, str]
) -> tp.Tuple[tp.Callable[[str], tp.Any], tp.Callable[[], tp.List[str]]]:
    """``(__getattr__, __dir__)`` for ``module`` whose globals are ``namespace``: each name
    of ``table`` is read from the sibling module ``table[name]`` when first asked for."""
    package = module.rpartition(".")[0]

    def getattr_(name: str) -> tp.Any:
        if name in table:
            value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    def dir_() -> tp.List[str]:
        return sorted(set(namespace) | set(table))

    return getattr_, dir_
