"""One batch worker: loads the model once, then separates one track per call.

Both engines run this class (a process of the local pool, or a Ray Data actor); it
builds its separator with the ``demucs`` command's own construction and separates with
its per-track unit (streamed, stems renamed into place when complete), so a batch job
writes exactly what ``demucs`` writes for the same flags.
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
import time
import typing as tp
from pathlib import Path

from .. import separate
from ..tracks import TrackInput

__all__ = ["TrackWorker", "job_of", "Row"]

Row = tp.Dict[str, tp.Any]


def job_of(item: TrackInput) -> tp.Dict[str, str]:
    """What a worker needs to know about one input (plain strings: sent to processes)."""
    return {"input": str(item.path), "track": item.track, "trackext": item.trackext}


class TrackWorker:
    """Callable ``job -> manifest row`` (see :mod:`demucs.batch` for the row's fields).

    A model that cannot be loaded does not raise here: every call then answers a row
    with a ``fatal`` message, which stops the whole job (one clear line) instead of
    failing each track.

    Args:
        args: the parsed ``demucs-batch`` flags (paths already absolute).
        threads: torch threads for this worker (default: torch's own choice).
    """

    def __init__(self, args: argparse.Namespace, threads: tp.Optional[int] = None) -> None:
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.args = copy.copy(args)
        self.args.quiet, self.args.verbose, self.args.skip_existing = True, False, True
        self.fatal: tp.Optional[str] = None
        self.written = separate.WrittenFiles()
        if threads and self.args.onnx is None:
            import torch

            torch.set_num_threads(threads)
        try:
            self.separator, name = separate.build_separator(self.args)
        except separate.CommandError as err:
            self.fatal = str(err)
            return
        self.out = Path(self.args.out) / name

    def __call__(self, job: tp.Mapping[str, str]) -> Row:
        if self.fatal is not None:
            return {"input": job["input"], "fatal": self.fatal}
        item = TrackInput(Path(job["input"]), job["track"], job["trackext"])
        started = time.time()
        start = time.perf_counter()
        try:
            outcome = separate.process_track(
                item, self.separator, self.args, self.out, self.written
            )
        except Exception as err:  # noqa: BLE001 - one bad track must not stop the worker
            self.written.remove_all()
            outcome = separate.TrackOutcome(
                "failed", [], f"{item.path}: {type(err).__name__}: {' '.join(str(err).split())}"
            )
        except BaseException:  # interrupted: the track is complete or absent
            self.written.remove_all()
            raise
        return {
            "input": job["input"],
            "status": outcome.status,
            "error": outcome.error,
            "stems": [str(path) for path in outcome.stems],
            "audio_seconds": outcome.seconds,
            "wall_seconds": round(time.perf_counter() - start, 3),
            "worker": self.worker,
            "started": round(started, 3),
        }
