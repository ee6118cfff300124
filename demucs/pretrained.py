"""Pretrained models: the remote catalog, local repos, and the command line flags.

The catalog ships with the package (``demucs/remote``): ``files.txt`` lists the single
model files (``SIG-CHECKSUM.th``, grouped under ``root:`` folders) and each ``NAME.yaml``
describes a bag of models. Files are downloaded from :data:`ROOT_URL`, which the
environment variable ``DEMUCS_REMOTE_ROOT`` overrides (e.g. a mirror or a test server).

Where models come from, first match wins:

1. ``hf://[namespace/]name``: the HuggingFace hub (upstream 4.1.0's safetensors
   folders, :mod:`demucs.hf`), whatever the other settings;
2. ``repo=DIR`` (``--repo``): a local folder of ``.th``/``.safetensors``/``.yaml`` files;
3. ``$DEMUCS_REPO``: the same, for programs that cannot pass ``repo`` (air-gapped use);
4. the catalog above, downloaded from ``$DEMUCS_REMOTE_ROOT`` or :data:`ROOT_URL`.
"""

from __future__ import annotations

import argparse
import logging
import os
import typing as tp
from pathlib import Path

from torch import nn

from .utils import fatal  # noqa: F401 (upstream's name)
from .apply import Model
from .hdemucs import HDemucs  # noqa: F401 (upstream's pretrained module exposes it)
from .hf import HF_SCHEME, get_hf_model
from .repo import (
    AnyModel,
    AnyModelRepo,
    BagOnlyRepo,
    DownloadError,  # noqa: F401
    LocalRepo,
    ModelLoadingError,
    ModelOnlyRepo,
    RemoteRepo,
)
from .flags import DEFAULT_MODEL, add_model_flags  # noqa: F401 (part of this module's API)
from .states import set_stft_backend

logger = logging.getLogger(__name__)

ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"
#: Environment variable overriding :data:`ROOT_URL`.
ROOT_URL_ENV = "DEMUCS_REMOTE_ROOT"
#: Environment variable naming a local folder used instead of the remote catalog.
REPO_ENV = "DEMUCS_REPO"
REMOTE_ROOT = Path(__file__).parent / "remote"

SOURCES = ["drums", "bass", "other", "vocals"]


def root_url() -> str:
    """Base URL of the remote files: ``$DEMUCS_REMOTE_ROOT`` or :data:`ROOT_URL`."""
    url = os.environ.get(ROOT_URL_ENV) or ROOT_URL
    return url if url.endswith("/") else url + "/"


def demucs_unittest() -> nn.Module:
    """A tiny untrained HDemucs, for tests (``-n demucs_unittest``)."""
    return HDemucs(channels=4, sources=SOURCES)


def _parse_remote_files(remote_file_list: tp.Union[str, Path]) -> tp.Dict[str, str]:
    """Reads a ``files.txt`` catalog into ``{signature: url}``.

    Lines are ``SIG-CHECKSUM.th`` file names, ``root: FOLDER/`` (prefix of the following
    files) or ``# comments``; blank lines are ignored.
    """
    base = root_url()
    root = ""
    models: tp.Dict[str, str] = {}
    for line in Path(remote_file_list).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
            continue
        sig = line.split("-", 1)[0]
        if sig in models:
            raise ModelLoadingError(f"duplicate signature {sig} in {remote_file_list}")
        models[sig] = base + root + line
    return models


def default_repo() -> tp.Optional[Path]:
    """The folder named by ``$DEMUCS_REPO``, or None when it is unset or empty."""
    folder = os.environ.get(REPO_ENV, "").strip()
    if not folder:
        return None
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadingError(f"{REPO_ENV}={folder} must exist and be a directory.")
    return path


def model_repos(repo: tp.Optional[Path] = None) -> tp.Tuple[ModelOnlyRepo, BagOnlyRepo]:
    """The single-model and bag repositories that :func:`get_model` searches: ``repo``,
    else ``$DEMUCS_REPO``, else the remote catalog."""
    model_repo: ModelOnlyRepo
    if repo is None:
        repo = default_repo()
    if repo is None:
        model_repo = RemoteRepo(_parse_remote_files(REMOTE_ROOT / "files.txt"))
        return model_repo, BagOnlyRepo(REMOTE_ROOT, model_repo)
    repo = Path(repo)
    if not repo.is_dir():
        raise ModelLoadingError(f"{repo} must exist and be a directory.")
    model_repo = LocalRepo(repo)
    return model_repo, BagOnlyRepo(repo, model_repo)


def get_model(
    name: str, repo: tp.Optional[Path] = None, use_conv_stft: tp.Optional[bool] = None
) -> AnyModel:
    """Loads a pretrained model or bag of models, in eval mode.

    Args:
        name: a bag name (``htdemucs``, ``mdx_extra``...), a single model signature, or
            ``hf://[namespace/]name`` (HuggingFace hub, needs ``demucs[hf]``).
        repo: a local folder with ``.th``/``.safetensors``/``.yaml`` files; ``None`` uses
            ``$DEMUCS_REPO`` if set, else the remote catalog (downloads into torch.hub's
            cache). Ignored for ``hf://`` names.
        use_conv_stft: if not None, selects the STFT backend of every loaded model.

    Raises:
        ModelLoadingError: unknown name, failed download, bad checksum, unsafe file...
    """
    if name.startswith(HF_SCHEME):
        model: nn.Module = get_hf_model(name)
    elif name == "demucs_unittest":
        model = demucs_unittest()
    else:
        model_repo, bag_repo = model_repos(repo)
        try:
            model = AnyModelRepo(model_repo, bag_repo).get_model(name)
        except DownloadError as exc:
            if exc.name != name:
                raise DownloadError(f"{name} (model {exc.name})", exc.reason) from exc
            raise
    if use_conv_stft is not None:
        set_stft_backend(model, use_conv_stft)
    model.eval()
    return tp.cast(AnyModel, model)


def get_model_from_sig(sig: str, repo: tp.Optional[Path] = None) -> Model:
    """Loads the single model with signature ``sig`` (not a bag), in eval mode.

    Upstream rebuilds a model from a training experiment's folder; this inference
    package has no training code, so ``sig`` is looked up like :func:`get_model` does
    (``repo``, ``$DEMUCS_REPO`` or the catalog).
    """
    model_repo, _ = model_repos(repo)
    if not model_repo.has_model(sig):
        raise ModelLoadingError(
            f"no single model with signature {sig} (training experiments are not "
            "supported by this inference package; put SIG.th in a folder and pass it "
            f"as repo or {REPO_ENV})"
        )
    model = model_repo.get_model(sig)
    model.eval()
    return model


def find_model_package(
    name: str, repo: tp.Optional[Path] = None
) -> tp.Tuple[tp.Dict[str, tp.Any], tp.Dict[str, tp.Any]]:
    """The bag description and the checkpoint dict of each member of ``name``, read
    safely without building any model (a signature gives a one-model bag)."""
    model_repo, bag_repo = model_repos(repo)
    if model_repo.has_model(name):
        bag: tp.Dict[str, tp.Any] = {"models": [name], "weights": None, "segment": None}
    else:
        bag = bag_repo.get_bag_description(name)
    return bag, {sig: model_repo.model_package(sig) for sig in bag["models"]}


def get_model_from_args(args: argparse.Namespace) -> AnyModel:
    """Loads the model chosen by the flags of :func:`add_model_flags`."""
    name = str(getattr(args, "sig", None) or getattr(args, "name", None) or DEFAULT_MODEL)
    if getattr(args, "random_weights", False):
        return random_model(name)
    use_conv_stft = getattr(args, "use_conv_stft", None)
    return get_model(name=name, repo=getattr(args, "repo", None), use_conv_stft=use_conv_stft)


#: Release bags whose members each make one source (one-hot weights): ``random_model``
#: builds them as such bags, so that they behave like the real ones (e.g. one-stem runs).
ONE_SOURCE_MEMBERS = ("htdemucs_ft",)


def random_model(name: str, seed: int = 0) -> AnyModel:
    """An untrained model with the release architecture of ``name`` (:mod:`demucs.configs`),
    seeded: to try the pipeline without checkpoints. ``htdemucs_ft`` is a bag of one such
    model per source."""
    import torch

    from .apply import BagOfModels
    from .configs import RELEASE_CONFIGS
    from .htdemucs import HTDemucs

    if name not in RELEASE_CONFIGS:
        raise ModelLoadingError(
            f"--random-weights knows {', '.join(sorted(RELEASE_CONFIGS))}, not {name!r}"
        )
    config = RELEASE_CONFIGS[name]
    with torch.random.fork_rng():
        if name not in ONE_SOURCE_MEMBERS:
            torch.manual_seed(seed)
            return HTDemucs(**config).eval()
        models = []
        for index in range(len(config["sources"])):
            torch.manual_seed(seed + index)
            models.append(HTDemucs(**config).eval())
    weights = [[1.0 if k == i else 0.0 for k in range(len(models))] for i in range(len(models))]
    return BagOfModels(models, weights).eval()


def list_models(
    repo: tp.Optional[Path] = None, signatures: tp.Optional[bool] = None
) -> tp.List[str]:
    """Names that :func:`get_model` accepts, without downloading anything.

    Args:
        repo: a local folder, or ``None`` for ``$DEMUCS_REPO`` or the remote catalog.
        signatures: also list single model signatures. Defaults to True for a local
            folder and False for the remote catalog (whose members are listed in bags).

    Returns:
        Bag names (sorted), followed by signatures (sorted) when requested.
    """
    if repo is None:
        repo = default_repo()
    model_repo, bag_repo = model_repos(repo)
    if signatures is None:
        signatures = repo is not None
    names = bag_repo.list_models()
    if signatures:
        names += [sig for sig in model_repo.list_models() if sig not in names]
    return names


#: Former name of :func:`model_repos`.
_repos = model_repos
