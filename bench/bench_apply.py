"""``apply_model`` in one process, as a library user calls it: ours vs upstream 4.0.1.

The random-weight release htdemucs checkpoint of ``bench/bench_speed.py`` (made by
upstream itself through the oracle), a generated stereo track (24 s by default), shifts=1,
overlap 0.25, the same thread count everywhere. Each variant runs in its own interpreter;
the time is that of one ``apply_model`` call (model loaded, audio in memory, the first
call of the process: what a script calling the library pays), with its CPU time (user +
system, all threads: less sensitive than wall time to other processes on a shared
machine), page faults and the peak RSS of the process. Rounds alternate the variants;
the table keeps the best of the rounds and the per-round ratios against ``upstream``.

Variants:

* ``upstream``: upstream 4.0.1's ``apply_model`` with its process defaults;
* ``upstream-tuned``: the same with the allocator setting of our command line, through
  its environment equivalent (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``);
* ``ours``: our ``apply_model`` as it is called;
* ``ours-tuned``: ours after :func:`demucs.allocator.ensure_tuned_for_torch` (what the
  library does by itself once that is wired in; a no-op where it already is);
* ``ours-bf16``: ``ours-tuned`` inside :func:`demucs.precision.precision_context`
  ``("bf16")``; refused on CPUs without native bf16 unless ``--force-bf16`` (emulated bf16
  is several times slower: only useful to measure the SNR). Its SNR against ``ours`` is
  printed.

Usage::

    python bench/bench_apply.py                               # 24 s, 3 rounds
    python bench/bench_apply.py --variants upstream ours-tuned ours-bf16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_speed import _env, make_repo  # noqa: E402
from tests import oracle  # noqa: E402

VARIANTS = ("upstream", "upstream-tuned", "ours", "ours-tuned", "ours-bf16")
#: The environment equivalent of demucs.allocator.tune_allocator (1 GB thresholds).
TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}

WORKER = """
import json, resource, time
import numpy as np, torch
torch.set_num_threads({threads})
from demucs.states import load_model
from demucs.apply import apply_model
variant = {variant!r}
context = None
if variant in ("ours-tuned", "ours-bf16"):
    from demucs.allocator import ensure_tuned_for_torch
    ensure_tuned_for_torch()
if variant == "ours-bf16":
    from demucs.precision import precision_context
    context = precision_context("bf16", "cpu", check=not {force_bf16!r})
model = load_model({checkpoint!r}).eval()
rng = np.random.default_rng(0)
samples = int({seconds!r} * model.samplerate)
t = np.arange(samples) / model.samplerate
tone = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
wav = torch.from_numpy((tone[None] + 0.05 * rng.standard_normal((2, samples))).astype("f4"))
ref = wav.mean(0)
mix = ((wav - ref.mean()) / ref.std())[None]
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cpu = time.process_time()
start = time.perf_counter()
with torch.no_grad():
    if context is None:
        out = apply_model(model, mix, shifts=1, split=True, overlap=0.25)
    else:
        with context:
            out = apply_model(model, mix, shifts=1, split=True, overlap=0.25)
seconds = time.perf_counter() - start
cpu = time.process_time() - cpu
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
np.save({output!r}, out.float().numpy())
print("RESULT", json.dumps(dict(seconds=seconds, cpu=cpu, faults=faults,
                                rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def run_variant(
    variant: str, checkpoint: Path, seconds: float, threads: int, work: Path, force_bf16: bool
) -> tp.Dict[str, float]:
    """One ``apply_model`` call of ``variant`` in a fresh interpreter."""
    upstream = variant.startswith("upstream")
    env = _env(threads, ours=not upstream)
    if variant == "upstream-tuned":
        env.update(TUNED_ENV)
    if variant in ("upstream", "ours"):
        env["DEMUCS_NO_MALLOC_TUNING"] = "1"  # whatever ours may do by itself later
    code = textwrap.dedent(
        WORKER.format(
            threads=threads,
            variant=variant,
            force_bf16=force_bf16,
            checkpoint=str(checkpoint),
            seconds=seconds,
            output=str(work / f"out-{variant}.npy"),
        )
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(work), env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or "unknown error").splitlines()
        raise RuntimeError(f"{variant}: {lines[-1][:300]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:4]), choices=VARIANTS)
    parser.add_argument("--seconds", type=float, default=24.0, help="track length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="run ours-bf16 even without native bf16 (emulated: slow)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the checkpoint here")
    args = parser.parse_args(argv)
    if not oracle.available():
        sys.exit("the checkpoint is made by the oracle (make oracle)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="demucs_apply_"))
    checkpoint = make_repo(work / "repo")
    runs: tp.Dict[str, tp.List[tp.Dict[str, float]]] = {v: [] for v in args.variants}
    for round_ in range(args.rounds):
        for variant in args.variants:
            try:
                result = run_variant(
                    variant, checkpoint, args.seconds, args.threads, work, args.force_bf16
                )
            except RuntimeError as err:
                print(f"# round {round_ + 1}: {err}", file=sys.stderr, flush=True)
                continue
            runs[variant].append(result)
            print(
                f"# round {round_ + 1} {variant:15s} {result['seconds']:.2f} s, "
                f"CPU {result['cpu']:.2f} s, "
                f"{result['faults']:.0f} page faults, {result['rss_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    print_table(runs, args, work)


def print_table(
    runs: tp.Dict[str, tp.List[tp.Dict[str, float]]], args: argparse.Namespace, work: Path
) -> None:
    import numpy as np

    from demucs.export_onnx import snr_db

    base = runs.get("upstream") or []
    print(
        f"\napply_model, {args.seconds:g} s track, HTDemucs release architecture (random "
        f"weights), shifts=1, {args.threads} thread(s), one call per process, "
        f"{args.rounds} alternating rounds\n"
    )
    print(
        "| variant | best s | all rounds s | CPU s (best) | page faults (median) | "
        "peak RSS MB | speed vs upstream (best) | per-round ratios | CPU vs upstream |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, done in runs.items():
        if not done:
            continue
        times = [run["seconds"] for run in done]
        best = min(times)
        speed = f"{min(r['seconds'] for r in base) / best:.2f}x" if base else "-"
        ratios = (
            ", ".join(f"{b['seconds'] / r['seconds']:.2f}" for b, r in zip(base, done))
            if base
            else "-"
        )
        cpu = min(run["cpu"] for run in done)
        cpu_ratio = f"{min(r['cpu'] for r in base) / cpu:.2f}x" if base else "-"
        print(
            f"| {variant} | {best:.2f} | {', '.join(f'{t:.1f}' for t in times)} | "
            f"{cpu:.1f} | {statistics.median(r['faults'] for r in done):.0f} | "
            f"{max(r['rss_mb'] for r in done):.0f} | {speed} | {ratios} | {cpu_ratio} |"
        )
    reference = work / "out-ours-tuned.npy"
    if not reference.exists():
        reference = work / "out-ours.npy"
    if runs.get("ours-bf16") and reference.exists():
        snr = snr_db(np.load(reference), np.load(work / "out-ours-bf16.npy"))
        print(f"\n- ours-bf16 vs {reference.stem[4:]} (fp32): SNR {snr:.1f} dB")
    if runs.get("upstream-tuned") and runs.get("ours-tuned"):
        theirs = min(r["seconds"] for r in runs["upstream-tuned"])
        ours = min(r["seconds"] for r in runs["ours-tuned"])
        cpu = min(r["cpu"] for r in runs["upstream-tuned"]) / min(
            r["cpu"] for r in runs["ours-tuned"]
        )
        print(
            f"- like for like, both with the allocator setting: ours {theirs / ours:.2f}x "
            f"upstream (CPU time {cpu:.2f}x)"
        )
    if runs.get("upstream") and runs.get("ours"):
        theirs = min(r["seconds"] for r in runs["upstream"])
        ours = min(r["seconds"] for r in runs["ours"])
        cpu = min(r["cpu"] for r in runs["upstream"]) / min(r["cpu"] for r in runs["ours"])
        print(
            f"- like for like, both without: ours {theirs / ours:.2f}x upstream "
            f"(CPU time {cpu:.2f}x)"
        )


if __name__ == "__main__":
    main()
