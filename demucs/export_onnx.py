"""Export a Demucs model (or a bag of models) to ONE self-contained ONNX file: waveform
in, stems out, STFT inside.

This module is the public entry point, ``python -m demucs.export_onnx``; the work is
done in :mod:`demucs.onnx` (see :mod:`demucs.onnx.export` for the graph's layout, design
choices and metadata). Command line::

    python -m demucs.export_onnx -n htdemucs --repo DIR -o htdemucs.onnx --check
"""

from __future__ import annotations

import sys

from .onnx.cli import RANDOM_CONFIGS, get_parser, load_model, main
from .onnx.export import (
    ATTENTION_FORMS,
    ATTENTION_QUERY_CHUNK,
    DEFAULT_ATTENTION,
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    DYNAMO_MIN_OPSET,
    EXPORTERS,
    convert_file,
    default_opset,
    export_model,
)
from .onnx.graph import INPUT_NAME, OUTPUT_NAME, ExportError, stored_tensors, tensor_elements
from .onnx.passes import (
    NORM_BLOCK,
    SMALL_TENSOR,
    non_weight_initializers,
    precise_reductions,
    restore_computed_bases,
)
from .onnx.precision import MIXED_FP16_OPS, PRECISIONS, in_layer, to_fp16, to_int8, to_mixed
from .onnx.prepare import ExportWrapper, check_exportable, parameter_bytes, prepare_model
from .onnx.verify import check_export, reference_output, snr_db

__all__ = [
    "ATTENTION_FORMS",
    "ATTENTION_QUERY_CHUNK",
    "DEFAULT_ATTENTION",
    "DEFAULT_EXPORTER",
    "DEFAULT_OPSET",
    "DYNAMO_MIN_OPSET",
    "EXPORTERS",
    "INPUT_NAME",
    "MIXED_FP16_OPS",
    "NORM_BLOCK",
    "OUTPUT_NAME",
    "PRECISIONS",
    "RANDOM_CONFIGS",
    "SMALL_TENSOR",
    "ExportError",
    "ExportWrapper",
    "check_export",
    "check_exportable",
    "convert_file",
    "default_opset",
    "export_model",
    "get_parser",
    "in_layer",
    "load_model",
    "main",
    "non_weight_initializers",
    "parameter_bytes",
    "precise_reductions",
    "prepare_model",
    "reference_output",
    "restore_computed_bases",
    "snr_db",
    "stored_tensors",
    "tensor_elements",
    "to_fp16",
    "to_int8",
    "to_mixed",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
