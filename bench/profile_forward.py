"""Where the CPU time of one HTDemucs forward pass goes: ours vs upstream 4.0.1.

One 7.8 s segment through a random-weight HTDemucs with the release architecture (the
checkpoint of ``bench/bench_speed.py``, made by upstream itself through the oracle), in
PyTorch eager, each side in its own subprocess with the same thread count: ours with the
allocator setting of the ``demucs`` command, upstream with its own process defaults.
After two warm-up passes, prints the median wall time of ``--runs`` passes, the page
faults per pass, and ``torch.profiler``'s self CPU time of one more pass grouped as GEMM
(linear layers), fused attention, convolutions, FFT and everything else.

Usage::

    python bench/profile_forward.py                 # ours and upstream (needs make oracle)
    python bench/profile_forward.py --variants ours --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
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

#: Profiler op name -> category, first match wins (``other`` when none matches).
CATEGORIES = (
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("GEMM (linear layers)", ("addmm", "aten::mm", "aten::bmm", "baddbmm")),
    ("convolutions", ("conv",)),
    ("FFT", ("fft",)),
)

WORKER = """
import json, resource, statistics, time
import torch
torch.set_num_threads({threads})
try:  # ours: the allocator setting of the demucs command; upstream has none
    from demucs.allocator import tune_allocator
    tune_allocator()
except ImportError:
    pass
from demucs.states import load_model
from torch.profiler import profile

model = load_model({checkpoint!r}).eval()
mix = torch.randn(1, model.audio_channels, int(model.segment * model.samplerate))
times, faults = [], []
with torch.no_grad():
    for _ in range(2):
        model(mix)
    for _ in range({runs}):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        model(mix)
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    with profile() as prof:
        model(mix)
ops = {{event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}}
print("RESULT", json.dumps(dict(wall=statistics.median(times), faults=statistics.median(faults),
                                ops=ops)))
"""


def category(op: str) -> str:
    for name, needles in CATEGORIES:
        if any(needle in op for needle in needles):
            return name
    return "other"


def profile_variant(
    variant: str, checkpoint: Path, threads: int, runs: int, workdir: Path
) -> tp.Dict[str, tp.Any]:
    """Runs the worker for ``variant`` (``ours`` or ``upstream``); returns its result."""
    env = _env(threads, ours=variant != "upstream")
    code = textwrap.dedent(WORKER.format(threads=threads, checkpoint=str(checkpoint), runs=runs))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=str(workdir), env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    groups: tp.Dict[str, float] = {}
    for op, seconds in result["ops"].items():
        groups[category(op)] = groups.get(category(op), 0.0) + seconds
    result["groups"] = groups
    return result


def print_table(
    results: tp.Dict[str, tp.Dict[str, tp.Any]], threads: int, runs: int, top: int = 0
) -> None:
    variants = list(results)
    print(
        f"\nOne 7.8 s segment, HTDemucs release architecture (random weights), "
        f"{threads} thread(s); wall: median of {runs} passes; profile: self CPU time "
        f"of one more pass\n"
    )
    print("| | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    print(
        "| wall per pass (s) | " + " | ".join(f"{results[v]['wall']:.2f}" for v in variants) + " |"
    )
    print(
        "| page faults per pass | "
        + " | ".join(f"{results[v]['faults']:.0f}" for v in variants)
        + " |"
    )
    names = [name for name, _ in CATEGORIES] + ["other"]
    for name in names:
        cells = []
        for variant in variants:
            groups = results[variant]["groups"]
            total = sum(groups.values()) or 1.0
            seconds = groups.get(name, 0.0)
            cells.append(f"{seconds:.2f} s ({100 * seconds / total:.0f} %)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "| profiled total | "
        + " | ".join(f"{sum(results[v]['groups'].values()):.2f} s" for v in variants)
        + " |"
    )
    for variant in variants if top else []:
        ops = sorted(results[variant]["ops"].items(), key=lambda item: -item[1])[:top]
        print(
            f"\n{variant}, top {top} ops by self CPU time: "
            + ", ".join(f"{op} {seconds:.2f} s" for op, seconds in ops)
        )
    if "upstream" in results and "ours" in results:
        print(
            f"\n- speed per pass, ours vs upstream: "
            f"{results['upstream']['wall'] / results['ours']['wall']:.2f}x"
        )


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants", nargs="+", default=["ours", "upstream"], choices=["ours", "upstream"]
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--top", type=int, default=8, help="also list the N costliest ops")
    parser.add_argument("--workdir", type=Path, help="keep the checkpoint here")
    args = parser.parse_args(argv)
    if not oracle.available():
        sys.exit("the release-architecture checkpoint is made by the oracle: make oracle")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="demucs_profile_"))
    checkpoint = make_repo(work / "repo")
    results = {
        variant: profile_variant(variant, checkpoint, args.threads, args.runs, work)
        for variant in args.variants
    }
    print_table(results, args.threads, args.runs, args.top)


if __name__ == "__main__":
    main()
