"""Speed and peak memory of whole-track separation on CPU: upstream 4.0.1 vs ours.

One run, one machine: a random-weight HTDemucs with the release architecture
(``demucs.configs.HTDEMUCS``, checkpoint made by upstream itself through the oracle) on
generated tracks of 60 s and 20 min (``--quick``: 10 s and 40 s). Each variant runs in
its own subprocess with the same thread count; its peak RSS is the child's
``ru_maxrss`` (``os.wait4``), its time the wall clock of the whole child (model loading,
decoding, separation and writing four 16-bit wav stems, or mp3 with ``--mp3``, included).

Variants:

* ``upstream``: upstream 4.0.1 ``apply_model`` (shifts=1, overlap 0.25) on the whole
  track read in memory, normalised as its CLI does, stems written with soundfile (mp3:
  with its own ``save_audio``, as its CLI does);
* ``ours``: our ``demucs`` command (streaming separation, the default);
* ``ours-onnx``: our streaming core driving an ONNX Runtime session exported with
  :mod:`demucs.export_onnx` (skipped with a note if that export path is not usable);
* ``ours-ft`` / ``ours-ft-vocals``: a bag like htdemucs_ft (four release HTDemucs, one
  per source, ``demucs --random-weights -n htdemucs_ft``), all four stems vs
  ``--two-stems vocals --other-method minus`` (one member of four runs).
* ``ours-bf16``: our ``demucs`` command run inside
  :func:`demucs.precision.precision_context` ``("bf16")`` (the command's own
  ``--precision bf16`` once it has one); skipped with a note on CPUs without native bf16
  (``--force-bf16`` runs it emulated, which only tells the SNR). The SNR of its stems
  against ``ours`` is printed.

Usage::

    python bench/bench_speed.py            # 60 s and 20 min (long on 2 cores)
    python bench/bench_speed.py --quick    # 10 s and 40 s
    python bench/bench_speed.py --durations 30 --variants upstream ours
    python bench/bench_speed.py --durations 60 --repeat 3   # median of 3 interleaved rounds
    python bench/bench_speed.py --durations 60 --mp3        # mp3 stems (lameenc, 320 kb/s)
    python bench/bench_speed.py --durations 30 --variants ours-ft ours-ft-vocals --repeat 2
    python bench/bench_speed.py --durations 60 --repeat 3 --variants upstream ours ours-bf16

Prints a markdown table with real-time factors and ratios vs upstream.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import typing as tp
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import oracle  # noqa: E402
from demucs.configs import HTDEMUCS  # noqa: E402

RATE = 44100
MODEL_NAME = "htrandom"


# ---------------------------------------------------------------------- setup


def make_track(path: Path, seconds: float, seed: int = 0) -> None:
    """Stereo 16-bit wav of band-limited noise bursts, written block by block."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(seconds * RATE)
    block = RATE * 10
    with sf.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16") as handle:
        for start in range(0, total, block):
            size = min(block, total - start)
            t = (np.arange(size) + start) / RATE
            tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
            data = tone[:, None] + 0.05 * rng.standard_normal((size, 2))
            handle.write(np.clip(data, -1, 1).astype(np.float32))


def make_repo(folder: Path) -> Path:
    """Checkpoint of a random-weight release HTDemucs, saved by upstream (oracle)."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / f"{MODEL_NAME}.th"
    if not checkpoint.exists():
        oracle.make_model(
            "htdemucs.HTDemucs", dict(HTDEMUCS), None, folder / "work", checkpoint=checkpoint
        )
    (folder / f"{MODEL_NAME}s.yaml").write_text(f"models: ['{MODEL_NAME}']\n")
    return checkpoint


UPSTREAM_CODE = """
import sys, time, torch, soundfile as sf
torch.set_num_threads({threads})
from demucs.states import load_model
from demucs.apply import apply_model
model = load_model({checkpoint!r})
model.eval()
data, sr = sf.read({track!r}, dtype="float32", always_2d=True)
wav = torch.from_numpy(data.T.copy())
ref = wav.mean(0)
mean, std = ref.mean(), ref.std()
start = time.perf_counter()
out = apply_model(model, ((wav - mean) / std)[None], shifts=1, split=True, overlap=0.25)[0]
out = out * std + mean
separated = time.perf_counter() - start
for name, source in zip(model.sources, out):
    if {mp3!r}:  # upstream's CLI path: rescale, then lameenc at 320 kb/s, preset 2
        from demucs.audio import save_audio
        save_audio(source, {out!r} + f"/{{name}}.mp3", sr, bitrate=320, preset=2)
        continue
    source = source / max(1.01 * source.abs().max().item(), 1)
    sf.write({out!r} + f"/{{name}}.wav", source.t().numpy(), sr, subtype="PCM_16")
print("SEPARATE", separated)
"""

OURS_CODE = """
import sys, time, torch
torch.set_num_threads({threads})
from demucs import separate
start = time.perf_counter()
try:
    separate.main(["--repo", {repo!r}, "-n", {name!r}, "-q", "-o", {out!r}, *{flags!r},
                   {track!r}])
except SystemExit as exit:
    if exit.code:
        raise
print("SEPARATE", time.perf_counter() - start)
"""

BF16_CODE = """
import sys, time, torch
torch.set_num_threads({threads})
from demucs import separate
from demucs.precision import precision_context
start = time.perf_counter()
try:
    with precision_context("bf16", "cpu", check=not {force!r}):
        separate.main(["--repo", {repo!r}, "-n", {name!r}, "-q", "-o", {out!r}, *{flags!r},
                       {track!r}])
except SystemExit as exit:
    if exit.code:
        raise
print("SEPARATE", time.perf_counter() - start)
"""

ONNX_CODE = """
import sys, time
from demucs import separate
start = time.perf_counter()
try:
    separate.main(["--onnx", {onnx!r}, "-q", "-o", {out!r}, *{flags!r}, {track!r}])
except SystemExit as exit:
    if exit.code:
        raise
print("SEPARATE", time.perf_counter() - start)
"""

FT_CODE = """
import sys, time, torch
torch.set_num_threads({threads})
from demucs import separate
start = time.perf_counter()
separate.main(["--random-weights", "-n", "htdemucs_ft", "-q", "-o", {out!r}, *{flags!r},
               {track!r}])
print("SEPARATE", time.perf_counter() - start)
"""


def export_onnx(checkpoint: Path, folder: Path) -> tp.Tuple[tp.Optional[Path], str]:
    """Exports the checkpoint with our exporter; returns (path, "") or (None, why)."""
    path = folder / f"{MODEL_NAME}.onnx"
    if path.exists():
        return path, ""
    code = f"""
import torch
from demucs.states import load_model
from demucs.export_onnx import export_model
model = load_model({str(checkpoint)!r})
export_model(model, {str(path)!r})
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        env=_env(os.cpu_count() or 1, ours=True),
    )
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "unknown error").splitlines()
        return None, f"ONNX export failed: {lines[-1][:200]}"
    return path, ""


# ---------------------------------------------------------------------- running


def _env(threads: int, ours: bool) -> tp.Dict[str, str]:
    env = oracle.env() if not ours else dict(os.environ, PYTHONPATH=str(ROOT))
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(code: str, threads: int, ours: bool, cwd: Path) -> tp.Dict[str, float]:
    """Runs ``code`` in a fresh interpreter; wall time, its separation time, peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=str(cwd),
        env=_env(threads, ours),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout = proc.stdout.read() if proc.stdout else ""
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{stdout}\n{stderr[-3000:]}")
    separate = next(
        (float(line.split()[1]) for line in stdout.splitlines() if line.startswith("SEPARATE")),
        float("nan"),
    )
    return {"wall": wall, "separate": separate, "rss_mb": usage.ru_maxrss / 1024}


def _variant_code(
    variant: str,
    work: Path,
    repo: Path,
    checkpoint: Path,
    onnx_path: tp.Optional[Path],
    track: Path,
    threads: int,
    seconds: float,
    mp3: bool = False,
    force_bf16: bool = False,
) -> tp.Optional[str]:
    """The child program of one variant, or None when it cannot run (no ONNX file)."""
    out = work / f"out_{variant}_{int(seconds)}"
    out.mkdir(exist_ok=True)
    fields = dict(threads=threads, track=str(track), out=str(out))
    flags = ["--mp3"] if mp3 else []
    if variant == "upstream":
        return UPSTREAM_CODE.format(checkpoint=str(checkpoint), mp3=mp3, **fields)
    if variant == "ours":
        return OURS_CODE.format(repo=str(repo), name=f"{MODEL_NAME}s", flags=flags, **fields)
    if variant in ("ours-ft", "ours-ft-vocals"):
        if variant == "ours-ft-vocals":
            flags += ["--two-stems", "vocals", "--other-method", "minus"]
        return FT_CODE.format(flags=flags, **fields)
    if variant == "ours-bf16":
        return BF16_CODE.format(
            repo=str(repo), name=f"{MODEL_NAME}s", flags=flags, force=force_bf16, **fields
        )
    if onnx_path is None:
        return None
    return ONNX_CODE.format(onnx=str(onnx_path), flags=flags, **fields)


def stems_snr(reference: Path, estimate: Path) -> float:
    """SNR (dB) of all wav stems under ``estimate`` against those under ``reference``."""
    import soundfile as sf

    signal = noise = 0.0
    for path in sorted(reference.rglob("*.wav")):
        ref, _ = sf.read(str(path), dtype="float64")
        est, _ = sf.read(str(estimate / path.relative_to(reference)), dtype="float64")
        signal += float(np.sum(ref**2))
        noise += float(np.sum((ref - est) ** 2))
    return float(10 * np.log10(signal / max(noise, 1e-20)))


def _summary(runs: tp.Sequence[tp.Dict[str, float]]) -> tp.Dict[str, float]:
    """Median wall and separation times, largest peak RSS, over repeated runs."""
    import statistics

    return {
        "wall": statistics.median(run["wall"] for run in runs),
        "separate": statistics.median(run["separate"] for run in runs),
        "rss_mb": max(run["rss_mb"] for run in runs),
        "runs": len(runs),
    }


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 s and 40 s tracks")
    parser.add_argument(
        "--durations", type=float, nargs="+", help="track durations in seconds (default 60 1200)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["upstream", "ours", "ours-onnx"],
        choices=["upstream", "ours", "ours-onnx", "ours-bf16", "ours-ft", "ours-ft-vocals"],
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of every variant (default: all cores)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds per track; the variants alternate within a round and "
        "each reports its median wall time (shared machines are noisy)",
    )
    parser.add_argument(
        "--mp3",
        action="store_true",
        help="write the stems as 320 kb/s mp3 (every variant) instead of 16-bit wav",
    )
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="run ours-bf16 even on a CPU without native bf16 (emulated, slow: for its SNR only)",
    )
    parser.add_argument("--workdir", type=Path, help="keep checkpoints/tracks here")
    args = parser.parse_args(argv)
    durations = args.durations or ([10.0, 40.0] if args.quick else [60.0, 1200.0])
    if "upstream" in args.variants and not oracle.available():
        sys.exit("upstream oracle missing (make oracle); or pass --variants ours")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="demucs_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    checkpoint = make_repo(repo)
    notes = []
    onnx_path = None
    if "ours-onnx" in args.variants:
        onnx_path, why = export_onnx(checkpoint, work)
        if onnx_path is None:
            notes.append(f"ours-onnx skipped: {why}")
    if "ours-bf16" in args.variants and not args.force_bf16:
        from demucs.precision import cpu_supports_bf16

        if not cpu_supports_bf16():
            args.variants = [v for v in args.variants if v != "ours-bf16"]
            notes.append(
                "ours-bf16 skipped: this CPU has no native bf16 (--force-bf16 runs it emulated)"
            )

    results: tp.Dict[tp.Tuple[str, float], tp.Dict[str, float]] = {}
    for seconds in durations:
        track = work / f"track_{int(seconds)}s.wav"
        if not track.exists():
            make_track(track, seconds)
        runs: tp.Dict[str, tp.List[tp.Dict[str, float]]] = {}
        for _ in range(max(1, args.repeat)):
            for variant in args.variants:
                code = _variant_code(
                    variant,
                    work,
                    repo,
                    checkpoint,
                    onnx_path,
                    track,
                    args.threads,
                    seconds,
                    args.mp3,
                    args.force_bf16,
                )
                if code is None:
                    continue
                try:
                    result = run_child(code, args.threads, variant != "upstream", work)
                except RuntimeError as err:
                    notes.append(
                        f"{variant} on {seconds:g} s failed: "
                        f"{str(err).strip().splitlines()[-1][:200]}"
                    )
                    continue
                runs.setdefault(variant, []).append(result)
                print(
                    f"# {variant:10s} {seconds:7.0f} s: wall {result['wall']:.1f} s, "
                    f"separation {result['separate']:.1f} s, "
                    f"peak RSS {result['rss_mb']:.0f} MB",
                    file=sys.stderr,
                    flush=True,
                )
        for variant, done in runs.items():
            results[(variant, seconds)] = _summary(done)
        if "ours-bf16" in runs and "ours" in runs and not args.mp3:
            snr = stems_snr(
                work / f"out_ours_{int(seconds)}", work / f"out_ours-bf16_{int(seconds)}"
            )
            notes.append(f"ours-bf16 stems vs ours (fp32) on {seconds:g} s: SNR {snr:.1f} dB")

    print_table(results, durations, args, notes)


def print_table(
    results: tp.Dict[tp.Tuple[str, float], tp.Dict[str, float]],
    durations: tp.Sequence[float],
    args: argparse.Namespace,
    notes: tp.List[str],
) -> None:
    import platform

    import torch

    print(
        f"\nHTDemucs (release architecture, random weights), shifts=1, overlap=0.25, "
        f"stems as {'320 kb/s mp3' if args.mp3 else '16-bit wav'}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}; wall: median of {max(1, args.repeat)} interleaved "
        f"run(s), peak RSS: the largest\n"
    )
    print(
        "| variant | track | wall (s) | real-time factor | peak RSS (MB) | "
        "speed vs upstream | RSS vs upstream |"
    )
    print("|---|---|---|---|---|---|---|")
    for seconds in durations:
        base = results.get(("upstream", seconds))
        for variant in args.variants:
            result = results.get((variant, seconds))
            if result is None:
                continue
            speed = f"{base['wall'] / result['wall']:.2f}x" if base else "n/a"
            rss = f"{result['rss_mb'] / base['rss_mb']:.2f}x" if base else "n/a"
            print(
                f"| {variant} | {seconds:g} s | {result['wall']:.1f} | "
                f"{result['wall'] / seconds:.3f} | {result['rss_mb']:.0f} | {speed} | {rss} |"
            )
    if len(durations) >= 2:
        first, last = durations[0], durations[-1]
        print()
        for variant in args.variants:
            a, b = results.get((variant, first)), results.get((variant, last))
            if a and b:
                print(
                    f"- {variant}: peak RSS {a['rss_mb']:.0f} MB -> {b['rss_mb']:.0f} MB "
                    f"from {first:g} s to {last:g} s "
                    f"({100 * (b['rss_mb'] / a['rss_mb'] - 1):+.0f}%)"
                )
    for note in notes:
        print(f"- note: {note}")


if __name__ == "__main__":
    main()
