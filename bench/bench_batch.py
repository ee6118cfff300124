"""Throughput of ``demucs-batch`` against the plain ``demucs`` command, one run.

The same tracks (generated, 44.1 kHz stereo) with the same model (the release HTDemucs
architecture with random weights, ``demucs.configs.HTDEMUCS``; ``--tiny``: a tiny
waveform Demucs, where the per-track overhead weighs most) and the same compute (one
process, ``--threads`` torch threads, all cores by default):

* ``demucs``: one ``demucs`` command with every track, separated one after the other;
* ``local``: ``demucs-batch --engine local --workers 1 --cpus-per-worker THREADS``;
* ``ray``: ``demucs-batch --engine ray --workers 1 --cpus-per-worker THREADS`` on a local
  Ray instance that the command starts.

Each variant runs in its own subprocess, in turn, after a warm-up run of the ``demucs``
command (file cache, imports). Reported: the whole wall time (interpreter, model load,
worker start-up, Ray start-up included) and tracks per minute from it, and the time per
track once the model is loaded: for ``demucs``, from the first "Separating track" line
to its summary line (before the interpreter's exit), divided by the track count; for the
engines, from the start of the first track to the end of the last (manifest ``started``
+ ``wall_seconds``), likewise. Overhead is the ratio of that per-track time to
``demucs``'s, minus one.

Usage::

    python bench/bench_batch.py                 # 8 tracks of 10 s, release HTDemucs
    python bench/bench_batch.py --tiny --seconds 5 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing as tp
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demucs.configs import HTDEMUCS  # noqa: E402
from tests.helpers import TINY_DEMUCS  # noqa: E402

RATE = 44100
MODEL = "htbench"
VARIANTS = ("demucs", "local", "ray")


def make_track(path: Path, seconds: float, seed: int) -> None:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.2 * np.sin(2 * np.pi * (110 + 20 * seed) * t)[:, None]
    data = tone + 0.05 * rng.standard_normal((len(t), 2))
    sf.write(str(path), np.clip(data, -1, 1).astype(np.float32), RATE, subtype="PCM_16")


def make_repo(folder: Path, tiny: bool) -> Path:
    import torch

    from demucs.demucs import Demucs
    from demucs.htdemucs import HTDemucs
    from demucs.states import serialize_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if tiny:
        model = Demucs(**dict(TINY_DEMUCS, samplerate=RATE))  # type: ignore[arg-type]
    else:
        model = HTDemucs(**HTDEMUCS)  # type: ignore[arg-type]
    torch.save(serialize_model(model, {}), folder / f"{MODEL}1.th")
    (folder / f"{MODEL}.yaml").write_text(f"models: ['{MODEL}1']\n")
    return folder


THREADS = {"value": 1}


def _env() -> tp.Dict[str, str]:
    threads = str(THREADS["value"])
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


def run_timed(command: tp.Sequence[str]) -> tp.Tuple[float, tp.List[tp.Tuple[float, str]]]:
    """Runs ``command``; returns its wall time and its stdout lines with arrival times."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        cwd=str(ROOT),
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command[2]} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, lines


def bench_cli(repo: Path, tracks: tp.List[Path], out: Path) -> tp.Dict[str, float]:
    wall, lines = run_timed(
        [
            sys.executable,
            "-m",
            "demucs.separate",
            "--repo",
            str(repo),
            "-n",
            MODEL,
            "-o",
            str(out),
            *map(str, tracks),
        ]
    )
    first = next(t for t, line in lines if line.startswith("Separating track"))
    last = next(t for t, line in lines if line.endswith(" failed"))  # the summary line
    return {"wall": wall, "per_track": (last - first) / len(tracks)}


def bench_batch(
    repo: Path, tracks: tp.List[Path], out: Path, engine: str, cores: int
) -> tp.Dict[str, float]:
    extra = ["--cpus-per-worker", str(cores)]
    wall, lines = run_timed(
        [
            sys.executable,
            "-m",
            "demucs.batch",
            "--repo",
            str(repo),
            "-n",
            MODEL,
            "-v",
            "-o",
            str(out),
            "--engine",
            engine,
            "--workers",
            "1",
            *extra,
            *map(str, tracks),
        ]
    )
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    if len(rows) != len(tracks) or any(row["status"] != "done" for row in rows):
        raise RuntimeError(f"{engine}: not every track was separated: {rows}")
    # Worker-side clock: from the start of the first track to the end of the last one
    # (Ray may hand rows to the driver in bursts; the worker's times are exact).
    begin = min(row["started"] for row in rows)
    end = max(row["started"] + row["wall_seconds"] for row in rows)
    return {"wall": wall, "per_track": (end - begin) / len(tracks)}


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of every variant (default: all cores)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved rounds (medians are reported)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny waveform Demucs (quick check of the overhead)"
    )
    args = parser.parse_args(argv)
    cores = args.threads or os.cpu_count() or 1
    THREADS["value"] = cores
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        work = Path(tmp)
        repo = make_repo(work / "repo", args.tiny)
        tracks = []
        for index in range(args.tracks):
            tracks.append(work / "in" / f"track{index}.wav")
            tracks[-1].parent.mkdir(exist_ok=True)
            make_track(tracks[-1], args.seconds, index)
        bench_cli(repo, tracks[:1], work / "warmup")
        rounds: tp.Dict[str, tp.List[tp.Dict[str, float]]] = {v: [] for v in VARIANTS}
        for round_index in range(args.repeat):
            for variant in VARIANTS:
                out = work / f"out_{variant}_{round_index}"
                if variant == "demucs":
                    result = bench_cli(repo, tracks, out)
                else:
                    result = bench_batch(repo, tracks, out, variant, cores)
                rounds[variant].append(result)
                print(f"round {round_index} {variant}: {result}", file=sys.stderr, flush=True)
    results = {
        variant: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for variant, runs in rounds.items()
    }
    ratios = {
        variant: statistics.median(
            r["per_track"] / base["per_track"] for r, base in zip(runs, rounds["demucs"])
        )
        for variant, runs in rounds.items()
    }
    model = "tiny Demucs" if args.tiny else "release HTDemucs architecture"
    print(
        f"\n{args.tracks} tracks of {args.seconds:g} s, {model} (random weights), "
        f"default flags, one worker with {cores} thread(s), {os.cpu_count()} cores\n"
    )
    print(f"(medians of {args.repeat} interleaved rounds; overhead: median of per-round ratios)\n")
    print("| variant | wall (s) | tracks/min | s/track once loaded | overhead vs demucs |")
    print("|---|---|---|---|---|")
    for variant, result in results.items():
        overhead = "" if variant == "demucs" else f"{100 * (ratios[variant] - 1):+.1f} %"
        print(
            f"| {variant} | {result['wall']:.1f} | {60 * args.tracks / result['wall']:.2f} "
            f"| {result['per_track']:.2f} | {overhead} |"
        )


if __name__ == "__main__":
    main()
