"""Export a Demucs model (or a bag of models) to ONE self-contained ONNX file.

The graph takes the waveform and returns the stems, the STFT/iSTFT included::

    mix   float32 (batch, audio_channels, input_samples)
    stems float32 (batch, sources, audio_channels, input_samples)

``batch`` is 1 unless ``dynamic_batch``; ``input_samples`` is fixed: the model's
(valid) segment length, 343,980 samples (7.8 s at 44.1 kHz) for htdemucs. Longer
tracks are cut into overlapping segments by :mod:`demucs.onnx_runtime`, exactly as
:func:`demucs.apply.apply_model` does.

Design choices (see also ``examples/README.md``):

* **STFT inside, no stored DFT basis.** The model runs with ``use_conv_stft=True`` and
  the ``factored`` implementation (:data:`demucs.spec.DEFAULT_STFT_IMPL`, option
  ``stft_impl`` / ``--stft``): frames are cut from hop-blocks of the signal (Slice,
  Transpose, Concat) and the DFT is one level of Cooley-Tukey, ``n_fft = n1 * n2``
  (64 x 64 for htdemucs): a ``MatMul`` by a ``(2 n1, n1)`` matrix, an elementwise
  twiddle product, a ``MatMul`` by a ``(2 k2, 2 n2)`` matrix; the inverse mirrors it
  and overlap-adds with Pad + Add. Frames stay on the last axis, so neither direction
  transposes a spectrogram. The constants are small (~50 K floats per direction: the
  two matrices, the twiddles, the window, and 7 hop-blocks of the inverse window
  envelope), ~16x fewer operations than a direct DFT, and only MatMul, Mul, Add, Sub,
  Pad, Slice, Concat, Reshape, Transpose are used: operators every execution provider
  has. (ONNX's ``DFT`` operator is not used: the TorchScript exporter cannot emit it,
  the inverse needs a hand-built overlap-add anyway, and mobile/web providers lack it.)
  ``stft_impl="conv"`` exports the former ``Conv`` / ``ConvTranspose`` over the windowed
  ``n_fft``-wide DFT bases; those would be stored (the TorchScript exporter always
  propagates constants), so :func:`.passes.restore_computed_bases` replaces them by
  Range/Mod/Cos/Sin subgraphs that ONNX Runtime folds when the session starts (2 x 64
  MB for nfft 4096). Either way :func:`.passes.non_weight_initializers` checks that no large
  non-weight tensor is stored (the export fails otherwise).
* **Precise reductions.** ONNX Runtime's CPU ``InstanceNormalization`` (from
  ``GroupNorm``) and ``ReduceMean`` accumulate rows of ~10^6 values with a ~1e-5
  relative error, which capped htdemucs at 92-95 dB against PyTorch;
  :func:`.passes.precise_reductions` rewrites them as sums of 1024-value block sums: 119-122 dB.
* **Attention** (``attention`` / ``--attention``): ``fused`` (default with the TorchScript
  exporter) makes each attention one ONNX Runtime ``com.microsoft.MultiHeadAttention``
  node (its fused kernel, CPU and CUDA providers); ``portable`` writes it with standard
  operators in blocks of 512 queries (the full score matrix never exists), for runtimes
  without the contrib operators: ORT mobile reduced builds, onnxruntime-web.
* **Opset 17** by default: the lowest opset for which both exporters produce a graph
  here, and one that every ONNX Runtime >= 1.13 (mobile and web builds included) runs.
  Nothing newer is needed: the graph only uses Conv, ConvTranspose, MatMul, Gemm,
  Softmax, reductions, elementwise and shape operators.
* **One file.** External data written by the exporter is folded back into the model
  (the protobuf limit of 2 GB leaves room for bags of four htdemucs models).
* **Precisions.** ``fp32``; ``fp16``: weights stored in float16 (half the file), cast
  to float32 when the session starts, float32 compute (see :func:`.precision.to_fp16`); ``int8``:
  dynamic quantization of the MatMul/Conv weights (int8, activations quantized at run
  time; the STFT convolutions stay float32), remaining large weights (ConvTranspose)
  stored as int8 with a ``DequantizeLinear``.
  ``mixed``: the layers' MatMul/Gemm/Conv/ConvTranspose computed in float16 (weights
  stored in float16), everything else in float32 (see :func:`.precision.to_mixed`).
* **Bags** (e.g. htdemucs_ft) become one graph running every member and mixing their
  outputs with the bag's per-source weights (as ``apply_model`` does), or one member with
  ``--model-index``.
* Models using Wiener filtering (``cac=False`` and ``wiener_iters > 0``) cannot be
  exported: :class:`ExportError` says what to change.

Command line::

    python -m demucs.export_onnx -n htdemucs --repo DIR -o htdemucs.onnx --check

Metadata (``metadata_props``, all strings): ``model_name``, ``sample_rate``,
``audio_channels``, ``sources`` (comma separated), ``segment_samples`` (length of the
segments a track is cut into), ``input_samples`` (graph input length),
``segment_seconds``, ``precision``, ``opset``, ``exporter``, ``stft``, ``attention``
(``fused`` or ``portable``), ``batch`` (``1`` or ``dynamic``), ``members``, ``layout``.
"""

from __future__ import annotations

import tempfile
import typing as tp
from pathlib import Path

import torch
from torch import nn

from ..spec import DEFAULT_STFT_IMPL
from ..transformer import chunked_attention_for_export, fused_attention_for_export
from .graph import INPUT_NAME, OUTPUT_NAME, ExportError, opset_of, set_metadata
from .passes import (
    non_weight_initializers,
    precise_reductions,
    remove_unused_initializers,
    restore_computed_bases,
    strip_debug_info,
)
from .precision import CONVERTIBLE, PRECISIONS, convert
from .prepare import prepare_model

if tp.TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Default opset, see the module docstring. The dynamo exporter cannot go below
#: :data:`DYNAMO_MIN_OPSET` (no version adapter for Pad), so it defaults to that.
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18
#: Default exporter: both work; TorchScript gives a slightly smaller, faster graph.
DEFAULT_EXPORTER = "torchscript"
EXPORTERS = ("torchscript", "dynamo")
#: Largest tensor (elements) the dynamo exporter's optimizer may create by folding.
DYNAMO_FOLD_LIMIT = 1 << 12
#: Queries per attention block in portable graphs (see chunked_attention_for_export).
ATTENTION_QUERY_CHUNK = 512
#: Forms of attention in the graph: ``fused``, ONNX Runtime's contrib
#: ``com.microsoft.MultiHeadAttention`` (CPU and CUDA providers); ``portable``, blocks of
#: :data:`ATTENTION_QUERY_CHUNK` queries as MatMul/Softmax/MatMul, standard operators that
#: every runtime has (ONNX Runtime's mobile reduced builds, onnxruntime-web).
ATTENTION_FORMS = ("fused", "portable")
#: Default form, the faster one on ONNX Runtime's CPU provider (README's benchmark).
DEFAULT_ATTENTION = "fused"


def _trace_torchscript(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool
) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        module,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        # With stft_impl="conv" the bases get folded anyway (TorchScript constant
        # propagation); restore_computed_bases() puts their computation back.
        do_constant_folding=True,
    )


def _trace_dynamo(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool
) -> None:
    shapes = None
    if dynamic_batch:
        shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=shapes,
        optimize=False,
        verify=False,
        report=False,
    )
    assert program is not None
    from onnxscript import optimizer

    # The default limit (512 x 512 elements) would fold part of the conv DFT bases of
    # small FFTs into stored tensors: never fold anything bigger than a small constant.
    optimizer.optimize_ir(program.model, output_size_limit=DYNAMO_FOLD_LIMIT)
    program.save(str(path), external_data=True)


def resolve_attention(attention: tp.Optional[str], exporter: str) -> str:
    """The attention form to export: ``attention``, or by default :data:`DEFAULT_ATTENTION`
    with the TorchScript exporter and ``portable`` with dynamo (which cannot emit the
    contrib operator)."""
    if attention is None:
        return DEFAULT_ATTENTION if exporter == "torchscript" else "portable"
    if attention not in ATTENTION_FORMS:
        raise ExportError(
            f"unknown attention form {attention!r}, expected one of {ATTENTION_FORMS}"
        )
    if attention == "fused" and exporter != "torchscript":
        raise ExportError(
            "--attention fused needs the TorchScript exporter: use "
            "--exporter torchscript, or --attention portable"
        )
    return attention


def _export_raw(
    module: nn.Module,
    example: torch.Tensor,
    exporter: str,
    opset: int,
    dynamic_batch: bool,
    attention: str = "portable",
) -> "onnx.ModelProto":
    """Traces ``module``; returns the ONNX model with all weights loaded in memory and,
    for ``stft_impl="conv"``, the DFT bases computed in the graph (see
    :func:`restore_computed_bases`)."""
    import onnx

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}, expected one of {EXPORTERS}")
    trace = _trace_torchscript if exporter == "torchscript" else _trace_dynamo
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        # Fused: one contrib node per attention. Portable: the segment is fixed in the
        # graph, so attention is laid out in blocks of queries; the full
        # (B, heads, T, S) score matrix never exists at run time.
        form = (
            fused_attention_for_export()
            if attention == "fused"
            else chunked_attention_for_export(ATTENTION_QUERY_CHUNK)
        )
        with torch.no_grad(), form:
            trace(module, example, raw, opset, dynamic_batch)
        model = onnx.load(str(raw), load_external_data=True)
    conv_sizes = {
        int(getattr(m, "nfft"))
        for m in module.modules()
        if hasattr(m, "nfft") and getattr(m, "stft_impl", None) == "conv"
    }
    if conv_sizes:
        restore_computed_bases(model, conv_sizes)
    precise_reductions(model)
    remove_unused_initializers(model)
    strip_debug_info(model)
    return model


def default_opset(exporter: str) -> int:
    """Lowest opset each exporter produces: 17 (TorchScript) or 18 (dynamo)."""
    return DYNAMO_MIN_OPSET if exporter == "dynamo" else DEFAULT_OPSET


def export_model(
    model: nn.Module,
    path: tp.Union[str, Path],
    *,
    segment: tp.Optional[float] = None,
    opset: tp.Optional[int] = None,
    precision: str = "fp32",
    dynamic_batch: bool = False,
    exporter: str = DEFAULT_EXPORTER,
    model_index: tp.Optional[int] = None,
    name: tp.Optional[str] = None,
    stft_impl: str = DEFAULT_STFT_IMPL,
    attention: tp.Optional[str] = None,
    stems: tp.Optional[tp.Sequence[str]] = None,
) -> Path:
    """Exports ``model`` (single model or ``BagOfModels``) to a single ONNX file.

    Args:
        model: the separation model, not modified (a copy is exported).
        path: output ``.onnx`` file; no side ``.onnx.data`` file is written.
        segment: segment length in seconds (default: the model's training segment).
        opset: ONNX opset (default :func:`default_opset`: 17, or 18 with dynamo).
        precision: ``fp32``, ``fp16``, ``mixed`` or ``int8`` (see the module docstring).
        dynamic_batch: make the batch axis dynamic (else it is 1).
        exporter: ``torchscript`` or ``dynamo``.
        model_index: for a bag, export this member only.
        name: model name stored in the metadata (default: the class name).
        stft_impl: ``factored`` (default) or ``conv``, see the module docstring.
        attention: ``fused`` or ``portable`` (see :data:`ATTENTION_FORMS`); default
            :func:`resolve_attention`.
        stems: only these sources, with only the bag members they need (e.g. the vocals
            of htdemucs_ft: one member of four).
    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    Raises:
        ExportError: the model or the options cannot be exported (the message says why).
    """
    import onnx

    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}, expected one of {PRECISIONS}")
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}, expected one of {EXPORTERS}")
    if opset is None:
        opset = default_opset(exporter)
    elif exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ExportError(
            f"the dynamo exporter produces opset >= {DYNAMO_MIN_OPSET}, "
            f"got --opset {opset}: use --exporter torchscript for opset {opset}"
        )
    attention = resolve_attention(attention, exporter)
    path = Path(path)
    wrapper, segment_samples, input_samples = prepare_model(
        model, segment=segment, model_index=model_index, stft_impl=stft_impl, stems=stems
    )
    first: tp.Any = wrapper.models[0]
    example = torch.randn(1, first.audio_channels, input_samples)
    onnx_model = _export_raw(wrapper, example, exporter, opset, dynamic_batch, attention)

    state = wrapper.state_dict()
    suspicious = non_weight_initializers(onnx_model, state)
    if suspicious:
        total = sum(count for _, count in suspicious)
        raise ExportError(
            f"the {exporter} exporter stored {total} values that are not "
            f"weights (e.g. a folded DFT basis): {suspicious[:5]}"
        )
    onnx_model = convert(onnx_model, precision)

    set_metadata(
        onnx_model,
        {
            "model_name": name or type(model).__name__,
            "sample_rate": first.samplerate,
            "audio_channels": first.audio_channels,
            "sources": ",".join(wrapper.sources),
            "segment_samples": segment_samples,
            "input_samples": input_samples,
            "segment_seconds": repr(segment_samples / first.samplerate),
            "precision": precision,
            "opset": opset_of(onnx_model),
            "exporter": exporter,
            "stft": stft_impl,
            "attention": attention,
            "batch": "dynamic" if dynamic_batch else "1",
            "members": len(wrapper.models),
            "layout": f"{INPUT_NAME}: (batch, channels, samples) float32 -> "
            f"{OUTPUT_NAME}: (batch, sources, channels, samples) float32",
        },
    )
    onnx_model.doc_string = "Demucs source separation: waveform in, stems out (STFT inside)."
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx_model, str(path), save_as_external_data=False)
    return path


def convert_file(source: tp.Union[str, Path], target: tp.Union[str, Path], precision: str) -> Path:
    """Converts an exported float32 file to ``fp16``, ``mixed`` or ``int8`` (metadata kept)."""
    import onnx

    if precision not in CONVERTIBLE:
        raise ExportError(f"can only convert to {' or '.join(CONVERTIBLE)}, not {precision!r}")
    model = convert(onnx.load(str(source)), precision)
    set_metadata(model, {"precision": precision})
    target = Path(target)
    onnx.save_model(model, str(target), save_as_external_data=False)
    return target
