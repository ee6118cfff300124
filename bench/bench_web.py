"""Time per segment of an exported graph in the browser page (headless Chromium,
onnxruntime-web WASM with threads) against ONNX Runtime in Python, on the same machine.

Usage::

    python bench/bench_web.py htdemucs.onnx [htdemucs-fp16.onnx ...]

(the README's figures: graphs of ``HTDemucs(**demucs.configs.HTDEMUCS)``, seed 0, exported
with :func:`demucs.export_onnx.export_model`, fp16 with ``convert_file``).

Per graph: the page separates a generated track of ``--segments`` segments (the first
segment includes the session's warm-up, the later ones are reported), peak resident
memory of Chromium's renderer (the page, its worker and ORT's threads); then
``OnnxSeparator.run_segment`` in Python (``--threads``, default 2, as many as the page
gets here). Needs ``npm ci`` and Chromium (``$CHROMIUM`` or ``chromium``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing as tp
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SONG_SECONDS = 180.0  # the "3-minute song" the README extrapolates to


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def browser_run(onnx: Path, song: Path, work: Path) -> tp.Dict[str, tp.Any]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "demucs.web", "--onnx", str(onnx), "--port", str(port), "-q"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and "Serving" in server.stdout.readline()
        config = work / "drive.json"
        config.write_text(
            json.dumps(
                dict(
                    url=f"http://127.0.0.1:{port}/",
                    chromium=os.environ.get("CHROMIUM") or shutil.which("chromium"),
                    out=str(work / "out"),
                    timeoutMs=3600 * 1000,
                    cases=[dict(name=onnx.stem, audio=str(song), shifts=0)],
                )
            )
        )
        result = subprocess.run(
            ["node", str(ROOT / "tests" / "web" / "drive_page.mjs"), str(config)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise SystemExit(f"{onnx}: the page driver failed: {result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])[0]
    finally:
        server.terminate()
        server.wait()


def python_run(onnx: Path, threads: int, runs: int) -> tp.List[float]:
    from demucs.onnx_runtime import OnnxSeparator

    separator = OnnxSeparator(str(onnx), threads=threads)
    spec = separator.spec
    mix = (
        np.random.default_rng(0)
        .standard_normal((1, spec.audio_channels, spec.input_samples))
        .astype(np.float32)
    )
    separator.run_segment(mix)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        separator.run_segment(mix)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("graphs", type=Path, nargs="+")
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import soundfile as sf

    from demucs.onnx_runtime import OnnxSeparator

    for onnx in args.graphs:
        spec = OnnxSeparator(str(onnx), threads=1).spec
        stride = int(0.75 * spec.segment_samples)
        length = stride * (args.segments - 1) + stride // 2
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            song = work / "song.wav"
            noise = 0.1 * np.random.default_rng(0).standard_normal((length, 2))
            sf.write(str(song), noise.astype(np.float32), spec.sample_rate, subtype="PCM_16")
            report = browser_run(onnx, song, work)
        if report["state"] != "done":
            raise SystemExit(f"{onnx}: the page failed: {report['error']}")
        marks = [0.0] + report["timings"]
        per_segment = np.diff(marks)
        steady = float(np.median(per_segment[1:])) if len(per_segment) > 1 else per_segment[0]
        python = python_run(onnx, args.threads, max(2, args.segments - 1))
        segments_3min = len(range(0, int(SONG_SECONDS * spec.sample_rate), stride))
        print(f"{onnx.name} ({spec.precision}): browser {report['summary']}")
        print(
            f"  browser per segment: first {per_segment[0]:.1f} s, then "
            f"{', '.join(f'{t:.1f}' for t in per_segment[1:])} s (median {steady:.1f} s); "
            f"peak renderer RSS {report['peakRssMB']:.0f} MB"
        )
        print(
            f"  python onnxruntime ({args.threads} threads) per segment: "
            f"{', '.join(f'{t:.1f}' for t in python)} s (median {np.median(python):.1f} s)"
        )
        print(
            f"  3-minute song ({segments_3min} segments, --shifts 0), extrapolated: "
            f"browser {segments_3min * steady / 60:.1f} min, python "
            f"{segments_3min * float(np.median(python)) / 60:.1f} min"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
