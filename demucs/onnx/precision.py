"""Reduced-precision files: ``fp16`` (float16 storage of the weights, float32 compute)
and ``int8`` (dynamic quantization of MatMul/Conv weights, int8 storage of the others).
Works on ONNX models only: no torch."""

from __future__ import annotations

import tempfile
import typing as tp
from pathlib import Path

from .graph import tensor_elements

if tp.TYPE_CHECKING:  # pragma: no cover
    import onnx

PRECISIONS = ("fp32", "fp16", "mixed", "int8")
#: Precisions an exported float32 file can be converted to (:func:`.export.convert_file`).
CONVERTIBLE = ("fp16", "mixed", "int8")
#: Operators computed in float16 by ``mixed`` (inside the network's layers only).
MIXED_FP16_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def convert(model: "onnx.ModelProto", precision: str) -> "onnx.ModelProto":
    """``model`` (float32) in ``precision`` (one of :data:`PRECISIONS`)."""
    if precision == "fp16":
        return to_fp16(model)
    if precision == "int8":
        return to_int8(model)
    if precision == "mixed":
        return to_mixed(model)
    return model


def stft_nodes(model: "onnx.ModelProto") -> tp.List[str]:
    """Names of Conv/ConvTranspose nodes whose kernel is computed, not stored (the STFT)."""
    stored = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in stored
    ]


#: Operators kept in float32 in fp16 models: normalisation statistics, reductions, the
#: in-graph DFT basis and anything whose range could overflow float16.
FP16_KEEP_FLOAT = [
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "Pow",
    "Sqrt",
    "Div",
    "Reciprocal",
    "Range",
    "Cos",
    "Sin",
    "Exp",
    "Softmax",
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "Erf",
    "Mod",
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
        half = numpy_helper.from_array(
            numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16"
        )
        model.graph.initializer.remove(init)
        model.graph.initializer.append(half)
        casts.append(
            helper.make_node(
                "Cast", [half.name], [init.name], name=init.name + "_to_float", to=TensorProto.FLOAT
            )
        )
    for node in reversed(casts):
        model.graph.node.insert(0, node)
    return model


def in_layer(node: tp.Any) -> bool:
    """Whether ``node`` belongs to a submodule of a model (TorchScript names nodes by
    module scope, ``/models.0/encoder.1/conv/Conv``), rather than to the model's own
    forward, where the STFT, the input normalisation and the final sums are computed."""
    return len(node.name.split("/")[1:-1]) >= 2


def to_mixed(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Matrix products and convolutions of the layers in float16, the rest in float32.

    Every :data:`MIXED_FP16_OPS` node inside a layer (:func:`in_layer`) gets float16
    inputs (its weights stored in float16, activations cast) and its output is cast back
    to float32, so normalisations, softmax, attention scores, activations, the STFT and
    the reductions stay in float32. For execution providers with fast float16 products
    (CUDA, CoreML, ARM64 CPUs with fp16 arithmetic); on x86 CPUs ONNX Runtime runs these
    nodes through casts to float32 (no speed-up, float16 rounding kept). Weights of the
    converted nodes take half the space.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from .passes import remove_unused_initializers

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    halves: tp.Dict[str, str] = {}  # float32 name -> float16 name
    nodes = []
    converted = 0
    for node in graph.node:
        if node.op_type not in MIXED_FP16_OPS or not in_layer(node):
            nodes.append(node)
            continue
        inputs = list(node.input)
        for index, name in enumerate(inputs):
            if not name:
                continue
            if name not in halves:
                half = name + "_fp16"
                init = inits.get(name)
                if init is not None:
                    if init.data_type != TensorProto.FLOAT:
                        continue
                    array = numpy_helper.to_array(init).astype(np.float16)
                    graph.initializer.append(numpy_helper.from_array(array, half))
                else:
                    nodes.append(
                        helper.make_node(
                            "Cast", [name], [half], to=TensorProto.FLOAT16, name=half + "_cast"
                        )
                    )
                halves[name] = half
            inputs[index] = halves[name]
        output = node.output[0]
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = output + "_fp16"
        nodes.append(node)
        nodes.append(
            helper.make_node(
                "Cast", [node.output[0]], [output], to=TensorProto.FLOAT, name=output + "_to_float"
            )
        )
        converted += 1
    del graph.node[:]
    graph.node.extend(nodes)
    remove_unused_initializers(model)
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
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            nodes_to_exclude=stft_nodes(model),
            extra_options={"MatMulConstBOnly": True},
        )
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
    targets = {
        node.input[1]
        for node in model.graph.node
        if node.op_type == "ConvTranspose" and node.input[1] in inits
    }
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
        new_inits += [
            numpy_helper.from_array(quant, name + "_int8"),
            numpy_helper.from_array(scale, name + "_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), name + "_zero"),
        ]
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [name + "_int8", name + "_scale", name + "_zero"],
                [name],
                name=name + "_dequantize",
                axis=1,
            )
        )
    model.graph.initializer.extend(new_inits)
    for node in reversed(new_nodes):
        model.graph.node.insert(0, node)
    return model
