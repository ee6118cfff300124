"""Comparison metrics shared by the tests."""

import typing as tp

import torch

from demucs.onnx.verify import snr_db  # noqa: F401  (numpy or torch, in dB)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two tensors of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def run_with_upstream_state(
    klass: type, kwargs: dict, ref: dict, mix: torch.Tensor, tol: float = 1e-5
) -> tp.Tuple[torch.nn.Module, torch.Tensor]:
    """Builds ``klass(**kwargs)``, loads upstream's state (strict, same key order), runs
    it in eval mode on ``mix`` and checks the output against upstream's within ``tol``.
    Returns the model and its output."""
    model = klass(**kwargs).eval()
    model.load_state_dict(ref["state"], strict=True)
    assert list(model.state_dict()) == list(ref["state"])
    with torch.no_grad():
        out = model(mix)
    assert max_diff(out, ref["output"]) < tol
    return model, out
