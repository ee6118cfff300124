"""Prints the public library surface of whichever ``demucs`` is importable, as JSON.

Run as a script (``python tests/compat_surface_dump.py``) in a subprocess whose
``PYTHONPATH`` selects the package: upstream (an oracle site) or ours. Both sides are
described by this same code, so the surface test compares like with like. It imports
nothing from ``tests`` and nothing but the standard library besides ``demucs``.

Output: ``{"modules": {module: {name: entry}}, "classes": {qualname: {member: entry}},
"errors": {module: message}}`` where an entry is ``{"kind": ..., "params": [...]}`` and
a parameter is ``[name, kind, default]`` (``default`` is ``None`` when there is none,
else a normalised ``repr``).
"""

from __future__ import annotations

import enum
import fractions
import importlib
import inspect
import json
import pathlib
import re
import sys
import typing as tp

#: Inference-side modules whose public names clients import.
MODULES = (
    "api",
    "apply",
    "audio",
    "pretrained",
    "repo",
    "separate",
    "states",
    "utils",
    "spec",
    "wiener",
    "hf",
)
#: Model classes (module, class) whose constructors and public methods clients call.
CLASSES = (
    ("demucs", "Demucs"),
    ("hdemucs", "HDemucs"),
    ("htdemucs", "HTDemucs"),
    ("apply", "BagOfModels"),
)
#: Dunder members worth comparing (the rest of a class's dunders come from ``object``).
DUNDERS = ("__init__", "__call__", "__len__", "__getitem__", "__iter__", "__enter__", "__exit__")
CONSTANT_TYPES = (
    str,
    int,
    float,
    bool,
    bytes,
    tuple,
    list,
    dict,
    set,
    frozenset,
    pathlib.PurePath,
    fractions.Fraction,
)
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def normalise_default(value: tp.Any) -> tp.Optional[str]:
    if value is inspect.Parameter.empty:
        return None
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, pathlib.PurePath):
        return f"Path({str(value)!r})"
    if isinstance(value, list):  # a list or a tuple default accept the same calls
        value = tuple(value)
    if inspect.isroutine(value) or inspect.isclass(value):
        return f"<{getattr(value, '__qualname__', type(value).__name__)}>"
    text = repr(value)
    if _ADDRESS.search(text):
        return f"<instance of {type(value).__name__}>"
    return text


def describe_callable(obj: tp.Any) -> tp.Optional[list]:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    return [
        [p.name, p.kind.name, normalise_default(p.default)] for p in signature.parameters.values()
    ]


def is_ours(obj: tp.Any) -> bool:
    """Defined by a ``demucs`` module (ours or upstream's), not a third-party package."""
    module = getattr(obj, "__module__", None) or ""
    return module == "demucs" or module.startswith("demucs.")


def describe_member(owner: type, name: str, raw: tp.Any) -> dict:
    if isinstance(raw, property):
        return {"kind": "property", "params": None}
    if isinstance(raw, staticmethod):
        return {"kind": "staticmethod", "params": describe_callable(raw.__func__)}
    if isinstance(raw, classmethod):
        params = describe_callable(raw.__func__)
        return {"kind": "classmethod", "params": params[1:] if params else params}
    if inspect.isclass(raw):
        return {"kind": "class", "params": None}
    if inspect.isfunction(raw):
        params = describe_callable(raw)
        return {"kind": "method", "params": params[1:] if params else params}
    return {"kind": "attribute", "params": None}


def describe_class(klass: type) -> dict:
    members: dict = {}
    for base in reversed(klass.__mro__):
        if not is_ours(base):
            continue
        for name, raw in vars(base).items():
            if name.startswith("_") and name not in DUNDERS:
                continue
            members[name] = describe_member(base, name, raw)
    return members


def describe_module(module: tp.Any, classes: dict) -> dict:
    names: dict = {}
    # dir(): names a module loads on first use (PEP 562 ``__getattr__``) count too.
    for name in dir(module):
        obj = getattr(module, name, None)
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        if inspect.isclass(obj):
            if not is_ours(obj):
                continue
            names[name] = {"kind": "class", "params": describe_callable(obj)}
            classes.setdefault(f"{obj.__module__}.{obj.__qualname__}", describe_class(obj))
            names[name]["qualname"] = f"{obj.__module__}.{obj.__qualname__}"
        elif inspect.isroutine(obj):
            if not is_ours(obj):
                continue
            names[name] = {"kind": "function", "params": describe_callable(obj)}
        elif is_ours(type(obj)):
            names[name] = {"kind": "instance", "params": None, "type": type(obj).__name__}
        elif isinstance(obj, CONSTANT_TYPES) and not name.startswith("tp"):
            names[name] = {"kind": "constant", "params": None}
    return names


def main(argv: tp.Sequence[str]) -> None:
    out: dict = {"modules": {}, "classes": {}, "model_classes": {}, "errors": {}, "absent": []}
    package = pathlib.Path(importlib.import_module("demucs").__file__).parent
    for short in MODULES:
        # A module this package lacks must not be found elsewhere (e.g. through another
        # checkout's editable-install finder): absent it is.
        if not (package / f"{short}.py").exists() and not (package / short).is_dir():
            out["absent"].append(short)
            continue
        try:
            module = importlib.import_module(f"demucs.{short}")
        except Exception as error:  # reported, so the test can say which import broke
            out["errors"][short] = f"{type(error).__name__}: {error}"
            continue
        out["modules"][short] = describe_module(module, out["classes"])
    for short, name in CLASSES:
        try:
            klass = getattr(importlib.import_module(f"demucs.{short}"), name)
        except Exception as error:
            out["errors"][f"{short}.{name}"] = f"{type(error).__name__}: {error}"
            continue
        out["model_classes"][name] = {
            "params": describe_callable(klass),
            "members": describe_class(klass),
        }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
