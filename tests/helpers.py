"""Shared test helpers: tiny models in a ``--repo`` folder and generated tracks."""
from __future__ import annotations

import typing as tp
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCES = ["drums", "bass", "other", "vocals"]
RATE = 8000
TINY_DEMUCS = dict(sources=SOURCES, audio_channels=2, channels=4, depth=2, samplerate=RATE,
                   segment=1, lstm_layers=0, dconv_comp=2)


def make_tiny_repo(repo: Path, name: str = "tiny") -> Path:
    """Writes bag ``name`` (one tiny Demucs, fixed seed, upstream's checkpoint format)."""
    import torch

    from demucs.demucs import Demucs
    from demucs.states import serialize_model

    repo.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Demucs(**TINY_DEMUCS)  # type: ignore[arg-type]
    torch.save(serialize_model(model, {}), repo / f"{name}d.th")
    (repo / f"{name}.yaml").write_text(f"models: ['{name}d']\n")
    return repo


def write_mix(path: Path, seconds: float = 1.5, channels: int = 2, amplitude: float = 0.2,
              seed: int = 0, samplerate: int = RATE) -> np.ndarray:
    """A short noise track (float wav, or the format of ``path``'s extension)."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((int(seconds * samplerate), channels)) * amplitude
    data = np.clip(data, -0.9, 0.9).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = path.name.rpartition(".")[2].upper()  # "..wav": soundfile cannot tell
    sf.write(str(path), data, samplerate, format=kind,
             subtype="FLOAT" if kind == "WAV" else None)
    return data


def leftovers(folder: Path) -> tp.List[Path]:
    """Temporary files that an atomic write would leave behind."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
