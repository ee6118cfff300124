"""``--engine local``: a pool of worker processes on this machine.

Each process loads the model once (:class:`demucs.batch.worker.TrackWorker`) and takes
one track at a time. A process that dies (killed, out of memory) breaks the pool: the
pool is started again and the tracks that were in flight are given to it again, each at
most :data:`MAX_ATTEMPTS` times in all (a track that kills its worker every time then
fails its row instead of stopping the job).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import typing as tp
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .worker import Row, TrackWorker

__all__ = ["run", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 3
_WORKER: tp.Optional[TrackWorker] = None  # one per process of the pool


def _start_worker(args: argparse.Namespace, threads: int) -> None:
    global _WORKER
    _WORKER = TrackWorker(args, threads)


def _separate(job: tp.Mapping[str, str]) -> Row:
    if _WORKER is None:  # pragma: no cover - the initializer always ran
        raise RuntimeError("worker not initialised")
    return _WORKER(job)


def died_row(job: tp.Mapping[str, str], attempts: int) -> Row:
    """The row of a track whose worker process died on every attempt."""
    return {
        "input": job["input"],
        "status": "failed",
        "error": f"{job['input']}: the worker process died while separating it "
        f"({attempts} attempts)",
        "stems": [],
        "audio_seconds": None,
        "wall_seconds": None,
        "worker": None,
    }


def run(
    jobs: tp.Sequence[tp.Mapping[str, str]],
    args: argparse.Namespace,
    workers: int,
    threads: tp.Optional[int] = None,
) -> tp.Iterator[Row]:
    """Yields one row per job, as results arrive (not in input order).

    ``threads``: torch threads per worker (default: the cores shared among the workers).
    """
    threads = max(1, threads or (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no fork of a process using threads
    pending = collections.deque(range(len(jobs)))
    attempts: tp.Counter[int] = collections.Counter()
    while pending:
        pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(args, threads)
        )
        inflight: tp.Dict[Future, int] = {}
        broken = False
        try:
            while (pending and not broken) or inflight:
                while pending and not broken and len(inflight) < workers:
                    index = pending.popleft()
                    inflight[pool.submit(_separate, jobs[index])] = index
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for future in done:
                    index = inflight.pop(future)
                    try:
                        row = future.result()
                    except BrokenProcessPool:
                        broken = True
                        attempts[index] += 1
                        if attempts[index] >= MAX_ATTEMPTS:
                            yield died_row(jobs[index], attempts[index])
                        else:
                            pending.appendleft(index)
                        continue
                    yield row
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
