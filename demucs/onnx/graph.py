"""Names and small helpers shared by the exporter's modules: the graph's input/output
names, :class:`ExportError`, a node builder for rewriting passes, and access to stored
tensors, the opset and the metadata of an ONNX model. Imports neither torch nor onnx at
module level."""

from __future__ import annotations

import math
import typing as tp

if tp.TYPE_CHECKING:  # pragma: no cover
    import onnx

INPUT_NAME = "mix"
OUTPUT_NAME = "stems"


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says what to change."""


class Builder:
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

    def op(
        self, op_type: str, *inputs: str, output: tp.Optional[str] = None, **attrs: tp.Any
    ) -> str:
        from onnx import helper

        out = output or self._name(op_type)
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), [out], name=self._name(op_type + "_node"), **attrs
            )
        )
        return out


def stored_tensors(model: "onnx.ModelProto") -> tp.Iterator[tp.Tuple[str, tp.Any]]:
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


def constant_ints(model: "onnx.ModelProto", name: str) -> tp.Optional[tp.List[int]]:
    """Values of the initializer or Constant node ``name`` as ints (None if not constant)."""
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


def opset_of(model: "onnx.ModelProto") -> int:
    """The default-domain opset of ``model``."""
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def set_metadata(model: "onnx.ModelProto", values: tp.Mapping[str, tp.Any]) -> None:
    """Sets (adds or replaces) string metadata properties of ``model``."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key)
        if prop is None:
            prop = model.metadata_props.add()
            prop.key = key
        prop.value = str(value)
