"""Benchmark: PyTorch eager vs ONNX Runtime on one htdemucs segment (random weights).

Same run, same random-weight HTDEMUCS config (release architecture), same random audio
(one 7.8 s stereo segment at 44.1 kHz). Each backend runs in its own subprocess so that
its peak RSS (``VmHWM``, else ``ru_maxrss``) is its own:

* ``upstream``: upstream 4.0.1's HTDemucs in PyTorch eager (the oracle, its process
  defaults): the speed baseline of the ONNX target;
* ``torch``: ours in PyTorch eager, ``torch.stft`` backend, with the allocator setting of
  the ``demucs`` command (the reference output);
* like for like (not run by default): ``upstream-tuned`` is ``upstream`` with the same
  allocator setting as ``torch`` (through its environment equivalent), ``torch-untuned``
  is ``torch`` without it (glibc's defaults, as ``upstream``);
* ``torch-bf16`` (not run by default): ``torch`` inside
  :func:`demucs.precision.precision_context` ``("bf16")``; fails with the precision
  module's message on CPUs without native bf16 unless ``--force-bf16`` (emulated: SNR only);
* ``conv``: PyTorch eager, conv STFT backend with its default (factored) implementation,
  i.e. what gets exported;
* ``ort-fp32``, ``ort-fp16``, ``ort-int8``: the exported file in ONNX Runtime (CPU,
  :class:`demucs.onnx.runtime.OnnxSeparator` defaults: extended graph optimisations,
  memory arena on, memory pattern off);
* ``ort-fp32portable``: fp32 exported with ``attention="portable"`` (standard operators,
  blocks of 512 queries) instead of the default fused ``MultiHeadAttention``;
* ``ort-fp32-ortdefaults``: fp32 with ONNX Runtime's own defaults (all optimisations,
  including the NCHWc layout transformation, and the memory pattern);
* ``ort-fp32convstft`` (not run by default): fp32 exported with ``stft_impl="conv"``
  (Conv / ConvTranspose over the full DFT basis), the former graph, for comparison.

Per-segment time is the median of ``--reps`` runs after one warm-up; init time is model
construction + weight loading (PyTorch) or session creation (ORT). Prints a markdown
table with ratios against upstream and against ours in PyTorch::

    python bench/bench_onnx.py [--reps 3] [--threads 2] [--workdir DIR]
    python bench/bench_onnx.py --backends upstream,upstream-tuned,torch,torch-untuned
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import typing as tp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = [
    "upstream",
    "torch",
    "conv",
    "ort-fp32",
    "ort-fp32portable",
    "ort-fp32-ortdefaults",
    "ort-fp16",
    "ort-int8",
]
#: The environment equivalent of demucs.allocator.tune_allocator, for upstream-tuned.
TUNED_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
PYTORCH_BACKENDS = ("torch", "torch-untuned", "torch-bf16", "conv")

# Upstream 4.0.1's own HTDemucs and process defaults (no allocator tuning), in the
# oracle's environment: the "PyTorch eager of upstream's code path" baseline.
UPSTREAM_WORKER = """
import json, resource, statistics, sys, time
begin = time.perf_counter()
from fractions import Fraction
import numpy as np, torch
from pathlib import Path
torch.set_num_threads({threads})
workdir, reps = Path({workdir!r}), {reps}
from demucs.htdemucs import HTDemucs
model = HTDemucs(**{config!r}).eval()
model.load_state_dict(torch.load(workdir / "state.th"))
init = time.perf_counter() - begin
samples = int(model.segment * model.samplerate)
mix = torch.from_numpy((0.3 * np.random.default_rng(0).standard_normal(
    (1, 2, samples))).astype(np.float32))
times = []
with torch.no_grad():
    out = model(mix)
    for _ in range(reps):
        start = time.perf_counter()
        out = model(mix)
        times.append(time.perf_counter() - start)
np.save(workdir / "out-upstream.npy", out.numpy())
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
peak = int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(0).ru_maxrss / 1024
print(json.dumps({{"init_s": init, "segment_s": statistics.median(times),
                   "peak_rss_mb": peak}}))
"""


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    ``VmHWM`` from /proc when available: ``ru_maxrss`` of a freshly exec'd child also
    counts the pages of the parent it was forked from (here: the exporter, ~2 GB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _build_model() -> tp.Any:
    import torch

    from demucs.htdemucs import HTDemucs
    from demucs.configs import HTDEMUCS

    torch.manual_seed(0)
    return HTDemucs(**HTDEMUCS).eval()


def _mix(samples: int) -> tp.Any:
    import numpy as np

    return (0.3 * np.random.default_rng(0).standard_normal((1, 2, samples))).astype(np.float32)


def worker(
    backend: str, workdir: Path, reps: int, threads: int, force_bf16: bool = False
) -> tp.Dict[str, float]:
    """Runs one backend; returns timings and peak RSS, saves its output."""
    import contextlib

    import numpy as np

    from demucs.allocator import bound_allocator, tune_allocator

    # The allocator settings the `demucs` command uses for each runtime.
    if backend != "torch-untuned":
        (tune_allocator if backend in PYTORCH_BACKENDS else bound_allocator)()
    begin = time.perf_counter()
    if backend in PYTORCH_BACKENDS:
        import torch

        from demucs.precision import precision_context

        context = (
            precision_context("bf16", "cpu", check=not force_bf16)
            if backend == "torch-bf16"
            else contextlib.nullcontext()
        )

        torch.set_num_threads(threads)
        from demucs.htdemucs import HTDemucs
        from demucs.configs import HTDEMUCS

        model = HTDemucs(**HTDEMUCS, use_conv_stft=backend == "conv").eval()
        model.load_state_dict(torch.load(workdir / "state.th", weights_only=True))
        samples = int(model.segment * model.samplerate)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad(), context:
                return model(torch.from_numpy(x)).float().numpy()
    else:
        from demucs.onnx.runtime import OnnxSeparator

        _, precision, *variant = backend.split("-")  # e.g. ort, fp32, ortdefaults
        if variant == ["ortdefaults"]:  # ONNX Runtime's defaults, for comparison
            separator = OnnxSeparator(
                workdir / f"{precision}.onnx",
                threads=threads,
                optimization="all",
                memory_arena=True,
                memory_pattern=True,
            )
        else:  # the defaults of OnnxSeparator
            separator = OnnxSeparator(workdir / f"{precision}.onnx", threads=threads)
        samples = separator.spec.input_samples
        run = separator.run_segment
    init = time.perf_counter() - begin
    mix = _mix(samples)
    out = run(mix)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = run(mix)
        times.append(time.perf_counter() - start)
    np.save(workdir / f"out-{backend}.npy", out)
    return {"init_s": init, "segment_s": statistics.median(times), "peak_rss_mb": _peak_rss_mb()}


def prepare(workdir: Path, backends: tp.Sequence[str]) -> tp.Dict[str, int]:
    """Saves the random weights and exports fp32/fp16/int8 (and the conv-STFT fp32 if
    asked); returns file sizes."""
    import torch

    from demucs import export_onnx

    model = _build_model()
    torch.save(model.state_dict(), workdir / "state.th")
    sizes = {"params": export_onnx.parameter_bytes(model)}
    if not any(backend.startswith("ort") for backend in backends):
        return sizes  # PyTorch rows only: nothing to export
    fp32 = workdir / "fp32.onnx"
    if not fp32.exists():
        start = time.perf_counter()
        export_onnx.export_model(model, fp32, name="htdemucs (random weights)")
        print(f"exported fp32 in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    for precision in ("fp16", "int8"):
        target = workdir / f"{precision}.onnx"
        if f"ort-{precision}" in backends and not target.exists():
            export_onnx.convert_file(fp32, target, precision)
    variants = {"fp32convstft": dict(stft_impl="conv"), "fp32portable": dict(attention="portable")}
    for variant, options in variants.items():
        target = workdir / f"{variant}.onnx"
        if f"ort-{variant}" in backends and not target.exists():
            export_onnx.export_model(model, target, name="htdemucs (random weights)", **options)
    for precision in ("fp32", "fp16", "int8", *variants):
        path = workdir / f"{precision}.onnx"
        if path.exists():
            sizes[precision] = path.stat().st_size
    return sizes


def _worker_command(
    backend: str, workdir: Path, reps: int, threads: int, force_bf16: bool = False
) -> tp.Tuple[tp.List[str], tp.Optional[tp.Dict[str, str]]]:
    """The subprocess of one backend: this script in worker mode, or upstream's code."""
    if not backend.startswith("upstream"):
        return [
            sys.executable,
            __file__,
            "--worker",
            backend,
            "--workdir",
            str(workdir),
            "--reps",
            str(reps),
            "--threads",
            str(threads),
            *(["--force-bf16"] if force_bf16 else []),
        ], None
    from tests import oracle
    from demucs.configs import HTDEMUCS

    if not oracle.available():
        raise SystemExit(
            "the upstream baseline needs the oracle (make oracle), or pass "
            "--backends without upstream"
        )
    code = UPSTREAM_WORKER.format(
        threads=threads, workdir=str(workdir), reps=reps, config=dict(HTDEMUCS)
    )
    env = dict(oracle.env(), OMP_NUM_THREADS=str(threads))
    if backend == "upstream-tuned":
        env.update(TUNED_ENV)
    code = code.replace("out-upstream.npy", f"out-{backend}.npy")
    return [sys.executable, "-c", code], env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the exported files there (reused if present)",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--force-bf16",
        action="store_true",
        help="run torch-bf16 even without native bf16 (emulated, slow)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(
            json.dumps(worker(args.worker, args.workdir, args.reps, args.threads, args.force_bf16))
        )
        return

    import numpy as np

    from demucs.onnx.verify import snr_db

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        backends = args.backends.split(",")
        sizes = prepare(workdir, backends)
        results = {}
        for backend in backends:
            command, env = _worker_command(
                backend, workdir, args.reps, args.threads, args.force_bf16
            )
            done = subprocess.run(
                command, capture_output=True, text=True, check=False, env=env, cwd=str(workdir)
            )
            if done.returncode != 0:
                print(f"{backend} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{backend}: {results[backend]}", file=sys.stderr)

        reference = np.load(workdir / "out-torch.npy") if "torch" in results else None
        base = results.get("torch")
        upstream = results.get("upstream")
        print(
            f"\nhtdemucs architecture, random weights, one segment of 7.8 s stereo; "
            f"{args.threads} threads, median of {args.reps} runs. Parameters: "
            f"{sizes['params'] / 1e6:.1f} MB (float32).\n"
        )
        print(
            "| backend | file MB | init s | segment s | speed vs upstream | speed vs torch | "
            "peak RSS MB | RSS vs torch | SNR vs torch dB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for backend, row in results.items():
            precision = backend.split("-")[1] if backend.startswith("ort") else None
            size = f"{sizes[precision] / 1e6:.1f}" if precision else "-"
            speed = f"{base['segment_s'] / row['segment_s']:.2f}x" if base else "-"
            versus = f"{upstream['segment_s'] / row['segment_s']:.2f}x" if upstream else "-"
            rss = f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f}x" if base else "-"
            snr = "ref"
            if reference is not None and backend != "torch":
                snr = f"{snr_db(reference, np.load(workdir / f'out-{backend}.npy')):.1f}"
            print(
                f"| {backend} | {size} | {row['init_s']:.2f} | {row['segment_s']:.2f} | "
                f"{versus} | {speed} | {row['peak_rss_mb']:.0f} | {rss} | {snr} |"
            )
        pairs = (
            ("torch", "upstream-tuned", "both with the allocator setting"),
            ("torch-untuned", "upstream", "both with glibc's defaults"),
        )
        for ours, theirs, how in pairs:
            if ours in results and theirs in results:
                ratio = results[theirs]["segment_s"] / results[ours]["segment_s"]
                print(f"- like for like, {how}: ours {ratio:.2f}x upstream")


if __name__ == "__main__":
    main()
