"""Model repositories: where pretrained models and bags of models come from.

* :class:`RemoteRepo`: single models downloaded from a URL into torch.hub's cache,
  verified against the checksum in their file name, then loaded safely.
* :class:`LocalRepo`: single models in a folder, as ``SIG.th`` or ``SIG-CHECKSUM.th``.
* :class:`BagOnlyRepo`: ``NAME.yaml`` files describing bags of models (``models``,
  optional ``weights`` and ``segment``), whose members come from a model repo.
* :class:`AnyModelRepo`: a single model by signature, or else a bag by name.
"""

from __future__ import annotations

import http.client
import logging
import math
import os
import re
import typing as tp
import urllib.error
import uuid
from hashlib import sha256
from pathlib import Path

import torch
import yaml

from .apply import BagOfModels, Model
from .htdemucs import HTDemucs
from .model_checks import check_name, check_segment
from .hf import load_safetensors_model, read_safetensors_package
from .states import ModelLoadingError, load_model, load_package

logger = logging.getLogger(__name__)

#: Suffix of upstream 4.1.0's pickle-free model files.
SAFETENSORS_SUFFIX = ".safetensors"

__all__ = [
    "AnyModel",
    "ModelLoadingError",
    "DownloadError",
    "check_checksum",
    "ModelOnlyRepo",
    "RemoteRepo",
    "LocalRepo",
    "BagOnlyRepo",
    "AnyModelRepo",
]

AnyModel = tp.Union[Model, BagOfModels]

#: The checksum is the part of a file name between the first "-" and the extension.
_CHECKSUM_RE = re.compile(r"-([a-fA-F0-9]+)\.[^.]*$")


class DownloadError(ModelLoadingError):
    """A pretrained model could not be fetched (no network, server error...)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"cannot download {name}: {reason}; place the files in a folder and pass --repo DIR"
        )


def _file_sha256(path: Path) -> str:
    sha = sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def check_checksum(path: tp.Union[str, Path], checksum: str) -> None:
    """Raises :class:`ModelLoadingError` unless sha256(file) starts with ``checksum``."""
    actual = _file_sha256(Path(path))[: len(checksum)]
    if actual != checksum.lower():
        raise ModelLoadingError(
            f"Invalid checksum for file {path}, expected {checksum} but got {actual}"
        )


class ModelOnlyRepo:
    """Interface of repositories of single models, addressed by signature."""

    def has_model(self, sig: str) -> bool:
        raise NotImplementedError()

    def get_model(self, sig: str) -> Model:
        raise NotImplementedError()

    def list_models(self) -> tp.List[str]:
        """Signatures available in this repo."""
        raise NotImplementedError()

    def list_model(self) -> tp.Dict[str, tp.Union[str, Path]]:
        """Upstream 4.1.0's listing: ``{signature: URL or file}``."""
        raise NotImplementedError()

    def model_package(self, sig: str) -> tp.Dict[str, tp.Any]:
        """The checkpoint dict of model ``sig``, read safely, without building the model."""
        raise NotImplementedError()


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    return f"no network ({type(reason).__name__}: {reason})"


class RemoteRepo(ModelOnlyRepo):
    """Models downloaded on demand into ``torch.hub.get_dir()/checkpoints``.

    Args:
        models: signature -> URL. A URL's file name ``SIG-CHECKSUM.th`` gives the
            expected prefix of the file's sha256; it is verified before loading.
    """

    def __init__(self, models: tp.Dict[str, str]) -> None:
        self._models = dict(models)

    def has_model(self, sig: str) -> bool:
        return sig in self._models

    def list_models(self) -> tp.List[str]:
        return sorted(self._models)

    def list_model(self) -> tp.Dict[str, tp.Union[str, Path]]:
        return dict(self._models)

    @staticmethod
    def cache_dir() -> Path:
        """Folder of downloaded checkpoints (torch.hub's, honours ``TORCH_HOME``)."""
        return Path(torch.hub.get_dir()) / "checkpoints"

    def _download(self, sig: str, url: str, target: Path, checksum: tp.Optional[str]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            try:
                torch.hub.download_url_to_file(url, str(partial), progress=True)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise DownloadError(sig, f"{_describe_network_error(exc)}, url {url}") from exc
            if checksum is not None:
                try:
                    check_checksum(partial, checksum)
                except ModelLoadingError as exc:
                    raise ModelLoadingError(
                        f"downloaded file for {sig} from {url} is corrupted: {exc}; it was deleted"
                    ) from exc
            os.replace(partial, target)
        finally:
            if partial.exists():
                partial.unlink()

    def model_file(self, sig: str) -> Path:
        """The checked local copy of model ``sig``, downloaded when not cached yet."""
        try:
            url = self._models[sig]
        except KeyError:
            raise ModelLoadingError(
                f"Could not find a pre-trained model with signature {sig}."
            ) from None
        filename = url.rsplit("/", 1)[-1].split("?", 1)[0]
        match = _CHECKSUM_RE.search(filename)
        checksum = match.group(1) if match else None
        target = self.cache_dir() / filename
        if not target.exists():
            self._download(sig, url, target, checksum)
        elif checksum is not None:
            try:
                check_checksum(target, checksum)
            except ModelLoadingError as exc:
                target.unlink()
                raise ModelLoadingError(
                    f"cached file for {sig} was corrupted and has been deleted, "
                    f"retry to download it again ({exc})"
                ) from exc
        return target

    def get_model(self, sig: str) -> Model:
        return tp.cast(Model, load_model(self.model_file(sig)))

    def model_package(self, sig: str) -> tp.Dict[str, tp.Any]:
        return load_package(self.model_file(sig))


class LocalRepo(ModelOnlyRepo):
    """Models stored in a folder as ``SIG.th``, ``SIG-CHECKSUM.th`` or ``SIG.safetensors``
    (upstream 4.1.0's pickle-free format, see :mod:`demucs.hf`).

    When a checksum is part of a ``.th`` name, the file's sha256 must start with it. When
    a signature has both a ``.safetensors`` and a ``.th`` file, the ``.safetensors`` one
    is used: it cannot hold code at all, while a ``.th`` is a pickle read through an
    allowlist.
    """

    def __init__(self, root: tp.Union[str, Path]) -> None:
        self.root = Path(root)
        self.scan()

    def scan(self) -> None:
        """(Re)reads the folder. Raises if two files of one format share a signature."""
        self._models: tp.Dict[str, Path] = {}
        self._checksums: tp.Dict[str, str] = {}
        for file in sorted(self.root.iterdir()):
            if file.suffix == SAFETENSORS_SUFFIX:
                sig = file.stem
                self._checksums.pop(sig, None)
                self._models[sig] = file
                continue
            if file.suffix != ".th":
                continue
            # The checksum follows the last "-" (as upstream 4.1.0 reads it).
            sig, sep, checksum = file.stem.rpartition("-")
            if not sep:
                sig = checksum
            if sig in self._models:
                if self._models[sig].suffix == SAFETENSORS_SUFFIX:
                    continue
                raise ModelLoadingError(
                    f"Duplicate pre-trained model exist for signature {sig}. "
                    "Please delete all but one."
                )
            if sep:
                self._checksums[sig] = checksum
            self._models[sig] = file

    def has_model(self, sig: str) -> bool:
        return sig in self._models

    def list_models(self) -> tp.List[str]:
        return sorted(self._models)

    def list_model(self) -> tp.Dict[str, tp.Union[str, Path]]:
        return dict(self._models)

    def model_file(self, sig: str) -> Path:
        """File of model ``sig`` (its checksum verified when its name has one)."""
        try:
            file = self._models[sig]
        except KeyError:
            raise ModelLoadingError(
                f"Could not find pre-trained model with signature {sig}."
            ) from None
        if sig in self._checksums:
            check_checksum(file, self._checksums[sig])
        return file

    def get_model(self, sig: str) -> Model:
        file = self.model_file(sig)
        if file.suffix == SAFETENSORS_SUFFIX:
            return load_safetensors_model(file)
        return tp.cast(Model, load_model(file))

    def model_package(self, sig: str) -> tp.Dict[str, tp.Any]:
        file = self.model_file(sig)
        if file.suffix == SAFETENSORS_SUFFIX:
            return read_safetensors_package(file)
        return load_package(file)


#: Most members a bag of models may list.
MAX_BAG_MODELS = 64


def read_bag(path: tp.Union[str, Path]) -> tp.Dict[str, tp.Any]:
    """Parses a bag description: ``{"models": [sig...], "weights": ..., "segment": ...}``.

    Every value is checked (member names are plain file name components, weights finite
    numbers, segment a positive number of seconds); any problem, YAML syntax and tags
    included, is one :class:`ModelLoadingError` line naming the file.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            bag = yaml.safe_load(file)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ModelLoadingError(f"{path} is not a valid bag YAML file: {problem}{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadingError(f"cannot read bag file {path}: {exc}") from None
    return check_bag(bag, str(path))


def check_bag(bag: tp.Any, origin: str) -> tp.Dict[str, tp.Any]:
    """Validates a parsed bag description (see :func:`read_bag`) and returns it."""
    if not isinstance(bag, dict) or not isinstance(bag.get("models"), list):
        raise ModelLoadingError(f"{origin} is not a bag of models: it needs a `models` list")
    unknown = sorted(str(key) for key in bag if key not in ("models", "weights", "segment"))
    if unknown:
        logger.debug("%s: ignoring unknown bag keys %s", origin, unknown)
    models = bag["models"]
    if not 1 <= len(models) <= MAX_BAG_MODELS:
        raise ModelLoadingError(
            f"{origin}: a bag needs 1 to {MAX_BAG_MODELS} models, got {len(models)}"
        )
    names = []
    for sig in models:
        if isinstance(sig, int) and not isinstance(sig, bool):
            sig = str(sig)  # an unquoted all-digit signature
        names.append(check_name(sig, "model name", origin))
    weights = bag.get("weights")
    if weights is not None:
        if not isinstance(weights, list) or not all(
            isinstance(row, list) and all(_is_finite_number(w) for w in row) for row in weights
        ):
            raise ModelLoadingError(
                f"{origin}: weights must be lists of finite numbers, one per model"
            )
        weights = [[float(w) for w in row] for row in weights]
    segment = bag.get("segment")
    if segment is not None:
        check_segment(segment, origin, "bag segment")
    return {"models": names, "weights": weights, "segment": segment}


def _is_finite_number(value: tp.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def apply_bag_segment(models: tp.Sequence[Model], segment: tp.Optional[float], origin: str) -> None:
    """Sets a bag's ``segment`` on its members, as upstream 4.1.0 does: a segment longer
    than an HTDemucs member's training segment is ignored for that member (the
    transformer cannot run on longer inputs), and logged."""
    if segment is None:
        return
    for index, model in enumerate(models):
        if isinstance(model, HTDemucs) and float(segment) > float(model.segment):
            logger.info(
                "%s: bag segment %gs is longer than the training segment %gs of "
                "member %d (HTDemucs): ignored for that member",
                origin,
                float(segment),
                float(model.segment),
                index,
            )
            continue
        model.segment = segment


class BagOnlyRepo:
    """Bags of models described by ``NAME.yaml`` files; members come from ``model_repo``."""

    def __init__(self, root: tp.Union[str, Path], model_repo: ModelOnlyRepo) -> None:
        self.root = Path(root)
        self.model_repo = model_repo
        self.scan()

    def scan(self) -> None:
        """(Re)reads the folder."""
        self._bags: tp.Dict[str, Path] = {
            file.stem: file for file in self.root.iterdir() if file.suffix == ".yaml"
        }

    def has_model(self, name: str) -> bool:
        return name in self._bags

    def list_models(self) -> tp.List[str]:
        """Names of the bags in this repo."""
        return sorted(self._bags)

    def list_model(self) -> tp.Dict[str, tp.Union[str, Path]]:
        """Upstream 4.1.0's listing: ``{bag name: YAML file}``."""
        return dict(self._bags)

    def get_bag_description(self, name: str) -> tp.Dict[str, tp.Any]:
        """The parsed yaml of bag ``name`` (see :func:`read_bag`), nothing downloaded."""
        try:
            yaml_file = self._bags[name]
        except KeyError:
            raise ModelLoadingError(
                f"{name} is neither a single pre-trained model or a bag of models."
            ) from None
        return read_bag(yaml_file)

    def get_model(self, name: str) -> BagOfModels:
        bag = self.get_bag_description(name)
        models = [self.model_repo.get_model(sig) for sig in bag["models"]]
        apply_bag_segment(models, bag["segment"], str(self._bags[name]))
        try:
            return BagOfModels(models, bag["weights"])
        except ValueError as exc:
            raise ModelLoadingError(f"invalid bag of models {name}: {exc}") from exc


class AnyModelRepo:
    """Looks a name up as a single model signature first, then as a bag name."""

    def __init__(self, model_repo: ModelOnlyRepo, bag_repo: BagOnlyRepo) -> None:
        self.model_repo = model_repo
        self.bag_repo = bag_repo

    def has_model(self, name_or_sig: str) -> bool:
        return self.model_repo.has_model(name_or_sig) or self.bag_repo.has_model(name_or_sig)

    def list_model(self) -> tp.Dict[str, tp.Union[str, Path]]:
        """Upstream 4.1.0's listing: single models, then bags (a bag wins a shared name)."""
        models = dict(self.model_repo.list_model())
        models.update(self.bag_repo.list_model())
        return models

    def get_model(self, name_or_sig: str) -> AnyModel:
        if self.model_repo.has_model(name_or_sig):
            return self.model_repo.get_model(name_or_sig)
        return self.bag_repo.get_model(name_or_sig)
