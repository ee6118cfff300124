"""What callers hear while a separation runs: upstream 4.1.0's callback dicts and a
progress bar, as core job hooks (see :data:`demucs.core.engine.JobHook`)."""

from __future__ import annotations

import copy
import typing as tp

from .plan import Job

__all__ = ["Callback", "JobHook", "callback_hook", "locked_hook", "progress_bar"]

Callback = tp.Callable[[tp.Dict[str, tp.Any]], None]
#: Called with ``(job, "start" | "end")`` around each forward pass.
JobHook = tp.Callable[[Job, str], None]


def _replace_dict(
    base: tp.Optional[tp.Mapping[str, tp.Any]], **values: tp.Any
) -> tp.Dict[str, tp.Any]:
    out = dict(copy.copy(base)) if base else {}
    out.update(values)
    return out


def callback_hook(
    callback: Callback,
    callback_arg: tp.Optional[tp.Mapping[str, tp.Any]],
    models: int,
    shifts: int,
    split: bool,
) -> JobHook:
    """Turns upstream 4.1.0's ``callback(dict)`` into a job hook. The dict holds
    ``callback_arg``'s entries, then ``model_idx_in_bag``, ``shift_idx``,
    ``segment_offset`` (the segment's first sample in the shifted mix, as upstream),
    ``models`` and ``state`` (``"start"`` before the forward pass, ``"end"`` after)."""

    def hook(job: Job, state: str) -> None:
        lane = job.lane
        callback(
            _replace_dict(
                callback_arg,
                model_idx_in_bag=lane.member_index,
                shift_idx=lane.shift_index if shifts else 0,
                segment_offset=job.offset if split else 0,
                models=models,
                state=state,
            )
        )

    return hook


def locked_hook(hook: JobHook, lock: tp.Any) -> JobHook:
    """``hook`` called while holding ``lock`` (threads may run segments)."""

    def locked(job: Job, state: str) -> None:
        with lock:
            hook(job, state)

    return locked


def progress_bar(
    seconds_per_segment: float = 0.0, unit: str = "seconds"
) -> tp.Tuple[tp.Callable[[int, int], None], tp.Callable[[], None]]:
    """A tqdm bar over segments, counted in seconds of audio as upstream's (or in
    segments when ``seconds_per_segment`` is 0): ``(progress(done, total), close())``."""
    import tqdm

    scale = float(format(seconds_per_segment, ".2f"))
    bar = tqdm.tqdm(
        total=1, ncols=120, unit=unit if scale else "segments", unit_scale=scale or False
    )

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return progress, bar.close
