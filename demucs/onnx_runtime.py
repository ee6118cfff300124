"""Former home of the ONNX Runtime runner: now :mod:`demucs.onnx.runtime`."""

from .core.plan import check_split_params, transition_weight
from .onnx.runtime import OnnxSeparator, SegmentSpec, make_session_options

__all__ = [
    "OnnxSeparator",
    "SegmentSpec",
    "make_session_options",
    "transition_weight",
    "check_split_params",
]
