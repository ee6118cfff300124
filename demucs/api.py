"""Python API for music source separation (upstream 4.1.0's, plus ONNX and streaming).

Example::

    from demucs.api import Separator, save_audio

    separator = Separator(model="htdemucs")
    origin, stems = separator.separate_audio_file("song.mp3")
    for name, wav in stems.items():
        save_audio(wav, f"{name}.wav", samplerate=separator.samplerate)

    # the same with a graph exported by demucs.export_onnx, run by ONNX Runtime
    separator = Separator(onnx="htdemucs.onnx")

One :class:`Separator`, two backends: a PyTorch model (``model=``, imported when first
used) or an exported graph in ONNX Runtime (``onnx=``: numpy in and out, PyTorch is never
imported). Both run the separation core (:mod:`demucs.core`) with the numerics of the
``demucs`` command: the mix is normalised by the mean and standard deviation of its mono
downmix, separated (shifts, overlapping segments, bag weights) and scaled back.
"""

from __future__ import annotations

import os
import typing as tp
from pathlib import Path

import numpy as np

from .audio import LoadAudioError, save_audio
from .core import engine
from .core.hooks import Callback, callback_hook, progress_bar
from .core.plan import Member, check_split_params
from .core.stats import TrackStats
from .errors import ModelLoadingError
from .flags import DEFAULT_MODEL
from .lazy import lazy_exports
from .io import AudioTrack, open_track

if tp.TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .onnx.runtime import OnnxSeparator

__all__ = [
    "Separator",
    "list_models",
    "save_audio",
    "LoadAudioError",
    "ModelLoadingError",
    "LoadModelError",
    "NotProvided",
]

#: Upstream 4.1.0's name for a model that cannot be loaded.
LoadModelError = ModelLoadingError
Array = tp.Any  # numpy array or torch tensor


class _NotProvided:
    """Default of :meth:`Separator.update_parameter`: keep the current value."""


NotProvided = _NotProvided()


def _is_tensor(value: tp.Any) -> bool:
    return type(value).__module__.startswith("torch")


class _TorchBackend:
    """A PyTorch model or bag: members on tensors."""

    kind = "model"

    def __init__(self, model: tp.Any) -> None:
        model.cpu()
        model.eval()
        self.model = model
        self.samplerate = int(model.samplerate)
        self.audio_channels = int(model.audio_channels)
        self.sources = list(model.sources)
        subs = list(model.models) if hasattr(model, "models") else [model]
        self.models = len(subs)
        #: Shortest input the STFT takes: one FFT frame.
        self.min_length = max(int(getattr(sub, "nfft", 0) or 0) for sub in subs) or 1

    def max_segment(self) -> float:
        from .apply import max_allowed_segment

        return max_allowed_segment(self.model)

    def members(
        self,
        *,
        device: tp.Any,
        out_device: tp.Any,
        split: bool,
        segment: tp.Optional[float],
        max_batch: int,
        stems: tp.Optional[tp.Sequence[str]],
        precision: str,
        numpy: bool,
    ) -> tp.List[Member]:
        import torch

        from .allocator import ensure_tuned_for_torch
        from .apply import torch_members

        if torch.device(device).type == "cpu":
            ensure_tuned_for_torch()
        members = torch_members(
            self.model,
            device=device,
            out_device=out_device,
            split=split,
            segment=segment,
            max_batch=max_batch,
            sources=stems,
            precision=precision,
        )
        if numpy:
            for member in members:
                member.run = _numpy_runner(member.run)
        return members


def _numpy_runner(run: tp.Callable[[Array], Array]) -> tp.Callable[[np.ndarray], np.ndarray]:
    import torch

    def wrapped(batch: np.ndarray) -> np.ndarray:
        return run(torch.from_numpy(batch)).cpu().numpy()

    return wrapped


class _OnnxBackend:
    """An exported graph in ONNX Runtime: one member on numpy arrays."""

    kind = "onnx"
    min_length = 1
    models = 1

    def __init__(self, runtime: "OnnxSeparator") -> None:
        self.runtime = runtime
        self.samplerate = runtime.sample_rate
        self.audio_channels = runtime.audio_channels
        self.sources = runtime.sources

    def members(self, *, max_batch: int, precision: str, **_: tp.Any) -> tp.List[Member]:
        from .onnx.runtime import onnx_members

        if precision != "fp32":
            raise ValueError(
                "precision applies to PyTorch models; an ONNX graph has its own "
                "(export it with --precision)"
            )
        return onnx_members(self.runtime, max_batch=max_batch)


class Separator:
    """Loads a model once and separates tensors, arrays or audio files with it.

    Args:
        model: a pretrained model name or signature (``htdemucs``, ``mdx_extra``...), or an
            already loaded model / :class:`~demucs.apply.BagOfModels`.
        repo: local folder with the models (``None``: the remote catalog, or the folder in
            ``DEMUCS_REPO``).
        device: where the model runs (default: cuda if available, else cpu). With
            ``onnx=``: ``cpu``, ``cuda`` or ``cuda:N``.
        shifts: random shifts averaged (0 disables the shift trick).
        overlap: overlap between consecutive segments, in [0, 1).
        split: separate the audio segment by segment (less memory).
        segment: segment length in seconds (at most the training segment for HTDemucs).
        jobs: worker threads on CPU for in-memory separation (0: none).
        progress: show a tqdm progress bar.
        callback: called with a dict before and after each forward pass: ``callback_arg``'s
            entries, ``model_idx_in_bag``, ``shift_idx``, ``segment_offset``, ``state``
            ("start"/"end"), ``audio_length`` and ``models`` (upstream 4.1.0's keys).
            Raising from it (e.g. ``KeyboardInterrupt``) aborts the separation.
        callback_arg: extra entries for the callback's dict.
        onnx: instead of ``model``/``repo``, a graph exported by :mod:`demucs.export_onnx`,
            run by ONNX Runtime. Its segment is fixed in the file (``segment`` must stay
            None). Results are numpy arrays (tensors when given tensors).
        onnx_threads: ONNX Runtime intra-op threads (default: one per physical core).
        onnx_providers: ONNX Runtime execution providers (``cuda``, ``coreml``, ``cpu``...;
            default: the best available, or what ``device`` asks for).
        stems: the stems to return (default: all). Bag members that weigh nothing in them
            are not run (``htdemucs_ft`` with ``stems=["vocals"]`` runs one model of four).
        precision: ``fp32`` (default, exact) or ``bf16``/``fp16`` for PyTorch models (see
            :mod:`demucs.precision`).

    Attributes:
        stream_batch: segments per forward pass when streaming files (1 while a callback
            is set, so that it hears about every segment).

    Raises:
        ModelLoadingError: the model cannot be found or loaded.
        ValueError: invalid parameters (e.g. a segment longer than the model allows).
    """

    def __init__(
        self,
        model: tp.Union[str, "nn.Module"] = DEFAULT_MODEL,
        repo: tp.Optional[tp.Union[str, Path]] = None,
        device: tp.Any = None,
        shifts: int = 1,
        overlap: float = 0.25,
        split: bool = True,
        segment: tp.Optional[float] = None,
        jobs: int = 0,
        progress: bool = False,
        callback: tp.Optional[Callback] = None,
        callback_arg: tp.Optional[tp.Dict[str, tp.Any]] = None,
        *,
        onnx: tp.Optional[tp.Union[str, os.PathLike]] = None,
        onnx_threads: tp.Optional[int] = None,
        onnx_providers: tp.Optional[tp.Sequence[str]] = None,
        stems: tp.Optional[tp.Sequence[str]] = None,
        precision: str = "fp32",
    ) -> None:
        self._repo = Path(repo) if repo is not None else None
        self._onnx_path = Path(onnx) if onnx is not None else None
        self._onnx_threads = onnx_threads
        self._onnx_providers = list(onnx_providers) if onnx_providers else None
        self._backend: tp.Union[_TorchBackend, _OnnxBackend, None] = None
        self._model: tp.Any = None
        self._device: tp.Any = None
        if self._onnx_path is not None:
            if not isinstance(model, str) or model != DEFAULT_MODEL or repo is not None:
                raise ValueError("give either model/repo or onnx, not both")
            self._name = self._onnx_path.stem
        elif isinstance(model, str):
            self._name = model
            self._load_model()
        else:
            self._name = type(model).__name__
            self._model = model
            self._set_backend(_TorchBackend(model))
        self.stream_batch = 1
        self._shifts, self._overlap, self._split = 1, 0.25, True
        self._segment: tp.Optional[float] = None
        self._jobs, self._progress = 0, False
        self._callback: tp.Optional[Callback] = None
        self._callback_arg: tp.Dict[str, tp.Any] = {}
        self._stems: tp.Optional[tp.List[str]] = None
        self._precision = "fp32"
        self.update_parameter(
            device=device,
            shifts=shifts,
            overlap=overlap,
            split=split,
            segment=segment,
            jobs=jobs,
            progress=progress,
            callback=callback,
            callback_arg=callback_arg,
            stems=stems,
            precision=precision,
        )

    # ------------------------------------------------------------------ loading
    def _set_backend(self, backend: tp.Union[_TorchBackend, _OnnxBackend]) -> None:
        self._backend = backend
        self._samplerate = backend.samplerate
        self._audio_channels = backend.audio_channels

    def _load_model(self) -> None:
        """Loads ``self._name`` from ``self._repo`` (upstream 4.1.0's method)."""
        from .pretrained import get_model

        self._model = get_model(name=self._name, repo=self._repo)
        self._set_backend(_TorchBackend(self._model))

    def _open_onnx(self, device: tp.Any) -> None:
        from .onnx.runtime import load_onnx, select_providers

        assert self._onnx_path is not None
        providers = select_providers(self._onnx_providers, device)
        if self._backend is None or providers != getattr(self, "_providers", None):
            runtime = load_onnx(self._onnx_path, providers, self._onnx_threads)
            self._providers = providers
            self._set_backend(_OnnxBackend(runtime))
            self._name = runtime.spec.model_name or self._onnx_path.stem

    def _load_audio(self, track: tp.Union[str, Path]) -> Array:
        """Reads ``track`` at the model's rate and channel count (upstream 4.1.0's method;
        a tensor for a PyTorch model, a numpy array for an ONNX graph)."""
        return self.load_audio(track)

    # ------------------------------------------------------------------ parameters
    def update_parameter(
        self,
        device: tp.Any = NotProvided,
        shifts: tp.Any = NotProvided,
        overlap: tp.Any = NotProvided,
        split: tp.Any = NotProvided,
        segment: tp.Any = NotProvided,
        jobs: tp.Any = NotProvided,
        progress: tp.Any = NotProvided,
        callback: tp.Any = NotProvided,
        callback_arg: tp.Any = NotProvided,
        stems: tp.Any = NotProvided,
        precision: tp.Any = NotProvided,
    ) -> None:
        """Changes any of the separation parameters; the others keep their values."""
        if device is not NotProvided:
            self._set_device(device)
        if shifts is not NotProvided:
            check_split_params(shifts, self._overlap)
            self._shifts = int(shifts)
        if overlap is not NotProvided:
            check_split_params(self._shifts, overlap)
            self._overlap = float(overlap)
        if split is not NotProvided:
            self._split = bool(split)
        if segment is not NotProvided:
            self._set_segment(segment)
        if jobs is not NotProvided:
            if int(jobs) < 0:
                raise ValueError(f"jobs must be >= 0, got {jobs}")
            self._jobs = int(jobs)
        if progress is not NotProvided:
            self._progress = bool(progress)
        if callback is not NotProvided:
            self._callback = callback
        if callback_arg is not NotProvided:
            self._callback_arg = dict(callback_arg or {})
        if stems is not NotProvided:
            self._set_stems(stems)
        if precision is not NotProvided:
            self._set_precision(precision)

    def _set_device(self, device: tp.Any) -> None:
        if self._onnx_path is not None:
            self._open_onnx(device)
            self._device = device if device is not None else "cpu"
            return
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.device(device)  # raises on a malformed device string
        self._device = device

    def _set_segment(self, segment: tp.Optional[float]) -> None:
        backend = self._require_backend()
        if segment is not None:
            if isinstance(backend, _OnnxBackend):
                seconds = backend.runtime.spec.segment_samples / self.samplerate
                raise ValueError(
                    f"the segment is fixed in the ONNX file ({seconds:g} s): "
                    "export again with another --segment to change it"
                )
            check_split_params(self._shifts, self._overlap, segment=segment)
            limit = backend.max_segment()
            if not 0 < segment <= limit:
                raise ValueError(
                    f"segment must be in (0, {limit}] seconds for this model, got {segment}"
                )
        self._segment = segment

    def _set_stems(self, stems: tp.Optional[tp.Sequence[str]]) -> None:
        if stems is None:
            self._stems = None
            return
        if isinstance(stems, str):
            stems = [stems]
        unknown = [stem for stem in stems if stem not in self.sources]
        if unknown or not stems:
            raise ValueError(
                f"unknown stems {unknown or stems}: the model has {', '.join(self.sources)}"
            )
        self._stems = [source for source in self.sources if source in stems]

    def _set_precision(self, precision: str) -> None:
        from .precision import check_precision

        backend = self._require_backend()
        if precision != "fp32":
            if isinstance(backend, _OnnxBackend):
                raise ValueError(
                    "precision applies to PyTorch models; an ONNX graph has its "
                    "own (export it with --precision)"
                )
            check_precision(precision, self._device)
        self._precision = precision

    def _require_backend(self) -> tp.Union[_TorchBackend, _OnnxBackend]:
        if self._backend is None:
            raise RuntimeError("the model is not loaded")
        return self._backend

    # ------------------------------------------------------------------ properties
    @property
    def samplerate(self) -> int:
        return self._samplerate

    @property
    def audio_channels(self) -> int:
        return self._audio_channels

    @property
    def model(self) -> "nn.Module":
        """The PyTorch model (RuntimeError for an ONNX separator: see :attr:`runtime`)."""
        if self._model is None:
            raise RuntimeError(
                "this Separator runs an ONNX graph: it has no PyTorch model (see .runtime)"
            )
        return self._model

    @property
    def runtime(self) -> tp.Optional["OnnxSeparator"]:
        """The ONNX Runtime session wrapper with ``onnx=``, else None."""
        backend = self._backend
        return backend.runtime if isinstance(backend, _OnnxBackend) else None

    @property
    def name(self) -> str:
        """The model's name: as given, the class name, or the ONNX file's ``model_name``."""
        return self._name

    @property
    def sources(self) -> tp.List[str]:
        """Every source the model separates."""
        return list(self._require_backend().sources)

    @property
    def stems(self) -> tp.List[str]:
        """The stems returned: :attr:`sources`, or the subset asked for with ``stems=``."""
        return list(self._stems) if self._stems is not None else self.sources

    @property
    def models(self) -> int:
        """Models in the bag (1 for a single model or a graph)."""
        return self._require_backend().models

    # ------------------------------------------------------------------ separation
    def _members(self, out_device: tp.Any, numpy: bool, max_batch: int = 1) -> tp.List[Member]:
        backend = self._require_backend()
        return backend.members(
            device=self._device,
            out_device=out_device,
            split=self._split,
            segment=self._segment,
            max_batch=max_batch,
            stems=self._stems,
            precision=self._precision,
            numpy=numpy,
        )

    def _hook(self, length: int, models: int) -> tp.Optional[engine.JobHook]:
        if self._callback is None:
            return None
        return callback_hook(
            self._callback,
            {**self._callback_arg, "audio_length": length},
            models,
            self._shifts,
            self._split,
        )

    def _progress_bar(self) -> tp.Tuple[tp.Any, tp.Callable[[], None]]:
        if not self._progress:
            return None, lambda: None
        return progress_bar()

    def _select(self, stems: Array) -> tp.Dict[str, Array]:
        """``{stem: (C, T)}`` for the stems asked for, from ``(S, C, T)``."""
        index = {source: k for k, source in enumerate(self.sources)}
        return {stem: stems[index[stem]] for stem in self.stems}

    def _prepare(self, wav: Array, sr: tp.Optional[int]) -> Array:
        """``wav`` as ``(C, T)`` float32 at the model's rate and channel count."""
        if _is_tensor(wav):
            if wav.dim() == 1:
                wav = wav[None]
            if wav.dim() != 2:
                raise ValueError(
                    f"expected audio of shape [channels, time], got {tuple(wav.shape)}"
                )
            wav = wav.float()
            if (sr is not None and int(sr) != self.samplerate) or wav.shape[
                0
            ] != self.audio_channels:
                from .audio import convert_audio

                wav = convert_audio(
                    wav, int(sr or self.samplerate), self.samplerate, self.audio_channels
                )
        else:
            wav = np.asarray(wav, dtype=np.float32)
            if wav.ndim == 1:
                wav = wav[None]
            if wav.ndim != 2:
                raise ValueError(f"expected audio of shape [channels, time], got {wav.shape}")
            if (sr is not None and int(sr) != self.samplerate) or wav.shape[
                0
            ] != self.audio_channels:
                from .io import ArraySource, ConvertedSource

                source = ConvertedSource(
                    ArraySource(wav, int(sr or self.samplerate)),
                    self.samplerate,
                    self.audio_channels,
                )
                wav = np.concatenate(list(source.blocks()), axis=1)
        if wav.shape[-1] == 0:
            raise ValueError("cannot separate audio with no samples")
        return wav

    @staticmethod
    def _finite(wav: Array, host: np.ndarray, tensor: bool) -> tp.Tuple[Array, np.ndarray]:
        """The input with NaN/Inf samples replaced (the policy of :mod:`demucs.io`:
        0, +1, -1, with one warning), so that one bad sample cannot spoil every stem."""
        from .io.errors import NonFinite

        policy = NonFinite()
        clean = policy.clean(host)
        if clean is host:
            return wav, host
        policy.report("input audio")
        if tensor:
            import torch

            return torch.from_numpy(clean).to(wav.device), clean
        return clean, clean

    def separate_tensor(
        self, wav: Array, sr: tp.Optional[int] = None
    ) -> tp.Tuple[Array, tp.Dict[str, Array]]:
        """Separates ``wav`` (``[channels, time]`` or ``[time]``, a tensor or an array).

        If ``sr`` is given and differs from :attr:`samplerate`, the audio is resampled
        first; channels are always converted to :attr:`audio_channels`.

        Returns ``(origin, stems)``: the (converted) input and ``{stem: [C, T]}``, both at
        :attr:`samplerate`, of the input's type (and device, for tensors).
        """
        wav = self._prepare(wav, sr)
        tensor = _is_tensor(wav)
        host = wav.detach().cpu().numpy() if tensor else wav
        wav, host = self._finite(wav, host, tensor)
        stats = TrackStats.of_array(host)
        backend = self._require_backend()
        pool = None
        if isinstance(backend, _TorchBackend):
            from .apply import TorchOps

            limit = backend.max_segment()
            if not self._split and host.shape[-1] > limit * self.samplerate:
                raise ValueError(
                    f"{host.shape[-1] / self.samplerate:.1f} s of audio do not fit "
                    f"in one pass of this model (at most {limit:g} s): separate "
                    "it in segments (split=True; drop --no-split)"
                )
            ops: engine.Ops = TorchOps(wav.device)
            array = wav
            members = self._members(wav.device, numpy=False)
            if self._jobs and str(self._device).startswith("cpu"):
                from concurrent.futures import ThreadPoolExecutor

                pool = ThreadPoolExecutor(self._jobs)
        else:
            ops, array = engine.NUMPY, host
            if not self._split and host.shape[-1] > backend.runtime.spec.input_samples:
                raise ValueError(
                    f"{host.shape[-1]} samples do not fit in the graph's segment: use split=True"
                )
            members = self._members(None, numpy=True)
        track = engine.ArrayInput(array[None], ops)
        progress, close = self._progress_bar()
        out = ops.zeros((1, len(self.sources), self.audio_channels, track.length))
        try:
            for start, _, stems in engine.separate(
                members,
                track,
                sources=len(self.sources),
                samplerate=self.samplerate,
                shifts=self._shifts,
                overlap=self._overlap,
                mean=stats.mean,
                std=stats.std,
                min_length=backend.min_length,
                order="memory",
                ops=ops,
                hook=self._hook(track.length, backend.models),
                progress=progress,
                pool=pool,
            ):
                out[..., start : start + stems.shape[-1]] = stems
        finally:
            close()
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if tensor and not _is_tensor(out):
            import torch

            out = torch.from_numpy(out).to(wav.device)
        return wav, self._select(out[0])

    # ------------------------------------------------------------------ files
    def open_track(self, path: tp.Union[str, Path]) -> "AudioTrack[TrackStats]":
        """Validates ``path`` and computes its normalisation statistics (``.scanned``) in
        one streaming pass, at the model's rate and channel count. Raises
        :class:`LoadAudioError`."""
        return open_track(path, self.samplerate, self.audio_channels, scan=TrackStats.of_blocks)

    def stream_track(
        self, track: "AudioTrack[TrackStats]"
    ) -> tp.Iterator[tp.Tuple[np.ndarray, np.ndarray]]:
        """Separates ``track`` (from :meth:`open_track`) block by block.

        Yields ``(origin (C, n), stems (S, C, n))`` numpy blocks in order, ``S`` being
        :attr:`stems`; memory stays bounded whatever the track's length. Needs ``split``
        (the default). The result equals :meth:`separate_tensor` on the whole track.
        """
        if not self._split:
            raise ValueError("streaming separation needs split=True")
        backend = self._require_backend()
        batch = 1 if self._callback is not None else self.stream_batch
        members = self._members("cpu", numpy=True, max_batch=batch)
        wanted = [self.sources.index(stem) for stem in self.stems]
        progress, close = self._progress_bar()
        try:
            for _, origin, stems in engine.separate(
                members,
                engine.BlockInput(track.source.blocks(), self.audio_channels, track.length),
                sources=len(self.sources),
                samplerate=self.samplerate,
                shifts=self._shifts,
                overlap=self._overlap,
                mean=track.scanned.mean,
                std=track.scanned.std,
                min_length=backend.min_length,
                order="stream",
                hook=self._hook(track.length, backend.models),
                progress=progress,
            ):
                selected = stems[0] if len(wanted) == len(self.sources) else stems[0][wanted]
                yield origin[0], selected
        finally:
            close()

    def load_audio(self, path: tp.Union[str, Path]) -> Array:
        """Reads ``path`` at the model's rate and channel count (raises LoadAudioError):
        a tensor for a PyTorch model, a numpy array for an ONNX graph."""
        return self.track_audio(self.open_track(path))

    def track_audio(self, track: "AudioTrack[TrackStats]") -> Array:
        """The whole track from :meth:`open_track` (a tensor for a PyTorch model, a
        numpy array for an ONNX graph)."""
        wav = np.concatenate(list(track.source.blocks()), axis=1)[:, : track.length]
        if isinstance(self._backend, _TorchBackend):
            import torch

            return torch.from_numpy(np.ascontiguousarray(wav))
        return wav

    def separate_audio_file(
        self, file: tp.Union[str, Path]
    ) -> tp.Tuple[Array, tp.Dict[str, Array]]:
        """Reads and separates an audio (or video) file; see :meth:`separate_tensor`.

        With ``split`` (the default) and no callback, the file is decoded and separated
        block by block (:meth:`stream_track`): only the returned arrays grow with the
        track's length. Tensors for a PyTorch model, numpy arrays for an ONNX graph.
        """
        if not self._split or self._callback is not None:
            # Callbacks hear the segments in upstream's order (model by model), which
            # needs the whole track in memory, as upstream holds it.
            return self.separate_tensor(self.load_audio(file), self.samplerate)
        track = self.open_track(file)
        origin = np.empty((self.audio_channels, track.length), np.float32)
        stems = np.empty((len(self.stems), self.audio_channels, track.length), np.float32)
        position = 0
        for origin_block, stems_block in self.stream_track(track):
            end = position + origin_block.shape[-1]
            origin[:, position:end] = origin_block
            stems[..., position:end] = stems_block
            position = end
        if isinstance(self._backend, _TorchBackend):
            import torch

            return torch.from_numpy(origin), dict(zip(self.stems, torch.from_numpy(stems)))
        return origin, dict(zip(self.stems, stems))

    def __repr__(self) -> str:
        kind = self._backend.kind if self._backend is not None else "model"
        return (
            f"Separator({kind}={self._name!r}, samplerate={self.samplerate}, "
            f"sources={self.sources}, device={str(self._device)!r})"
        )


def list_models(
    repo: tp.Optional[tp.Union[str, Path]] = None,
) -> tp.Dict[str, tp.Dict[str, tp.Union[str, Path]]]:
    """Models available without downloading anything (upstream 4.1.0's shape).

    Returns ``{"single": {signature: file or URL}, "bag": {name: yaml file}}`` for the local
    ``repo`` folder, or for the remote catalog when ``repo`` is None. Iterating over
    either dict gives the names.
    """
    from . import pretrained

    folder = Path(repo) if repo is not None else None
    model_repo, bag_repo = pretrained.model_repos(folder)

    def listing(repo: tp.Any) -> tp.Dict[str, tp.Union[str, Path]]:
        if hasattr(repo, "list_model"):
            return dict(repo.list_model())
        return {name: name for name in repo.list_models()}

    return {"single": listing(model_repo), "bag": listing(bag_repo)}


#: Upstream 4.1.0 re-exports these from ``demucs.api``; loaded on first use, so that
#: importing this module does not import PyTorch.
_REEXPORTS = {
    "AudioFile": "audio",
    "convert_audio": "audio",
    "apply_model": "apply",
    "BagOnlyRepo": "repo",
    "LocalRepo": "repo",
    "ModelOnlyRepo": "repo",
    "RemoteRepo": "repo",
    "REMOTE_ROOT": "pretrained",
    "get_model": "pretrained",
    "fatal": "utils",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _REEXPORTS)
