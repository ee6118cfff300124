"""``--engine ray``: Ray Data's actor-pool batch inference over the tracks.

One row per input in a Ray dataset (one row per block, so that a retried task redoes one
track only), mapped by an actor pool whose actors each hold one
:class:`demucs.batch.worker.TrackWorker` (the model is loaded once per actor). Ray
restarts an actor that dies and retries its track on the pool (at most
:data:`MAX_ATTEMPTS` times); tracks whose every attempt died get a failed row. Ray is
imported only here, when this engine is chosen.
"""

from __future__ import annotations

import argparse
import json
import logging
import typing as tp
import warnings

from .worker import Row, TrackWorker

__all__ = ["run", "MAX_ATTEMPTS", "RayUnavailable"]

MAX_ATTEMPTS = 3
ROW_COLUMN = "row"
IN_FLIGHT_PER_WORKER = 2  # the next track waits at the actor: no idle gap between tracks


class RayUnavailable(ImportError):
    """Ray is not installed."""


class _RayWorker:
    """Ray Data callable class: a batch of one job -> a batch of one JSON row."""

    def __init__(self, args: argparse.Namespace, threads: tp.Optional[int]) -> None:
        self.worker = TrackWorker(args, threads)

    def __call__(self, batch: tp.Mapping[str, tp.Any]) -> tp.Dict[str, tp.List[str]]:
        keys = list(batch)
        rows = []
        for index in range(len(batch[keys[0]])):
            job = {key: str(batch[key][index]) for key in keys}
            rows.append(json.dumps(self.worker(job)))
        return {ROW_COLUMN: rows}


def _import_ray() -> tp.Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise RayUnavailable(
            f"--engine ray needs Ray Data: pip install 'demucs[ray]' ({err})"
        ) from None
    return ray


def default_workers(ray: tp.Any, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """As many actors as the cluster's GPUs (or CPUs) allow."""
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-6)))


def run(
    jobs: tp.Sequence[tp.Mapping[str, str]],
    args: argparse.Namespace,
    workers: tp.Optional[int],
    address: tp.Optional[str] = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> tp.Iterator[Row]:
    """Yields one row per job, as results arrive. Uses the Ray instance this process is
    already connected to, else connects to ``address`` (none: starts a local one)."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            include_dashboard=False,
            log_to_driver=bool(args.verbose),
        )
        started = True
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.max_errored_blocks)
    context.enable_progress_bars = bool(args.verbose)
    context.max_errored_blocks = -1  # a track whose attempts all died: no row, see below
    logging.getLogger("ray.data").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        size = workers or default_workers(ray, cpus_per_worker, gpus_per_worker)
        threads = max(1, int(cpus_per_worker))
        dataset = ray.data.from_items(list(jobs), override_num_blocks=max(1, len(jobs)))
        resources: tp.Dict[str, float] = {"num_cpus": cpus_per_worker}
        if gpus_per_worker > 0:
            resources["num_gpus"] = gpus_per_worker
        with warnings.catch_warnings():
            # max_task_retries has no named parameter yet: it bounds the retries of a track
            # whose actor dies (Ray Data's default is to retry forever).
            warnings.simplefilter("ignore", DeprecationWarning)
            results = dataset.map_batches(
                _RayWorker,
                fn_constructor_kwargs={"args": args, "threads": threads},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(
                    size=size, max_tasks_in_flight_per_actor=IN_FLIGHT_PER_WORKER
                ),
                max_task_retries=MAX_ATTEMPTS - 1,
                **resources,
            )
        answered = set()
        for record in results.iter_rows():
            row = json.loads(record[ROW_COLUMN])
            answered.add(row["input"])
            yield row
        for job in jobs:
            if job["input"] not in answered:
                yield {
                    "input": job["input"],
                    "status": "failed",
                    "error": f"{job['input']}: the worker died while separating it "
                    f"({MAX_ATTEMPTS} attempts)",
                    "stems": [],
                    "audio_seconds": None,
                    "wall_seconds": None,
                    "worker": None,
                }
    finally:
        context.enable_progress_bars, context.max_errored_blocks = saved
        if started:
            ray.shutdown()
