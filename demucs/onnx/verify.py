"""Checking an exported file: the PyTorch output it should reproduce, ONNX Runtime's
output on random audio, and the signal-to-noise ratio between them. torch is imported
only by the functions that run the model, so :func:`snr_db` is usable without it."""

from __future__ import annotations

import math
import typing as tp
from pathlib import Path

from .graph import INPUT_NAME, OUTPUT_NAME

if tp.TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def snr_db(reference: tp.Any, estimate: tp.Any) -> float:
    """``10 log10(|ref|^2 / |ref - est|^2)`` in dB (inf if identical); numpy or torch."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(estimate, dtype=np.float64)
    noise = float((err**2).sum())
    signal = float((ref**2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-30) / noise)


def reference_output(
    model: "nn.Module",
    mix: "torch.Tensor",
    *,
    segment: tp.Optional[float] = None,
    model_index: tp.Optional[int] = None,
    use_conv_stft: bool = False,
    stems: tp.Optional[tp.Sequence[str]] = None,
) -> "torch.Tensor":
    """What the exported graph computes, in PyTorch eager mode (default: torch STFT)."""
    import torch

    from .prepare import prepare_model

    wrapper, _, _ = prepare_model(
        model, segment=segment, model_index=model_index, use_conv_stft=use_conv_stft, stems=stems
    )
    with torch.no_grad():
        return wrapper(mix)


def check_export(
    model: "nn.Module",
    path: tp.Union[str, Path],
    *,
    segment: tp.Optional[float] = None,
    model_index: tp.Optional[int] = None,
    seed: int = 0,
    threads: int = 0,
    stems: tp.Optional[tp.Sequence[str]] = None,
) -> float:
    """Runs the exported file with ONNX Runtime on random audio; SNR (dB) vs PyTorch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    channels, samples = int(shape[1]), int(shape[2])
    generator = torch.Generator().manual_seed(seed)
    mix = 0.3 * torch.randn(1, channels, samples, generator=generator)
    expected = reference_output(model, mix, segment=segment, model_index=model_index, stems=stems)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: mix.numpy().astype(np.float32)})[0]
    return snr_db(expected.numpy(), got)
