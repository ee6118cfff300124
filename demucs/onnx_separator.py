"""Separating files with an exported graph, without PyTorch.

What ``demucs --onnx FILE`` runs: an ONNX Runtime session
(:class:`demucs.onnx_runtime.OnnxSeparator`) driven by the streaming core
(:mod:`demucs.stream`): decode, separate and write block by block, with the
normalisation, shifts and overlap of ``apply_model``. Nothing here imports torch (tracks
at another sample rate are resampled in numpy, :class:`demucs.stream.BlockResampler`),
so the command's start-up and memory are those of ONNX Runtime alone.
:class:`demucs.api.Separator` with ``onnx=`` uses the same helpers.
"""
from __future__ import annotations

import contextlib
import os
import re
import typing as tp
from pathlib import Path

import numpy as np

from .errors import ModelLoadingError
from .stream import Track, onnx_members, open_track, stream_separate

if tp.TYPE_CHECKING:  # pragma: no cover
    from .onnx_runtime import OnnxSeparator

__all__ = ["OnnxTrackSeparator", "onnx_providers", "default_onnx_device", "load_onnx",
           "onnx_model_name", "progress_bar"]

Progress = tp.Optional[tp.Callable[[int, int], None]]
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def onnx_providers(device: tp.Any) -> tp.List[tp.Any]:
    """ONNX Runtime execution providers for ``device`` (``cpu``, ``cuda``, ``cuda:N``, or
    a ``torch.device``).

    Raises ValueError for other devices, or for CUDA when this ONNX Runtime has no
    ``CUDAExecutionProvider`` (install ``onnxruntime-gpu``).
    """
    import onnxruntime as ort

    match = _DEVICE.match(str(device).strip())
    if match is None:
        raise ValueError(f"device {str(device)!r} is not supported with an ONNX model "
                         "(use cpu or cuda)")
    kind, index = match.groups()
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(f"device {str(device)!r} needs onnxruntime-gpu: this ONNX Runtime "
                         "has no CUDAExecutionProvider")
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def default_onnx_device() -> str:
    """cuda when ONNX Runtime can use it, else cpu."""
    import onnxruntime as ort

    return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"


def onnx_model_name(stored: str, path: Path) -> str:
    """The graph's ``model_name`` metadata, or the file's stem when it is missing or not
    usable as a folder name (it names the ``demucs`` command's output folder)."""
    name = stored.strip()
    if not name or name in ("?", ".", "..") or any(c in name for c in "/\\\0"):
        return path.stem
    return name


def load_onnx(path: tp.Union[str, os.PathLike], providers: tp.Sequence[tp.Any],
              threads: tp.Optional[int] = None) -> "OnnxSeparator":
    """Opens an exported graph; any problem is a one-line :class:`ModelLoadingError`."""
    from .onnx_runtime import OnnxSeparator

    path = Path(path)
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "no such file"
        raise ModelLoadingError(f"cannot load ONNX model {path}: {reason}")
    try:
        return OnnxSeparator(path, threads=threads, providers=providers)
    except Exception as err:  # noqa: BLE001 - ORT's errors only derive from Exception
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ModelLoadingError(f"cannot load ONNX model {path}: {reason}") from None


@contextlib.contextmanager
def progress_bar(enabled: bool) -> tp.Iterator[Progress]:
    """A ``progress(done, total)`` callback drawing a tqdm bar; None when not ``enabled``."""
    if not enabled:
        yield None
        return
    import tqdm

    bar = tqdm.tqdm(total=1, ncols=120, unit="segments")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


class OnnxTrackSeparator:
    """Streams files through an exported graph (see the module docstring).

    Args:
        path: the ``.onnx`` file (:mod:`demucs.export_onnx`).
        device: ``cpu``, ``cuda`` or ``cuda:N`` (None: cuda when ONNX Runtime has it).
        shifts, overlap: as ``apply_model``; the segment is fixed in the file.
        threads: ONNX Runtime intra-op threads (None: one per physical core).
        progress: draw a tqdm bar per track.

    Raises:
        ModelLoadingError: the file cannot be opened as an exported Demucs graph.
        ValueError: invalid device, shifts or overlap.
    """

    def __init__(self, path: tp.Union[str, os.PathLike], *, device: tp.Optional[str] = None,
                 shifts: int = 1, overlap: float = 0.25, threads: tp.Optional[int] = None,
                 progress: bool = False) -> None:
        from .onnx_runtime import check_split_params

        check_split_params(shifts, overlap, 1.0)
        path = Path(path)
        self.runtime = load_onnx(path, onnx_providers(device or default_onnx_device()),
                                 threads)
        self.name = onnx_model_name(self.runtime.spec.model_name, path)
        self.shifts, self.overlap, self.progress = int(shifts), float(overlap), progress

    @property
    def sources(self) -> tp.List[str]:
        return self.runtime.sources

    @property
    def samplerate(self) -> int:
        return self.runtime.sample_rate

    @property
    def audio_channels(self) -> int:
        return self.runtime.audio_channels

    def open_track(self, path: tp.Union[str, os.PathLike]) -> Track:
        """Validates ``path`` and computes its normalisation statistics (one streaming
        pass). Raises :class:`demucs.audio.LoadAudioError`."""
        return open_track(path, self.samplerate, self.audio_channels)

    def stream_track(self, track: Track) -> tp.Iterator[tp.Tuple[np.ndarray, np.ndarray]]:
        """Yields ``(origin (C, n), stems (S, C, n))`` blocks of ``track`` in order."""
        with progress_bar(self.progress) as progress:
            yield from stream_onnx(self.runtime, track, shifts=self.shifts,
                                   overlap=self.overlap, progress=progress)


def stream_onnx(runtime: "OnnxSeparator", track: Track, *, shifts: int, overlap: float,
                max_batch: int = 1, progress: Progress = None
                ) -> tp.Iterator[tp.Tuple[np.ndarray, np.ndarray]]:
    """:func:`demucs.stream.stream_separate` of ``track`` with an exported graph."""
    yield from stream_separate(
        onnx_members(runtime, max_batch=max_batch), track.source.blocks(), track.length,
        sources=len(runtime.sources), channels=runtime.audio_channels,
        samplerate=runtime.sample_rate, shifts=shifts, overlap=overlap,
        mean=track.stats.mean, std=track.stats.std, progress=progress)
