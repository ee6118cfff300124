"""Channel conversion and block-by-block resampling, in numpy.

Two resamplers behind one interface (:func:`make_resampler`):

* :class:`PolyphaseResampler`: the windowed-sinc filters of ``julius.resample_frac``
  (upstream Demucs's resampler), applied block by block; equal to julius on the whole
  signal to float precision. Its filter bank has ``new`` phases of ``old + 2 * width``
  taps, where ``old / new`` is the rate ratio in lowest terms: small for the usual rates
  (48000 -> 44100 is 160 / 147) but enormous for rates that share no small factor with the
  target (44101 -> 44100: 44,100 phases of 88,000 taps).
* :class:`SoxrResampler`: libsoxr's streaming resampler (``soxr.ResampleStream``), whose
  cost does not depend on the ratio. Used when the polyphase filter bank would exceed
  :data:`MAX_POLYPHASE_TAPS`, so any rate pair is resampled in bounded time and memory.

Both give ``floor(n * new_rate / old_rate)`` output samples for ``n`` input samples.
"""

from __future__ import annotations

import math
import typing as tp

import numpy as np

Array = np.ndarray

#: Zero crossings and roll-off of the polyphase filters (julius's defaults).
SINC_ZEROS = 24
SINC_ROLLOFF = 0.945
#: Largest polyphase filter bank (phases x taps) before :class:`SoxrResampler` takes over.
MAX_POLYPHASE_TAPS = 1 << 20
#: libsoxr quality recipe ("VHQ": 28-bit, passband to 95% of Nyquist, like julius).
SOXR_QUALITY = "VHQ"


def convert_channels(block: Array, channels: int) -> Array:
    """Converts ``(..., C, n)`` audio to ``channels`` channels.

    Downmix to mono is the plain mean; mono is replicated to every channel; extra channels
    are dropped (the first ``channels`` are kept). Any other case raises ``ValueError``.
    """
    source = block.shape[-2]
    if source == channels:
        return block
    if channels == 1:
        return block.mean(axis=-2, keepdims=True, dtype=np.float32)
    if source == 1:
        return np.repeat(block, channels, axis=-2)
    if source > channels:
        return block[..., :channels, :]
    raise ValueError(
        f"cannot convert {source}-channel audio to {channels} channels (only mono can be upmixed)"
    )


def reduced_ratio(old_sr: int, new_sr: int) -> tp.Tuple[int, int]:
    """The rates divided by their greatest common divisor."""
    gcd = math.gcd(int(old_sr), int(new_sr))
    return int(old_sr) // gcd, int(new_sr) // gcd


def polyphase_width(
    old_sr: int, new_sr: int, zeros: int = SINC_ZEROS, rolloff: float = SINC_ROLLOFF
) -> int:
    """Half-width (input samples) of the polyphase filters beyond one period."""
    old, new = reduced_ratio(old_sr, new_sr)
    return math.ceil(zeros * old / (min(old, new) * rolloff))


def polyphase_taps(old_sr: int, new_sr: int) -> int:
    """Size of the polyphase filter bank: phases times taps."""
    old, new = reduced_ratio(old_sr, new_sr)
    return new * (2 * polyphase_width(old_sr, new_sr) + old)


def sinc_resample_kernels(
    old_sr: int, new_sr: int, zeros: int = SINC_ZEROS, rolloff: float = SINC_ROLLOFF
) -> tp.Tuple[int, int, int, Array]:
    """Polyphase windowed-sinc filters of ``julius.resample_frac`` (same defaults), in numpy.

    With the rates in lowest terms (``old``, ``new``), output sample ``f * new + i`` is the
    dot product of filter ``i`` with input samples ``[f * old - width, f * old + width +
    old)``. Each filter is a sinc cut off at ``rolloff`` times the lower Nyquist frequency,
    truncated after ``zeros`` zero crossings, shaped by a squared-cosine window and
    normalised to unit sum (a constant signal is preserved). Computed in float32 like
    julius: the filters agree with its to ~4e-7.

    Returns:
        ``(old, new, width, kernels)`` with ``kernels`` float32 ``(new, 2 * width + old)``.
    """
    old, new = reduced_ratio(old_sr, new_sr)
    cutoff = min(old, new) * rolloff
    width = polyphase_width(old_sr, new_sr, zeros, rolloff)
    taps = np.arange(-width, width + old, dtype=np.float32) / np.float32(old)
    kernels = np.empty((new, taps.size), np.float32)
    for phase in range(new):
        t = (np.float32(-phase / new) + taps) * np.float32(cutoff)
        t = np.clip(t, -zeros, zeros) * np.float32(math.pi)
        window = np.cos(t / np.float32(zeros) / np.float32(2)) ** 2
        safe = np.where(t == 0, np.float32(1), t)
        sinc = np.where(t == 0, np.float32(1), np.sin(safe) / safe)
        kernel = (sinc * window).astype(np.float32)
        kernels[phase] = kernel / kernel.sum(dtype=np.float32)
    return old, new, width, kernels


def output_length(length: int, old_sr: int, new_sr: int) -> int:
    """Samples after resampling ``length`` samples (as julius: rounded down)."""
    old, new = reduced_ratio(old_sr, new_sr)
    return (new * int(length)) // old


class Resampler(tp.Protocol):
    """Resamples ``(C, n)`` float32 blocks pushed in order."""

    def push(self, block: Array) -> Array:
        """Feeds samples; returns the output samples that are now final."""
        ...  # pragma: no cover

    def finish(self) -> Array:
        """Returns the remaining output samples (the total is :func:`output_length`)."""
        ...  # pragma: no cover


class PolyphaseResampler:
    """``julius.resample_frac`` applied block by block with numpy (no PyTorch), equal
    to the whole-signal result (> 130 dB SNR).

    julius pads the signal by replicating its first and last samples and runs a strided
    convolution (:func:`sinc_resample_kernels`): output frame ``f`` (``new`` samples)
    reads input samples ``[f * old - width, f * old + width + old)``. Frames are
    computed as soon as their input is there; the right edge is replicated at
    :meth:`finish`.
    """

    def __init__(self, old_sr: int, new_sr: int, channels: int) -> None:
        if polyphase_taps(old_sr, new_sr) > MAX_POLYPHASE_TAPS:
            raise ValueError(
                f"{old_sr} -> {new_sr} Hz needs a polyphase filter bank of "
                f"{polyphase_taps(old_sr, new_sr)} taps: use SoxrResampler"
            )
        self.old, self.new, self.width, self._kernels = sinc_resample_kernels(old_sr, new_sr)
        self.channels = channels
        self.identity = self.old == self.new
        self._kernel_size = self._kernels.shape[1]
        self._buffer: tp.Optional[Array] = None  # padded input not yet consumed
        self._consumed = 0  # input samples seen
        self._produced = 0  # output samples returned

    def _frames(self, padded: Array) -> Array:
        """Output samples ``(C, frames * new)`` of all complete frames in ``padded``."""
        count = (padded.shape[1] - self._kernel_size) // self.old + 1
        if count <= 0:
            self._buffer = padded
            return np.zeros((self.channels, 0), np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(padded, self._kernel_size, axis=1)[
            :, :: self.old
        ][:, :count]
        # A contiguous copy lets the product run as one GEMM: (C, count, K) @ (K, new).
        frames = np.ascontiguousarray(windows, dtype=np.float32) @ self._kernels.T
        self._buffer = padded[:, count * self.old :]
        return frames.reshape(self.channels, -1)

    def push(self, block: Array) -> Array:
        """Feeds ``(C, n)`` samples; returns the output samples that are now final."""
        if self.identity:
            return block
        self._consumed += block.shape[1]
        if self._buffer is None:
            head = np.repeat(block[:, :1], self.width, axis=1)
            padded = np.concatenate([head, block], axis=1)
        else:
            padded = np.concatenate([self._buffer, block], axis=1)
        out = self._frames(padded)
        self._produced += out.shape[1]
        return out

    def finish(self) -> Array:
        """Replicates the last sample and returns the remaining output samples."""
        if self.identity or self._buffer is None:
            return np.zeros((self.channels, 0), np.float32)
        tail = np.repeat(self._buffer[:, -1:], self.width + self.old, axis=1)
        out = self._frames(np.concatenate([self._buffer, tail], axis=1))
        total = (self.new * self._consumed) // self.old
        keep = max(0, total - self._produced)
        return out[:, :keep]


class SoxrResampler:
    """libsoxr's streaming resampler, bounded in time and memory for any rate pair.

    The output is trimmed (or, at the very end, zero-padded) to :func:`output_length`
    samples, so both resamplers give the same length.
    """

    def __init__(self, old_sr: int, new_sr: int, channels: int) -> None:
        import soxr  # lazy: only for unusual rate pairs

        self.old_sr, self.new_sr = int(old_sr), int(new_sr)
        self.channels = channels
        self._stream = soxr.ResampleStream(
            self.old_sr, self.new_sr, channels, dtype="float32", quality=SOXR_QUALITY
        )
        self._consumed = 0
        self._produced = 0

    def _take(self, out: Array) -> Array:
        total = output_length(self._consumed, self.old_sr, self.new_sr)
        out = np.ascontiguousarray(out.T[:, : max(0, total - self._produced)], np.float32)
        self._produced += out.shape[1]
        return out

    def push(self, block: Array) -> Array:
        """Feeds ``(C, n)`` samples; returns the output samples that are now final."""
        self._consumed += block.shape[1]
        frames = np.ascontiguousarray(block.T, dtype=np.float32)
        return self._take(self._stream.resample_chunk(frames, last=False))

    def finish(self) -> Array:
        """Flushes libsoxr; pads with zeros if it returned fewer samples than expected."""
        out = self._take(
            self._stream.resample_chunk(np.zeros((0, self.channels), np.float32), last=True)
        )
        missing = output_length(self._consumed, self.old_sr, self.new_sr) - self._produced
        if missing > 0:
            out = np.concatenate([out, np.zeros((self.channels, missing), np.float32)], 1)
            self._produced += missing
        return out


def uses_polyphase(old_sr: int, new_sr: int) -> bool:
    """Whether :func:`make_resampler` picks the julius-equal :class:`PolyphaseResampler`."""
    return polyphase_taps(old_sr, new_sr) <= MAX_POLYPHASE_TAPS


def make_resampler(old_sr: int, new_sr: int, channels: int) -> Resampler:
    """The resampler for a rate pair: julius's filters when their filter bank is small
    (every usual rate pair), libsoxr otherwise."""
    if uses_polyphase(old_sr, new_sr):
        return PolyphaseResampler(old_sr, new_sr, channels)
    return SoxrResampler(old_sr, new_sr, channels)


def resample(wav: Array, old_sr: int, new_sr: int, block: int = 1 << 16) -> Array:
    """Resamples a whole ``(C, T)`` array (through :func:`make_resampler`)."""
    if int(old_sr) == int(new_sr):
        return wav
    resampler = make_resampler(old_sr, new_sr, wav.shape[0])
    parts = [
        resampler.push(np.ascontiguousarray(wav[:, start : start + block], np.float32))
        for start in range(0, wav.shape[1], block)
    ]
    parts.append(resampler.finish())
    return np.concatenate(parts, axis=1)


#: Former name, kept for callers of ``demucs.stream.BlockResampler(old, new, channels)``.
BlockResampler = make_resampler
