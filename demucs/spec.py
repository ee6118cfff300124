"""Short-time Fourier transforms for Demucs, with two interchangeable backends.

* ``torch`` backend (:func:`spectro` / :func:`ispectro`): ``torch.stft`` / ``torch.istft``
  on complex tensors. Fast in eager mode, but no ONNX exporter accepts complex tensors.
* ``conv`` backend (:func:`conv_spectro` / :func:`conv_ispectro`): the same transforms
  written as a ``conv1d`` (analysis) and a ``conv_transpose1d`` (synthesis) over a
  windowed DFT basis. Everything is real: a complex spectrogram is a real tensor with a
  trailing ``(..., 2)`` (real, imaginary) axis. Exports to ONNX with standard operators.

Both compute the *normalized*, *centered* (reflect padded) STFT with a periodic Hann
window, as upstream Demucs does. The DFT bases are never parameters or persistent
buffers: they are built from ``n_fft`` alone (see :func:`dft_bases`), so checkpoints
are identical whichever backend is used.

:class:`SpectralMixin` gives HTDemucs and HDemucs the four spectrogram methods
``_spec``, ``_ispec``, ``_magnitude``, ``_mask`` for both backends, switched by the
model attribute ``use_conv_stft``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import typing as tp

import torch
from torch.nn import functional as F

from .utils import is_exporting

Tensor = torch.Tensor


# ---------------------------------------------------------------------------
# torch backend (complex tensors)
# ---------------------------------------------------------------------------


def spectro(
    x: Tensor, n_fft: int = 512, hop_length: tp.Optional[int] = None, pad: int = 0
) -> Tensor:
    """Normalized centered STFT with ``torch.stft``.

    Args:
        x: signal, shape ``(*, L)``.
        n_fft: window length; the FFT size is ``n_fft * (1 + pad)``.
        hop_length: hop in samples, default ``n_fft // 4``.
    Returns:
        complex tensor ``(*, n_fft * (1 + pad) // 2 + 1, frames)``.
    """
    *other, length = x.shape
    x = x.reshape(-1, length)
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    z = torch.stft(
        x,
        n_fft * (1 + pad),
        hop_length or n_fft // 4,
        window=window,
        win_length=n_fft,
        normalized=True,
        center=True,
        return_complex=True,
        pad_mode="reflect",
    )
    return z.view(*other, z.shape[-2], z.shape[-1])


def ispectro(
    z: Tensor, hop_length: tp.Optional[int] = None, length: tp.Optional[int] = None, pad: int = 0
) -> Tensor:
    """Inverse of :func:`spectro` with ``torch.istft``.

    Args:
        z: complex spectrogram ``(*, freqs, frames)``.
        length: output length in samples.
    Returns:
        real signal ``(*, length)``.
    """
    *other, freqs, frames = z.shape
    n_fft = 2 * freqs - 2
    win_length = n_fft // (1 + pad)
    window = torch.hann_window(win_length, device=z.device, dtype=z.real.dtype)
    x = torch.istft(
        z.reshape(-1, freqs, frames),
        n_fft,
        hop_length,
        window=window,
        win_length=win_length,
        normalized=True,
        length=length,
        center=True,
    )
    return x.view(*other, x.shape[-1])


# ---------------------------------------------------------------------------
# conv backend (real tensors, trailing (..., 2) axis)
# ---------------------------------------------------------------------------

#: Implementations of the conv backend (:func:`conv_spectro`, :func:`conv_ispectro`).
STFT_IMPLS = ("factored", "conv")
#: ``"factored"``: frames cut from hop-blocks and a one-level Cooley-Tukey DFT (two
#: small MatMuls and a twiddle product): ~16x fewer operations than ``"conv"``
#: (``conv1d`` / ``conv_transpose1d`` over the ``n_fft``-wide windowed DFT basis), and
#: no ``n_fft x n_fft`` basis in memory or in an exported graph.
DEFAULT_STFT_IMPL = "factored"


def _phase_index(n_fft: int, n_bins: int, device: torch.device) -> Tensor:
    """``(k * n) mod n_fft`` for bins ``k < n_bins`` and samples ``n < n_fft``, int64.

    Reducing the product modulo ``n_fft`` *before* going to floating point keeps the
    angle in ``[0, 2 pi)``: float32 angles of up to ``2 pi * n_fft / 2`` would lose
    about three decimal digits and make the transform visibly inexact.
    """
    k = torch.arange(n_bins, device=device, dtype=torch.int64)
    n = torch.arange(n_fft, device=device, dtype=torch.int64)
    return torch.remainder(k[:, None] * n[None, :], n_fft)


def _hann(n_fft: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Periodic Hann window of length ``n_fft`` (same as ``torch.hann_window``)."""
    n = torch.arange(n_fft, device=device, dtype=dtype)
    return 0.5 - 0.5 * torch.cos(n * (2 * math.pi / n_fft))


def _build_bases(
    n_fft: int, n_bins: int, device: torch.device, dtype: torch.dtype
) -> tp.Tuple[Tensor, Tensor]:
    """Analysis and synthesis kernels for the first ``n_bins`` DFT bins.

    Returns:
        analysis ``(2 * n_bins, 1, n_fft)``: rows ``window * cos`` then ``-window * sin``,
            scaled by ``1 / sqrt(n_fft)`` (normalized STFT);
        synthesis ``(2 * n_bins, 1, n_fft)``: the one-sided inverse DFT (bins strictly
            between DC and Nyquist counted twice; the imaginary parts of DC and Nyquist
            ignored, as ``irfft`` does), times the window, scaled by ``1 / sqrt(n_fft)``.
    """
    # Sizes derived from tensor shapes arrive as traced 0-dim tensors under jit tracing:
    # make them Python ints so the bases have static shapes (Conv needs a known kernel).
    n_fft, n_bins = int(n_fft), int(n_bins)
    # Work in float64 when building eagerly; exported graphs compute in float32 but with
    # the reduced angle above, which is exact to float32 rounding.
    work = dtype if is_exporting() else torch.float64
    angle = _phase_index(n_fft, n_bins, device).to(work) * (2 * math.pi / n_fft)
    cos, sin = torch.cos(angle), torch.sin(angle)
    window = _hann(n_fft, device, work)
    scale = 1.0 / math.sqrt(n_fft)
    analysis = torch.cat([cos * window, -sin * window], dim=0) * scale

    k = torch.arange(n_bins, device=device)
    edge = (k == 0) | (k == n_fft // 2)
    weight = torch.where(edge, 1.0, 2.0).to(work)[:, None] * scale
    real_part = cos * weight * window
    imag_part = -sin * weight * window * (~edge).to(work)[:, None]
    synthesis = torch.cat([real_part, imag_part], dim=0)
    return analysis.to(dtype)[:, None, :], synthesis.to(dtype)[:, None, :]


@functools.lru_cache(maxsize=8)
def _cached_bases(
    n_fft: int, n_bins: int, device: torch.device, dtype: torch.dtype
) -> tp.Tuple[Tensor, Tensor]:
    return _build_bases(n_fft, n_bins, device, dtype)


def dft_bases(
    n_fft: int, n_bins: int, device: torch.device, dtype: torch.dtype
) -> tp.Tuple[Tensor, Tensor]:
    """The ``(analysis, synthesis)`` kernels, see :func:`_build_bases`.

    Eagerly they are cached per (size, device, dtype). While exporting they are rebuilt
    from ``arange``/``cos``/``sin`` so the graph computes them instead of storing them.
    """
    n_fft, n_bins = int(n_fft), int(n_bins)
    if is_exporting():
        return _build_bases(n_fft, n_bins, device, dtype)
    return _cached_bases(n_fft, n_bins, torch.device(device), dtype)


def _resolve_impl(impl: tp.Optional[str], n_fft: int, hop: int) -> str:
    """``impl`` or :data:`DEFAULT_STFT_IMPL`, checked; ``"conv"`` where ``"factored"``
    cannot cut frames from hop-blocks (``n_fft`` not a multiple of ``hop``)."""
    impl = impl or DEFAULT_STFT_IMPL
    if impl not in STFT_IMPLS:
        raise ValueError(f"unknown STFT implementation {impl!r}, expected one of {STFT_IMPLS}")
    if impl == "factored" and n_fft % hop:
        return "conv"
    return impl


def planar_spectro(
    x: Tensor, n_fft: int, hop: int, n_bins: int, impl: tp.Optional[str] = None
) -> Tensor:
    """:func:`conv_spectro` of ``x`` ``(N, L)`` in the planar layout ``(N, 2, n_bins, T)``.

    Both implementations produce this layout without a transpose (the real and
    imaginary planes are the output channels of the convolution / rows of the last
    MatMul); :class:`SpectralMixin` uses it directly.
    """
    n_fft, hop, n_bins = int(n_fft), int(hop), int(n_bins)
    if _resolve_impl(impl, n_fft, hop) == "factored":
        return _factored_spectro(x, n_fft, hop, n_bins)
    padded = F.pad(x[:, None], (n_fft // 2, n_fft // 2), mode="reflect")
    analysis, _ = dft_bases(n_fft, n_bins, x.device, x.dtype)
    z = F.conv1d(padded, analysis, stride=hop)  # (N, 2 * bins, T)
    return z.reshape(z.shape[0], 2, n_bins, z.shape[-1])


def planar_ispectro(
    spec: Tensor,
    n_fft: int,
    hop: int,
    length: tp.Optional[int] = None,
    impl: tp.Optional[str] = None,
) -> Tensor:
    """:func:`conv_ispectro` of a planar spectrogram ``(N, 2, bins, T)`` -> ``(N, length)``."""
    _, _, bins, n_frames = spec.shape
    n_fft, hop, n_frames = int(n_fft), int(hop), int(n_frames)
    if _resolve_impl(impl, n_fft, hop) == "factored":
        out = _factored_ispectro(spec, n_fft, hop)  # (N, hop * (T - 1) + n_fft)
    else:
        _, synthesis = dft_bases(n_fft, bins, spec.device, spec.dtype)
        frames = F.conv_transpose1d(
            spec.reshape(spec.shape[0], 2 * bins, n_frames), synthesis, stride=hop
        )  # (N, 1, hop*(T-1)+n_fft)
        out = frames[:, 0] / _window_envelope(n_fft, hop, n_frames, spec.device, spec.dtype)
    start = n_fft // 2
    target = hop * (n_frames - 1) if length is None else int(length)
    available = out.shape[-1] - start
    out = out[:, start : start + min(available, target)]
    if target > available:
        out = F.pad(out, (0, target - available))
    return out


def conv_spectro(
    x: Tensor,
    n_fft: int = 512,
    hop_length: tp.Optional[int] = None,
    n_bins: tp.Optional[int] = None,
    impl: tp.Optional[str] = None,
) -> Tensor:
    """Normalized centered STFT with real operators; same values as :func:`spectro`.

    Args:
        x: signal ``(*, L)`` with ``L > n_fft // 2`` (reflect padding).
        n_bins: how many frequency bins to compute, default all ``n_fft // 2 + 1``.
        impl: ``"factored"`` or ``"conv"``, default :data:`DEFAULT_STFT_IMPL`.
    Returns:
        real tensor ``(*, n_bins, frames, 2)`` with ``frames = L // hop + 1``.
    """
    hop = hop_length or n_fft // 4
    bins = n_fft // 2 + 1 if n_bins is None else n_bins
    *other, length = x.shape
    z = planar_spectro(x.reshape(-1, length), n_fft, hop, bins, impl)
    return z.permute(0, 2, 3, 1).reshape(*other, bins, z.shape[-1], 2)


def conv_ispectro(
    z: Tensor,
    hop_length: tp.Optional[int] = None,
    length: tp.Optional[int] = None,
    n_fft: tp.Optional[int] = None,
    impl: tp.Optional[str] = None,
) -> Tensor:
    """Inverse of :func:`conv_spectro` by windowed overlap-add.

    Same values as :func:`ispectro` (``torch.istft``): overlap-added windowed frames
    divided by the overlap-added squared window, centre padding removed.

    Args:
        z: real spectrogram ``(*, bins, frames, 2)``. ``bins`` may stop short of the
            Nyquist bin (missing bins are taken as zero), in which case pass ``n_fft``.
        hop_length: hop in samples, default ``n_fft // 4``.
        length: output length; default ``hop * (frames - 1)``.
        impl: ``"factored"`` or ``"conv"``, default :data:`DEFAULT_STFT_IMPL`.
    Returns:
        real signal ``(*, length)``.
    """
    *other, bins, n_frames, two = z.shape
    if two != 2:
        raise ValueError(f"expected a trailing (real, imag) axis of size 2, got {two}")
    n_fft = n_fft or 2 * bins - 2
    hop = hop_length or n_fft // 4
    spec = z.reshape(-1, bins, n_frames, 2).permute(0, 3, 1, 2)
    out = planar_ispectro(spec, n_fft, hop, length, impl)
    return out.reshape(*other, out.shape[-1])


def _window_envelope(
    n_fft: int, hop: int, n_frames: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Overlap-added squared window ``(hop * (n_frames - 1) + n_fft,)``.

    Samples that no window covers would divide by ~0; torch.istft refuses such
    windows, while the Hann window with ``hop <= n_fft / 2`` never has them apart
    from the outermost samples, which the centre trim removes.
    """
    n_fft, hop, n_frames = int(n_fft), int(hop), int(n_frames)  # static under tracing
    window = _hann(n_fft, device, dtype)
    ones = torch.ones(1, 1, n_frames, device=device, dtype=dtype)
    env = F.conv_transpose1d(ones, (window * window)[None, None, :], stride=hop)[0, 0]
    return torch.where(env > 1e-11, env, torch.ones_like(env))


def window_envelope(
    n_fft: int, hop: int, n_frames: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Overlap-added squared Hann window that the inverse STFT divides by (the exporter
    recognises it in traced graphs)."""
    return _window_envelope(n_fft, hop, n_frames, device, dtype)


# ---------------------------------------------------------------------------
# conv backend, "factored" implementation: frames cut from hop-blocks, one level of
# Cooley-Tukey (two small MatMuls and a twiddle product), frames kept last
# ---------------------------------------------------------------------------


def _factor(n_fft: int, hop: int) -> tp.Tuple[int, int]:
    """``(n1, n2)``, ``n1 * n2 == n_fft``, ``n2`` the largest divisor of ``hop`` that is
    ``<= sqrt(n_fft)`` (``n2`` must divide ``hop`` for the framing, see
    :func:`_frames_planar`)."""
    n2 = max(d for d in range(1, math.isqrt(n_fft) + 1) if hop % d == 0)
    return n_fft // n2, n2


def _unit_circle(a: Tensor, b: Tensor, period: int) -> tp.Tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of ``2 pi a b / period`` (outer product), float64.

    ``a * b`` is reduced modulo ``period`` in int64 first, so the angle stays in
    ``[0, 2 pi)``: exact to float64 rounding.
    """
    phase = torch.remainder(a[:, None] * b[None, :], period).to(torch.float64)
    angle = phase * (2 * math.pi / period)
    return torch.cos(angle), torch.sin(angle)


class FactoredBases(tp.NamedTuple):
    """Small matrices of the factored DFT of size ``n_fft = n1 * n2``.

    Sample ``n = n2 * a + b`` (``a < n1``, ``b < n2``), bin ``k = n1 * k2 + k1``
    (``k1 < n1``, ``k2 < k2s = ceil(bins / n1)``). ``(re, im)`` pairs index as ``j``.
    Analysis, on frames laid out ``(b, a, T)``::

        first    (2 n1, n1)       [(j, k1), a]: cos, -sin of 2 pi a k1 / n1
        twiddle  (2, n2, n1, 1)   cos, sin of 2 pi b k1 / n_fft
        last     (2 k2s, 2 n2)    [(j', k2), (b, j)]: the length-n2 DFT of (re, im)
        window   (n2, n1, 1)      Hann window / sqrt(n_fft) at n2 * a + b
        weight   (1,)             unused

    Synthesis uses the transposes: ``last`` ``(2 n2, 2 k2s)`` [(b, j), (j', k2)] (inverse
    DFT over ``k2``), ``first`` ``(n1, 2 n1)`` [a, (j, k1)] (real part of the inverse
    DFT over ``k1``) and ``weight`` ``(2, n1 * k2s, 1)``: the one-sided factors (2; 1
    for the real part and 0 for the imaginary part of DC and Nyquist).
    """

    first: Tensor
    twiddle: Tensor
    last: Tensor
    window: Tensor
    weight: Tensor


def _build_factored(
    n_fft: int, hop: int, n_bins: int, inverse: bool, device: torch.device, dtype: torch.dtype
) -> FactoredBases:
    """Builds :class:`FactoredBases` in float64, returned in ``dtype``."""
    n1, n2 = _factor(n_fft, hop)
    k2s = -(-n_bins // n1)
    ints = functools.partial(torch.arange, dtype=torch.int64, device=device)
    cos1, sin1 = _unit_circle(ints(n1), ints(n1), n1)  # symmetric (k1, a)
    twiddle = torch.stack(_unit_circle(ints(n2), ints(n1), n_fft))[..., None]
    cos2, sin2 = _unit_circle(ints(k2s), ints(n2), n2)  # (k2, b)
    # Rows (j', k2), columns (b, j): X_re = sum B_re cos + B_im sin,
    # X_im = sum B_im cos - B_re sin (a length-n2 DFT of complex input).
    last = torch.stack(
        [torch.stack([cos2, sin2], dim=-1), torch.stack([-sin2, cos2], dim=-1)]
    ).reshape(2 * k2s, 2 * n2)
    window = _hann(n_fft, device, torch.float64).reshape(n1, n2).T[..., None]
    window = window / math.sqrt(n_fft)
    weight = torch.ones(1, dtype=torch.float64, device=device)
    first = torch.cat([cos1, -sin1], dim=0)  # ((j, k1), a)
    if inverse:
        first = first.T  # (a, (j, k1))
        last = last.T  # conjugate transpose
        k = ints(n1 * k2s)
        edge = (k == 0) | (k == n_fft // 2)
        weight = torch.stack([torch.where(edge, 1.0, 2.0), torch.where(edge, 0.0, 2.0)]).to(
            torch.float64
        )[..., None]
    parts = (first, twiddle, last, window, weight)
    return FactoredBases(*(t.to(dtype).contiguous() for t in parts))


@functools.lru_cache(maxsize=16)
def _cached_factored(
    n_fft: int, hop: int, n_bins: int, inverse: bool, device: torch.device, dtype: torch.dtype
) -> FactoredBases:
    return _build_factored(n_fft, hop, n_bins, inverse, device, dtype)


def factored_bases(
    n_fft: int, hop: int, n_bins: int, inverse: bool, device: torch.device, dtype: torch.dtype
) -> FactoredBases:
    """:class:`FactoredBases`, cached per size, device and dtype.

    ``~8 n_fft + 8 n1 k2s`` values (50 K floats for ``n_fft = 4096``, either
    direction): exported graphs store them as small constants.
    """
    return _cached_factored(
        int(n_fft), int(hop), int(n_bins), bool(inverse), torch.device(device), dtype
    )


def _twiddle(z: Tensor, twiddle: Tensor, sign: float) -> Tensor:
    """``z * exp(sign * i * theta)`` for ``z`` ``(N, n2, 2, n1, T)``, ``(re, im)`` on axis 2,
    with ``twiddle = (cos theta, sin theta)`` ``(2, n2, n1, 1)``."""
    re, im = z[:, :, 0], z[:, :, 1]
    cos, sin = twiddle[0], twiddle[1] * sign
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=2)


def _frames_planar(x: Tensor, n_fft: int, hop: int, n2: int, n_frames: int) -> Tensor:
    """Frames of ``x`` ``(N, >= hop * (n_frames - 1) + n_fft)`` as ``(N, n2, n1, T)``.

    Element ``[b, a, t]`` is sample ``n2 * a + b`` of frame ``t``. With ``n_fft = r hop``
    a frame is hop-blocks ``t .. t + r - 1``: the signal is cut into blocks of ``hop``
    (each ``hop / n2`` rows of ``n2``), transposed once (frames last), and ``r``
    shifted views are concatenated. No convolution, no gather.
    """
    r, rows = n_fft // hop, hop // n2
    blocks = x[:, : (n_frames + r - 1) * hop].reshape(x.shape[0], n_frames + r - 1, rows, n2)
    blocks = blocks.permute(0, 3, 2, 1)  # (N, n2, rows, blocks)
    return torch.cat([blocks[..., j : j + n_frames] for j in range(r)], dim=2)


def _overlap_add_planar(frames: Tensor, hop: int) -> Tensor:
    """Reverse of :func:`_frames_planar`: ``(N, n2, n1, T)`` -> ``(N, T + r - 1, hop)``.

    Each frame is split into its ``r`` hop-blocks; block ``j`` is shifted by ``j``
    along the frame axis (padding) and the blocks are summed.
    """
    n, n2, n1, n_frames = frames.shape
    rows = hop // n2
    r = n1 // rows
    blocks = frames.reshape(n, n2, r, rows, n_frames)
    out = F.pad(blocks[:, :, 0], (0, r - 1))
    for j in range(1, r):
        out = out + F.pad(blocks[:, :, j], (j, r - 1 - j))
    return out.permute(0, 3, 2, 1).reshape(n, n_frames + r - 1, hop)


@functools.lru_cache(maxsize=16)
def _inverse_envelope(
    n_fft: int, hop: int, n_frames: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``1 / envelope`` (see :func:`_window_envelope`) as hop-blocks ``(T + r - 1, hop)``."""
    env = _window_envelope(n_fft, hop, n_frames, device, torch.float64)
    return (1.0 / env).to(dtype).reshape(-1, hop)


def _divide_by_envelope(out: Tensor, n_fft: int, hop: int) -> Tensor:
    """Overlap-added blocks ``(N, T + r - 1, hop)`` divided by the squared-window envelope.

    Away from the ends the envelope is the same in every block, so only ``2 r - 1``
    distinct blocks are used (``r = n_fft // hop``): the first and last ``r - 1`` and
    one middle block broadcast over the rest. An exported graph stores
    ``(2 r - 1) hop`` values, not the whole envelope.
    """
    r = n_fft // hop
    n_frames = int(out.shape[1]) - r + 1
    if n_frames < 2 * r - 1:  # too short to have a periodic part: the whole envelope
        return out * _inverse_envelope(n_fft, hop, n_frames, out.device, out.dtype)
    inverse = _inverse_envelope(n_fft, hop, 2 * r - 1, out.device, out.dtype)
    head, middle, tail = inverse[: r - 1], inverse[r - 1 : r], inverse[2 * r - 1 :]
    return torch.cat(
        [out[:, : r - 1] * head, out[:, r - 1 : n_frames] * middle, out[:, n_frames:] * tail], dim=1
    )


def _factored_spectro(x: Tensor, n_fft: int, hop: int, bins: int) -> Tensor:
    """:func:`planar_spectro` with the factored DFT: ``(N, L)`` -> ``(N, 2, bins, T)``."""
    bases = factored_bases(n_fft, hop, bins, False, x.device, x.dtype)
    n2, n1 = bases.window.shape[:2]
    n_frames = int(x.shape[-1]) // hop + 1
    padded = F.pad(x[:, None], (n_fft // 2, n_fft // 2), mode="reflect")[:, 0]
    frames = _frames_planar(padded, n_fft, hop, n2, n_frames) * bases.window
    a = torch.matmul(bases.first, frames)  # (N, n2, (j, k1), T)
    b = _twiddle(a.reshape(-1, n2, 2, n1, n_frames), bases.twiddle, -1.0)
    z = torch.matmul(bases.last, b.reshape(-1, 2 * n2, n1 * n_frames))  # (N, (j, k2), (k1, T))
    return z.reshape(-1, 2, z.shape[1] // 2 * n1, n_frames)[:, :, :bins]


def _factored_ispectro(spec: Tensor, n_fft: int, hop: int) -> Tensor:
    """Inverse of :func:`_factored_spectro` before the centre trim.

    ``spec`` ``(N, 2, bins, T)`` -> ``(N, hop * (T - 1) + n_fft)``: windowed frames,
    overlap-added and divided by the squared-window envelope.
    """
    _, _, bins, n_frames = spec.shape
    bases = factored_bases(n_fft, hop, bins, True, spec.device, spec.dtype)
    n2, n1 = bases.window.shape[:2]
    padded_bins = bases.weight.shape[1]
    if padded_bins != bins:
        spec = F.pad(spec, (0, 0, 0, padded_bins - bins))
    spec = (spec * bases.weight).reshape(-1, 2 * padded_bins // n1, n1 * n_frames)
    d = torch.matmul(bases.last, spec)  # (N, (b, j), (k1, T))
    e = _twiddle(d.reshape(-1, n2, 2, n1, n_frames), bases.twiddle, 1.0)
    frames = torch.matmul(bases.first, e.reshape(-1, n2, 2 * n1, n_frames))  # (N, b, a, T)
    out = _overlap_add_planar(frames * bases.window, hop)
    return _divide_by_envelope(out, n_fft, hop).reshape(out.shape[0], -1)


# ---------------------------------------------------------------------------
# Model-level spectrogram methods shared by HTDemucs and HDemucs
# ---------------------------------------------------------------------------


def as_real(z: Tensor) -> Tensor:
    """Complex ``(*)`` -> real ``(*, 2)``; real ``(*, 2)`` passes through."""
    return torch.view_as_real(z) if z.is_complex() else z


def _planar_to_trailing(z: Tensor) -> Tensor:
    """``(*, 2, F, T)`` -> ``(*, F, T, 2)`` (positive axes: the TorchScript exporter
    mishandles negative ones in ``movedim``)."""
    rank = z.dim()
    return z.permute(*range(rank - 3), rank - 2, rank - 1, rank - 3)


def _trailing_to_planar(z: Tensor) -> Tensor:
    """``(*, F, T, 2)`` -> ``(*, 2, F, T)``, the inverse of :func:`_planar_to_trailing`."""
    rank = z.dim()
    return z.permute(*range(rank - 3), rank - 1, rank - 3, rank - 2)


def _float32_stft(x: Tensor) -> tp.ContextManager[None]:
    """Autocast off for the conv backend's transforms, which stay float32 under
    ``demucs.precision`` (``torch.stft`` is on autocast's float32 list by itself).
    A no-op outside autocast: eager float32 runs and exported graphs are unchanged."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class SpectralMixin:
    """``_spec``, ``_ispec``, ``_magnitude``, ``_mask`` for both STFT backends.

    The host model provides ``nfft``, ``hop_length``, ``cac``, ``wiener_iters``,
    ``end_iters``, ``wiener_residual`` and ``training``; optionally ``hybrid`` and
    ``hybrid_old`` (HDemucs; HTDemucs is always hybrid) and ``use_conv_stft``
    (default False). Shapes below: B batch, C audio channels, S sources,
    Fq = nfft // 2 frequency bins (the Nyquist bin is dropped), T frames.

    With the torch backend spectrograms are complex ``(B, C, Fq, T)``; with the conv
    backend they are real ``(B, C, Fq, T, 2)``, computed in the planar layout
    ``(B, C, 2, Fq, T)`` (:func:`planar_spectro`) and moved there by a permutation
    that cancels, in an exported graph, with the one of ``_magnitude`` (and likewise
    ``_mask`` -> ``_ispec``): no Transpose of the spectrogram is left.

    ``stft_impl`` selects the conv backend's implementation (``"factored"`` or
    ``"conv"``, see :data:`STFT_IMPLS`); ``None`` means :data:`DEFAULT_STFT_IMPL`.
    """

    use_conv_stft: bool = False
    stft_impl: tp.Optional[str] = None
    if tp.TYPE_CHECKING:  # provided by the host model
        nfft: int
        hop_length: int
        cac: bool
        wiener_iters: int
        end_iters: int
        wiener_residual: bool
        training: bool

    def _is_hybrid(self) -> bool:
        return getattr(self, "hybrid", True)

    def _hybrid_pad(self) -> bool:
        return not getattr(self, "hybrid_old", False)

    def _spec(self, x: Tensor) -> Tensor:
        """Spectrogram of ``x`` (B, C, L), framed so that T = ceil(L / hop) in hybrid mode."""
        hop, nfft = self.hop_length, self.nfft
        le = 0
        if self._is_hybrid():
            if hop != nfft // 4:
                raise ValueError(
                    f"hybrid models need hop_length == nfft // 4, got {hop} and {nfft}"
                )
            le = (x.shape[-1] + hop - 1) // hop
            pad = hop // 2 * 3
            mode = "reflect" if self._hybrid_pad() else "constant"
            x = pad1d(x, (pad, pad + le * hop - x.shape[-1]), mode=mode)
        if self.use_conv_stft:
            *other, length = x.shape
            with _float32_stft(x):
                z = planar_spectro(x.reshape(-1, length), nfft, hop, nfft // 2, self.stft_impl)
        else:
            z = spectro(x, nfft, hop)[..., :-1, :]
        if self._is_hybrid():
            z = z.narrow(-1, 2, le)
        if self.use_conv_stft:
            z = _planar_to_trailing(z.reshape(*other, *z.shape[1:]))  # (*, Fq, T, 2)
        return z

    def _ispec(self, z: Tensor, length: int, scale: int = 0) -> Tensor:
        """Signal ``(*, length)`` from a spectrogram as returned by ``_spec``/``_mask``."""
        hop = self.hop_length // (4**scale)
        conv = self.use_conv_stft and not z.is_complex()
        other = z.shape[:-3] if conv else z.shape[:-2]
        if conv:
            # (*, Fq, T, 2) -> planar (N, 2, Fq, T); the dropped Nyquist bin is
            # implicit (zero).
            n_fft = 2 * z.shape[-3]
            z = _trailing_to_planar(z)
            z = z.reshape(-1, *z.shape[-3:])
        else:
            z = F.pad(z, (0, 0, 0, 1))
        if self._is_hybrid():
            z = F.pad(z, (2, 2))
        if not self._is_hybrid():
            if not conv:
                return ispectro(z, hop, length)
            with _float32_stft(z):
                return planar_ispectro(z, n_fft, hop, length, self.stft_impl).reshape(
                    *other, length
                )
        pad = hop // 2 * 3
        le = hop * ((length + hop - 1) // hop)
        if self._hybrid_pad():
            le += 2 * pad
        if conv:
            with _float32_stft(z):
                x = planar_ispectro(z, n_fft, hop, le, self.stft_impl).reshape(*other, le)
        else:
            x = ispectro(z, hop, length=le)
        start = pad if self._hybrid_pad() else 0
        return x[..., start : start + length]

    def _magnitude(self, z: Tensor) -> Tensor:
        """Network input (B, C', Fq, T): real/imag as channels (cac, C' = 2C) or |z|."""
        if self.cac:
            real = as_real(z)
            B, C, Fq, T, _ = real.shape
            return real.permute(0, 1, 4, 2, 3).reshape(B, C * 2, Fq, T)
        if z.is_complex():
            return z.abs()
        return torch.sqrt(z[..., 0] ** 2 + z[..., 1] ** 2)

    def _mask(self, z: Tensor, m: Tensor) -> Tensor:
        """Source spectrograms from the network output ``m`` (B, S, C', Fq, T).

        cac: ``m`` holds the spectrograms themselves (``z`` unused). Otherwise ``m`` is
        a magnitude estimate combined with the mixture ``z`` by Wiener filtering
        (``wiener_iters >= 0``) or by the mixture phase (``wiener_iters < 0``).
        Returns complex (B, S, C, Fq, T) (torch backend) or real (B, S, C, Fq, T, 2).
        """
        if self.cac:
            B, S, _, Fq, T = m.shape
            out = m.view(B, S, -1, 2, Fq, T).permute(0, 1, 2, 4, 5, 3)
            return out if self.use_conv_stft else torch.view_as_complex(out.contiguous())
        niters = self.end_iters if self.training else self.wiener_iters
        if niters < 0:
            return self._phase_mask(z, m)
        from .wiener import apply_wiener

        out = apply_wiener(m, as_real(z), niters, self.wiener_residual)
        return out if self.use_conv_stft else torch.view_as_complex(out.contiguous())

    def _phase_mask(self, z: Tensor, m: Tensor) -> Tensor:
        """Mixture phase times estimated magnitude ``m`` (B, S, C, Fq, T)."""
        if z.is_complex():
            z = z[:, None]
            return z / (1e-8 + z.abs()) * m
        z = z[:, None]
        norm = torch.sqrt(z[..., 0] ** 2 + z[..., 1] ** 2)
        return z / (1e-8 + norm)[..., None] * m[..., None]


def pad1d(
    x: Tensor, paddings: tp.Tuple[int, int], mode: str = "constant", value: float = 0.0
) -> Tensor:
    """``F.pad`` on the last axis that also allows reflect padding wider than the input.

    Reflect padding needs ``pad < length``; for shorter inputs the signal is first
    zero-extended so the reflection is defined (upstream Demucs behaviour).
    """
    left, right = paddings
    length = x.shape[-1]
    if mode == "reflect":
        max_pad = max(left, right)
        if length <= max_pad:
            extra = max_pad - length + 1
            extra_right = min(right, extra)
            extra_left = extra - extra_right
            x = F.pad(x, (extra_left, extra_right))
            left, right = left - extra_left, right - extra_right
    return F.pad(x, (left, right), mode, value)
