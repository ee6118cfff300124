"""Comparison metrics shared by the tests."""
import torch

from demucs.export_onnx import snr_db  # noqa: F401  (numpy or torch, in dB)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference of two tensors of the same shape."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()
