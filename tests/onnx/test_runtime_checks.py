"""demucs.onnx.runtime: execution provider selection and refusal of graphs whose
metadata cannot be right (no export needed: small graphs are built with onnx.helper)."""

from __future__ import annotations

import typing as tp
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from demucs.errors import ModelLoadingError  # noqa: E402
from demucs.onnx.runtime import OnnxSeparator, load_onnx, select_providers  # noqa: E402

CPU, CUDA, COREML = "CPUExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider"


def test_default_providers_pick_the_best_available():
    assert select_providers(available=[CPU]) == [CPU]
    assert select_providers(available=[CUDA, CPU]) == [CUDA, CPU]
    assert select_providers(available=[COREML, CPU]) == [COREML, CPU]
    assert select_providers(available=["TensorrtExecutionProvider", CUDA, CPU]) == [CUDA, CPU]


def test_requested_providers():
    assert select_providers(["coreml"], available=[COREML, CPU]) == [COREML, CPU]
    assert select_providers(["CPUExecutionProvider"], available=[CPU]) == [CPU]
    with pytest.raises(ValueError, match="not available here"):
        select_providers(["cuda"], available=[CPU])
    with pytest.raises(ValueError, match="unknown ONNX Runtime provider"):
        select_providers(["gpu-please"], available=[CPU])
    assert select_providers(device="cpu", available=[CUDA, CPU]) == [CPU]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        select_providers(device="cuda", available=[CPU])
    with pytest.raises(ValueError, match="not supported"):
        select_providers(device="tpu", available=[CPU])


def _graph(
    path: Path,
    sources: int = 4,
    channels: int = 2,
    samples: int = 64,
    out_rank: int = 4,
    meta: tp.Optional[tp.Dict[str, str]] = None,
) -> Path:
    """A graph tiling its input over ``sources`` (shape checks only)."""
    inp = helper.make_tensor_value_info("mix", TensorProto.FLOAT, [1, channels, samples])
    out_shape = [1, sources, channels, samples][:out_rank]
    out = helper.make_tensor_value_info("stems", TensorProto.FLOAT, out_shape)
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [1, 1, channels, samples])
    reps = helper.make_tensor("reps", TensorProto.INT64, [4], [1, sources, 1, 1])
    nodes = [
        helper.make_node("Reshape", ["mix", "shape"], ["r"]),
        helper.make_node("Tile", ["r", "reps"], ["t"]),
    ]
    if out_rank == 3:
        squeeze = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
        nodes.append(helper.make_node("Squeeze", ["t", "axes"], ["stems"]))
        inits = [shape, reps, squeeze]
    else:
        nodes.append(helper.make_node("Identity", ["t"], ["stems"]))
        inits = [shape, reps]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [inp], [out], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    values = {
        "sample_rate": "8000",
        "audio_channels": str(channels),
        "sources": ",".join(f"s{i}" for i in range(sources)),
        "segment_samples": str(samples),
        "input_samples": str(samples),
    }
    values.update(meta or {})
    for key, value in values.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_a_consistent_graph_loads_and_separates(tmp_path):
    runtime = OnnxSeparator(_graph(tmp_path / "ok.onnx"), threads=1)
    stems = runtime.separate(np.ones((2, 100), np.float32) * 0.1, shifts=0)
    assert stems.shape == (4, 2, 100)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(meta={"sources": "a,b,../../tmp/x,d"}), "path separator"),
        (dict(meta={"sources": "a,a,b,c"}), "duplicate"),
        (dict(meta={"sources": "a,b,.,d"}), "not a valid file name"),
        (dict(meta={"sources": "a,b,c"}), "4 output sources"),
        (dict(meta={"sample_rate": "0"}), "sample_rate"),
        (dict(meta={"sample_rate": "banana"}), "not an integer"),
        (dict(meta={"audio_channels": "1"}), "input channels"),
        (dict(meta={"input_samples": "128"}), "input samples"),
        (dict(meta={"segment_samples": "1000"}), "segment_samples"),
        (dict(out_rank=3), "(batch, sources, channels, samples)"),
        (dict(meta={"sources": None}), "lacks the metadata 'sources'"),
    ],
)
def test_inconsistent_graphs_are_refused(tmp_path, kwargs, message):
    path = _graph(tmp_path / "bad.onnx", **kwargs)
    with pytest.raises(
        ModelLoadingError, match=message.replace("(", r"\(").replace(")", r"\)")
    ) as info:
        load_onnx(path, threads=1)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unusable_model_name_falls_back(tmp_path):
    runtime = OnnxSeparator(_graph(tmp_path / "x.onnx", meta={"model_name": "../evil"}), threads=1)
    assert runtime.spec.model_name == ""
