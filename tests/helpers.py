"""Helpers shared by the command, API and compatibility tests: tiny checkpoints in
upstream's format, a --repo folder of them, short mixes, running the command in process.

The checkpoints are made by upstream 4.0.1 (the oracle) when it is installed, else by our
own ``serialize_model``; both are the upstream format. Audio is short and at 8 kHz.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import math
import socket
import threading
from fractions import Fraction

import importlib
import tracemalloc
import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from demucs.states import capture_init
from tests import oracle as _oracle

SOURCES = ["drums", "bass", "other", "vocals"]
RATE = 8000
TINY_DEMUCS = dict(
    sources=SOURCES,
    audio_channels=2,
    channels=4,
    depth=2,
    samplerate=RATE,
    segment=1,
    lstm_layers=0,
    dconv_comp=2,
)
TINY_HTDEMUCS = dict(
    sources=SOURCES,
    audio_channels=2,
    channels=4,
    nfft=256,
    depth=2,
    t_layers=1,
    t_heads=2,
    samplerate=RATE,
    segment=1,
    dconv_comp=4,
)


def make_checkpoint(klass: str, kwargs: dict, path: Path) -> None:
    """Saves ``klass(**kwargs)`` (seed 0; e.g. "demucs.Demucs") as an upstream checkpoint."""
    if _oracle.available():
        _oracle.make_model(klass, kwargs, None, path.parent / "work", checkpoint=path)
        return
    from demucs.states import serialize_model

    module, name = klass.rsplit(".", 1)
    torch.manual_seed(0)
    model = getattr(importlib.import_module(f"demucs.{module}"), name)(**kwargs)
    torch.save(serialize_model(model, {}), path)


def htdemucs_importable() -> bool:
    try:
        import demucs.htdemucs  # noqa: F401
    except Exception:
        return False
    return True


def build_tiny_repo(repo: Path) -> Path:
    """Fills ``repo`` with bag ``tiny`` (one tiny Demucs, signature ``tinyd``) and, when
    HTDemucs is there, ``tinyht`` (one tiny HTDemucs, ``tinyh``). Returns ``repo``."""
    make_checkpoint("demucs.Demucs", TINY_DEMUCS, repo / "tinyd.th")
    (repo / "tiny.yaml").write_text("models: ['tinyd']\n")
    if htdemucs_importable():
        make_checkpoint("htdemucs.HTDemucs", TINY_HTDEMUCS, repo / "tinyh.th")
        (repo / "tinyht.yaml").write_text("models: ['tinyh']\n")
    return repo


def write_mix(
    path: Path,
    seconds: float = 1.5,
    channels: int = 2,
    amplitude: float = 0.2,
    seed: int = 0,
    samplerate: int = RATE,
) -> np.ndarray:
    """A short noise track (float wav, or the format of ``path``'s extension)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((int(seconds * samplerate), channels)) * amplitude
    data = np.clip(data, -0.9, 0.9).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.name.rpartition(".")[2].upper()  # "..wav": soundfile cannot tell
    sf.write(str(path), data, samplerate, format=kind, subtype="FLOAT" if kind == "WAV" else None)
    return data


def make_tiny_repo(repo: Path, name: str = "tiny") -> Path:
    """Writes bag ``name`` (one tiny Demucs, fixed seed, upstream's checkpoint format)."""
    from demucs.demucs import Demucs
    from demucs.states import serialize_model

    repo.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Demucs(**TINY_DEMUCS)  # type: ignore[arg-type]
    torch.save(serialize_model(model, {}), repo / f"{name}d.th")
    (repo / f"{name}.yaml").write_text(f"models: ['{name}d']\n")
    return repo


def leftovers(folder: Path) -> tp.List[Path]:
    """Temporary files that an atomic write would leave behind."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def run_main(args: tp.Sequence[tp.Any], capsys: tp.Any) -> tp.Tuple[int, str, str]:
    """Runs ``demucs.separate.main`` in process, as library callers do; returns (exit
    status, stdout, stderr). Success must return (``None``), not raise."""
    from demucs import separate

    try:
        returned = separate.main([str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code
        assert code not in (0, None), "main() raised SystemExit on success"
        status = code if isinstance(code, int) else 1
    else:
        assert returned is None
        status = 0
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_console(args: tp.Sequence[tp.Any], capsys: tp.Any) -> tp.Tuple[int, str, str]:
    """Runs the console script ``demucs.separate.console_main`` in process (it always
    exits); returns (exit status, stdout, stderr)."""
    from demucs import separate

    try:
        separate.console_main([str(arg) for arg in args])
    except SystemExit as exit_:
        code = exit_.code
    else:
        raise AssertionError("console_main() returned instead of exiting")
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def noise(length: int, channels: int = 2, seed: int = 0, amplitude: float = 0.2) -> torch.Tensor:
    """Reproducible Gaussian noise ``(channels, length)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, length, generator=gen) * amplitude


class GeneratedSource:
    """Noise made block by block: a long track that never exists in memory."""

    def __init__(self, seconds: float, samplerate: int, block: int = 4096) -> None:
        self.samplerate, self.channels, self.block = samplerate, 2, block
        self.length = int(seconds * samplerate)

    def blocks(self) -> tp.Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for start in range(0, self.length, self.block):
            size = min(self.block, self.length - start)
            yield (rng.standard_normal((2, size)) * 0.1).astype(np.float32)


def traced_stream_peak(separator: tp.Any, path: Path) -> int:
    """Peak of Python-traced memory while ``separator`` streams the file ``path``
    (decoded in blocks of 4096 samples, so that a block is smaller than the tracks)."""
    from demucs.core import TrackStats
    from demucs.io import open_track

    track = open_track(
        path, separator.samplerate, separator.audio_channels, block=4096, scan=TrackStats.of_blocks
    )
    tracemalloc.start()
    try:
        for _ in separator.stream_track(track):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------- audio files


def tones(samplerate: int = 8000, seconds: float = 1.0, channels: int = 2) -> torch.Tensor:
    t = torch.arange(int(samplerate * seconds)) / samplerate
    freqs = [220.0, 330.0, 440.0, 550.0][:channels]
    return torch.stack([0.4 * torch.sin(2 * math.pi * f * t) for f in freqs])


def encode_pyav(
    path: Path, wav: torch.Tensor, samplerate: int, codec: str, video: str | None = None
) -> None:
    """Writes ``wav`` with PyAV's FFmpeg, optionally muxed with a tiny black video."""
    import av

    channels, length = wav.shape
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as out:
        astream = out.add_stream(codec, rate=samplerate, layout=layout)
        vstream = None
        if video:
            vstream = out.add_stream(video, rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 32, 32, "yuv420p"
        pcm = (wav.clamp(-1, 1).numpy().T * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = samplerate, 0, Fraction(1, samplerate)
        for packet in [*astream.encode(frame), *astream.encode(None)]:
            out.mux(packet)
        if vstream is not None:
            for i in range(max(1, int(10 * length / samplerate))):
                image = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), "rgb24")
                image.pts = i
                for packet in vstream.encode(image):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)


# ---------------------------------------------------------------------- HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serves ``folder`` on 127.0.0.1 (random free port) in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- models


class TinyNet(nn.Module):
    """Stand-in model with the attributes Demucs models have."""

    @capture_init
    def __init__(
        self,
        sources=("a", "b"),
        audio_channels=2,
        samplerate=100,
        segment=Fraction(3, 2),
        hidden=3,
        use_conv_stft=False,
    ):
        super().__init__()
        self.sources = list(sources)
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment = segment
        self.use_conv_stft = use_conv_stft
        self.conv = nn.Conv1d(audio_channels, hidden, 1)
        self.out = nn.Conv1d(hidden, len(self.sources) * audio_channels, 1)

    def forward(self, x):
        y = self.out(torch.relu(self.conv(x)))
        return y.view(x.shape[0], len(self.sources), self.audio_channels, -1)
