"""Parity report: our models against upstream demucs 4.0.1, and conv STFT vs torch.stft.

Builds each configuration with upstream (in a subprocess, see tests/oracle.py) from a
fixed seed, loads its weights into ours, runs both on the same random audio and prints
the maximum absolute difference (torch backend) and the SNR of our conv-STFT backend
against our torch backend::

    python bench/parity.py            # needs `make oracle`
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demucs.demucs import Demucs  # noqa: E402
from demucs.hdemucs import HDemucs  # noqa: E402
from demucs.htdemucs import HTDemucs  # noqa: E402
from demucs.onnx.verify import snr_db  # noqa: E402
from demucs import configs  # noqa: E402
from tests import oracle  # noqa: E402

CASES = {
    "htdemucs (release architecture)": ("htdemucs.HTDemucs", configs.HTDEMUCS, 44100 * 3),
    "htdemucs_6s (release architecture)": ("htdemucs.HTDemucs", configs.HTDEMUCS_6S, 44100 * 3),
    "tiny HTDemucs, cac=False": ("htdemucs.HTDemucs", configs.TINY_HTDEMUCS_MAG, 7963),
    "HDemucs (hybrid v3, nfft 4096, depth 6)": (
        "hdemucs.HDemucs",
        dict(
            sources=configs.SOURCES_4,
            channels=48,
            depth=6,
            nfft=4096,
            hybrid=True,
            hybrid_old=False,
            cac=True,
        ),
        44100 * 3,
    ),
    "Demucs (waveform, depth 6, LSTM/attention DConv)": (
        "demucs.Demucs",
        dict(
            sources=configs.SOURCES_4,
            channels=48,
            depth=6,
            dconv_mode=3,
            dconv_lstm=4,
            dconv_attn=4,
        ),
        44100 * 3,
    ),
}
CLASSES = {"htdemucs.HTDemucs": HTDemucs, "hdemucs.HDemucs": HDemucs, "demucs.Demucs": Demucs}


def main() -> None:
    if not oracle.available():
        sys.exit("upstream oracle missing: run `make oracle`")
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        name: 0.3 * torch.randn(1, 2, length, generator=gen)
        for name, (_, _, length) in CASES.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        refs = oracle.make_model_dict(
            {name: (klass, kwargs, inputs[name], 0) for name, (klass, kwargs, _) in CASES.items()},
            Path(tmp),
        )
    print("| model | max abs diff vs upstream | conv STFT vs torch STFT |")
    print("|---|---|---|")
    for name, (klass, kwargs, _) in CASES.items():
        model = CLASSES[klass](**kwargs).eval()
        model.load_state_dict(refs[name]["state"], strict=True)
        with torch.no_grad():
            out = model(inputs[name])
            conv = "n/a (no STFT)"
            if hasattr(model, "use_conv_stft"):
                model.use_conv_stft = True
                conv = f"{snr_db(out, model(inputs[name])):.1f} dB"
        diff = (out - refs[name]["output"]).abs().max().item()
        print(f"| {name} | {diff:.2e} | {conv} |")


if __name__ == "__main__":
    main()
