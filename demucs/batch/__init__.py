"""``demucs-batch INPUT... -o OUT``: separate a whole catalogue, resumably.

INPUT are files, folders (searched recursively) or ``.txt`` lists of paths, named as by
``demucs`` (:mod:`demucs.tracks`); model and separation flags are ``demucs``'s own
(the parser extends :func:`demucs.separate.get_parser`). Engines:

- ``--engine local`` (default): a pool of ``--workers`` processes on this machine
  (:mod:`demucs.batch.local`);
- ``--engine ray [--address ADDR]``: Ray Data's actor pool on a Ray cluster, or a local
  Ray instance without an address (:mod:`demucs.batch.ray_engine`, needs
  ``pip install 'demucs[ray]'``).

Every input gets one row in ``OUT/manifest.jsonl``, appended (and flushed) as results
arrive: ``input``, ``status`` (done, skipped, failed), ``error``, ``stems``,
``audio_seconds``, ``wall_seconds``, ``worker`` (host:pid), ``started`` (Unix time). A
rerun appends new rows; the last row of an input is its state. Tracks whose stems all
exist are skipped, so the same command can be killed and run again at any time; stems
appear only once complete. The last line printed sums up the run; the exit status is 1
if any track failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import typing as tp
from pathlib import Path

from .. import separate
from ..tracks import TrackInput
from .worker import job_of

__all__ = ["PROG", "MANIFEST", "ENGINES", "get_parser", "main", "run"]

PROG = "demucs-batch"
MANIFEST = "manifest.jsonl"
ENGINES = ("local", "ray")


class _Summary:
    """Counts the rows of this run for the final line."""

    def __init__(self) -> None:
        self.counts: tp.Counter[str] = collections.Counter()
        self.audio = 0.0
        self.start = time.perf_counter()

    def add(self, row: tp.Mapping[str, tp.Any]) -> None:
        self.counts[row["status"]] += 1
        if row["status"] == "done" and row.get("audio_seconds"):
            self.audio += float(row["audio_seconds"])

    def line(self) -> str:
        wall = time.perf_counter() - self.start
        tracks = sum(self.counts.values())
        factor = self.audio / wall if wall > 0 else 0.0
        return (
            f"{PROG}: {tracks} tracks: {self.counts['done']} separated, "
            f"{self.counts['skipped']} skipped, {self.counts['failed']} failed; "
            f"{self.audio / 3600:.3f} audio hours separated in {wall:.1f} s "
            f"(real-time factor {factor:.1f}x)"
        )


def get_parser() -> argparse.ArgumentParser:
    """``demucs``'s parser plus the batch flags."""
    parser = separate.get_parser()
    parser.prog = PROG
    parser.description = (
        "Separate many tracks (files, folders, .txt lists of paths) "
        "with one model load per worker; resumable (tracks whose stems "
        f"exist are skipped), with a manifest OUT/{MANIFEST}."
    )
    parser.set_defaults(skip_existing=True)
    group = parser.add_argument_group("batch")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: worker processes on this machine (default); ray: a Ray "
        "Data actor pool (pip install 'demucs[ray]').",
    )
    group.add_argument(
        "--address",
        default=None,
        help="--engine ray: address of the Ray cluster (default: the one "
        "RAY_ADDRESS names, else a local Ray instance).",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Worker processes, each with its own copy of the model "
        "(local default: 1; ray default: as many as the cluster's CPUs, or "
        "GPUs with --gpus-per-worker, allow).",
    )
    group.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per worker, and its torch threads (local default: the "
        "cores divided by --workers; ray default: 1, reserved on the cluster).",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="--engine ray: GPUs reserved per worker (e.g. 1, or 0.5 for two workers per GPU).",
    )
    return parser


def _absolute(args: argparse.Namespace) -> None:
    """Workers may run elsewhere (another cwd, another node): send absolute paths."""
    args.out = args.out.absolute()
    for name in ("repo", "onnx"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, Path(value).absolute())


def _check(args: argparse.Namespace) -> None:
    separate.check_options(args)
    if args.jobs:
        raise separate.CommandError(
            "-j/--jobs splits one track in memory; demucs-batch "
            "streams each track: use --workers instead"
        )
    if args.workers is not None and args.workers < 1:
        raise separate.CommandError(f"--workers must be at least 1, got {args.workers}")
    if (args.cpus_per_worker is not None and args.cpus_per_worker <= 0) or args.gpus_per_worker < 0:
        raise separate.CommandError(
            "--cpus-per-worker must be positive and --gpus-per-worker not negative"
        )
    if args.engine == "local" and (args.address or args.gpus_per_worker):
        raise separate.CommandError("--address and --gpus-per-worker are for --engine ray")


def _rows(
    jobs: tp.List[tp.Dict[str, str]], args: argparse.Namespace
) -> tp.Iterator[tp.Dict[str, tp.Any]]:
    if args.engine == "ray":
        from . import ray_engine

        try:
            yield from ray_engine.run(
                jobs,
                args,
                args.workers,
                args.address,
                args.cpus_per_worker or 1.0,
                args.gpus_per_worker,
            )
        except ray_engine.RayUnavailable as err:
            raise separate.CommandError(str(err)) from None
    else:
        from . import local

        yield from local.run(
            jobs,
            args,
            args.workers or 1,
            int(args.cpus_per_worker) if args.cpus_per_worker else None,
        )


def run(args: argparse.Namespace) -> int:
    """Runs the job the flags describe; returns the exit status (raises CommandError)."""
    _check(args)
    _absolute(args)
    items: tp.List[TrackInput] = separate.find_tracks(args.tracks, args, lists=True)
    jobs = [job_of(TrackInput(item.path.absolute(), item.track, item.trackext)) for item in items]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        manifest = open(args.out / MANIFEST, "a", encoding="utf-8")
    except OSError as err:
        raise separate.CommandError(f"cannot write to {args.out}: {err.strerror or err}") from None
    summary = _Summary()
    if not args.quiet:
        print(
            f"{PROG}: {len(jobs)} tracks, engine {args.engine}, manifest {args.out / MANIFEST}",
            flush=True,
        )
    with manifest:
        rows = _rows(jobs, args)
        try:
            for row in rows:
                if "fatal" in row:
                    raise separate.CommandError(row["fatal"])
                manifest.write(json.dumps(row) + "\n")
                manifest.flush()
                summary.add(row)
                if row["status"] == "failed":
                    print(f"{PROG}: error: {row['error']}", file=sys.stderr, flush=True)
                elif args.verbose:
                    print(f"{row['status']}: {row['input']}", flush=True)
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()
    print(summary.line(), flush=True)
    return 1 if summary.counts["failed"] else 0


def main(opts: tp.Optional[tp.Sequence[str]] = None) -> None:
    """Entry point of ``demucs-batch`` / ``python -m demucs.batch``; always exits."""
    parser = get_parser()
    args = parser.parse_args(opts)
    if args.list_models:
        separate.main(["--list-models"] + (["--repo", str(args.repo)] if args.repo else []))
        sys.exit(0)
    if not args.tracks:
        parser.error("the following arguments are required: INPUT")
    from ..io import install_signal_cleanup, install_warning_format

    install_signal_cleanup()  # SIGTERM/SIGHUP remove the temporary stems
    install_warning_format(PROG)
    try:
        status = run(args)
    except separate.CommandError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            f"\n{PROG}: interrupted (run the same command again to resume)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(130)
    sys.exit(status)
