"""Upstream 4.1.0's pickle-free model format, and loading it from the HuggingFace hub.

Layout: one folder (a hub repository such as ``adefossez/HTDemucs``) per model name,
holding ``NAME.yaml`` (the bag: ``models``, optional ``weights`` and ``segment``) and
one ``SIG.safetensors`` per member. A member file holds the weights as tensors and, in
its metadata (strings), the checkpoint's other fields as JSON:

* ``klass``: dotted class name, e.g. ``demucs.htdemucs.HTDemucs``;
* ``args`` / ``kwargs``: constructor arguments; a ``Fraction`` is written as
  ``{"_type": "fraction", "numerator": N, "denominator": D}``;
* ``structure`` (only for states that are not a flat dict of tensors, i.e. DiffQ
  quantized states): the nested state, whose nodes are ``{"_tensor": key}``,
  ``{"_dict": [[key, node], ...]}``, ``{"_list": [...]}``, ``{"_tuple": [...]}``,
  ``{"_class": "module.Name"}`` or plain JSON values.

Unlike upstream, nothing a file names is imported: ``klass`` must be one of our model
classes (:func:`demucs.states.model_classes`) and ``_class`` one of DiffQ's quantizers.
Every value then goes through the same checks as a ``.th`` checkpoint
(:func:`demucs.states.build_model`).

``hf://[namespace/]name`` names are downloaded with ``huggingface_hub`` (optional extra
``demucs[hf]``) into its usual cache, so ``HF_HUB_OFFLINE=1`` works from that cache.
"""

from __future__ import annotations

import json
import math
import typing as tp
from fractions import Fraction
from pathlib import Path

from .apply import BagOfModels, Model
from .errors import ModelLoadingError
from .model_checks import check_name
from .states import build_model, import_diffq, load_model, model_classes  # noqa: F401

__all__ = [
    "DEFAULT_NAMESPACE",
    "HF_SCHEME",
    "hf_repo_name",
    "load_safetensors_model",
    "save_safetensors_model",
    "get_hf_model",
    "hf_download",
    "export_bag",
]

#: Hub namespace of the released models.
DEFAULT_NAMESPACE = "adefossez"
#: Prefix of model names that are loaded from the HuggingFace hub.
HF_SCHEME = "hf://"

#: DiffQ quantizer classes that a quantized state may name, as written in ``_class``.
DIFFQ_CLASS_NAMES = ("diffq.diffq.DiffQuantizer", "diffq.uniform.UniformQuantizer", "diffq.lsq.LSQ")

_HF_HINT = "loading hf:// models needs huggingface_hub: pip install 'demucs[hf]'"
_ST_HINT = "reading .safetensors models needs safetensors: pip install 'demucs[hf]'"

Node = tp.Any


def hf_repo_name(name: str) -> str:
    """Hub repository of a model name: ``htdemucs`` -> ``HTDemucs``, ``htdemucs_ft`` ->
    ``HTDemucs-ft``, anything else ``NAME`` -> ``Demucs-NAME`` (upstream's naming)."""
    if name == "htdemucs":
        return "HTDemucs"
    if name.startswith("htdemucs_"):
        return "HTDemucs-" + name[len("htdemucs_") :]
    return "Demucs-" + name


# --------------------------------------------------------------------------------------
# JSON encoding of constructor arguments and nested states
# --------------------------------------------------------------------------------------


def _encode_value(value: tp.Any) -> tp.Any:
    """Constructor argument -> JSON-ready value (Fractions tagged, tuples as lists)."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"cannot encode a dict with non-string keys: {value!r}")
        return {key: _encode_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_value(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot encode constructor argument {value!r} as JSON")


def _decode_value(value: tp.Any, origin: str) -> tp.Any:
    """Inverse of :func:`_encode_value`."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            num, den = value.get("numerator"), value.get("denominator")
            if (
                not isinstance(num, int)
                or not isinstance(den, int)
                or den == 0
                or isinstance(num, bool)
                or isinstance(den, bool)
            ):
                raise ModelLoadingError(f"{origin}: invalid fraction {value!r}")
            return Fraction(num, den)
        return {key: _decode_value(item, origin) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_value(item, origin) for item in value]
    return value


def _flatten_state(state: tp.Any, tensors: tp.Dict[str, tp.Any], path: str = "") -> Node:
    """Nested state -> structure node; tensors are moved into ``tensors`` by path."""
    import torch

    if isinstance(state, torch.Tensor):
        key = path or "tensor"
        tensors[key] = state.detach().cpu().contiguous().clone()
        return {"_tensor": key}
    if isinstance(state, dict):
        return {
            "_dict": [
                [key, _flatten_state(item, tensors, f"{path}.{key}".lstrip("."))]
                for key, item in state.items()
            ]
        }
    if isinstance(state, list):
        return {
            "_list": [
                _flatten_state(item, tensors, f"{path}.{index}".lstrip("."))
                for index, item in enumerate(state)
            ]
        }
    if isinstance(state, tuple):
        return {
            "_tuple": [
                _flatten_state(item, tensors, f"{path}.{index}".lstrip("."))
                for index, item in enumerate(state)
            ]
        }
    if isinstance(state, type):
        return {"_class": f"{state.__module__}.{state.__qualname__}"}
    if state is None or isinstance(state, (bool, int, str)):
        return state
    if isinstance(state, float) and math.isfinite(state):
        return state
    raise ValueError(f"cannot store {state!r} in a safetensors structure")


def _diffq_class(name: tp.Any, origin: str) -> type:
    if name not in DIFFQ_CLASS_NAMES:
        raise ModelLoadingError(
            f"{origin}: the state names class {str(name)[:80]!r}, not a DiffQ quantizer: refused"
        )
    import importlib

    import_diffq()  # MissingDiffQError with the install hint
    module, _, attr = str(name).rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _unflatten_state(node: Node, tensors: tp.Dict[str, tp.Any], origin: str) -> tp.Any:
    """Inverse of :func:`_flatten_state`, with our allowlist for ``_class``."""
    if isinstance(node, dict):
        if "_tensor" in node:
            try:
                return tensors[node["_tensor"]]
            except (KeyError, TypeError):
                raise ModelLoadingError(
                    f"{origin}: structure names a missing tensor {node['_tensor']!r}"
                ) from None
        if "_dict" in node and isinstance(node["_dict"], list):
            out = {}
            for pair in node["_dict"]:
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or isinstance(pair[0], (list, dict))
                ):
                    raise ModelLoadingError(f"{origin}: invalid structure entry {pair!r}")
                out[pair[0]] = _unflatten_state(pair[1], tensors, origin)
            return out
        if "_list" in node and isinstance(node["_list"], list):
            return [_unflatten_state(item, tensors, origin) for item in node["_list"]]
        if "_tuple" in node and isinstance(node["_tuple"], list):
            return tuple(_unflatten_state(item, tensors, origin) for item in node["_tuple"])
        if "_class" in node:
            return _diffq_class(node["_class"], origin)
        raise ModelLoadingError(f"{origin}: invalid structure node {str(node)[:60]}")
    if isinstance(node, list):
        raise ModelLoadingError(f"{origin}: invalid structure node (a bare list)")
    return node


# --------------------------------------------------------------------------------------
# One member: SIG.safetensors
# --------------------------------------------------------------------------------------


def _class_by_name(name: tp.Any, origin: str) -> type:
    classes = {f"{klass.__module__}.{klass.__qualname__}": klass for klass in model_classes()}
    if name not in classes:
        raise ModelLoadingError(
            f"{origin}: model class {str(name)[:80]!r} is not one of "
            f"{', '.join(sorted(classes))}: refused"
        )
    return classes[name]


def _json_field(metadata: tp.Dict[str, str], key: str, origin: str) -> tp.Any:
    if key not in metadata:
        raise ModelLoadingError(
            f"{origin} is not a Demucs safetensors model: no {key!r} in its metadata"
        )
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as exc:
        raise ModelLoadingError(
            f"{origin}: metadata {key!r} is not valid JSON ({str(exc)[:80]})"
        ) from None


def read_safetensors_package(path: tp.Union[str, Path]) -> tp.Dict[str, tp.Any]:
    """Reads a member file into a checkpoint dict ``{"klass", "args", "kwargs", "state"}``
    without building the model (the class is looked up in our allowlist)."""
    origin = str(path)
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ModelLoadingError(f"cannot load {origin}: {_ST_HINT}") from None
    if not Path(path).is_file():
        raise ModelLoadingError(f"model file {origin} does not exist or is not a file")
    try:
        with safe_open(origin, framework="pt") as file:
            metadata = file.metadata() or {}
            klass = _class_by_name(metadata.get("klass"), origin) if "klass" in metadata else None
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadingError(f"{origin} is not a valid safetensors file ({first})") from None
    if klass is None:
        raise ModelLoadingError(
            f"{origin} is not a Demucs safetensors model: no 'klass' in its metadata"
        )
    args = _decode_value(_json_field(metadata, "args", origin), origin)
    kwargs = _decode_value(_json_field(metadata, "kwargs", origin), origin)
    if "structure" in metadata:
        state = _unflatten_state(_json_field(metadata, "structure", origin), tensors, origin)
    else:
        state = tensors
    return {"klass": klass, "args": args, "kwargs": kwargs, "state": state}


def load_safetensors_model(path: tp.Union[str, Path]) -> Model:
    """Loads one model from a ``SIG.safetensors`` file (upstream 4.1.0's format).

    Raises:
        ModelLoadingError: not a safetensors file, a class outside our allowlist, or
            any value that fails the checks of :func:`demucs.states.build_model`.
    """
    return tp.cast(Model, build_model(read_safetensors_package(path), str(path)))


def save_safetensors_model(package_or_model: tp.Any, path: tp.Union[str, Path]) -> Path:
    """Writes a checkpoint dict (or a ``capture_init`` model) as upstream 4.1.0's
    ``SIG.safetensors``: the state's tensors, and class, arguments and (for quantized
    states) the nested structure as JSON metadata. Returns ``path``."""
    from safetensors.torch import save_file

    from .states import serialize_model

    package = package_or_model
    if not isinstance(package, dict):
        package = serialize_model(package_or_model, None, half=False)
    klass = package["klass"]
    metadata = {
        "klass": f"{klass.__module__}.{klass.__qualname__}",
        "args": json.dumps(_encode_value(list(package["args"]))),
        "kwargs": json.dumps(_encode_value(dict(package["kwargs"]))),
    }
    state = package["state"]
    tensors: tp.Dict[str, tp.Any] = {}
    import torch

    if isinstance(state, dict) and all(isinstance(value, torch.Tensor) for value in state.values()):
        tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}
    else:
        metadata["structure"] = json.dumps(_flatten_state(state, tensors))
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


# --------------------------------------------------------------------------------------
# Bags: a folder or a hub repository
# --------------------------------------------------------------------------------------


def hf_download(repo_id: str, filename: str) -> Path:
    """Path of ``filename`` from hub repository ``repo_id`` (downloaded or cached)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelLoadingError(_HF_HINT) from None
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # network, missing file or repository, offline cache miss
        from .repo import DownloadError

        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DownloadError(f"{repo_id}/{filename}", f"{type(exc).__name__}: {first}") from None


def split_hf_name(name: str) -> tp.Tuple[str, str]:
    """``[hf://][namespace/]name`` -> ``(namespace, name)``, each a checked name."""
    if name.startswith(HF_SCHEME):
        name = name[len(HF_SCHEME) :]
    namespace = DEFAULT_NAMESPACE
    if "/" in name:
        namespace, name = name.split("/", 1)
    check_name(namespace, "hub namespace", f"{HF_SCHEME}{namespace}/{name}")
    check_name(name, "model name", f"{HF_SCHEME}{namespace}/{name}")
    return namespace, name


def get_hf_model(name: str) -> BagOfModels:
    """Loads ``[hf://][namespace/]name`` from the HuggingFace hub (namespace
    :data:`DEFAULT_NAMESPACE` by default): ``NAME.yaml``, then one
    ``SIG.safetensors`` per member, from repository ``namespace/hf_repo_name(name)``."""
    from .repo import apply_bag_segment, read_bag

    namespace, name = split_hf_name(name)
    repo_id = f"{namespace}/{hf_repo_name(name)}"
    yaml_file = hf_download(repo_id, f"{name}.yaml")
    bag = read_bag(yaml_file)
    models = [
        load_safetensors_model(hf_download(repo_id, f"{sig}.safetensors")) for sig in bag["models"]
    ]
    apply_bag_segment(models, bag["segment"], str(yaml_file))
    try:
        return BagOfModels(models, bag["weights"])
    except ValueError as exc:
        raise ModelLoadingError(f"invalid bag of models {name}: {exc}") from exc


def export_bag(name: str, out_dir: tp.Union[str, Path], repo: tp.Optional[Path] = None) -> Path:
    """Writes model ``name`` (a bag or a signature, from ``repo`` or the catalog) in
    upstream 4.1.0's layout: ``out_dir/NAME.yaml`` and ``out_dir/SIG.safetensors``.

    Checkpoint weights are copied as stored (float16 stays float16), so the folder
    gives the same outputs as the ``.th`` files. Returns ``out_dir``.
    """
    import yaml

    from .pretrained import find_model_package

    check_name(name, "model name", "export")
    bag, packages = find_model_package(name, repo)  # everything is read before writing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for sig, package in packages.items():
        save_safetensors_model(package, out_dir / f"{sig}.safetensors")
    description: tp.Dict[str, tp.Any] = {"models": list(bag["models"])}
    for key in ("weights", "segment"):
        if bag.get(key) is not None:
            description[key] = bag[key]
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(description), encoding="utf-8")
    return out_dir


def main(argv: tp.Optional[tp.List[str]] = None) -> int:
    """``python -m demucs.hf NAME OUT_DIR [--repo DIR]``: writes ``NAME`` (a bag name or
    a signature) in upstream 4.1.0's layout. Returns the exit status."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m demucs.hf",
        description="Write a model in upstream 4.1.0's safetensors layout "
        "(NAME.yaml and one SIG.safetensors per member).",
    )
    parser.add_argument("name", help="bag name or model signature")
    parser.add_argument("out_dir", type=Path, help="folder to write (created if needed)")
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="folder of .th/.yaml files (default: $DEMUCS_REPO or the remote catalog)",
    )
    args = parser.parse_args(argv)
    try:
        out = export_bag(args.name, args.out_dir, repo=args.repo)
    except (ModelLoadingError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.name} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
