"""Tests for demucs/transformer.py: parity with upstream 4.0.1, export, arguments."""

from __future__ import annotations

import random

from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch

from demucs.transformer import (
    CrossTransformerEncoder,
    CrossTransformerEncoderLayer,
    LayerScale,
    MyTransformerEncoderLayer,
    create_2d_sin_embedding,
    create_sin_embedding,
    create_sin_embedding_cape,
)

DIM = 16
TOL = 1e-5

# Upstream keyword sets. Small dims keep every test fast.
CONFIGS: Dict[str, Dict[str, Any]] = {
    "default_sin": dict(dim=DIM, num_heads=2, num_layers=2),
    "cape_odd_layers": dict(dim=DIM, num_heads=4, num_layers=3, emb="cape"),
    "scaled": dict(dim=DIM, num_heads=2, num_layers=2, emb="scaled", max_positions=32),
    "htdemucs_like": dict(
        dim=DIM,
        num_heads=2,
        num_layers=4,
        norm_first=True,
        norm_out=True,
        layer_scale=True,
        hidden_scale=2.0,
        weight_pos_embed=0.5,
    ),
    "cross_first_relu": dict(
        dim=DIM,
        num_heads=2,
        num_layers=3,
        cross_first=True,
        gelu=False,
        max_period=500.0,
    ),
    "group_norms": dict(
        dim=DIM,
        num_heads=2,
        num_layers=2,
        norm_in=False,
        norm_in_group=2,
        group_norm=4,
        norm_first=True,
        norm_out=1,
    ),
    "no_norm_in_norm_out_2": dict(
        dim=DIM,
        num_heads=2,
        num_layers=2,
        norm_in=False,
        norm_first=True,
        norm_out=2,
    ),
}


def _inputs() -> Tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(2, DIM, 3, 5, generator=gen)
    xt = torch.randn(2, DIM, 9, generator=gen)
    return x, xt


def _run_upstream(oracle, tmp_path: Path, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Builds upstream CrossTransformerEncoder(**kwargs), perturbs its parameters (so that
    LayerScale, norms and biases all matter), runs it in eval mode on ``_inputs()``."""
    x, xt = _inputs()
    inp, out = tmp_path / "in.pt", tmp_path / "out.pt"
    torch.save({"kwargs": kwargs, "x": x, "xt": xt}, inp)
    oracle.run(
        f"""
        import torch
        from demucs.transformer import CrossTransformerEncoder
        data = torch.load({str(inp)!r})
        torch.manual_seed(0)
        model = CrossTransformerEncoder(**data["kwargs"])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn_like(p))
        model.eval()
        with torch.no_grad():
            y, yt = model(data["x"], data["xt"])
        torch.save({{"state": model.state_dict(), "y": y, "yt": yt}}, {str(out)!r})
    """,
        cwd=tmp_path,
    )
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_upstream(oracle, tmp_path: Path, name: str) -> None:
    kwargs = CONFIGS[name]
    ref = _run_upstream(oracle, tmp_path, kwargs)
    model = CrossTransformerEncoder(**kwargs)
    ours = model.state_dict()
    assert list(ours) == list(ref["state"])
    for key, value in ref["state"].items():
        assert ours[key].shape == value.shape, key
    model.load_state_dict(ref["state"], strict=True)
    model.eval()
    x, xt = _inputs()
    with torch.no_grad():
        y, yt = model(x, xt)
    assert y.shape == x.shape and yt.shape == xt.shape
    assert (y - ref["y"]).abs().max() < TOL
    assert (yt - ref["yt"]).abs().max() < TOL


def test_embeddings_match_upstream(oracle, tmp_path: Path) -> None:
    out = tmp_path / "emb.pt"
    oracle.run(
        f"""
        import torch
        from demucs import transformer as t
        torch.save({{
            "sin": t.create_sin_embedding(11, 8),
            "sin_shift": t.create_sin_embedding(7, 12, shift=3, max_period=100.0),
            "2d": t.create_2d_sin_embedding(16, 5, 7),
            "2d_period": t.create_2d_sin_embedding(8, 3, 4, max_period=50.0),
            "cape": t.create_sin_embedding_cape(9, 8, 3, mean_normalize=True, augment=False),
            "cape_raw": t.create_sin_embedding_cape(6, 8, 2, mean_normalize=False,
                                                    augment=False, max_period=300.0),
        }}, {str(out)!r})
    """,
        cwd=tmp_path,
    )
    ref = torch.load(out, weights_only=True)
    ours = {
        "sin": create_sin_embedding(11, 8),
        "sin_shift": create_sin_embedding(7, 12, shift=3, max_period=100.0),
        "2d": create_2d_sin_embedding(16, 5, 7),
        "2d_period": create_2d_sin_embedding(8, 3, 4, max_period=50.0),
        "cape": create_sin_embedding_cape(9, 8, 3, mean_normalize=True, augment=False),
        "cape_raw": create_sin_embedding_cape(
            6, 8, 2, mean_normalize=False, augment=False, max_period=300.0
        ),
    }
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key
        assert ours[key].dtype == value.dtype, key
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)


def test_layer_scale() -> None:
    ls = LayerScale(3, init=0.5)
    assert list(ls.state_dict()) == ["scale"]
    assert ls.scale.requires_grad
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(ls(x), 0.5 * x)
    ls_last = LayerScale(4, init=2.0, channel_last=True)
    torch.testing.assert_close(ls_last(x), 2.0 * x)
    assert torch.all(LayerScale(5).scale == 0)


def test_never_takes_mha_fast_path(monkeypatch) -> None:
    """Eval + no_grad is where nn.MultiheadAttention would use its fused kernel."""

    def boom(*args, **kwargs):
        raise AssertionError("fast path taken")

    monkeypatch.setattr(torch, "_native_multi_head_attention", boom)
    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", boom)
    model = CrossTransformerEncoder(**CONFIGS["htdemucs_like"]).eval()
    with torch.no_grad():
        model(*_inputs())


def test_batch_first_false_layers() -> None:
    """Layers also work time-first, matching their batch-first results."""
    kw = dict(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0)
    for klass in (MyTransformerEncoderLayer, CrossTransformerEncoderLayer):
        torch.manual_seed(0)
        bf = klass(batch_first=True, **kw).eval()
        tf = klass(batch_first=False, **kw).eval()
        tf.load_state_dict(bf.state_dict())
        q, k = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
        args_bf = (q,) if klass is MyTransformerEncoderLayer else (q, k)
        args_tf = tuple(a.transpose(0, 1) for a in args_bf)
        torch.testing.assert_close(tf(*args_tf).transpose(0, 1), bf(*args_bf))


def test_training_randomness() -> None:
    x, xt = _inputs()
    cape = CrossTransformerEncoder(**CONFIGS["cape_odd_layers"])
    cape.train()
    a, b = cape(x, xt)[1], cape(x, xt)[1]
    assert not torch.allclose(a, b)
    cape.eval()
    with torch.no_grad():
        torch.testing.assert_close(cape(x, xt)[1], cape(x, xt)[1], rtol=0, atol=0)

    shifted = CrossTransformerEncoder(dim=DIM, num_heads=2, num_layers=1, sin_random_shift=50)
    shifted.train()
    outs = [shifted(x, xt)[1] for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    # As upstream: the shift is drawn from Python's `random` in eval mode too.
    shifted.eval()
    with torch.no_grad():
        random.seed(3)
        first = shifted(x, xt)[1]
        random.seed(3)
        torch.testing.assert_close(shifted(x, xt)[1], first, rtol=0, atol=0)


def test_cape_augment_shapes() -> None:
    emb = create_sin_embedding_cape(
        10,
        8,
        3,
        mean_normalize=True,
        augment=True,
        max_global_shift=5.0,
        max_local_shift=1.0,
        max_scale=1.4,
    )
    assert emb.shape == (10, 3, 8) and emb.dtype == torch.float32
    assert not torch.allclose(emb[:, 0], emb[:, 1])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(sparse_self_attn=True), NotImplementedError),
        (dict(sparse_cross_attn=True), NotImplementedError),
        (dict(num_heads=3), ValueError),
        (dict(emb="rope"), ValueError),
        (dict(sin_random_shift=-1), ValueError),
    ],
)
def test_bad_arguments(kwargs: Dict[str, Any], error: type) -> None:
    base = dict(dim=DIM, num_heads=2, num_layers=2)
    base.update(kwargs)
    with pytest.raises(error):
        CrossTransformerEncoder(**base)


def test_bad_embedding_dims() -> None:
    with pytest.raises(ValueError):
        create_2d_sin_embedding(6, 2, 2)
    with pytest.raises(ValueError):
        create_sin_embedding(4, 7)


def _export_kwargs() -> Dict[str, Any]:
    return dict(
        dim=DIM,
        num_heads=2,
        num_layers=3,
        norm_first=True,
        norm_out=True,
        layer_scale=True,
        hidden_scale=2.0,
    )


def _onnx_run(path_or_bytes, x: torch.Tensor, xt: torch.Tensor):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy(), "xt": xt.numpy()})


@pytest.mark.parametrize("emb", ["sin", "cape"])
def test_onnx_export_torchscript(tmp_path: Path, emb: str) -> None:
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = CrossTransformerEncoder(emb=emb, **_export_kwargs()).eval()
    x, xt = _inputs()
    path = tmp_path / "transformer.onnx"
    torch.onnx.export(
        model,
        (x, xt),
        str(path),
        dynamo=False,
        opset_version=17,
        external_data=False,
        input_names=["x", "xt"],
        output_names=["y", "yt"],
        dynamic_axes={"x": {0: "batch", 3: "frames"}, "xt": {0: "batch", 2: "time"}},
    )
    assert not list(tmp_path.glob("*.data")), "unexpected external data file"
    for shape_x, shape_xt in [((2, DIM, 3, 5), (2, DIM, 9)), ((1, DIM, 3, 8), (1, DIM, 13))]:
        x = torch.randn(*shape_x)
        xt = torch.randn(*shape_xt)
        with torch.no_grad():
            y, yt = model(x, xt)
        oy, oyt = _onnx_run(str(path), x, xt)
        assert oy.shape == tuple(y.shape) and oyt.shape == tuple(yt.shape)
        assert abs(torch.from_numpy(oy) - y).max() < 1e-4
        assert abs(torch.from_numpy(oyt) - yt).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("emb", ["sin"])  # "cape" also exports; skipped to save time
def test_onnx_export_dynamo(emb: str) -> None:
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = CrossTransformerEncoder(emb=emb, **_export_kwargs()).eval()
    x, xt = _inputs()
    frames, time = torch.export.Dim("frames", min=2), torch.export.Dim("time", min=2)
    program = torch.onnx.export(
        model,
        (x, xt),
        dynamo=True,
        input_names=["x", "xt"],
        output_names=["y", "yt"],
        dynamic_shapes={"x": {3: frames}, "xt": {2: time}},
    )
    onnx_bytes = program.model_proto.SerializeToString()
    for x, xt in [_inputs(), (torch.randn(2, DIM, 3, 8), torch.randn(2, DIM, 13))]:
        with torch.no_grad():
            y, yt = model(x, xt)
        oy, oyt = _onnx_run(onnx_bytes, x, xt)
        assert abs(torch.from_numpy(oy) - y).max() < 1e-4
        assert abs(torch.from_numpy(oyt) - yt).max() < 1e-4


def test_query_chunked_attention_matches_fused() -> None:
    from torch import nn

    from demucs.transformer import _query_chunked_attention, multihead_attention

    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    query, key = torch.randn(2, 300, 32), torch.randn(2, 170, 32)
    with torch.no_grad():
        ref = multihead_attention(mha, query, key, key)
        out = _query_chunked_attention(mha, query, key, key, chunk=128)  # 3 uneven blocks
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_chunked_attention_only_inside_its_context(monkeypatch) -> None:
    from torch import nn

    import demucs.transformer as module

    calls = []
    monkeypatch.setattr(
        module, "_query_chunked_attention", lambda *args: calls.append(args[-1]) or args[1]
    )
    monkeypatch.setattr(module, "is_exporting", lambda: True)
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(1, 10, 16)
    module.multihead_attention(mha, x, x, x)
    assert calls == []
    with module.chunked_attention_for_export(64):
        module.multihead_attention(mha, x, x, x)
    assert calls == [64]
    assert module._EXPORT_QUERY_CHUNK == 0
