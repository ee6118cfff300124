"""Graph rewriting passes run on the traced graph.

* :func:`restore_computed_bases`: stored DFT bases (``stft_impl="conv"``) replaced by the
  subgraph computing them;
* :func:`precise_reductions`: long reductions and instance norms as blocked sums (as
  exact as PyTorch);
* :func:`remove_unused_initializers`, :func:`strip_debug_info`: clean-up;
* :func:`non_weight_initializers`: the check that no large non-weight tensor is stored.
"""

from __future__ import annotations

import math
import typing as tp

from .graph import Builder, constant_ints, opset_of, stored_tensors, tensor_elements

if tp.TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

#: Initializers/constants with fewer elements than this are never reported as suspicious.
SMALL_TENSOR = 1 << 16


def remove_unused_initializers(model: "onnx.ModelProto") -> None:
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


def strip_debug_info(model: "onnx.ModelProto") -> None:
    """Drops per-node stack traces and doc strings (the dynamo exporter's take ~0.5 MB)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def non_weight_initializers(
    model: "onnx.ModelProto",
    state: tp.Mapping[str, "torch.Tensor"],
    min_elements: int = SMALL_TENSOR,
) -> tp.List[tp.Tuple[str, int]]:
    """Stored tensors of at least ``min_elements`` that are not model weights.

    A stored tensor counts as a weight if some tensor of ``state`` (a state dict) has
    the same number of elements (exporters may transpose or reshape weights). Quantized
    weights (int8/uint8 initializers) count too. Returns ``[(name, elements)]``; an
    export without a stored DFT basis returns ``[]``.
    """
    from onnx import TensorProto

    sizes = {int(t.numel()) for t in state.values()}
    found = []
    for name, tensor in stored_tensors(model):
        count = tensor_elements(tensor)
        if count < min_elements or count in sizes:
            continue
        if tensor.data_type in (TensorProto.INT8, TensorProto.UINT8):
            continue
        found.append((name, count))
    return found


def _basis_subgraph(build: Builder, n_fft: int, n_bins: int) -> tp.Tuple[str, str, str]:
    """Nodes computing :func:`demucs.spec.dft_bases` and the Hann window in float32.

    Returns the names of ``(analysis, synthesis, window)``: ``(2 n_bins, 1, n_fft)`` twice
    and ``(n_fft,)``. Angles use ``(k * n) mod n_fft`` in int64 (exact) before Cos/Sin.
    """
    from onnx import TensorProto

    two_pi_n = build.const(2 * math.pi / n_fft)
    k = build.op(
        "Range", build.const(0, "int64"), build.const(n_bins, "int64"), build.const(1, "int64")
    )
    n = build.op(
        "Range", build.const(0, "int64"), build.const(n_fft, "int64"), build.const(1, "int64")
    )
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
    analysis = build.op(
        "Reshape",
        build.op("Mul", build.op("Concat", cos_w, build.op("Neg", sin_w), axis=0), scale),
        shape,
    )
    is_edge = build.op(
        "Or",
        build.op("Equal", k, build.const(0, "int64")),
        build.op("Equal", k, build.const(n_fft // 2, "int64")),
    )
    edge = build.op(
        "Reshape",
        build.op("Cast", is_edge, to=TensorProto.FLOAT),
        build.const([n_bins, 1], "int64"),
    )
    weight = build.op("Mul", build.op("Sub", build.const(2.0), edge), scale)
    weight_imag = build.op("Mul", weight, build.op("Sub", build.const(1.0), edge))
    real = build.op("Mul", cos_w, weight)
    imag = build.op("Neg", build.op("Mul", sin_w, weight_imag))
    synthesis = build.op("Reshape", build.op("Concat", real, imag, axis=0), shape)
    return analysis, synthesis, window


def _envelope_subgraph(build: Builder, window: str, n_fft: int, hop: int, n_frames: int) -> str:
    """Nodes computing :func:`demucs.spec.window_envelope` (overlap-added squared window)."""
    from onnx import helper, TensorProto

    length = hop * (n_frames - 1) + n_fft
    kernel = build.op(
        "Reshape", build.op("Mul", window, window), build.const([1, 1, n_fft], "int64")
    )
    ones = build.op(
        "ConstantOfShape",
        build.const([1, 1, n_frames], "int64"),
        value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
    )
    env = build.op(
        "Reshape",
        build.op("ConvTranspose", ones, kernel, strides=[hop], kernel_shape=[n_fft]),
        build.const([length], "int64"),
    )
    covered = build.op("Greater", env, build.const(1e-11))
    return build.op("Where", covered, env, build.const(1.0))


def restore_computed_bases(
    model: "onnx.ModelProto", n_ffts: tp.Iterable[int], tolerance: float = 1e-5
) -> int:
    """Replaces stored DFT bases / window envelopes by the subgraph computing them.

    The TorchScript exporter always propagates constants (whatever
    ``do_constant_folding`` says), so the in-graph basis computation comes out as
    Constant nodes of ``2 x n_fft x n_fft / 2`` floats. Every stored tensor equal (to
    ``tolerance``) to :func:`demucs.spec.dft_bases` or
    :func:`demucs.spec.window_envelope` for one of ``n_ffts`` (hop ``n_fft // 4``) is
    removed and recomputed by a few Range/Cos/Sin/ConvTranspose nodes. Returns how many
    tensors were replaced. Only the main graph is scanned.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    import torch

    from .. import spec

    sizes = {int(n) for n in n_ffts}
    graph = model.graph
    stored: tp.List[tp.Tuple[str, tp.Any, tp.Any]] = []  # (value name, tensor, owner)
    for init in graph.initializer:
        stored.append((init.name, init, init))
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            stored.append((node.output[0], node.attribute[0].t, node))

    builders: tp.Dict[tp.Tuple[int, int], tp.Tuple[str, str, str]] = {}
    build = Builder("computed_stft")
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
            analysis, synthesis = spec.dft_bases(n_fft, n_bins, torch.device("cpu"), torch.float32)
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
                reference = spec.window_envelope(
                    n_fft, hop, frames + 1, torch.device("cpu"), torch.float32
                )
                value = numpy_helper.to_array(tensor)
                if np.abs(value - reference.numpy()).max() <= tolerance:
                    window = bases(n_fft, n_fft // 2)[2]
                    replacement = _envelope_subgraph(build, window, n_fft, hop, frames + 1)
                    break
        if replacement is None:
            continue
        removed.append(owner)
        aliases.append(
            helper.make_node(
                "Identity", [replacement], [name], name=f"computed_stft/{name}_identity"
            )
        )
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


def _reduce_sum(build: Builder, value: str, axis: int, keep: int, opset: int) -> str:
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


def _blocked_sum(
    build: Builder,
    value: str,
    kept: int,
    opset: int,
    block: int = NORM_BLOCK,
    length: tp.Optional[int] = None,
    square: bool = False,
) -> tp.Tuple[str, str]:
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
        blocks = build.op(
            "Reshape", value, build.op("Concat", lead, build.const([-1, static], "int64"), axis=0)
        )
        count = build.const([length], "int64")
    else:
        flat_shape = build.op("Concat", lead, build.const([-1], "int64"), axis=0)
        flat = build.op("Reshape", value, flat_shape)
        count = build.op(
            "Slice",
            build.op("Shape", flat),
            build.const([kept], "int64"),
            build.const([kept + 1], "int64"),
        )
        size = build.const([block], "int64")
        missing = build.op("Mod", build.op("Sub", size, build.op("Mod", count, size)), size)
        pads = build.op("Concat", build.const([0] * (2 * kept + 1), "int64"), missing, axis=0)
        blocks = build.op(
            "Reshape",
            build.op("Pad", flat, pads),
            build.op("Concat", lead, build.const([-1, block], "int64"), axis=0),
        )
    if square:
        if opset >= 18:
            partial = build.op(
                "ReduceSumSquare", blocks, build.const([kept + 1], "int64"), keepdims=0
            )
        else:
            partial = build.op("ReduceSumSquare", blocks, axes=[kept + 1], keepdims=0)
    else:
        partial = _reduce_sum(build, blocks, kept + 1, 0, opset)
    return _reduce_sum(build, partial, kept, 1, opset), count


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
            shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else None
                for d in info.type.tensor_type.shape.dim
            ]
    return shapes


def _trailing_length(shape: tp.Optional[tp.List[tp.Optional[int]]], kept: int) -> tp.Optional[int]:
    """Product of the dimensions after the first ``kept`` if all are static."""
    if shape is None or any(d is None or d <= 0 for d in shape[kept:]):
        return None
    return int(math.prod(tp.cast(tp.List[int], shape[kept:])))


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
    opset = opset_of(model)
    graph = model.graph
    shapes = _shapes_of(model)
    rewritten = 0
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        build = Builder(f"precise_{index}")
        if node.op_type == "InstanceNormalization":
            _instance_norm_nodes(build, node, opset, _trailing_length(shapes.get(node.input[0]), 2))
        elif node.op_type in ("ReduceMean", "ReduceSum"):
            shape = shapes.get(node.input[0])
            rank = None if shape is None else len(shape)
            attrs = {a.name: a for a in node.attribute}
            keep = attrs["keepdims"].i if "keepdims" in attrs else 1
            if "axes" in attrs:
                axes: tp.Optional[tp.List[int]] = list(attrs["axes"].ints)
            elif len(node.input) > 1 and node.input[1]:
                axes = constant_ints(model, node.input[1])
            else:
                axes = None
            if rank is None or not axes:
                continue
            axes = sorted(a % rank for a in axes)
            if axes != list(range(rank - len(axes), rank)):
                continue  # not the trailing axes
            kept = rank - len(axes)
            total, length = _blocked_sum(
                build, node.input[0], kept, opset, block, _trailing_length(shape, kept)
            )
            result = total
            if node.op_type == "ReduceMean":
                from onnx import TensorProto

                inverse = build.op("Reciprocal", build.op("Cast", length, to=TensorProto.FLOAT))
                result = build.op("Mul", total, inverse)
            lead = build.op(
                "Slice",
                build.op("Shape", node.input[0]),
                build.const([0], "int64"),
                build.const([kept], "int64"),
            )
            tail = build.const([1] * len(axes) if keep else [], "int64")
            build.op(
                "Reshape", result, build.op("Concat", lead, tail, axis=0), output=node.output[0]
            )
        else:
            continue
        del graph.node[index]
        for offset, new_node in enumerate(build.nodes):
            graph.node.insert(index + offset, new_node)
        graph.initializer.extend(build.inits)
        rewritten += 1
    return rewritten


def _instance_norm_nodes(
    build: Builder, node: tp.Any, opset: int, length: tp.Optional[int] = None
) -> None:
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
        return build.op(
            "Mul", total, build.op("Reciprocal", build.op("Cast", count, to=TensorProto.FLOAT))
        )

    centered = build.op("Sub", flat, mean(flat))
    std = build.op("Sqrt", build.op("Add", mean(centered, square=True), build.const(epsilon)))
    # scale and bias (C,) as (C, 1) against the (N, C, L) / (N, C, 1) statistics.
    gain = build.op("Div", build.op("Reshape", scale, build.const([-1, 1], "int64")), std)
    shift = build.op("Reshape", bias, build.const([-1, 1], "int64"))
    normed = build.op("Add", build.op("Mul", centered, gain), shift)
    build.op("Reshape", normed, build.op("Shape", x), output=node.output[0])
