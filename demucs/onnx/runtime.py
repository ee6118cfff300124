"""The ONNX Runtime backend: an exported graph (see :mod:`demucs.export_onnx`) as a member
of the separation core, plus a numpy-only whole-track runner (:class:`OnnxSeparator`).

Nothing here imports torch: with numpy and onnxruntime installed, this module and
:mod:`demucs.core` separate tracks as ``demucs --onnx`` does (app developers can read
:meth:`OnnxSeparator.separate` as the reference to port).

Graph metadata (written by the exporter): ``model_name``, ``sample_rate``,
``audio_channels``, ``sources`` (comma separated), ``segment_samples`` (length of the
segments a track is cut into), ``input_samples`` (graph input length), ``precision``,
``batch`` (``1`` or ``dynamic``), ``members``, ``stems`` ... A file whose metadata or
shapes cannot be right is refused when it is opened.
"""

from __future__ import annotations

import os
import re
import typing as tp
from pathlib import Path

import numpy as np

from ..core import engine
from ..core.plan import Member, check_split_params
from ..core.stats import TrackStats
from ..errors import ModelLoadingError
from ..model_checks import (
    MAX_AUDIO_CHANNELS,
    SAMPLERATE_RANGE,
    check_audio_channels,
    check_name,
    check_samplerate,
    check_sources,
)

__all__ = [
    "OnnxSeparator",
    "SegmentSpec",
    "make_session_options",
    "onnx_members",
    "select_providers",
    "available_providers",
    "load_onnx",
    "PROVIDER_ALIASES",
]

#: Short names for ONNX Runtime's execution providers, in the default order of preference.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
#: Providers never chosen by default (they need per-model setup or long first runs).
_OPT_IN = {"TensorrtExecutionProvider", "OpenVINOExecutionProvider"}
#: Longest graph input a metadata may declare (samples).
MAX_INPUT_SAMPLES = 1 << 26
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class SegmentSpec(tp.NamedTuple):
    """What the graph expects, read from its metadata and checked against its shapes."""

    sample_rate: int
    audio_channels: int
    sources: tp.List[str]
    segment_samples: int  # length of the segments a track is cut into
    input_samples: int  # graph input length (>= segment_samples)
    dynamic_batch: bool
    model_name: str
    precision: str


def make_session_options(
    threads: tp.Optional[int] = None,
    *,
    optimization: str = "extended",
    memory_arena: bool = True,
    memory_pattern: bool = False,
    optimized_model_path: tp.Optional[str] = None,
) -> tp.Any:
    """ONNX Runtime session options.

    Args:
        threads: intra-op threads; ``None`` or 0 lets ONNX Runtime use one per physical
            core.
        optimization: ``extended`` (default: fusions), ``all`` (adds layout
            transformations; not portable across machines when saved), ``basic`` or
            ``disable``.
        memory_arena: ONNX Runtime's CPU buffer cache. On: without it every large
            buffer is a fresh ``mmap`` whose pages are zeroed again on every run.
        memory_pattern: pre-plan one block for all the buffers of a run. Off: the
            planned block is much larger than the live peak on Demucs graphs.
        optimized_model_path: save the optimised graph there (faster start-up later).
    """
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = levels[optimization]
    options.enable_cpu_mem_arena = memory_arena
    options.enable_mem_pattern = memory_pattern
    if optimized_model_path:
        options.optimized_model_filepath = str(optimized_model_path)
    return options


# ------------------------------------------------------------------------ providers


def available_providers() -> tp.List[str]:
    """Execution providers of the installed ONNX Runtime."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _provider_name(name: str) -> str:
    key = name.strip()
    if key.lower() in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[key.lower()]
    if key.lower().endswith("executionprovider"):
        return key
    raise ValueError(
        f"unknown ONNX Runtime provider {name!r}: use one of "
        f"{', '.join(PROVIDER_ALIASES)} or a full name such as "
        "CPUExecutionProvider"
    )


def select_providers(
    requested: tp.Optional[tp.Sequence[str]] = None,
    device: tp.Any = None,
    available: tp.Optional[tp.Sequence[str]] = None,
) -> tp.List[tp.Any]:
    """Execution providers for a session, in order of preference.

    Args:
        requested: names (``cuda``, ``coreml``, ``CPUExecutionProvider``...); each must be
            available. CPU is appended as the fallback for the operators others lack.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (the ``demucs -d`` flag), used when
            ``requested`` is None.
        available: the installed providers (default: ONNX Runtime's).

    Default (neither given): the best available of CUDA, ROCm, CoreML, DirectML, then CPU.

    Raises:
        ValueError: an unknown or unavailable provider, or an unsupported device.
    """
    have = list(available) if available is not None else available_providers()
    cpu = PROVIDER_ALIASES["cpu"]
    if requested:
        chosen: tp.List[tp.Any] = []
        for name in requested:
            full = _provider_name(name)
            if full not in have:
                raise ValueError(
                    f"ONNX Runtime provider {name!r} is not available here "
                    f"(available: {', '.join(have) or 'none'})"
                )
            if full not in chosen:
                chosen.append(full)
        if cpu not in chosen and cpu in have:
            chosen.append(cpu)
        return chosen
    if device is not None:
        match = _DEVICE.match(str(device).strip())
        if match is None:
            raise ValueError(
                f"device {str(device)!r} is not supported with an ONNX model (use cpu or cuda)"
            )
        kind, index = match.groups()
        if kind == "cpu":
            return [cpu]
        if PROVIDER_ALIASES["cuda"] not in have:
            raise ValueError(
                f"device {str(device)!r} needs onnxruntime-gpu: this ONNX "
                "Runtime has no CUDAExecutionProvider"
            )
        return [(PROVIDER_ALIASES["cuda"], {"device_id": int(index or 0)}), cpu]
    best = [
        full
        for full in PROVIDER_ALIASES.values()
        if full in have and full not in _OPT_IN and full != cpu
    ]
    return best[:1] + [cpu]


# ------------------------------------------------------------------------ metadata


def _int_meta(
    meta: tp.Mapping[str, str],
    key: str,
    origin: str,
    low: int,
    high: int,
    default: tp.Optional[int] = None,
) -> int:
    raw = meta.get(key)
    if raw is None:
        if default is None:
            raise ModelLoadingError(
                f"{origin}: the ONNX file lacks the metadata {key!r}: "
                "export it with python -m demucs.export_onnx"
            )
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadingError(f"{origin}: metadata {key}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ModelLoadingError(f"{origin}: metadata {key}={value} is out of range [{low}, {high}]")
    return value


def read_spec(session: tp.Any, origin: tp.Union[str, os.PathLike] = "ONNX model") -> SegmentSpec:
    """The graph's :class:`SegmentSpec`, checked against its input and output shapes.

    Raises ModelLoadingError when the metadata is missing, out of range, or disagrees
    with the graph (rank, channels, number of sources, lengths).
    """
    origin = str(origin)
    meta = session.get_modelmeta().custom_metadata_map
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 1:
        raise ModelLoadingError(
            f"{origin}: expected one input and one output, got {len(inputs)} and {len(outputs)}"
        )
    in_shape, out_shape = list(inputs[0].shape), list(outputs[0].shape)
    if len(in_shape) != 3 or len(out_shape) != 4:
        raise ModelLoadingError(
            f"{origin}: expected a (batch, channels, samples) input and a "
            f"(batch, sources, channels, samples) output, got shapes "
            f"{in_shape} and {out_shape}"
        )
    if "sources" not in meta:
        raise ModelLoadingError(
            f"{origin}: the ONNX file lacks the metadata 'sources': "
            "export it with python -m demucs.export_onnx"
        )
    sources = check_sources(meta["sources"].split(","), origin)
    static_in = in_shape[2] if isinstance(in_shape[2], int) else None
    sample_rate = check_samplerate(
        _int_meta(meta, "sample_rate", origin, *SAMPLERATE_RANGE), origin
    )
    channels = check_audio_channels(
        _int_meta(
            meta,
            "audio_channels",
            origin,
            1,
            MAX_AUDIO_CHANNELS,
            in_shape[1] if isinstance(in_shape[1], int) else None,
        ),
        origin,
    )
    input_samples = _int_meta(meta, "input_samples", origin, 1, MAX_INPUT_SAMPLES, static_in)
    segment_samples = _int_meta(meta, "segment_samples", origin, 1, input_samples)
    expected = {
        "input channels": (in_shape[1], channels),
        "input samples": (in_shape[2], input_samples),
        "output sources": (out_shape[1], len(sources)),
        "output channels": (out_shape[2], channels),
        "output samples": (out_shape[3], input_samples),
    }
    for what, (actual, declared) in expected.items():
        if isinstance(actual, int) and actual != declared:
            raise ModelLoadingError(
                f"{origin}: the graph has {actual} {what} but its metadata declares {declared}"
            )
    model_name = meta.get("model_name", "").strip()
    try:
        model_name = check_name(model_name, "model name", origin)
    except ModelLoadingError:
        model_name = ""  # the command then names the output folder after the file
    return SegmentSpec(
        sample_rate=sample_rate,
        audio_channels=channels,
        sources=sources,
        segment_samples=segment_samples,
        input_samples=input_samples,
        dynamic_batch=not isinstance(in_shape[0], int),
        model_name=model_name if model_name != "?" else "",
        precision=meta.get("precision", "fp32"),
    )


def _is_onnxruntime_error(error: BaseException) -> bool:
    """ONNX Runtime's own exceptions only derive from ``Exception``."""
    return type(error).__module__.startswith("onnxruntime")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class OnnxSeparator:
    """An ONNX Runtime session on an exported Demucs graph.

    Args:
        model: path to the ``.onnx`` file (or its bytes).
        threads, optimization, memory_arena, memory_pattern, optimized_model_path: see
            :func:`make_session_options`.
        providers: execution providers (default: :func:`select_providers`).
        session_options: ready-made ``SessionOptions`` (overrides the above).

    Raises:
        ModelLoadingError: the graph's metadata or shapes cannot be right.
    """

    def __init__(
        self,
        model: tp.Union[str, os.PathLike, bytes],
        *,
        threads: tp.Optional[int] = None,
        optimization: str = "extended",
        memory_arena: bool = True,
        memory_pattern: bool = False,
        optimized_model_path: tp.Optional[str] = None,
        providers: tp.Optional[tp.Sequence[tp.Any]] = None,
        session_options: tp.Any = None,
    ) -> None:
        import onnxruntime as ort

        options = session_options or make_session_options(
            threads,
            optimization=optimization,
            memory_arena=memory_arena,
            memory_pattern=memory_pattern,
            optimized_model_path=optimized_model_path,
        )
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(
            source, options, providers=list(providers or select_providers())
        )
        origin = "ONNX model" if isinstance(model, bytes) else str(model)
        self.spec = read_spec(self.session, origin)
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    @property
    def sources(self) -> tp.List[str]:
        return list(self.spec.sources)

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.spec.audio_channels

    def run_segment(self, mix: np.ndarray) -> np.ndarray:
        """Runs the graph on ``(B, C, input_samples)``; returns ``(B, S, C, input_samples)``."""
        mix = np.ascontiguousarray(mix, dtype=np.float32)
        if self.spec.dynamic_batch or mix.shape[0] == 1:
            return self.session.run([self._output], {self._input: mix})[0]
        return np.concatenate(
            [self.session.run([self._output], {self._input: item[None]})[0] for item in mix]
        )

    def members(self, max_batch: int = 1) -> tp.List[Member]:
        """This graph as a core member (see :func:`onnx_members`)."""
        return onnx_members(self, max_batch)

    def separate(
        self,
        mix: np.ndarray,
        *,
        shifts: int = 1,
        split: bool = True,
        overlap: float = 0.25,
        transition_power: float = 1.0,
        normalize: bool = True,
        rng: tp.Any = None,
        progress: tp.Optional[tp.Callable[[int, int], None]] = None,
    ) -> np.ndarray:
        """Separates a whole track held in memory (numpy only).

        Args:
            mix: ``(C, T)`` or ``(B, C, T)`` float audio at :attr:`sample_rate`.
            shifts, overlap, transition_power: as ``apply_model``.
            split: must stay True unless the track fits in one segment.
            normalize: normalise by the mono mix's mean/std and undo it on the stems.
            rng: unused, kept for compatibility: offsets are drawn from :mod:`random`
                (seed it to reproduce a run).
            progress: called with ``(segments_done, segments_total)``.
        Returns:
            ``(S, C, T)`` or ``(B, S, C, T)`` float32 stems.
        """
        del rng
        audio = np.asarray(mix, dtype=np.float32)
        squeeze = audio.ndim == 2
        if squeeze:
            audio = audio[None]
        if audio.ndim != 3 or audio.shape[1] != self.spec.audio_channels:
            raise ValueError(
                f"mix must be (channels={self.spec.audio_channels}, samples) "
                f"or (batch, channels, samples), got {np.shape(mix)}"
            )
        check_split_params(shifts, overlap, transition_power)
        if not split and audio.shape[-1] > self.spec.input_samples:
            raise ValueError(
                f"{audio.shape[-1]} samples do not fit in one segment of "
                f"{self.spec.input_samples}: use split=True"
            )
        results = []
        for item in audio:
            stats = TrackStats.of_array(item) if normalize else TrackStats(item.shape[-1])
            track = engine.ArrayInput(item[None], engine.NUMPY)
            blocks = [
                stems
                for _, _, stems in engine.separate(
                    onnx_members(self),
                    track,
                    sources=len(self.spec.sources),
                    samplerate=self.spec.sample_rate,
                    shifts=shifts,
                    overlap=overlap,
                    transition_power=transition_power,
                    mean=stats.mean,
                    std=stats.std,
                    order="memory",
                    progress=progress,
                )
            ]
            results.append(np.concatenate(blocks, axis=-1)[0])
        out = np.stack(results).astype(np.float32, copy=False)
        return out[0] if squeeze else out


def onnx_members(runtime: OnnxSeparator, max_batch: int = 1) -> tp.List[Member]:
    """The core member of an exported graph (one member: a bag exported as one graph
    applies its weights inside).

    Every segment (``segment_samples``, shorter at the end of the track) is padded to
    the graph's fixed ``input_samples`` with its real neighbouring samples and the
    output centre-trimmed. A graph with a fixed batch of 1 gets one segment per call.
    The graph draws nothing from :mod:`random`. ``runtime.run_segment`` is looked up at
    every call, so wrapping it later takes effect.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    spec = runtime.spec
    input_samples = int(spec.input_samples)
    expected = (len(spec.sources), spec.audio_channels, input_samples)

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            out = runtime.run_segment(batch)
        except Exception as err:
            if _is_onnxruntime_error(err):
                raise RuntimeError(f"ONNX Runtime: {_one_line(err)}") from err
            raise
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 4 or tuple(out.shape[1:]) != expected:
            raise RuntimeError(
                f"the ONNX graph returned shape {out.shape}, expected "
                f"(batch, {', '.join(map(str, expected))})"
            )
        return out

    def valid_length(length: int) -> int:
        if length > input_samples:
            raise ValueError(
                f"a segment of {length} samples does not fit in the graph's "
                f"{input_samples} input samples"
            )
        return input_samples

    return [
        Member(
            run=run,
            segment_length=int(spec.segment_samples),
            valid_length=valid_length,
            weights=[1.0] * len(spec.sources),
            max_batch=max_batch if spec.dynamic_batch else 1,
        )
    ]


def load_onnx(
    path: tp.Union[str, os.PathLike],
    providers: tp.Optional[tp.Sequence[tp.Any]] = None,
    threads: tp.Optional[int] = None,
) -> OnnxSeparator:
    """Opens an exported graph; any problem is a one-line :class:`ModelLoadingError`."""
    path = Path(path)
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file"
        raise ModelLoadingError(f"cannot load ONNX model {path}: {reason}")
    try:
        return OnnxSeparator(path, threads=threads, providers=providers)
    except ModelLoadingError:
        raise
    except Exception as err:  # noqa: BLE001 - ORT's errors only derive from Exception
        raise ModelLoadingError(f"cannot load ONNX model {path}: {_one_line(err)}") from None
