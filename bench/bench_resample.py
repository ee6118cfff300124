"""Resamplers compared in one run: julius (torch), our polyphase numpy twin, libsoxr.

Prints, for 48000 -> 44100 Hz (30 s of stereo music-like noise), the SNR of each against
julius and against an ideal band-limited reference (sines generated at the target rate),
and the wall time; then the time and peak memory of 1 s at 44,101 and 48,001 Hz.
Usage: python bench/bench_resample.py
"""

from __future__ import annotations

import resource
import time

import numpy as np


def snr(ref: np.ndarray, got: np.ndarray) -> float:
    n = min(ref.shape[-1], got.shape[-1])
    margin = 2000
    ref, got = ref[..., margin : n - margin], got[..., margin : n - margin]
    return 10 * np.log10((ref**2).sum() / max(((ref - got) ** 2).sum(), 1e-30))


def tones(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(30, 19000, size=(2, 40))
    phases = rng.uniform(0, 2 * np.pi, size=(2, 40))
    t = np.arange(int(rate * seconds)) / rate
    return (0.02 * np.sin(2 * np.pi * freqs[..., None] * t + phases[..., None]).sum(1)).astype(
        np.float32
    )


def main() -> None:
    import julius
    import soxr
    import torch

    from demucs.io.resample import PolyphaseResampler, SoxrResampler, resample

    torch.set_num_threads(1)
    old, new, seconds = 48000, 44100, 30
    wav, ideal = tones(old, seconds), tones(new, seconds)
    start = time.perf_counter()
    ref = julius.resample_frac(torch.from_numpy(wav), old, new).numpy()
    print(
        f"julius (torch):            {time.perf_counter() - start:6.2f} s, "
        f"vs ideal {snr(ideal, ref):6.1f} dB"
    )
    for name, cls in [
        ("polyphase numpy (ours)", PolyphaseResampler),
        ("soxr VHQ stream", SoxrResampler),
    ]:
        start = time.perf_counter()
        r = cls(old, new, 2)
        out = np.concatenate(
            [r.push(wav[:, i : i + 65536]) for i in range(0, wav.shape[1], 65536)] + [r.finish()],
            axis=1,
        )
        took = time.perf_counter() - start
        print(
            f"{name:26s} {took:6.2f} s, vs julius {snr(ref, out):6.1f} dB, "
            f"vs ideal {snr(ideal, out):6.1f} dB, length {out.shape[1]} (julius {ref.shape[1]})"
        )
    for quality in ["HQ", "VHQ"]:
        start = time.perf_counter()
        out = soxr.resample(wav.T, old, new, quality=quality).T
        took = time.perf_counter() - start
        print(
            f"soxr {quality:3s} (whole array)    {took:6.2f} s, "
            f"vs julius {snr(ref, out):6.1f} dB, vs ideal {snr(ideal, out):6.1f} dB"
        )
    for rate in (44101, 48001):
        wav = tones(rate, 1.0)
        start = time.perf_counter()
        out = resample(wav, rate, 44100)
        print(
            f"1 s at {rate} Hz -> 44100: {time.perf_counter() - start:.3f} s, "
            f"{out.shape[1]} samples (peak RSS of the whole run so far: "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)"
        )


if __name__ == "__main__":
    main()
