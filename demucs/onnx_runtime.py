"""Separate whole tracks with an exported Demucs ONNX graph (numpy + onnxruntime only).

This module imports nothing from the rest of the package, nor torch: copy it into an
application as is. The graph (see :mod:`demucs.export_onnx`) separates one fixed-length
segment; :class:`OnnxSeparator` does what ``demucs.apply.apply_model`` and the ``demucs``
command do around the model, with the same semantics:

* normalisation of the track by the mean and standard deviation of its mono mix
  (``normalize=True``, as ``demucs.separate`` does), undone on the stems;
* the shift trick: ``shifts`` random time offsets in ``[0, 0.5 s]``, separated and
  averaged (``rng.randint`` draws, so seeding Python's ``random`` reproduces
  ``apply_model``);
* overlapping segments (``overlap``, default 0.25) blended with triangular weights raised
  to ``transition_power``;
* every segment padded to the graph's input length with the real neighbouring samples
  (zeros beyond the track ends) and the output centre-trimmed back.

Shapes: a track is ``(channels, samples)`` or ``(batch, channels, samples)`` float32;
the stems are ``(sources, channels, samples)`` or ``(batch, sources, channels, samples)``.

Example::

    separator = OnnxSeparator("htdemucs.onnx")
    stems = separator.separate(track)            # (4, 2, samples)
    vocals = stems[separator.sources.index("vocals")]
"""
from __future__ import annotations

import random
import typing as tp

import numpy as np

__all__ = ["OnnxSeparator", "SegmentSpec", "make_session_options", "transition_weight"]

#: Largest random shift of the shift trick, in seconds (as ``demucs.apply``).
MAX_SHIFT_SECONDS = 0.5


class _RandInt(tp.Protocol):
    def randint(self, a: int, b: int) -> int: ...  # pragma: no cover


class _Chunk:
    """A window ``base[..., offset:offset + length]`` that pads from its surroundings."""

    def __init__(self, base: tp.Union[np.ndarray, "_Chunk"], offset: int = 0,
                 length: tp.Optional[int] = None) -> None:
        total = base.length if isinstance(base, _Chunk) else base.shape[-1]
        if not 0 <= offset < total:
            raise ValueError(f"offset {offset} outside of [0, {total})")
        available = total - offset
        self.length = available if length is None else min(available, length)
        if isinstance(base, _Chunk):
            self.base, self.offset = base.base, base.offset + offset
        else:
            self.base, self.offset = base, offset

    def padded(self, target: int) -> np.ndarray:
        """``(B, C, target)``: the window centred, extended with real samples or zeros."""
        delta = target - self.length
        if delta < 0:
            raise ValueError(f"cannot pad a chunk of {self.length} samples to {target}")
        total = self.base.shape[-1]
        start = self.offset - delta // 2
        end = start + target
        inner_start, inner_end = max(0, start), min(total, end)
        out = np.zeros(self.base.shape[:-1] + (target,), dtype=np.float32)
        out[..., inner_start - start: inner_end - start] = self.base[..., inner_start:inner_end]
        return out


def transition_weight(segment_samples: int, transition_power: float) -> np.ndarray:
    """Triangular blending window ``(segment_samples,)`` peaking at 1, to a power."""
    half = segment_samples // 2
    weight = np.concatenate([np.arange(1, half + 1),
                             np.arange(segment_samples - half, 0, -1)]).astype(np.float32)
    return (weight / weight.max()) ** transition_power


def _center_trim(x: np.ndarray, length: int) -> np.ndarray:
    excess = x.shape[-1] - length
    if excess < 0:
        raise ValueError(f"cannot trim {x.shape[-1]} samples to {length}")
    left = excess // 2
    return x[..., left: left + length]


class SegmentSpec(tp.NamedTuple):
    """What the graph expects, read from its metadata."""
    sample_rate: int
    audio_channels: int
    sources: tp.List[str]
    segment_samples: int   # length of the segments a track is cut into
    input_samples: int     # graph input length (>= segment_samples)
    dynamic_batch: bool
    model_name: str
    precision: str


def make_session_options(threads: tp.Optional[int] = None, *, optimization: str = "extended",
                         memory_arena: bool = True, memory_pattern: bool = False,
                         optimized_model_path: tp.Optional[str] = None) -> tp.Any:
    """ONNX Runtime session options.

    Args:
        threads: intra-op threads; ``None`` lets ONNX Runtime use one per physical core
            (best on a dedicated device), ``0`` is the same.
        optimization: ``extended`` (default: fusions), ``all`` (adds the NCHWc layout
            transformation: no faster on htdemucs with 2 x86 threads, 4.6-4.9 s against
            4.7-5.0 s per segment, and 80 MB more), ``basic`` or ``disable``.
        memory_arena: CPU memory arena (ONNX Runtime's buffer cache). On by default:
            without it every large buffer is a fresh ``mmap`` whose pages the kernel
            zeroes again on every run (htdemucs, 2 threads, interleaved runs: 4.2-4.4 s
            per segment with the arena, 4.7-6.0 s without, peak RSS 1.16 GB both).
        memory_pattern: pre-plan one block for all the buffers of a run. Off by
            default: on htdemucs the planned block is much larger than the live peak
            (peak RSS 1.96 GB instead of 1.16 GB with the arena), for at most ~10 %
            speed.
        optimized_model_path: save the optimised graph there; loading it later skips
            the optimisation (shorter start-up). Not portable across ORT versions or
            machines with other instruction sets when ``optimization="all"``.
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


def _read_spec(session: tp.Any) -> SegmentSpec:
    meta = session.get_modelmeta().custom_metadata_map
    shape = session.get_inputs()[0].shape
    missing = [key for key in ("sample_rate", "sources", "segment_samples") if key not in meta]
    if missing:
        raise ValueError(f"the ONNX file lacks the metadata {missing}: export it with "
                         "demucs.export_onnx")
    input_samples = int(meta.get("input_samples", shape[2]))
    return SegmentSpec(
        sample_rate=int(meta["sample_rate"]),
        audio_channels=int(meta.get("audio_channels", shape[1])),
        sources=meta["sources"].split(","),
        segment_samples=int(meta["segment_samples"]),
        input_samples=input_samples,
        dynamic_batch=not isinstance(shape[0], int),
        model_name=meta.get("model_name", "?"),
        precision=meta.get("precision", "fp32"),
    )


def check_split_params(shifts: int, overlap: float, transition_power: float) -> None:
    """Raises ValueError for settings ``apply_model`` would not accept."""
    if shifts < 0:
        raise ValueError(f"shifts must be >= 0, got {shifts}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if transition_power < 1:
        raise ValueError(f"transition_power must be >= 1, got {transition_power}")


class OnnxSeparator:
    """An ONNX Runtime session on an exported Demucs graph, and track-level separation.

    Args:
        model: path to the ``.onnx`` file (or its bytes).
        threads, optimization, memory_arena, memory_pattern, optimized_model_path: see
            :func:`make_session_options`.
        providers: ONNX Runtime execution providers (default CPU).
        session_options: ready-made ``SessionOptions`` (overrides the above).
    """

    def __init__(self, model: tp.Union[str, bytes, tp.Any], *,
                 threads: tp.Optional[int] = None, optimization: str = "extended",
                 memory_arena: bool = True, memory_pattern: bool = False,
                 optimized_model_path: tp.Optional[str] = None,
                 providers: tp.Optional[tp.Sequence[tp.Any]] = None,
                 session_options: tp.Any = None) -> None:
        import onnxruntime as ort

        options = session_options or make_session_options(
            threads, optimization=optimization, memory_arena=memory_arena,
            memory_pattern=memory_pattern, optimized_model_path=optimized_model_path)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(
            source, options, providers=list(providers or ["CPUExecutionProvider"]))
        self.spec = _read_spec(self.session)
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    # -- metadata ----------------------------------------------------------------------
    @property
    def sources(self) -> tp.List[str]:
        return list(self.spec.sources)

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.spec.audio_channels

    # -- one segment -------------------------------------------------------------------
    def run_segment(self, mix: np.ndarray) -> np.ndarray:
        """Runs the graph on ``(B, C, input_samples)``; returns ``(B, S, C, input_samples)``."""
        mix = np.ascontiguousarray(mix, dtype=np.float32)
        if self.spec.dynamic_batch or mix.shape[0] == 1:
            return self.session.run([self._output], {self._input: mix})[0]
        return np.concatenate([self.session.run([self._output], {self._input: item[None]})[0]
                               for item in mix])

    # -- whole tracks ------------------------------------------------------------------
    def separate(self, mix: np.ndarray, *, shifts: int = 1, split: bool = True,
                 overlap: float = 0.25, transition_power: float = 1.0,
                 normalize: bool = True, rng: tp.Optional[_RandInt] = None,
                 progress: tp.Optional[tp.Callable[[int, int], None]] = None) -> np.ndarray:
        """Separates a whole track.

        Args:
            mix: ``(C, T)`` or ``(B, C, T)`` float audio at :attr:`sample_rate`.
            shifts: random shifts averaged (0 disables the shift trick).
            split: cut into overlapping segments (needed for tracks longer than a
                segment); without it the track must fit in one segment.
            overlap: fraction of a segment shared with the next, in ``[0, 1)``.
            transition_power: >= 1, sharpness of the cross-fade.
            normalize: normalise by the mono mix's mean/std and undo it on the stems.
            rng: source of ``randint`` for the shifts (default: a fresh ``random.Random``;
                pass the ``random`` module to reproduce ``apply_model`` under a seed).
            progress: called with ``(segments_done, segments_total)``.
        Returns:
            ``(S, C, T)`` or ``(B, S, C, T)`` float32 stems.
        """
        audio = np.asarray(mix, dtype=np.float32)
        squeeze = audio.ndim == 2
        if squeeze:
            audio = audio[None]
        if audio.ndim != 3 or audio.shape[1] != self.spec.audio_channels:
            raise ValueError(f"mix must be (channels={self.spec.audio_channels}, samples) "
                             f"or (batch, channels, samples), got {np.shape(mix)}")
        check_split_params(shifts, overlap, transition_power)

        mean = std = None
        if normalize:
            mono = audio.mean(axis=1, keepdims=True)                 # (B, 1, T)
            mean = mono.mean(axis=-1, keepdims=True)                  # (B, 1, 1)
            std = mono.std(axis=-1, ddof=1, keepdims=True) if mono.shape[-1] > 1 \
                else np.ones_like(mean)
            std = np.where(std > 0, std, 1.0).astype(np.float32)
            audio = (audio - mean) / std

        self._progress = progress
        self._done = 0
        self._total = self._count_segments(audio.shape[-1], shifts, split, overlap)
        out = self._apply(audio, shifts, split, overlap, transition_power,
                          rng or random.Random())
        if normalize:
            out = out * std[:, None] + mean[:, None]
        out = out.astype(np.float32, copy=False)
        return out[0] if squeeze else out

    # -- internals, mirroring demucs.apply --------------------------------------------
    def _count_segments(self, length: int, shifts: int, split: bool, overlap: float) -> int:
        stride = max(1, int((1 - overlap) * self.spec.segment_samples))
        if not split:
            per_pass = 1
        elif shifts:
            max_shift = int(MAX_SHIFT_SECONDS * self.spec.sample_rate)
            per_pass = -(-(length + max_shift) // stride)  # upper bound
        else:
            per_pass = -(-length // stride)
        return per_pass * max(1, shifts)

    def _apply(self, mix: tp.Union[np.ndarray, _Chunk], shifts: int, split: bool,
               overlap: float, power: float, rng: _RandInt) -> np.ndarray:
        if shifts:
            return self._apply_shifted(mix, shifts, split, overlap, power, rng)
        if split:
            return self._apply_split(mix, overlap, power)
        return self._apply_single(mix)

    def _apply_shifted(self, mix: tp.Union[np.ndarray, _Chunk], shifts: int, split: bool,
                       overlap: float, power: float, rng: _RandInt) -> np.ndarray:
        chunk = mix if isinstance(mix, _Chunk) else _Chunk(mix)
        length = chunk.length
        max_shift = int(MAX_SHIFT_SECONDS * self.spec.sample_rate)
        padded = chunk.padded(length + 2 * max_shift)
        out: tp.Optional[np.ndarray] = None
        for _ in range(shifts):
            offset = rng.randint(0, max_shift)
            shifted = _Chunk(padded, offset, length + max_shift - offset)
            estimate = self._apply(shifted, 0, split, overlap, power, rng)
            estimate = estimate[..., max_shift - offset:]
            out = estimate if out is None else out + estimate
        assert out is not None
        return out / shifts

    def _apply_split(self, mix: tp.Union[np.ndarray, _Chunk], overlap: float,
                     power: float) -> np.ndarray:
        chunk = mix if isinstance(mix, _Chunk) else _Chunk(mix)
        batch, channels = chunk.base.shape[:2]
        length = chunk.length
        segment = self.spec.segment_samples
        stride = int((1 - overlap) * segment)
        if stride <= 0:
            raise ValueError(f"overlap {overlap} leaves no stride")
        weight = transition_weight(segment, power)
        out = np.zeros((batch, len(self.spec.sources), channels, length), dtype=np.float32)
        total_weight = np.zeros(length, dtype=np.float32)
        for offset in range(0, length, stride):
            piece = _Chunk(chunk, offset, segment)
            estimate = self._apply_single(piece)
            size = estimate.shape[-1]
            out[..., offset:offset + size] += weight[:size] * estimate
            total_weight[offset:offset + size] += weight[:size]
        return out / total_weight

    def _apply_single(self, mix: tp.Union[np.ndarray, _Chunk]) -> np.ndarray:
        chunk = mix if isinstance(mix, _Chunk) else _Chunk(mix)
        if chunk.length > self.spec.input_samples:
            raise ValueError(f"{chunk.length} samples do not fit in one segment of "
                             f"{self.spec.input_samples}: use split=True")
        estimate = self.run_segment(chunk.padded(self.spec.input_samples))
        self._done += 1
        if self._progress is not None:
            self._progress(self._done, max(self._done, self._total))
        return _center_trim(estimate, chunk.length)
