"""Multichannel Wiener filtering on real tensors with a trailing ``(re, im)`` axis.

This is the post-processing Demucs applies when ``cac=False``: the network predicts one
magnitude spectrogram per source, and these are turned into complex source STFTs by
giving them the mixture phase and, optionally, refining them with a few iterations of
the simplified EM algorithm of multichannel Wiener filtering (Nugraha, Liutkus and
Vincent 2016; as in open-unmix).

Every complex quantity here is a *real* tensor whose last axis has size 2 and holds the
real and imaginary parts. That works the same for both of our STFT backends
(``torch.view_as_real`` of ``torch.stft`` and the convolutional STFT) and keeps the
graph exportable to ONNX: no complex dtypes, no ``atan2`` (ONNX has no such op), no
Python branches on tensor values, and shapes taken from Python ints only.

Layout conventions (same as open-unmix):

* ``T`` frames, ``F`` frequency bins, ``C`` audio channels (1 or 2 for the EM), ``J``
  sources.
* targets (magnitudes): ``(T, F, C, J)``; mixture STFT: ``(T, F, C, 2)``;
  source STFTs: ``(T, F, C, 2, J)``.
"""

from __future__ import annotations

import math
import typing as tp
import warnings

import torch
from torch import Tensor

__all__ = [
    "complex_mul",
    "complex_conj",
    "complex_abs2",
    "complex_inv",
    "complex_matmul",
    "complex_hermitian",
    "complex_inverse_matrix",
    "unit_phasor",
    "atan2",
    "expectation_maximization",
    "wiener",
    "apply_wiener",
]


# --------------------------------------------------------------------------------------
# Complex arithmetic on (..., 2) real tensors
# --------------------------------------------------------------------------------------


def _shape(x: Tensor) -> tp.Tuple[int, ...]:
    """``x.shape`` as Python ints, also while tracing.

    The JIT tracer hands out sizes as tensors, and every check or branch on them warns.
    Taking them as ints instead makes them constants of a traced graph, which is what
    we want: the channel count picks the 2x2 inverse, the frame count the windows of
    :func:`apply_wiener`, and no shape is ever computed from tensor values.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(size) for size in x.shape)


def _check_complex(x: Tensor, name: str) -> None:
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating point tensor, got {x.dtype}")
    if x.dim() < 1 or _shape(x)[-1] != 2:
        raise ValueError(
            f"{name} must have a trailing (re, im) axis of size 2, got shape {_shape(x)}"
        )


def _pack(re: Tensor, im: Tensor) -> Tensor:
    """Joins real and imaginary parts ``(...)`` into one ``(..., 2)`` tensor."""
    return torch.stack([re, im], dim=-1)


def complex_mul(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise product ``a * b``; shapes ``(..., 2)``, broadcast like ``torch.mul``."""
    ar, ai = a[..., 0], a[..., 1]
    br, bi = b[..., 0], b[..., 1]
    return _pack(ar * br - ai * bi, ar * bi + ai * br)


def complex_conj(a: Tensor) -> Tensor:
    """Complex conjugate of ``a`` ``(..., 2)``."""
    return _pack(a[..., 0], -a[..., 1])


def complex_abs2(a: Tensor) -> Tensor:
    """Squared modulus ``|a|^2``: ``(..., 2) -> (...)``."""
    return a[..., 0] * a[..., 0] + a[..., 1] * a[..., 1]


def complex_inv(a: Tensor) -> Tensor:
    """Element-wise reciprocal ``1 / a`` of ``(..., 2)``; zero gives inf/nan (no guard)."""
    return complex_conj(a) / complex_abs2(a)[..., None]


def complex_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product of complex matrices.

    Args:
        a: ``(..., N, K, 2)``.
        b: ``(..., K, M, 2)``; batch dimensions broadcast as in ``torch.matmul``.

    Returns:
        ``(..., N, M, 2)``.
    """
    ar, ai = a[..., 0], a[..., 1]
    br, bi = b[..., 0], b[..., 1]
    return _pack(ar @ br - ai @ bi, ar @ bi + ai @ br)


def complex_hermitian(a: Tensor) -> Tensor:
    """Conjugate transpose of complex matrices: ``(..., N, M, 2) -> (..., M, N, 2)``."""
    return complex_conj(a).transpose(-3, -2)


def complex_inverse_matrix(m: Tensor) -> Tensor:
    """Inverts 1x1 or 2x2 complex matrices in closed form.

    Singular matrices give inf/nan: callers regularise (the EM adds ``sqrt(eps) * I``).

    Args:
        m: ``(..., C, C, 2)`` with ``C`` in ``{1, 2}``.

    Returns:
        ``(..., C, C, 2)``, the inverses.
    """
    shape = _shape(m)
    if len(shape) < 3 or shape[-3] != shape[-2]:
        raise ValueError(f"expected square matrices (..., C, C, 2), got {shape}")
    size = shape[-2]
    if size == 1:
        return complex_inv(m)
    if size != 2:
        raise ValueError(f"only 1x1 and 2x2 matrices are supported, got {size}x{size}")
    a, b = m[..., 0, 0, :], m[..., 0, 1, :]
    c, d = m[..., 1, 0, :], m[..., 1, 1, :]
    inv_det = complex_inv(complex_mul(a, d) - complex_mul(b, c))
    adjugate = torch.stack(
        [
            torch.stack([d, -b], dim=-2),
            torch.stack([-c, a], dim=-2),
        ],
        dim=-3,
    )
    return complex_mul(adjugate, inv_det[..., None, None, :])


def unit_phasor(z: Tensor) -> Tensor:
    """``exp(i * angle(z))`` as ``(cos, sin)``, without ``atan2``.

    Computed as ``z / |z|`` after rescaling by ``max(|re|, |im|)``, so tiny (even
    subnormal) and huge values keep their exact phase instead of under/overflowing.
    An exact zero gets phase 0, i.e. ``(1, 0)``, as ``atan2(0, 0) = 0`` would give.

    Args:
        z: ``(..., 2)``.

    Returns:
        ``(..., 2)`` with unit modulus.
    """
    re, im = z[..., 0], z[..., 1]
    scale = torch.maximum(re.abs(), im.abs())
    is_zero = scale == 0
    one = torch.ones_like(scale)
    scale = torch.where(is_zero, one, scale)
    re = torch.where(is_zero, one, re / scale)
    im = im / scale
    modulus = torch.sqrt(re * re + im * im)
    return _pack(re / modulus, im / modulus)


def atan2(y: Tensor, x: Tensor) -> Tensor:
    """Element-wise angle of ``(x, y)`` in radians, in ``[-pi, pi]``, like ``torch.atan2``
    but built from ``atan`` and ``where`` (ONNX has no ``atan2`` op).

    The inputs are not modified. ``atan2(0, 0) = 0``; on the negative x axis the result
    is ``+pi`` (also for ``y = -0.0``, which ``torch.atan2`` maps to ``-pi``).

    Args:
        y: tensor of ordinates.
        x: tensor of abscissas, broadcastable with ``y``.
    """
    on_y_axis = x == 0
    safe_x = torch.where(on_y_axis, torch.ones_like(x), x)
    angle = torch.atan(y / safe_x)
    half_turn = torch.full_like(angle, math.pi)
    zero = torch.zeros_like(angle)
    angle = angle + torch.where((x < 0) & (y >= 0), half_turn, zero)
    angle = angle - torch.where((x < 0) & (y < 0), half_turn, zero)
    axis = torch.where(y > 0, half_turn / 2, torch.where(y < 0, -half_turn / 2, zero))
    return torch.where(on_y_axis, axis, angle)


# --------------------------------------------------------------------------------------
# EM refinement
# --------------------------------------------------------------------------------------


def _spatial_covariances(sources: Tensor, psd: Tensor, eps: float) -> Tensor:
    """Spatial covariance matrix of every source, weighted by its total power.

    ``R_j = sum_t y_j(t) y_j(t)^H / (eps + sum_t v_j(t))``.

    Args:
        sources: ``(F, J, C, T, 2)`` source STFTs.
        psd: ``(F, J, T)`` power spectral densities.

    Returns:
        ``(F, J, C, C, 2)``.
    """
    weight = eps + psd.sum(dim=-1)
    return complex_matmul(sources, complex_hermitian(sources)) / weight[..., None, None, None]


def _mixture_covariance(psd: Tensor, covs: Tensor, regularization: float) -> Tensor:
    """Model covariance of the mixture ``regularization * I + sum_j v_j(t) R_j``.

    Args:
        psd: ``(F, J, T)``.
        covs: ``(F, J, C, C, 2)``.

    Returns:
        ``(F, T, C, C, 2)``.
    """
    nb_bins, nb_sources, nb_channels = _shape(covs)[:3]
    flat = covs.reshape(nb_bins, nb_sources, nb_channels * nb_channels * 2)
    mix_cov = (psd.transpose(1, 2) @ flat).reshape(nb_bins, -1, nb_channels, nb_channels, 2)
    identity = torch.eye(nb_channels, dtype=covs.dtype, device=covs.device)
    diagonal = _pack(identity, torch.zeros_like(identity)) * regularization
    return mix_cov + diagonal


def _filter_mixture(mix: Tensor, psd: Tensor, covs: Tensor, eps: float) -> Tensor:
    """Multichannel Wiener filter of the mixture: ``y_j = v_j R_j Cxx^{-1} x``.

    Args:
        mix: ``(F, T, C, 2)``; psd: ``(F, J, T)``; covs: ``(F, J, C, C, 2)``.

    Returns:
        ``(F, J, C, T, 2)``.
    """
    inv_mix_cov = complex_inverse_matrix(_mixture_covariance(psd, covs, math.sqrt(eps)))
    # Cxx^{-1} x once for all sources: (F, T, C, 1, 2) -> (F, 1, C, T, 2).
    whitened = complex_matmul(inv_mix_cov, mix[..., None, :])
    whitened = whitened.squeeze(-2).transpose(1, 2)[:, None]
    return complex_matmul(covs, whitened) * psd[:, :, None, :, None]


def _em_step(
    sources: Tensor, mix: Tensor, eps: float, batch_size: tp.Optional[int] = None
) -> tp.Tuple[Tensor, Tensor, Tensor]:
    """One EM iteration in the internal layout.

    Re-estimates each source's PSD ``v_j`` and spatial covariance ``R_j`` from the
    current estimates, then filters the mixture again:
    ``y_j = v_j R_j Cxx^{-1} x`` with ``Cxx = sqrt(eps) I + sum_j v_j R_j``.

    Args:
        sources: ``(F, J, C, T, 2)`` current estimates.
        mix: ``(F, T, C, 2)`` mixture STFT.
        batch_size: filter the mixture this many frames at a time (bounds the memory of
            the per-frame matrices); ``None``: all frames at once.

    Returns:
        New estimates ``(F, J, C, T, 2)``, PSDs ``(F, J, T)`` and covariances
        ``(F, J, C, C, 2)`` (the latter two from the estimates given in).
    """
    psd = complex_abs2(sources).mean(dim=2)
    covs = _spatial_covariances(sources, psd, eps)
    nb_frames = _shape(mix)[1]
    if batch_size is None or batch_size >= nb_frames:
        return _filter_mixture(mix, psd, covs, eps), psd, covs
    parts = [
        _filter_mixture(
            mix[:, start : start + batch_size], psd[:, :, start : start + batch_size], covs, eps
        )
        for start in range(0, nb_frames, batch_size)
    ]
    new_sources = torch.cat(parts, dim=3)
    return new_sources, psd, covs


def expectation_maximization(
    y: Tensor,
    x: Tensor,
    iterations: int = 2,
    eps: float = 1e-10,
    batch_size: tp.Optional[int] = 200,
) -> tp.Tuple[Tensor, Tensor, Tensor]:
    """Refines source STFT estimates with the simplified multichannel EM algorithm.

    Each iteration re-estimates the local Gaussian model of every source (a PSD shared
    by the channels and a time-invariant spatial covariance matrix per bin) from the
    current estimates, then re-separates the mixture with the resulting multichannel
    Wiener filters. The input ``y`` is not modified.

    Args:
        y: ``(T, F, C, 2, J)`` initial source STFT estimates.
        x: ``(T, F, C, 2)`` mixture STFT; ``C`` must be 1 or 2.
        iterations: number of EM iterations (0 returns ``y`` unchanged).
        eps: regularisation: added to the covariance weights, and ``sqrt(eps)`` to the
            diagonal of the mixture covariance before inversion.
        batch_size: frames filtered together in each iteration (> 0), which bounds the
            memory of the per-frame matrices; the result does not depend on it.
            ``None``: all frames at once (what :func:`wiener` does: one graph op per
            step when exported).

    Returns:
        ``(y, v, R)``: refined estimates ``(T, F, C, 2, J)``, the PSDs ``(T, F, J)`` and
        the spatial covariances ``(F, C, C, 2, J)`` of the last iteration (zeros when
        ``iterations == 0``).
    """
    _check_complex(x, "x")
    x_shape, y_shape = _shape(x), _shape(y)
    if len(x_shape) != 4:
        raise ValueError(f"x must be (frames, bins, channels, 2), got {x_shape}")
    if len(y_shape) != 5 or y_shape[:4] != x_shape:
        raise ValueError(f"y must be {x_shape} + (sources,), got {y_shape}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    nb_frames, nb_bins, nb_channels = x_shape[:3]
    nb_sources = y_shape[-1]
    if iterations > 0 and nb_channels not in (1, 2):
        raise ValueError(f"the EM supports 1 or 2 channels, got {nb_channels}")

    sources = y.permute(1, 4, 2, 0, 3)  # (F, J, C, T, 2)
    mix = x.permute(1, 0, 2, 3)  # (F, T, C, 2)
    psd = y.new_zeros(nb_bins, nb_sources, nb_frames)
    covs = y.new_zeros(nb_bins, nb_sources, nb_channels, nb_channels, 2)
    for _ in range(iterations):
        sources, psd, covs = _em_step(sources, mix, eps, batch_size)
    return (
        sources.permute(3, 0, 2, 4, 1),
        psd.permute(2, 0, 1),
        covs.permute(0, 2, 3, 4, 1),
    )


# --------------------------------------------------------------------------------------
# Wiener filtering
# --------------------------------------------------------------------------------------


def _initial_estimates(targets: Tensor, mix: Tensor, softmask: bool, eps: float) -> Tensor:
    """``(T, F, C|1, J)`` magnitudes/powers + ``(T, F, C, 2)`` mix -> ``(T, F, C, 2, J)``."""
    if softmask:
        ratios = targets / (eps + targets.sum(dim=-1, keepdim=True))
        return mix[..., None] * ratios[..., None, :]
    return unit_phasor(mix)[..., None] * targets[..., None, :]


def wiener(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
) -> Tensor:
    """Multichannel Wiener filtering of a mixture given source spectrograms.

    1. Initial estimates: the source magnitudes with the mixture phase
       (``softmask=False``), or the mixture times each source's share of the summed
       spectrograms (``softmask=True``).
    2. With ``residual``, an extra source ``mix - sum(estimates)`` is appended.
    3. With ``iterations > 0``, the estimates are refined by
       :func:`expectation_maximization`, on data divided by
       ``max(1, max|mix| / scale_factor)`` for numerical stability.

    Args:
        targets_spectrograms: ``(T, F, C, J)`` nonnegative source spectrograms
            (magnitudes when ``softmask=False``); ``C`` may be 1 (shared by channels).
        mix_stft: ``(T, F, C, 2)`` mixture STFT, real with a trailing (re, im) axis.
        iterations: EM iterations (>= 0).
        softmask: how the initial estimates are built (see above).
        residual: append a residual source.
        scale_factor: sets the rescaling before the EM (> 0).
        eps: regularisation of the soft masks and the EM (>= 0).

    Returns:
        ``(T, F, C, 2, J)`` source STFTs (``J + 1`` sources with ``residual``), in the
        dtype of ``mix_stft``.

    Note:
        Matches open-unmix's ``wiener`` up to float rounding, with two deliberate
        differences: an exactly-zero mixture bin gets phase 0 *without* the mixture being
        modified (open-unmix writes a real part of 1 into the caller's tensor there,
        which then leaks into the residual and the EM), and the phase is exact in
        float64 (open-unmix adds a float32 pi, an error of ~1e-7).
        Memory is ``O(T * F * C * J)``: long inputs go through :func:`apply_wiener`,
        which filters fixed windows of frames.
    """
    _check_complex(mix_stft, "mix_stft")
    mix_shape, targets_shape = _shape(mix_stft), _shape(targets_spectrograms)
    if len(mix_shape) != 4:
        raise ValueError(f"mix_stft must be (frames, bins, channels, 2), got {mix_shape}")
    if len(targets_shape) != 4 or targets_spectrograms.is_complex():
        raise ValueError(
            "targets_spectrograms must be real (frames, bins, channels, sources), "
            f"got {targets_shape}"
        )
    frames, bins, channels = mix_shape[:3]
    if targets_shape[:2] != (frames, bins) or targets_shape[2] not in (1, channels):
        raise ValueError(
            f"targets_spectrograms {targets_shape} does not match mix_stft {mix_shape}"
        )
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not scale_factor > 0:
        raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")

    targets = targets_spectrograms.to(mix_stft.dtype)
    y = _initial_estimates(targets, mix_stft, softmask, eps)
    if residual:
        y = torch.cat([y, mix_stft[..., None] - y.sum(dim=-1, keepdim=True)], dim=-1)
    if iterations == 0:
        return y

    max_abs = torch.clamp(complex_abs2(mix_stft).max().sqrt() / scale_factor, min=1.0)
    y = expectation_maximization(
        y / max_abs, mix_stft / max_abs, iterations, eps=eps, batch_size=None
    )[0]
    return y * max_abs


def apply_wiener(
    mag_out: Tensor,
    mix_stft: Tensor,
    niters: int,
    residual: bool = False,
    window: int = 300,
) -> Tensor:
    """Demucs-level Wiener filtering: :func:`wiener` per batch item, in time windows.

    Frames are processed in independent windows of ``window`` frames (the EM's spatial
    covariances are estimated per window), as upstream Demucs does.

    Args:
        mag_out: ``(B, S, C, Fq, T)`` estimated source magnitudes.
        mix_stft: ``(B, C, Fq, T, 2)`` mixture STFT, real with a trailing (re, im) axis.
        niters: EM iterations (>= 0; 0 just applies the mixture phase).
        residual: estimate an extra residual source during filtering, then drop it.
        window: frames per window (> 0).

    Returns:
        ``(B, S, C, Fq, T, 2)`` source STFTs in the dtype of ``mix_stft``.
    """
    _check_complex(mix_stft, "mix_stft")
    mag_shape, mix_shape = _shape(mag_out), _shape(mix_stft)
    if len(mag_shape) != 5 or len(mix_shape) != 5:
        raise ValueError(
            f"expected mag_out (B, S, C, Fq, T) and mix_stft (B, C, Fq, T, 2), "
            f"got {mag_shape} and {mix_shape}"
        )
    batch, nb_sources, channels, bins, frames = mag_shape
    if mix_shape != (batch, channels, bins, frames, 2):
        raise ValueError(f"mix_stft {mix_shape} does not match mag_out {mag_shape}")
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
    if niters < 0:
        raise ValueError(f"niters must be >= 0, got {niters}")

    mags = mag_out.permute(0, 4, 3, 2, 1)  # (B, T, Fq, C, S)
    mix = mix_stft.permute(0, 3, 2, 1, 4)  # (B, T, Fq, C, 2)
    items = []
    for index in range(batch):
        chunks = [
            wiener(
                mags[index, start : start + window],
                mix[index, start : start + window],
                niters,
                residual=residual,
            )
            for start in range(0, frames, window)
        ]
        items.append(torch.cat(chunks, dim=0))  # (T, Fq, C, 2, S[+1])
    out = torch.stack(items, dim=0).permute(0, 5, 3, 2, 1, 4)  # (B, S[+1], C, Fq, T, 2)
    return out[:, :nb_sources].contiguous()
