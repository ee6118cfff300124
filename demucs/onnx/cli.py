"""Command line of the exporter: ``python -m demucs.export_onnx``."""

from __future__ import annotations

import argparse
import sys
import time
import typing as tp
from pathlib import Path

from ..configs import RELEASE_CONFIGS
from ..errors import ModelLoadingError
from ..flags import add_model_flags
from ..spec import DEFAULT_STFT_IMPL, STFT_IMPLS
from .graph import ExportError
from .precision import PRECISIONS

if tp.TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: Architectures ``--random-weights`` builds, by name (the release ones; see
#: :func:`demucs.pretrained.random_model`).
RANDOM_CONFIGS = RELEASE_CONFIGS


def load_model(args: argparse.Namespace) -> "nn.Module":
    """The model selected by ``args`` (``-n``/``-s``/``--repo``/``--random-weights``)."""
    from ..pretrained import get_model_from_args

    return get_model_from_args(args)


def get_parser() -> argparse.ArgumentParser:
    """The exporter's argument parser."""
    from .export import (
        ATTENTION_FORMS,
        DEFAULT_ATTENTION,
        DEFAULT_EXPORTER,
        DEFAULT_OPSET,
        DYNAMO_MIN_OPSET,
        EXPORTERS,
    )

    parser = argparse.ArgumentParser(
        "demucs.export_onnx",
        description="Export a Demucs model to one self-contained ONNX file "
        "(waveform in, stems out, STFT inside).",
    )
    add_model_flags(parser)
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset (default {DEFAULT_OPSET}, {DYNAMO_MIN_OPSET} with --exporter dynamo)",
    )
    parser.add_argument(
        "--segment",
        type=float,
        default=None,
        help="segment in seconds (default: the training segment)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="dynamic batch axis (default: batch of 1)"
    )
    parser.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER)
    parser.add_argument(
        "--stft",
        choices=STFT_IMPLS,
        default=DEFAULT_STFT_IMPL,
        help="STFT in the graph: factored DFT as MatMuls (default) or "
        "Conv/ConvTranspose over the full DFT basis",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION_FORMS,
        default=None,
        help=f"attention in the graph: ONNX Runtime's fused contrib operator "
        f"or standard operators for every runtime (default "
        f"{DEFAULT_ATTENTION}; portable with --exporter dynamo)",
    )
    parser.add_argument(
        "--model-index", type=int, default=None, help="for a bag of models, export only this member"
    )
    parser.add_argument(
        "--stems",
        default=None,
        metavar="LIST",
        help="comma-separated sources to keep (e.g. vocals): the graph "
        "outputs only these and holds only the bag members they need",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run ONNX Runtime on random audio, print the SNR vs PyTorch",
    )
    return parser


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    """Runs the exporter; returns the exit status."""
    args = get_parser().parse_args(argv)
    from .export import export_model
    from .prepare import parameter_bytes
    from .verify import check_export

    try:
        stems = [s.strip() for s in args.stems.split(",") if s.strip()] if args.stems else None
        model = load_model(args)
        begin = time.time()
        path = export_model(
            model,
            args.out,
            segment=args.segment,
            opset=args.opset,
            precision=args.precision,
            dynamic_batch=args.dynamic_batch,
            exporter=args.exporter,
            model_index=args.model_index,
            name=args.sig or args.name,
            stft_impl=args.stft,
            attention=args.attention,
            stems=stems,
        )
        size = path.stat().st_size
        params = parameter_bytes(model, args.model_index, stems)
        print(
            f"wrote {path}: {size / 1e6:.1f} MB ({size / params:.3f} x the "
            f"{params / 1e6:.1f} MB of float32 weights) in {time.time() - begin:.0f} s"
        )
        if args.check:
            snr = check_export(
                model, path, segment=args.segment, model_index=args.model_index, stems=stems
            )
            print(f"check: ONNX Runtime vs PyTorch (torch STFT backend): SNR {snr:.1f} dB")
    except (ExportError, ModelLoadingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
