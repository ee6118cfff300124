"""Command line flags that select a model (no torch import here, so that the ``demucs``
command can parse its arguments and run an ONNX graph without loading PyTorch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .configs import RELEASE_CONFIGS

__all__ = ["DEFAULT_MODEL", "add_model_flags"]

DEFAULT_MODEL = "htdemucs"


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Adds ``-n/--name``, ``-s/--sig``, ``--repo`` and ``--random-weights`` to ``parser``."""
    group = parser.add_mutually_exclusive_group(required=False)
    group.add_argument(
        "-s",
        "-sig",
        "--sig",
        "--signature",
        dest="sig",
        default=None,
        help="Signature of a single model (in --repo, or the remote catalog).",
    )
    group.add_argument(
        "-n",
        "--name",
        default=DEFAULT_MODEL,
        help="Pretrained model name or signature, or hf://[namespace/]name "
        "for upstream 4.1.0's HuggingFace repositories (needs "
        f"demucs[hf]). Default is {DEFAULT_MODEL}.",
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="Folder containing all pre-trained models for use with -n "
        "(SIG.th or SIG.safetensors files, NAME.yaml bags). "
        "Default: $DEMUCS_REPO if set, else the remote catalog.",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="Untrained model with the release architecture of -n "
        f"({', '.join(sorted(RELEASE_CONFIGS))}; fixed seed), to try the "
        "pipeline without downloading anything (the stems are meaningless).",
    )
