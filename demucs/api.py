"""Python API for music source separation.

Example::

    from demucs.api import Separator, save_audio

    separator = Separator(model="htdemucs")
    origin, stems = separator.separate_audio_file("song.mp3")
    for name, wav in stems.items():
        save_audio(wav, f"{name}.wav", samplerate=separator.samplerate)

    # the same with a graph exported by demucs.export_onnx, run by ONNX Runtime
    separator = Separator(onnx="htdemucs.onnx")

The numerics are those of the ``demucs`` command: the mix is normalised by the mean and
standard deviation of its mono downmix, separated with :func:`demucs.apply.apply_model`,
then the normalisation is undone. With ``onnx=FILE`` the segments go through an exported
graph in ONNX Runtime (:class:`demucs.onnx_runtime.OnnxSeparator`) instead, with the
same segmentation, shifts, overlap and normalisation.
"""
from __future__ import annotations

import os
import random
import typing as tp
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .apply import BagOfModels, apply_model, max_allowed_segment
from .audio import LoadAudioError, convert_audio, read_audio, save_audio
from .pretrained import DEFAULT_MODEL, ModelLoadingError, _repos, get_model
from .onnx_separator import (default_onnx_device, load_onnx, onnx_model_name, onnx_providers,
                             progress_bar)
from .stream import Track, members_for, onnx_members, open_track, stream_separate

if tp.TYPE_CHECKING:  # pragma: no cover
    from .onnx_runtime import OnnxSeparator

__all__ = ["Separator", "list_models", "save_audio", "LoadAudioError", "ModelLoadingError"]

Callback = tp.Callable[[tp.Dict[str, tp.Any]], None]


class _Unchanged:
    def __repr__(self) -> str:
        return "<unchanged>"


_UNCHANGED: tp.Any = _Unchanged()


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _models_of(model: nn.Module) -> tp.List[nn.Module]:
    return list(model.models) if isinstance(model, BagOfModels) else [model]


def minimum_length(model: nn.Module) -> int:
    """Shortest input (samples) that the model's STFT can take: one FFT frame."""
    return max(int(getattr(sub, "nfft", 0) or 0) for sub in _models_of(model)) or 1


def normalize(wav: torch.Tensor) -> tp.Tuple[torch.Tensor, float, float]:
    """Returns ``((wav - mean) / std, mean, std)`` with the stats of the mono downmix.

    A constant (e.g. silent) mix has no spread: std 1 is used instead of dividing by 0.
    """
    ref = wav.mean(0)
    mean = ref.mean().item()
    std = ref.std().item() if ref.numel() > 1 else 0.0
    if not std > 0 or not torch.isfinite(torch.tensor(std)):
        std = 1.0
    return (wav - mean) / std, mean, std


#: ``(object, attribute, previous instance attribute or None)`` of a hooked method.
_Hooked = tp.Tuple[tp.Any, str, tp.Any]


def _restore_forwards(saved: tp.List[_Hooked]) -> None:
    """Undoes :meth:`Separator._hooked_forwards`."""
    for owner, attribute, previous in saved:
        if previous is None:
            delattr(owner, attribute)
        else:
            setattr(owner, attribute, previous)


class Separator:
    """Loads a model once and separates tensors or audio files with it.

    Args:
        model: a pretrained model name or signature (``htdemucs``, ``mdx_extra``...), or an
            already loaded model / :class:`~demucs.apply.BagOfModels`.
        repo: local folder with the models (``None``: the remote catalog).
        device: where the model runs (default: cuda if available, else cpu).
        shifts: random shifts averaged (0 disables the shift trick).
        overlap: overlap between consecutive segments, in [0, 1).
        split: separate the audio segment by segment (less memory).
        segment: segment length in seconds (at most the training segment for HTDemucs).
        jobs: worker threads on CPU for :meth:`separate_tensor` (0: none); the streaming
            path (:meth:`separate_audio_file`, :meth:`stream_track`) runs segments in order.
        progress: show a tqdm progress bar.
        callback: called with a dict (``state`` "start"/"end", ``model_idx_in_bag``,
            ``models``, ``segment_idx``, ``audio_length`` and ``callback_arg``'s entries) before
            and after each model evaluation; raising from it (e.g. ``KeyboardInterrupt``)
            aborts the separation.
        callback_arg: extra entries for the callback's dict.
        onnx: instead of ``model``/``repo``, a graph exported by :mod:`demucs.export_onnx`,
            run by ONNX Runtime (numpy in and out, no PyTorch model). Its segment is fixed
            in the file (``segment`` must stay None); ``device`` is ``cpu`` or ``cuda``
            (needs onnxruntime-gpu; default cuda when available); ``jobs`` is ignored.
            The graph draws nothing from ``random``, so with ``shifts >= 2`` the offsets
            after the first differ from those of an HTDemucs in PyTorch (whose forward
            passes draw). :attr:`runtime` is the :class:`~demucs.onnx_runtime.OnnxSeparator`.
        onnx_threads: ONNX Runtime intra-op threads (default: one per physical core).

    Attributes:
        stream_batch: segments separated per forward pass by :meth:`stream_track` and
            :meth:`separate_audio_file` (1 while a callback is set, so that it hears
            about every segment). On CPU, 2 was measured 0-14 % faster per segment for
            HTDemucs (within this machine's noise), at 600-800 MB more peak memory; the
            default is 1. An ONNX graph exported with a fixed batch of 1 always takes
            one segment per call.

    Raises:
        ModelLoadingError: the model cannot be found or loaded.
        ValueError: invalid parameters (e.g. a segment longer than the model allows).
    """

    def __init__(self, model: tp.Union[str, nn.Module] = DEFAULT_MODEL,
                 repo: tp.Optional[tp.Union[str, Path]] = None,
                 device: tp.Optional[tp.Union[str, torch.device]] = None,
                 shifts: int = 1, overlap: float = 0.25, split: bool = True,
                 segment: tp.Optional[float] = None, jobs: int = 0, progress: bool = False,
                 callback: tp.Optional[Callback] = None,
                 callback_arg: tp.Optional[tp.Dict[str, tp.Any]] = None,
                 onnx: tp.Optional[tp.Union[str, os.PathLike]] = None,
                 onnx_threads: tp.Optional[int] = None):
        self._model: tp.Optional[nn.Module] = None
        self._runtime: tp.Optional["OnnxSeparator"] = None
        self._onnx_path = Path(onnx) if onnx is not None else None
        self._onnx_threads = onnx_threads
        self._providers: tp.Optional[tp.List[tp.Any]] = None
        if self._onnx_path is not None:
            if isinstance(model, nn.Module) or model != DEFAULT_MODEL or repo is not None:
                raise ValueError("give either model/repo or onnx, not both")
            self._name = self._onnx_path.stem
        elif isinstance(model, nn.Module):
            self._model = model
            self._name = type(model).__name__
        else:
            self._name = str(model)
            self._model = get_model(name=self._name,
                                    repo=Path(repo) if repo is not None else None)
        if self._model is not None:
            self._model.cpu()
            self._model.eval()
        self.stream_batch = 1
        self._device: tp.Union[str, torch.device] = "cpu"
        self._shifts, self._overlap, self._split = 1, 0.25, True
        self._segment: tp.Optional[float] = None
        self._jobs, self._progress = 0, False
        self._callback: tp.Optional[Callback] = None
        self._callback_arg: tp.Dict[str, tp.Any] = {}
        self.update_parameter(device=device, shifts=shifts, overlap=overlap, split=split,
                              segment=segment, jobs=jobs, progress=progress,
                              callback=callback, callback_arg=callback_arg)
        if self._runtime is not None and self._onnx_path is not None:
            self._name = onnx_model_name(self._runtime.spec.model_name, self._onnx_path)

    def _set_device(self, device: tp.Optional[tp.Union[str, torch.device]]) -> None:
        """Validates ``device`` (None: the default); an ONNX session is (re)created when
        the device needs other execution providers."""
        if self._onnx_path is None:
            device = _default_device() if device is None else device
            torch.device(device)  # raises on a malformed device string
            self._device = device
            return
        device = default_onnx_device() if device is None else device
        providers = onnx_providers(device)
        if self._runtime is None or providers != self._providers:
            self._runtime = load_onnx(self._onnx_path, providers, self._onnx_threads)
            self._providers = providers
        self._device = device

    # ------------------------------------------------------------------ parameters
    def update_parameter(self, device: tp.Any = _UNCHANGED, shifts: tp.Any = _UNCHANGED,
                         overlap: tp.Any = _UNCHANGED, split: tp.Any = _UNCHANGED,
                         segment: tp.Any = _UNCHANGED, jobs: tp.Any = _UNCHANGED,
                         progress: tp.Any = _UNCHANGED, callback: tp.Any = _UNCHANGED,
                         callback_arg: tp.Any = _UNCHANGED) -> None:
        """Changes any of the separation parameters; the others keep their values."""
        if device is not _UNCHANGED:
            self._set_device(device)
        if shifts is not _UNCHANGED:
            if int(shifts) < 0:
                raise ValueError(f"shifts must be >= 0, got {shifts}")
            self._shifts = int(shifts)
        if overlap is not _UNCHANGED:
            if not 0 <= float(overlap) < 1:
                raise ValueError(f"overlap must be in [0, 1), got {overlap}")
            self._overlap = float(overlap)
        if split is not _UNCHANGED:
            self._split = bool(split)
        if segment is not _UNCHANGED:
            if segment is not None and self._runtime is not None:
                seconds = self._runtime.spec.segment_samples / self.samplerate
                raise ValueError(f"the segment is fixed in the ONNX file ({seconds:g} s): "
                                 "export again with another --segment to change it")
            if segment is not None:
                limit = max_allowed_segment(self.model)
                if not 0 < segment <= limit:
                    raise ValueError(f"segment must be in (0, {limit}] seconds for this "
                                     f"model, got {segment}")
            self._segment = segment
        if jobs is not _UNCHANGED:
            if int(jobs) < 0:
                raise ValueError(f"jobs must be >= 0, got {jobs}")
            self._jobs = int(jobs)
        if progress is not _UNCHANGED:
            self._progress = bool(progress)
        if callback is not _UNCHANGED:
            self._callback = callback
        if callback_arg is not _UNCHANGED:
            self._callback_arg = dict(callback_arg or {})

    @property
    def samplerate(self) -> int:
        if self._runtime is not None:
            return self._runtime.sample_rate
        return int(self.model.samplerate)

    @property
    def audio_channels(self) -> int:
        if self._runtime is not None:
            return self._runtime.audio_channels
        return int(self.model.audio_channels)

    @property
    def model(self) -> nn.Module:
        """The PyTorch model (RuntimeError for an ONNX separator: see :attr:`runtime`)."""
        if self._model is None:
            raise RuntimeError("this Separator runs an ONNX graph: it has no PyTorch model "
                               "(see .runtime)")
        return self._model

    @property
    def runtime(self) -> tp.Optional["OnnxSeparator"]:
        """The ONNX Runtime session wrapper with ``onnx=``, else None."""
        return self._runtime

    @property
    def name(self) -> str:
        """The model's name: as given, the class name, or the ONNX file's ``model_name``."""
        return self._name

    @property
    def sources(self) -> tp.List[str]:
        if self._runtime is not None:
            return self._runtime.sources
        return list(self.model.sources)

    def _min_length(self) -> int:
        """Shortest input: one FFT frame for PyTorch; any for a graph (fixed input)."""
        return 1 if self._runtime is not None else minimum_length(self.model)

    # ------------------------------------------------------------------ separation
    def _hooked_forwards(self, length: int) -> tp.List[_Hooked]:
        """Wraps each model's forward (an ONNX graph's ``run_segment``) so the callback
        hears about every evaluation."""
        callback = self._callback
        assert callback is not None
        if self._runtime is not None:
            owners: tp.List[tp.Any] = [self._runtime]
            attribute = "run_segment"
        else:
            owners, attribute = _models_of(self.model), "forward"
        saved = []
        for index, sub in enumerate(owners):
            original = getattr(sub, attribute)
            counter = {"segment_idx": 0}

            def forward(*args: tp.Any, _orig: tp.Any = original, _index: int = index,
                        _counter: tp.Dict[str, int] = counter, **kwargs: tp.Any) -> tp.Any:
                info = {**self._callback_arg, "model_idx_in_bag": _index,
                        "models": len(owners), "audio_length": length,
                        "segment_idx": _counter["segment_idx"]}
                callback({**info, "state": "start"})
                result = _orig(*args, **kwargs)
                callback({**info, "state": "end"})
                _counter["segment_idx"] += 1
                return result

            saved.append((sub, attribute, sub.__dict__.get(attribute)))
            setattr(sub, attribute, forward)
        return saved

    def separate_tensor(self, wav: torch.Tensor, sr: tp.Optional[int] = None
                        ) -> tp.Tuple[torch.Tensor, tp.Dict[str, torch.Tensor]]:
        """Separates ``wav`` (``[channels, time]`` or ``[time]``).

        If ``sr`` is given and differs from :attr:`samplerate`, the audio is resampled
        first; channels are always converted to :attr:`audio_channels`.

        Returns ``(origin, stems)``: the (converted) input and ``{stem name: [C, T]}``, both
        at :attr:`samplerate` and on the input's device.
        """
        if not isinstance(wav, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(wav).__name__}")
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2:
            raise ValueError(f"expected audio of shape [channels, time], got {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise ValueError("cannot separate audio with no samples")
        wav = wav.float()
        if sr is not None and int(sr) != self.samplerate:
            wav = convert_audio(wav, int(sr), self.samplerate, self.audio_channels)
        elif wav.shape[0] != self.audio_channels:
            wav = convert_audio(wav, self.samplerate, self.samplerate, self.audio_channels)
        origin = wav.clone()
        length = wav.shape[-1]
        mix, mean, std = normalize(wav)
        short = self._min_length() - length
        if short > 0:  # shorter than one FFT frame: pad with silence, trimmed below
            mix = torch.nn.functional.pad(mix, (0, short))

        saved = self._hooked_forwards(length) if self._callback is not None else []
        try:
            if self._runtime is not None:
                out = self._separate_onnx(mix).to(wav.device)
            else:
                out = apply_model(self.model, mix[None], shifts=self._shifts,
                                  split=self._split, overlap=self._overlap,
                                  progress=self._progress, device=self._device,
                                  num_workers=self._jobs, segment=self._segment)[0]
        finally:
            _restore_forwards(saved)
        out = out[..., :length] * std + mean
        return origin, dict(zip(self.sources, out))

    def _separate_onnx(self, mix: torch.Tensor) -> torch.Tensor:
        """``apply_model`` with the graph: normalised ``(C, T)`` in, ``(S, C, T)`` out."""
        assert self._runtime is not None
        with progress_bar(self._progress) as progress:
            out = self._runtime.separate(
                mix.detach().cpu().numpy(), shifts=self._shifts, split=self._split,
                overlap=self._overlap, normalize=False, rng=random, progress=progress)
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ streaming
    def open_track(self, path: tp.Union[str, Path]) -> Track:
        """Validates ``path`` and computes its normalisation statistics in one streaming
        pass (at the model's rate and channel count). Raises :class:`LoadAudioError`."""
        return open_track(path, self.samplerate, self.audio_channels)

    def stream_track(self, track: Track) -> tp.Iterator[tp.Tuple[np.ndarray, np.ndarray]]:
        """Separates ``track`` (from :meth:`open_track`) block by block.

        Yields ``(origin (C, n), stems (S, C, n))`` numpy blocks in order; memory stays
        bounded whatever the track's length. Needs ``split`` (the default). The result
        equals :meth:`separate_tensor` on the whole track (same random draws for shifts).
        """
        if not self._split:
            raise ValueError("streaming separation needs split=True")
        batch = 1 if self._callback is not None else self.stream_batch
        if self._runtime is not None:
            members = onnx_members(self._runtime, max_batch=batch)
        else:
            members = members_for(self.model, segment=self._segment, device=self._device,
                                  max_batch=batch)
        saved = self._hooked_forwards(track.length) if self._callback is not None else []
        try:
            with progress_bar(self._progress) as progress:
                yield from stream_separate(
                    members, track.source.blocks(), track.length, sources=len(self.sources),
                    channels=self.audio_channels, samplerate=self.samplerate,
                    shifts=self._shifts, overlap=self._overlap, mean=track.stats.mean,
                    std=track.stats.std, min_length=self._min_length(), progress=progress)
        finally:
            _restore_forwards(saved)

    def load_audio(self, path: tp.Union[str, Path]) -> torch.Tensor:
        """Reads ``path`` at the model's rate and channel count (raises LoadAudioError)."""
        wav, sr = read_audio(path)
        try:
            return convert_audio(wav, sr, self.samplerate, self.audio_channels)
        except ValueError as err:
            raise LoadAudioError(path, str(err)) from None

    def separate_audio_file(self, path: tp.Union[str, Path]
                            ) -> tp.Tuple[torch.Tensor, tp.Dict[str, torch.Tensor]]:
        """Reads and separates an audio (or video) file; see :meth:`separate_tensor`.

        With ``split`` (the default) the file is decoded and separated block by block
        (:meth:`stream_track`): only the returned tensors grow with the track's length.
        """
        if not self._split:
            return self.separate_tensor(self.load_audio(path), self.samplerate)
        track = self.open_track(path)
        origin = torch.empty(self.audio_channels, track.length)
        stems = torch.empty(len(self.sources), self.audio_channels, track.length)
        position = 0
        for origin_block, stems_block in self.stream_track(track):
            end = position + origin_block.shape[-1]
            origin[:, position:end] = torch.from_numpy(origin_block)
            stems[..., position:end] = torch.from_numpy(stems_block)
            position = end
        return origin, dict(zip(self.sources, stems))

    def __repr__(self) -> str:
        kind = "onnx" if self._runtime is not None else "model"
        return (f"Separator({kind}={self._name!r}, samplerate={self.samplerate}, "
                f"sources={self.sources}, device={str(self._device)!r})")


def list_models(repo: tp.Optional[tp.Union[str, Path]] = None) -> tp.Dict[str, tp.List[str]]:
    """Models available without downloading anything.

    Returns ``{"single": [signatures...], "bag": [bag names...]}`` for the local ``repo``
    folder, or for the remote catalog when ``repo`` is None.
    """
    model_repo, bag_repo = _repos(Path(repo) if repo is not None else None)
    return {"single": model_repo.list_models(), "bag": bag_repo.list_models()}
