"""Reference runner: separate an audio file with an exported Demucs ONNX graph.

Dependencies: numpy, onnxruntime, soundfile and this repository's ``demucs`` package
(its separation core and ONNX backend import no torch; run from a checkout or after
``pip install --no-deps``). A template
for apps: the steps are the ones to port to Swift/Kotlin/JavaScript (see README.md).

    python examples/separate_onnx.py htdemucs.onnx song.wav -o stems/ [--shifts 1]

The input must be at the model's sample rate (44.1 kHz for htdemucs) with its channel
count (stereo); resample beforehand (ffmpeg -ar 44100 -ac 2). Writes one WAV per source.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent)]  # the repository's demucs package, if not installed
from demucs.onnx.runtime import OnnxSeparator  # noqa: E402


def load_track(path: Path, sample_rate: int, channels: int) -> np.ndarray:
    """``(channels, samples)`` float32; mono files are duplicated to stereo."""
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, ch)
    if rate != sample_rate:
        raise SystemExit(
            f"{path} is at {rate} Hz, the model needs {sample_rate} Hz: "
            f"resample it first (ffmpeg -i IN -ar {sample_rate} OUT.wav)"
        )
    audio = audio.T
    if audio.shape[0] == 1 and channels == 2:
        audio = np.repeat(audio, 2, axis=0)
    elif audio.shape[0] > channels:
        audio = audio[:channels]
    return np.ascontiguousarray(audio)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Separate a track with a Demucs ONNX file")
    parser.add_argument("model", type=Path, help="exported .onnx file")
    parser.add_argument("track", type=Path, help="audio file (wav/flac/ogg)")
    parser.add_argument("-o", "--out", type=Path, default=Path("separated"))
    parser.add_argument(
        "--shifts", type=int, default=1, help="random shifts averaged (0: fastest, 1: default)"
    )
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    separator = OnnxSeparator(args.model, threads=args.threads or None)
    print(
        f"loaded {separator.spec.model_name} ({', '.join(separator.sources)}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    track = load_track(args.track, separator.sample_rate, separator.audio_channels)

    def progress(done: int, total: int) -> None:
        print(f"\rsegment {done}/{total}", end="", flush=True)

    start = time.perf_counter()
    stems = separator.separate(track, shifts=args.shifts, overlap=args.overlap, progress=progress)
    seconds = track.shape[-1] / separator.sample_rate
    print(f"\nseparated {seconds:.1f} s of audio in {time.perf_counter() - start:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, stem in zip(separator.sources, stems):
        path = args.out / f"{args.track.stem}_{name}.wav"
        sf.write(str(path), np.clip(stem.T, -1, 1), separator.sample_rate, subtype="PCM_16")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
