"""The separation core, without PyTorch: what every way of separating shares.

* :mod:`demucs.core.plan`: the segment/shift plan, blending weights, argument checks;
* :mod:`demucs.core.stats`: the track's normalisation statistics;
* :mod:`demucs.core.engine`: runs a plan on an in-memory or streamed track with the
  arrays of a backend (numpy, or torch tensors through :mod:`demucs.apply`).

Backends plug in as :class:`~demucs.core.plan.Member` objects: a PyTorch model
(:func:`demucs.apply.torch_members`) or an exported graph in ONNX Runtime
(:func:`demucs.onnx.runtime.onnx_members`).
"""

from .engine import NUMPY, ArrayInput, BlockInput, NumpyOps, Ops, TrackInput, separate
from .plan import (
    MAX_SHIFT_SECONDS,
    Job,
    Lane,
    Member,
    check_split_params,
    max_shift_samples,
    plan_lanes,
    segment_stride,
    source_coefficients,
    transition_weight,
)
from .stats import TrackStats

__all__ = [
    "MAX_SHIFT_SECONDS",
    "Member",
    "Job",
    "Lane",
    "check_split_params",
    "transition_weight",
    "max_shift_samples",
    "segment_stride",
    "plan_lanes",
    "source_coefficients",
    "TrackStats",
    "separate",
    "ArrayInput",
    "BlockInput",
    "TrackInput",
    "Ops",
    "NumpyOps",
    "NUMPY",
]
