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

import functools
import math
import typing as tp

import torch
from torch.nn import functional as F

Tensor = torch.Tensor


# ---------------------------------------------------------------------------
# torch backend (complex tensors)
# ---------------------------------------------------------------------------

def spectro(x: Tensor, n_fft: int = 512, hop_length: tp.Optional[int] = None,
            pad: int = 0) -> Tensor:
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
    z = torch.stft(x, n_fft * (1 + pad), hop_length or n_fft // 4, window=window,
                   win_length=n_fft, normalized=True, center=True,
                   return_complex=True, pad_mode="reflect")
    return z.view(*other, z.shape[-2], z.shape[-1])


def ispectro(z: Tensor, hop_length: tp.Optional[int] = None,
             length: tp.Optional[int] = None, pad: int = 0) -> Tensor:
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
    x = torch.istft(z.reshape(-1, freqs, frames), n_fft, hop_length, window=window,
                    win_length=win_length, normalized=True, length=length, center=True)
    return x.view(*other, x.shape[-1])


# ---------------------------------------------------------------------------
# conv backend (real tensors, trailing (..., 2) axis)
# ---------------------------------------------------------------------------

def _exporting() -> bool:
    """True while an exporter traces the model: bases must then be built in the graph."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return True
    for probe in ("is_exporting", "is_compiling"):
        check = getattr(torch.compiler, probe, None)
        if check is not None and check():
            return True
    return False


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


def _build_bases(n_fft: int, n_bins: int, device: torch.device,
                 dtype: torch.dtype) -> tp.Tuple[Tensor, Tensor]:
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
    work = dtype if _exporting() else torch.float64
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
def _cached_bases(n_fft: int, n_bins: int, device: torch.device,
                  dtype: torch.dtype) -> tp.Tuple[Tensor, Tensor]:
    return _build_bases(n_fft, n_bins, device, dtype)


def dft_bases(n_fft: int, n_bins: int, device: torch.device,
              dtype: torch.dtype) -> tp.Tuple[Tensor, Tensor]:
    """The ``(analysis, synthesis)`` kernels, see :func:`_build_bases`.

    Eagerly they are cached per (size, device, dtype). While exporting they are rebuilt
    from ``arange``/``cos``/``sin`` so the graph computes them instead of storing them.
    """
    n_fft, n_bins = int(n_fft), int(n_bins)
    if _exporting():
        return _build_bases(n_fft, n_bins, device, dtype)
    return _cached_bases(n_fft, n_bins, torch.device(device), dtype)


def conv_spectro(x: Tensor, n_fft: int = 512, hop_length: tp.Optional[int] = None,
                 n_bins: tp.Optional[int] = None) -> Tensor:
    """Normalized centered STFT as a strided ``conv1d``; same values as :func:`spectro`.

    Args:
        x: signal ``(*, L)`` with ``L > n_fft // 2`` (reflect padding).
        n_bins: how many frequency bins to compute, default all ``n_fft // 2 + 1``.
    Returns:
        real tensor ``(*, n_bins, frames, 2)`` with ``frames = L // hop + 1``.
    """
    hop = hop_length or n_fft // 4
    bins = n_fft // 2 + 1 if n_bins is None else n_bins
    *other, length = x.shape
    frames = x.reshape(-1, 1, length)
    frames = F.pad(frames, (n_fft // 2, n_fft // 2), mode="reflect")
    analysis, _ = dft_bases(n_fft, bins, x.device, x.dtype)
    z = F.conv1d(frames, analysis, stride=hop)  # (N, 2 * bins, T)
    z = z.view(-1, 2, bins, z.shape[-1]).permute(0, 2, 3, 1)
    return z.reshape(*other, bins, z.shape[-2], 2)


def conv_ispectro(z: Tensor, hop_length: tp.Optional[int] = None,
                  length: tp.Optional[int] = None, n_fft: tp.Optional[int] = None) -> Tensor:
    """Inverse of :func:`conv_spectro` by windowed overlap-add (``conv_transpose1d``).

    Same values as :func:`ispectro` (``torch.istft``): overlap-added windowed frames
    divided by the overlap-added squared window, centre padding removed.

    Args:
        z: real spectrogram ``(*, bins, frames, 2)``. ``bins`` may stop short of the
            Nyquist bin (missing bins are taken as zero), in which case pass ``n_fft``.
        hop_length: hop in samples, default ``n_fft // 4``.
        length: output length; default ``hop * (frames - 1)``.
    Returns:
        real signal ``(*, length)``.
    """
    *other, bins, n_frames, two = z.shape
    if two != 2:
        raise ValueError(f"expected a trailing (real, imag) axis of size 2, got {two}")
    n_fft = n_fft or 2 * bins - 2
    hop = hop_length or n_fft // 4
    _, synthesis = dft_bases(n_fft, bins, z.device, z.dtype)
    spec = z.reshape(-1, bins, n_frames, 2).permute(0, 3, 1, 2)
    spec = spec.reshape(-1, 2 * bins, n_frames)
    frames = F.conv_transpose1d(spec, synthesis, stride=hop)  # (N, 1, hop*(T-1)+n_fft)
    envelope = _window_envelope(n_fft, hop, n_frames, z.device, z.dtype)
    out = frames[:, 0] / envelope
    start = n_fft // 2
    target = hop * (n_frames - 1) if length is None else length
    available = out.shape[-1] - start
    out = out[:, start: start + min(available, target)]
    if target > available:
        out = F.pad(out, (0, target - available))
    return out.reshape(*other, target)


def _window_envelope(n_fft: int, hop: int, n_frames: int, device: torch.device,
                     dtype: torch.dtype) -> Tensor:
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


# ---------------------------------------------------------------------------
# Model-level spectrogram methods shared by HTDemucs and HDemucs
# ---------------------------------------------------------------------------

def as_real(z: Tensor) -> Tensor:
    """Complex ``(*)`` -> real ``(*, 2)``; real ``(*, 2)`` passes through."""
    return torch.view_as_real(z) if z.is_complex() else z


class SpectralMixin:
    """``_spec``, ``_ispec``, ``_magnitude``, ``_mask`` for both STFT backends.

    The host model provides ``nfft``, ``hop_length``, ``cac``, ``wiener_iters``,
    ``end_iters``, ``wiener_residual`` and ``training``; optionally ``hybrid`` and
    ``hybrid_old`` (HDemucs; HTDemucs is always hybrid) and ``use_conv_stft``
    (default False). Shapes below: B batch, C audio channels, S sources,
    Fq = nfft // 2 frequency bins (the Nyquist bin is dropped), T frames.

    With the torch backend spectrograms are complex ``(B, C, Fq, T)``; with the conv
    backend they are real ``(B, C, Fq, T, 2)``.
    """

    use_conv_stft: bool = False

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
                raise ValueError(f"hybrid models need hop_length == nfft // 4, "
                                 f"got {hop} and {nfft}")
            le = (x.shape[-1] + hop - 1) // hop
            pad = hop // 2 * 3
            mode = "reflect" if self._hybrid_pad() else "constant"
            x = pad1d(x, (pad, pad + le * hop - x.shape[-1]), mode=mode)
        if self.use_conv_stft:
            z = conv_spectro(x, nfft, hop, n_bins=nfft // 2)
            frame_axis = -2
        else:
            z = spectro(x, nfft, hop)[..., :-1, :]
            frame_axis = -1
        if self._is_hybrid():
            z = z.narrow(frame_axis, 2, le)
        return z

    def _ispec(self, z: Tensor, length: int, scale: int = 0) -> Tensor:
        """Signal ``(*, length)`` from a spectrogram as returned by ``_spec``/``_mask``."""
        hop = self.hop_length // (4 ** scale)
        conv = self.use_conv_stft and not z.is_complex()
        if conv:
            # (*, Fq, T, 2): the dropped Nyquist bin is implicit (zero).
            n_fft = 2 * z.shape[-3]
            if self._is_hybrid():
                z = F.pad(z, (0, 0, 2, 2))
        else:
            z = F.pad(z, (0, 0, 0, 1))
            if self._is_hybrid():
                z = F.pad(z, (2, 2))
        if not self._is_hybrid():
            return (conv_ispectro(z, hop, length, n_fft=n_fft) if conv
                    else ispectro(z, hop, length))
        pad = hop // 2 * 3
        le = hop * ((length + hop - 1) // hop)
        if self._hybrid_pad():
            le += 2 * pad
        x = conv_ispectro(z, hop, le, n_fft=n_fft) if conv else ispectro(z, hop, length=le)
        start = pad if self._hybrid_pad() else 0
        return x[..., start: start + length]

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
        if self.use_conv_stft and niters > 0:
            raise ValueError(
                f"Wiener filtering with {niters} iterations is only available with the "
                "torch STFT backend: set use_conv_stft=False, or wiener_iters=0 (or -1) "
                "to use the conv backend / export the model")
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


def pad1d(x: Tensor, paddings: tp.Tuple[int, int], mode: str = "constant",
          value: float = 0.0) -> Tensor:
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
