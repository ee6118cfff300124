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
  propagates constants), so :func:`restore_computed_bases` replaces them by
  Range/Mod/Cos/Sin subgraphs that ONNX Runtime folds when the session starts (2 x 64
  MB for nfft 4096). Either way :func:`non_weight_initializers` checks that no large
  non-weight tensor is stored (the export fails otherwise).
* **Precise reductions.** ONNX Runtime's CPU ``InstanceNormalization`` (from
  ``GroupNorm``) and ``ReduceMean`` accumulate rows of ~10^6 values with a ~1e-5
  relative error, which capped htdemucs at 92-95 dB against PyTorch;
  :func:`precise_reductions` rewrites them as sums of 1024-value block sums: 119-122 dB.
* **Opset 17** by default: the lowest opset for which both exporters produce a graph
  here, and one that every ONNX Runtime >= 1.13 (mobile and web builds included) runs.
  Nothing newer is needed: the graph only uses Conv, ConvTranspose, MatMul, Gemm,
  Softmax, reductions, elementwise and shape operators.
* **One file.** External data written by the exporter is folded back into the model
  (the protobuf limit of 2 GB leaves room for bags of four htdemucs models).
* **Precisions.** ``fp32``; ``fp16``: weights stored in float16 (half the file), cast
  to float32 when the session starts, float32 compute (see :func:`to_fp16`); ``int8``:
  dynamic quantization of the MatMul/Conv weights (int8, activations quantized at run
  time; the STFT convolutions stay float32), remaining large weights (ConvTranspose)
  stored as int8 with a ``DequantizeLinear``.
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
``segment_seconds``, ``precision``, ``opset``, ``exporter``, ``stft``, ``batch`` (``1`` or
``dynamic``), ``layout``.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import typing as tp
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from .spec import DEFAULT_STFT_IMPL, STFT_IMPLS
from .states import set_stft_backend
from .transformer import chunked_attention_for_export

if tp.TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Default opset, see the module docstring. The dynamo exporter cannot go below
#: :data:`DYNAMO_MIN_OPSET` (no version adapter for Pad), so it defaults to that.
DEFAULT_OPSET = 17
DYNAMO_MIN_OPSET = 18
#: Default exporter: both work; TorchScript gives a slightly smaller, faster graph.
DEFAULT_EXPORTER = "torchscript"
PRECISIONS = ("fp32", "fp16", "int8")
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME = "mix"
OUTPUT_NAME = "stems"
#: Initializers/constants with fewer elements than this are never reported as suspicious.
SMALL_TENSOR = 1 << 16
#: Largest tensor (elements) the dynamo exporter's optimizer may create by folding.
DYNAMO_FOLD_LIMIT = 1 << 12
#: Queries per attention block in exported graphs (see chunked_attention_for_export).
ATTENTION_QUERY_CHUNK = 512

#: Release architectures, for ``--random-weights`` (benchmarks, trying the pipeline
#: without the checkpoints). Same values as ``tests/configs.py``.
RANDOM_CONFIGS: tp.Dict[str, tp.Dict[str, tp.Any]] = {
    "htdemucs": dict(sources=["drums", "bass", "other", "vocals"], segment=Fraction(39, 5)),
    "htdemucs_6s": dict(sources=["drums", "bass", "other", "vocals", "guitar", "piano"],
                        segment=Fraction(39, 5)),
}


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says what to change."""


# ---------------------------------------------------------------------------
# Preparing the torch module
# ---------------------------------------------------------------------------

Weights = tp.List[tp.List[float]]


def _members(model: nn.Module) -> tp.Tuple[tp.List[nn.Module], tp.Optional[Weights]]:
    """``(models, weights)`` of a bag, or ``([model], None)`` for a single model."""
    models = getattr(model, "models", None)
    if models is not None and hasattr(model, "weights"):
        return list(models), [list(map(float, w)) for w in model.weights]
    return [model], None


def check_exportable(model: nn.Module) -> None:
    """Raises :class:`ExportError` if a (member) model cannot become an ONNX graph.

    Wiener filtering (``cac=False`` with ``wiener_iters > 0``) iterates an EM algorithm on
    complex spectrograms that the conv STFT backend does not implement.
    """
    for name, module in model.named_modules():
        if not hasattr(module, "cac"):
            continue
        iters = getattr(module, "wiener_iters", 0)
        if not module.cac and iters > 0:
            where = f"module {name!r}" if name else "the model"
            raise ExportError(
                f"{where} ({type(module).__name__}) uses Wiener filtering "
                f"(cac=False, wiener_iters={iters}), which cannot be exported to ONNX. "
                "Set `wiener_iters = 0` (soft mask) or `wiener_iters = -1` (mixture phase) "
                "on it before exporting (this changes its output), or use a "
                "complex-as-channels model (cac=True) such as htdemucs.")


def _segment_of(model: nn.Module) -> tp.Optional[Fraction]:
    seg = getattr(model, "segment", None)
    return None if seg is None else Fraction(seg).limit_denominator(10 ** 6)


class ExportWrapper(nn.Module):
    """The module that becomes the graph: one model, or a bag mixed with its weights.

    For a bag, ``stems[:, k] = sum_m w[m][k] * member_m(mix)[:, k] / sum_m w[m][k]``,
    which is what ``apply_model`` computes for a bag on one segment without shifts.

    Input ``(B, C, L)``, output ``(B, S, C, L)``.
    """

    def __init__(self, models: tp.Sequence[nn.Module],
                 weights: tp.Optional[tp.Sequence[tp.Sequence[float]]] = None) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.mix_weights: tp.Optional[tp.List[tp.List[float]]] = None
        if weights is not None and len(models) > 1:
            num_sources = len(models[0].sources)
            totals = [sum(w[k] for w in weights) for k in range(num_sources)]
            for k, total in enumerate(totals):
                if total == 0:
                    raise ExportError(f"source {models[0].sources[k]!r} has a total weight "
                                      "of 0 in the bag: its output would be undefined")
            self.mix_weights = [[w[k] / totals[k] for k in range(num_sources)]
                                for w in weights]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if self.mix_weights is None:
            return self.models[0](mix)
        out: tp.Optional[torch.Tensor] = None
        for member, weights in zip(self.models, self.mix_weights):
            if not any(weights):
                continue
            scale = torch.tensor(weights, dtype=mix.dtype, device=mix.device)
            estimate = member(mix) * scale[None, :, None, None]
            out = estimate if out is None else out + estimate
        assert out is not None
        return out


def prepare_model(model: nn.Module, *, segment: tp.Optional[float] = None,
                  model_index: tp.Optional[int] = None,
                  use_conv_stft: bool = True,
                  stft_impl: str = DEFAULT_STFT_IMPL) -> tp.Tuple[ExportWrapper, int, int]:
    """A copy of ``model`` ready to trace, and its segment and input lengths in samples.

    Args:
        model: a single model or a ``BagOfModels``. Not modified.
        segment: segment in seconds; default the model's (training) segment. For a
            transformer model it cannot exceed the training segment.
        model_index: for a bag, export only this member.
        use_conv_stft: STFT backend of the copy (True for export; False gives the
            PyTorch reference with the ``torch`` backend).
        stft_impl: implementation of the conv backend, ``factored`` or ``conv`` (see
            :data:`demucs.spec.STFT_IMPLS`).
    Returns:
        ``(wrapper, segment_samples, input_samples)``.
    """
    members, weights = _members(model)
    if model_index is not None:
        if not 0 <= model_index < len(members):
            raise ExportError(f"--model-index {model_index} out of range: the bag has "
                              f"{len(members)} models")
        members, weights = [members[model_index]], None
    members = [copy.deepcopy(m).cpu().float().eval() for m in members]
    first = members[0]
    for attr in ("samplerate", "sources", "audio_channels"):
        if not hasattr(first, attr):
            raise ExportError(f"{type(first).__name__} has no {attr!r}: not a Demucs model")
    for member in members:
        check_exportable(member)
        set_stft_backend(member, use_conv_stft)
        _set_stft_impl(member, stft_impl)

    segments = {_segment_of(m) for m in members}
    if len(segments) != 1:
        raise ExportError(f"bag members have different segments {sorted(map(str, segments))}: "
                          "export them one at a time with --model-index")
    trained = segments.pop()
    if segment is None:
        if trained is None:
            raise ExportError("the model has no training segment: pass --segment")
        seconds = trained
    else:
        seconds = Fraction(segment).limit_denominator(10 ** 6)
        if seconds <= 0:
            raise ExportError(f"segment must be > 0, got {segment}")
        if trained is not None and getattr(first, "use_train_segment", False):
            if seconds > trained:
                raise ExportError(f"segment {float(seconds)} s is longer than the "
                                  f"{float(trained)} s the transformer was trained on")
    for member in members:
        if hasattr(member, "segment"):
            member.segment = seconds  # same as BagOfModels(segment=...) does
    segment_samples = int(seconds * first.samplerate)
    input_samples = segment_samples
    if hasattr(first, "valid_length"):
        input_samples = int(first.valid_length(segment_samples))
    return ExportWrapper(members, weights).eval(), segment_samples, input_samples


def _set_stft_impl(model: nn.Module, stft_impl: str) -> None:
    """Sets ``stft_impl`` on every spectral (sub)module of ``model``."""
    if stft_impl not in STFT_IMPLS:
        raise ExportError(f"unknown STFT implementation {stft_impl!r}, "
                          f"expected one of {STFT_IMPLS}")
    for module in model.modules():
        if hasattr(module, "use_conv_stft"):
            module.stft_impl = stft_impl


# ---------------------------------------------------------------------------
# Tracing
# ---------------------------------------------------------------------------

def _trace_torchscript(module: nn.Module, example: torch.Tensor, path: Path, opset: int,
                       dynamic_batch: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        module, (example,), str(path), dynamo=False, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
        # With stft_impl="conv" the bases get folded anyway (TorchScript constant
        # propagation); restore_computed_bases() puts their computation back.
        do_constant_folding=True)


def _trace_dynamo(module: nn.Module, example: torch.Tensor, path: Path, opset: int,
                  dynamic_batch: bool) -> None:
    shapes = None
    if dynamic_batch:
        shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.onnx.export(
        module, (example,), dynamo=True, opset_version=opset,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
        optimize=False, verify=False, report=False)
    assert program is not None
    from onnxscript import optimizer

    # The default limit (512 x 512 elements) would fold part of the conv DFT bases of
    # small FFTs into stored tensors: never fold anything bigger than a small constant.
    optimizer.optimize_ir(program.model, output_size_limit=DYNAMO_FOLD_LIMIT)
    program.save(str(path), external_data=True)


def _export_raw(module: nn.Module, example: torch.Tensor, exporter: str, opset: int,
                dynamic_batch: bool) -> "onnx.ModelProto":
    """Traces ``module``; returns the ONNX model with all weights loaded in memory and,
    for ``stft_impl="conv"``, the DFT bases computed in the graph (see
    :func:`restore_computed_bases`)."""
    import onnx

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}, expected one of {EXPORTERS}")
    trace = _trace_torchscript if exporter == "torchscript" else _trace_dynamo
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        # The segment is fixed in the graph, so attention can be laid out in blocks of
        # queries: the full (B, heads, T, S) score matrix never exists at run time.
        with torch.no_grad(), chunked_attention_for_export(ATTENTION_QUERY_CHUNK):
            trace(module, example, raw, opset, dynamic_batch)
        model = onnx.load(str(raw), load_external_data=True)
    conv_sizes = {int(m.nfft) for m in module.modules()
                  if hasattr(m, "nfft") and getattr(m, "stft_impl", None) == "conv"}
    if conv_sizes:
        restore_computed_bases(model, conv_sizes)
    precise_reductions(model)
    _remove_unused_initializers(model)
    _strip_debug_info(model)
    return model


def _remove_unused_initializers(model: "onnx.ModelProto") -> None:
    """Drops initializers that no node (or subgraph) reads after the rewrites."""
    from onnx import AttributeProto

    used = {output.name for output in model.graph.output}

    def collect(graph: tp.Any) -> None:
        for node in graph.node:
            used.update(node.input)
            for attr in node.attribute:
                if attr.type == AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        collect(sub)

    collect(model.graph)
    unused = [init for init in model.graph.initializer if init.name not in used]
    for init in unused:
        model.graph.initializer.remove(init)


def _strip_debug_info(model: "onnx.ModelProto") -> None:
    """Drops per-node stack traces and doc strings (the dynamo exporter's take ~0.5 MB)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


# ---------------------------------------------------------------------------
# Inspecting and post-processing the ONNX model
# ---------------------------------------------------------------------------

def _stored_tensors(model: "onnx.ModelProto") -> tp.Iterator[tp.Tuple[str, tp.Any]]:
    """``(name, TensorProto)`` for initializers and Constant node values, subgraphs too."""
    from onnx import AttributeProto

    def walk(graph: tp.Any) -> tp.Iterator[tp.Tuple[str, tp.Any]]:
        for init in graph.initializer:
            yield init.name, init
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    yield f"{node.name or node.op_type}.{attr.name}", attr.t
                elif attr.type == AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        yield from walk(sub)

    yield from walk(model.graph)


def tensor_elements(tensor: tp.Any) -> int:
    """Number of elements of an ONNX TensorProto."""
    return int(math.prod(tensor.dims)) if len(tensor.dims) else 1


def non_weight_initializers(model: "onnx.ModelProto", state: tp.Mapping[str, torch.Tensor],
                            min_elements: int = SMALL_TENSOR) -> tp.List[tp.Tuple[str, int]]:
    """Stored tensors of at least ``min_elements`` that are not model weights.

    A stored tensor counts as a weight if some tensor of ``state`` (a state dict) has
    the same number of elements (exporters may transpose or reshape weights). Quantized
    weights (int8/uint8 initializers) count too. Returns ``[(name, elements)]``; an
    export without a stored DFT basis returns ``[]``.
    """
    from onnx import TensorProto

    sizes = {int(t.numel()) for t in state.values()}
    found = []
    for name, tensor in _stored_tensors(model):
        count = tensor_elements(tensor)
        if count < min_elements or count in sizes:
            continue
        if tensor.data_type in (TensorProto.INT8, TensorProto.UINT8):
            continue
        found.append((name, count))
    return found


class _Builder:
    """Appends ONNX nodes and small constants for a computed subgraph."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: tp.List[tp.Any] = []
        self.inits: tp.List[tp.Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def const(self, value: tp.Any, dtype: str = "float32") -> str:
        import numpy as np
        from onnx import numpy_helper

        name = self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, output: tp.Optional[str] = None,
           **attrs: tp.Any) -> str:
        from onnx import helper

        out = output or self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self._name(op_type + "_node"), **attrs))
        return out


def _basis_subgraph(build: _Builder, n_fft: int, n_bins: int) -> tp.Tuple[str, str, str]:
    """Nodes computing :func:`demucs.spec._build_bases` and the Hann window in float32.

    Returns the names of ``(analysis, synthesis, window)``: ``(2 n_bins, 1, n_fft)`` twice
    and ``(n_fft,)``. Angles use ``(k * n) mod n_fft`` in int64 (exact) before Cos/Sin.
    """
    from onnx import TensorProto

    two_pi_n = build.const(2 * math.pi / n_fft)
    k = build.op("Range", build.const(0, "int64"), build.const(n_bins, "int64"),
                 build.const(1, "int64"))
    n = build.op("Range", build.const(0, "int64"), build.const(n_fft, "int64"),
                 build.const(1, "int64"))
    column = build.op("Reshape", k, build.const([n_bins, 1], "int64"))
    row = build.op("Reshape", n, build.const([1, n_fft], "int64"))
    phase = build.op("Mod", build.op("Mul", column, row), build.const(n_fft, "int64"))
    angle = build.op("Mul", build.op("Cast", phase, to=TensorProto.FLOAT), two_pi_n)
    cos, sin = build.op("Cos", angle), build.op("Sin", angle)
    half = build.const(0.5)
    window_angle = build.op("Mul", build.op("Cast", n, to=TensorProto.FLOAT), two_pi_n)
    window = build.op("Sub", half, build.op("Mul", half, build.op("Cos", window_angle)))
    cos_w, sin_w = build.op("Mul", cos, window), build.op("Mul", sin, window)
    scale = build.const(1.0 / math.sqrt(n_fft))
    shape = build.const([2 * n_bins, 1, n_fft], "int64")
    analysis = build.op("Reshape", build.op("Mul", build.op(
        "Concat", cos_w, build.op("Neg", sin_w), axis=0), scale), shape)
    is_edge = build.op("Or", build.op("Equal", k, build.const(0, "int64")),
                       build.op("Equal", k, build.const(n_fft // 2, "int64")))
    edge = build.op("Reshape", build.op("Cast", is_edge, to=TensorProto.FLOAT),
                    build.const([n_bins, 1], "int64"))
    weight = build.op("Mul", build.op("Sub", build.const(2.0), edge), scale)
    weight_imag = build.op("Mul", weight, build.op("Sub", build.const(1.0), edge))
    real = build.op("Mul", cos_w, weight)
    imag = build.op("Neg", build.op("Mul", sin_w, weight_imag))
    synthesis = build.op("Reshape", build.op("Concat", real, imag, axis=0), shape)
    return analysis, synthesis, window


def _envelope_subgraph(build: _Builder, window: str, n_fft: int, hop: int,
                       n_frames: int) -> str:
    """Nodes computing :func:`demucs.spec._window_envelope` (overlap-added squared window)."""
    from onnx import helper, TensorProto

    length = hop * (n_frames - 1) + n_fft
    kernel = build.op("Reshape", build.op("Mul", window, window),
                      build.const([1, 1, n_fft], "int64"))
    ones = build.op("ConstantOfShape", build.const([1, 1, n_frames], "int64"),
                    value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    env = build.op("Reshape", build.op("ConvTranspose", ones, kernel, strides=[hop],
                                       kernel_shape=[n_fft]),
                   build.const([length], "int64"))
    covered = build.op("Greater", env, build.const(1e-11))
    return build.op("Where", covered, env, build.const(1.0))


def restore_computed_bases(model: "onnx.ModelProto", n_ffts: tp.Iterable[int],
                           tolerance: float = 1e-5) -> int:
    """Replaces stored DFT bases / window envelopes by the subgraph computing them.

    The TorchScript exporter always propagates constants (whatever
    ``do_constant_folding`` says), so the in-graph basis computation comes out as
    Constant nodes of ``2 x n_fft x n_fft / 2`` floats. Every stored tensor equal (to
    ``tolerance``) to :func:`demucs.spec._build_bases` or
    :func:`demucs.spec._window_envelope` for one of ``n_ffts`` (hop ``n_fft // 4``) is
    removed and recomputed by a few Range/Cos/Sin/ConvTranspose nodes. Returns how many
    tensors were replaced. Only the main graph is scanned.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    from . import spec

    sizes = {int(n) for n in n_ffts}
    graph = model.graph
    stored: tp.List[tp.Tuple[str, tp.Any, tp.Any]] = []  # (value name, tensor, owner)
    for init in graph.initializer:
        stored.append((init.name, init, init))
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            stored.append((node.output[0], node.attribute[0].t, node))

    builders: tp.Dict[tp.Tuple[int, int], tp.Tuple[str, str, str]] = {}
    build = _Builder("computed_stft")
    aliases: tp.List[tp.Any] = []
    removed = []

    def bases(n_fft: int, n_bins: int) -> tp.Tuple[str, str, str]:
        if (n_fft, n_bins) not in builders:
            builders[(n_fft, n_bins)] = _basis_subgraph(build, n_fft, n_bins)
        return builders[(n_fft, n_bins)]

    for name, tensor, owner in stored:
        dims = list(tensor.dims)
        replacement = None
        if len(dims) == 3 and dims[1] == 1 and dims[2] in sizes and dims[0] % 2 == 0:
            n_fft, n_bins = dims[2], dims[0] // 2
            value = numpy_helper.to_array(tensor)
            analysis, synthesis = spec._build_bases(n_fft, n_bins, torch.device("cpu"),
                                                    torch.float32)
            for index, reference in enumerate((analysis, synthesis)):
                if np.abs(value - reference.numpy()).max() <= tolerance:
                    replacement = bases(n_fft, n_bins)[index]
                    break
        elif len(dims) == 1:
            for n_fft in sizes:
                hop = n_fft // 4
                frames, rest = divmod(dims[0] - n_fft, hop)
                if rest or frames < 0:
                    continue
                reference = spec._window_envelope(n_fft, hop, frames + 1,
                                                  torch.device("cpu"), torch.float32)
                value = numpy_helper.to_array(tensor)
                if np.abs(value - reference.numpy()).max() <= tolerance:
                    window = bases(n_fft, n_fft // 2)[2]
                    replacement = _envelope_subgraph(build, window, n_fft, hop, frames + 1)
                    break
        if replacement is None:
            continue
        removed.append(owner)
        aliases.append(helper.make_node("Identity", [replacement], [name],
                                        name=f"computed_stft/{name}_identity"))
    for owner in removed:
        if owner in graph.initializer:
            graph.initializer.remove(owner)
        else:
            graph.node.remove(owner)
    if removed:
        graph.initializer.extend(build.inits)
        for node in reversed(build.nodes + aliases):
            graph.node.insert(0, node)
    return len(removed)


#: Block size of the two-level sums in :func:`precise_reductions`.
NORM_BLOCK = 1024


def _reduce_sum(build: "_Builder", value: str, axis: int, keep: int, opset: int) -> str:
    if opset >= 13:
        return build.op("ReduceSum", value, build.const([axis], "int64"), keepdims=keep)
    return build.op("ReduceSum", value, axes=[axis], keepdims=keep)


def _static_block(length: tp.Optional[int], block: int) -> tp.Optional[int]:
    """A divisor of a static row ``length`` in ``[block / 4, 4 block]`` (closest to
    ``block``), so the row splits into blocks without padding; None if there is none."""
    if not length:
        return None
    candidates = [d for d in range(max(1, block // 4), 4 * block + 1) if length % d == 0]
    return min(candidates, key=lambda d: abs(d - block)) if candidates else None


def _blocked_sum(build: "_Builder", value: str, kept: int, opset: int,
                 block: int = NORM_BLOCK, length: tp.Optional[int] = None,
                 square: bool = False) -> tp.Tuple[str, str]:
    """Sum of ``value`` (of its squares if ``square``) over all axes after the first
    ``kept``, as a sum of block sums.

    ``length``: the number of values summed per output when statically known; if it has
    a divisor near ``block`` the rows are split without the zero padding (a copy).
    Returns ``(total, length)``: ``total`` has shape ``dims[:kept] + [1]`` and
    ``length`` (int64, shape ``[1]``) is the number of values summed per output.
    """
    shape = build.op("Shape", value)
    lead = build.op("Slice", shape, build.const([0], "int64"), build.const([kept], "int64"))
    static = _static_block(length, block)
    if static is not None:
        blocks = build.op("Reshape", value, build.op(
            "Concat", lead, build.const([-1, static], "int64"), axis=0))
        count = build.const([length], "int64")
    else:
        flat_shape = build.op("Concat", lead, build.const([-1], "int64"), axis=0)
        flat = build.op("Reshape", value, flat_shape)
        count = build.op("Slice", build.op("Shape", flat), build.const([kept], "int64"),
                         build.const([kept + 1], "int64"))
        size = build.const([block], "int64")
        missing = build.op("Mod", build.op("Sub", size, build.op("Mod", count, size)), size)
        pads = build.op("Concat", build.const([0] * (2 * kept + 1), "int64"), missing, axis=0)
        blocks = build.op("Reshape", build.op("Pad", flat, pads),
                          build.op("Concat", lead, build.const([-1, block], "int64"), axis=0))
    if square:
        if opset >= 18:
            partial = build.op("ReduceSumSquare", blocks, build.const([kept + 1], "int64"),
                               keepdims=0)
        else:
            partial = build.op("ReduceSumSquare", blocks, axes=[kept + 1], keepdims=0)
    else:
        partial = _reduce_sum(build, blocks, kept + 1, 0, opset)
    return _reduce_sum(build, partial, kept, 1, opset), count


def _constant_ints(model: "onnx.ModelProto", name: str) -> tp.Optional[tp.List[int]]:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).ravel()]
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return [int(v) for v in numpy_helper.to_array(attr.t).ravel()]
    return None


def _shapes_of(model: "onnx.ModelProto") -> tp.Dict[str, tp.List[tp.Optional[int]]]:
    """Inferred shapes by value name (None for a dimension that is not static).

    ONNX Runtime's symbolic shape inference when it is installed: unlike ONNX's own, it
    follows the Shape / Gather / Concat arithmetic of the traced GroupNorm reshapes, so
    the norms' row lengths come out static and :func:`_blocked_sum` needs no padding
    (84 Pad copies, ~5 % of an htdemucs run, avoided).
    """
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # not installed, or an operator it does not know: ONNX's own
        inferred = None
    if inferred is None:
        inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in info.type.tensor_type.shape.dim]
    return shapes


def _trailing_length(shape: tp.Optional[tp.List[tp.Optional[int]]], kept: int) -> tp.Optional[int]:
    """Product of the dimensions after the first ``kept`` if all are static."""
    if shape is None or any(d is None or d <= 0 for d in shape[kept:]):
        return None
    return int(math.prod(shape[kept:]))


def precise_reductions(model: "onnx.ModelProto", block: int = NORM_BLOCK) -> int:
    """Rewrites long ReduceMean/ReduceSum and InstanceNormalization as blocked sums.

    ONNX Runtime's CPU kernels accumulate a long reduction (``InstanceNormalization``
    from ``GroupNorm``: ~10^6 values per group in the transformer's ``norm_out``;
    ``ReduceMean`` for the input normalisation: ~2.7 x 10^6 values) with a relative
    error of ~1e-5, which capped htdemucs near 92-95 dB against PyTorch (PyTorch itself
    is at ~127 dB from float64). Here every such reduction is a sum of per-block sums
    (``block`` values each; rows zero-padded to a multiple of it, the true count used
    for means), and an instance norm takes the mean of ``x`` then of
    ``(x - mean)^2``: as exact as PyTorch, for any (dynamic) shape. Only reductions over
    trailing axes with known axes and rank are rewritten. Returns how many nodes were.
    """
    opset = _opset_of(model)
    graph = model.graph
    shapes = _shapes_of(model)
    rewritten = 0
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        build = _Builder(f"precise_{index}")
        if node.op_type == "InstanceNormalization":
            _instance_norm_nodes(build, node, opset,
                                 _trailing_length(shapes.get(node.input[0]), 2))
        elif node.op_type in ("ReduceMean", "ReduceSum"):
            shape = shapes.get(node.input[0])
            rank = None if shape is None else len(shape)
            attrs = {a.name: a for a in node.attribute}
            keep = attrs["keepdims"].i if "keepdims" in attrs else 1
            if "axes" in attrs:
                axes: tp.Optional[tp.List[int]] = list(attrs["axes"].ints)
            elif len(node.input) > 1 and node.input[1]:
                axes = _constant_ints(model, node.input[1])
            else:
                axes = None
            if rank is None or not axes:
                continue
            axes = sorted(a % rank for a in axes)
            if axes != list(range(rank - len(axes), rank)):
                continue  # not the trailing axes
            kept = rank - len(axes)
            total, length = _blocked_sum(build, node.input[0], kept, opset, block,
                                         _trailing_length(shape, kept))
            result = total
            if node.op_type == "ReduceMean":
                from onnx import TensorProto
                inverse = build.op("Reciprocal", build.op("Cast", length, to=TensorProto.FLOAT))
                result = build.op("Mul", total, inverse)
            lead = build.op("Slice", build.op("Shape", node.input[0]),
                            build.const([0], "int64"), build.const([kept], "int64"))
            tail = build.const([1] * len(axes) if keep else [], "int64")
            build.op("Reshape", result, build.op("Concat", lead, tail, axis=0),
                     output=node.output[0])
        else:
            continue
        del graph.node[index]
        for offset, new_node in enumerate(build.nodes):
            graph.node.insert(index + offset, new_node)
        graph.initializer.extend(build.inits)
        rewritten += 1
    return rewritten


def _instance_norm_nodes(build: "_Builder", node: tp.Any, opset: int,
                         length: tp.Optional[int] = None) -> None:
    """``InstanceNormalization`` as two-pass blocked sums, writing ``node.output[0]``.

    ``mean`` from block sums of ``x``, ``var`` from block sums of squares of
    ``x - mean``; the output is ``(x - mean) * (scale / std) + bias`` (the per-channel
    factor is computed on the small statistics). ``length``: static values per channel.
    """
    from onnx import TensorProto

    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    x, scale, bias = node.input
    flat = build.op("Reshape", x, build.const([0, 0, -1], "int64"))  # (N, C, L)

    def mean(value: str, square: bool = False) -> str:
        total, count = _blocked_sum(build, value, 2, opset, length=length, square=square)
        return build.op("Mul", total, build.op("Reciprocal", build.op(
            "Cast", count, to=TensorProto.FLOAT)))

    centered = build.op("Sub", flat, mean(flat))
    std = build.op("Sqrt", build.op("Add", mean(centered, square=True),
                                    build.const(epsilon)))
    # scale and bias (C,) as (C, 1) against the (N, C, L) / (N, C, 1) statistics.
    gain = build.op("Div", build.op("Reshape", scale, build.const([-1, 1], "int64")), std)
    shift = build.op("Reshape", bias, build.const([-1, 1], "int64"))
    normed = build.op("Add", build.op("Mul", centered, gain), shift)
    build.op("Reshape", normed, build.op("Shape", x), output=node.output[0])


def _opset_of(model: "onnx.ModelProto") -> int:
    """The default-domain opset of ``model``."""
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _set_metadata(model: "onnx.ModelProto", values: tp.Mapping[str, tp.Any]) -> None:
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key)
        if prop is None:
            prop = model.metadata_props.add()
            prop.key = key
        prop.value = str(value)


def _stft_nodes(model: "onnx.ModelProto") -> tp.List[str]:
    """Names of Conv/ConvTranspose nodes whose kernel is computed, not stored (the STFT)."""
    stored = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in stored]


#: Operators kept in float32 in fp16 models: normalisation statistics, reductions, the
#: in-graph DFT basis and anything whose range could overflow float16.
FP16_KEEP_FLOAT = [
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Div",
    "Reciprocal", "Range", "Cos", "Sin", "Exp", "Softmax", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "Erf", "Mod",
]


def to_fp16(model: "onnx.ModelProto", min_elements: int = 1024) -> "onnx.ModelProto":
    """Float16 storage of the weights, float32 compute.

    Every float32 initializer of at least ``min_elements`` values is stored as float16
    and cast back by a ``Cast`` node, which ONNX Runtime folds when the session starts.
    The file is half the size and runs on every execution provider with float32
    accuracy apart from the weight rounding. (Full float16 compute, e.g.
    ``onnxruntime.transformers.float16.convert_float_to_float16`` with
    :data:`FP16_KEEP_FLOAT` kept in float32, gave NaN on the full-size random-weight
    htdemucs on the CPU provider: activations overflow the float16 range.)
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in list(model.graph.initializer):
        if init.data_type != TensorProto.FLOAT or tensor_elements(init) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                       init.name + "_fp16")
        model.graph.initializer.remove(init)
        model.graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name],
                                      name=init.name + "_to_float", to=TensorProto.FLOAT))
    for node in reversed(casts):
        model.graph.node.insert(0, node)
    return model


def to_int8(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Dynamic int8 quantization (MatMul, Conv) plus int8 storage of other big weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(source))
        # The STFT convolutions (computed kernels) stay in float32: 8-bit spectra would
        # cost far more accuracy than the few operations they save.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                         nodes_to_exclude=_stft_nodes(model),
                         extra_options={"MatMulConstBOnly": True})
        quantized = onnx.load(str(target), load_external_data=True)
    return _int8_weight_storage(quantized)


def _int8_weight_storage(model: "onnx.ModelProto", min_elements: int = 4096) -> "onnx.ModelProto":
    """Replaces float32 initializers feeding ConvTranspose weights by int8 + DequantizeLinear.

    Symmetric, per output... per tensor scale (ConvTranspose weights are (Cin, Cout, k),
    DequantizeLinear with axis=1 gives one scale per output channel).
    """
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    targets = {node.input[1] for node in model.graph.node
               if node.op_type == "ConvTranspose" and node.input[1] in inits}
    new_inits, new_nodes = [], []
    for name in sorted(targets):
        array = numpy_helper.to_array(inits[name])
        if array.dtype != np.float32 or array.size < min_elements or array.ndim < 2:
            continue
        axes = tuple(i for i in range(array.ndim) if i != 1)
        scale = np.abs(array).max(axis=axes) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * array.ndim
        shape[1] = -1
        quant = np.clip(np.round(array / scale.reshape(shape)), -127, 127).astype(np.int8)
        model.graph.initializer.remove(inits[name])
        new_inits += [numpy_helper.from_array(quant, name + "_int8"),
                      numpy_helper.from_array(scale, name + "_scale"),
                      numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8),
                                              name + "_zero")]
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [name + "_int8", name + "_scale", name + "_zero"], [name],
            name=name + "_dequantize", axis=1))
    model.graph.initializer.extend(new_inits)
    for node in reversed(new_nodes):
        model.graph.node.insert(0, node)
    return model


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def default_opset(exporter: str) -> int:
    """Lowest opset each exporter produces: 17 (TorchScript) or 18 (dynamo)."""
    return DYNAMO_MIN_OPSET if exporter == "dynamo" else DEFAULT_OPSET


def export_model(model: nn.Module, path: tp.Union[str, Path], *,
                 segment: tp.Optional[float] = None, opset: tp.Optional[int] = None,
                 precision: str = "fp32", dynamic_batch: bool = False,
                 exporter: str = DEFAULT_EXPORTER, model_index: tp.Optional[int] = None,
                 name: tp.Optional[str] = None, stft_impl: str = DEFAULT_STFT_IMPL) -> Path:
    """Exports ``model`` (single model or ``BagOfModels``) to a single ONNX file.

    Args:
        model: the separation model, not modified (a copy is exported).
        path: output ``.onnx`` file; no side ``.onnx.data`` file is written.
        segment: segment length in seconds (default: the model's training segment).
        opset: ONNX opset (default :func:`default_opset`: 17, or 18 with dynamo).
        precision: ``fp32``, ``fp16`` or ``int8`` (see the module docstring).
        dynamic_batch: make the batch axis dynamic (else it is 1).
        exporter: ``torchscript`` or ``dynamo``.
        model_index: for a bag, export this member only.
        name: model name stored in the metadata (default: the class name).
        stft_impl: ``factored`` (default) or ``conv``, see the module docstring.
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
        raise ExportError(f"the dynamo exporter produces opset >= {DYNAMO_MIN_OPSET}, "
                          f"got --opset {opset}: use --exporter torchscript for opset {opset}")
    path = Path(path)
    wrapper, segment_samples, input_samples = prepare_model(
        model, segment=segment, model_index=model_index, stft_impl=stft_impl)
    first = wrapper.models[0]
    example = torch.randn(1, first.audio_channels, input_samples)
    onnx_model = _export_raw(wrapper, example, exporter, opset, dynamic_batch)

    state = wrapper.state_dict()
    suspicious = non_weight_initializers(onnx_model, state)
    if suspicious:
        total = sum(count for _, count in suspicious)
        raise ExportError(f"the {exporter} exporter stored {total} values that are not "
                          f"weights (e.g. a folded DFT basis): {suspicious[:5]}")
    if precision == "fp16":
        onnx_model = to_fp16(onnx_model)
    elif precision == "int8":
        onnx_model = to_int8(onnx_model)

    _set_metadata(onnx_model, {
        "model_name": name or type(model).__name__,
        "sample_rate": first.samplerate,
        "audio_channels": first.audio_channels,
        "sources": ",".join(first.sources),
        "segment_samples": segment_samples,
        "input_samples": input_samples,
        "segment_seconds": repr(segment_samples / first.samplerate),
        "precision": precision,
        "opset": _opset_of(onnx_model),
        "exporter": exporter,
        "stft": stft_impl,
        "batch": "dynamic" if dynamic_batch else "1",
        "members": len(wrapper.models),
        "layout": f"{INPUT_NAME}: (batch, channels, samples) float32 -> "
                  f"{OUTPUT_NAME}: (batch, sources, channels, samples) float32",
    })
    onnx_model.doc_string = "Demucs source separation: waveform in, stems out (STFT inside)."
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx_model, str(path), save_as_external_data=False)
    return path


def convert_file(source: tp.Union[str, Path], target: tp.Union[str, Path],
                 precision: str) -> Path:
    """Converts an exported float32 file to ``fp16`` or ``int8`` (metadata kept)."""
    import onnx

    if precision not in ("fp16", "int8"):
        raise ExportError(f"can only convert to fp16 or int8, not {precision!r}")
    model = onnx.load(str(source))
    model = to_fp16(model) if precision == "fp16" else to_int8(model)
    _set_metadata(model, {"precision": precision})
    target = Path(target)
    onnx.save_model(model, str(target), save_as_external_data=False)
    return target


def reference_output(model: nn.Module, mix: torch.Tensor, *,
                     segment: tp.Optional[float] = None,
                     model_index: tp.Optional[int] = None,
                     use_conv_stft: bool = False) -> torch.Tensor:
    """What the exported graph computes, in PyTorch eager mode (default: torch STFT)."""
    wrapper, _, _ = prepare_model(model, segment=segment, model_index=model_index,
                                  use_conv_stft=use_conv_stft)
    with torch.no_grad():
        return wrapper(mix)


def snr_db(reference: tp.Any, estimate: tp.Any) -> float:
    """``10 log10(|ref|^2 / |ref - est|^2)`` in dB (inf if identical); numpy or torch."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(estimate, dtype=np.float64)
    noise = float((err ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-30) / noise)


def check_export(model: nn.Module, path: tp.Union[str, Path], *,
                 segment: tp.Optional[float] = None, model_index: tp.Optional[int] = None,
                 seed: int = 0, threads: int = 0) -> float:
    """Runs the exported file with ONNX Runtime on random audio; SNR (dB) vs PyTorch."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    channels, samples = int(shape[1]), int(shape[2])
    generator = torch.Generator().manual_seed(seed)
    mix = 0.3 * torch.randn(1, channels, samples, generator=generator)
    expected = reference_output(model, mix, segment=segment, model_index=model_index)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: mix.numpy().astype(np.float32)})[0]
    return snr_db(expected.numpy(), got)


def parameter_bytes(model: nn.Module, model_index: tp.Optional[int] = None) -> int:
    """Bytes of the float32 parameters and buffers exported (one member or all)."""
    members, _ = _members(model)
    if model_index is not None:
        members = [members[model_index]]
    return sum(t.numel() * 4 for m in members for t in m.state_dict().values())


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def _load(args: argparse.Namespace) -> nn.Module:
    if args.random_weights:
        if args.name not in RANDOM_CONFIGS:
            raise ExportError(f"--random-weights knows {sorted(RANDOM_CONFIGS)}, "
                              f"not {args.name!r}")
        from .htdemucs import HTDemucs

        torch.manual_seed(0)
        return HTDemucs(**RANDOM_CONFIGS[args.name]).eval()
    from .pretrained import get_model

    return get_model(args.name, repo=args.repo)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "demucs.export_onnx",
        description="Export a Demucs model to one self-contained ONNX file "
                    "(waveform in, stems out, STFT inside).")
    parser.add_argument("-n", "--name", default="htdemucs",
                        help="pretrained model or bag name, or signature (default htdemucs)")
    parser.add_argument("--repo", type=Path, default=None,
                        help="local folder with the model files (.th/.yaml)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (default {DEFAULT_OPSET}, {DYNAMO_MIN_OPSET} with "
                             "--exporter dynamo)")
    parser.add_argument("--segment", type=float, default=None,
                        help="segment in seconds (default: the training segment)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="dynamic batch axis (default: batch of 1)")
    parser.add_argument("--exporter", choices=EXPORTERS, default=DEFAULT_EXPORTER)
    parser.add_argument("--stft", choices=STFT_IMPLS, default=DEFAULT_STFT_IMPL,
                        help="STFT in the graph: factored DFT as MatMuls (default) or "
                             "Conv/ConvTranspose over the full DFT basis")
    parser.add_argument("--model-index", type=int, default=None,
                        help="for a bag of models, export only this member")
    parser.add_argument("--check", action="store_true",
                        help="run ONNX Runtime on random audio, print the SNR vs PyTorch")
    parser.add_argument("--random-weights", action="store_true",
                        help="untrained model with the architecture of -n (htdemucs, "
                             "htdemucs_6s), to try the pipeline without checkpoints")
    return parser


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        model = _load(args)
        begin = time.time()
        path = export_model(model, args.out, segment=args.segment, opset=args.opset,
                            precision=args.precision, dynamic_batch=args.dynamic_batch,
                            exporter=args.exporter, model_index=args.model_index,
                            name=args.name, stft_impl=args.stft)
        size = path.stat().st_size
        params = parameter_bytes(model, args.model_index)
        print(f"wrote {path}: {size / 1e6:.1f} MB ({size / params:.3f} x the "
              f"{params / 1e6:.1f} MB of float32 weights) in {time.time() - begin:.0f} s")
        if args.check:
            snr = check_export(model, path, segment=args.segment,
                               model_index=args.model_index)
            print(f"check: ONNX Runtime vs PyTorch (torch STFT backend): SNR {snr:.1f} dB")
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
