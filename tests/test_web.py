"""The browser page (``web/``) and its server (:mod:`demucs.web`).

* The JS core (``web/demucs-core.js``) against values computed here by the Python core,
  with Node's test runner (``tests/web/core.test.mjs``).
* End to end in a real headless Chromium (Debian's ``chromium``, driven by puppeteer-core,
  ``tests/web/drive_page.mjs``): the page separates a generated track with a tiny exported
  graph, and its stems are compared with ``demucs --onnx`` on the same file; a 48 kHz
  input; a corrupt file (clear error). A screenshot of the finished page is checked
  (saved to ``$DEMUCS_WEB_SCREENSHOT`` when set, e.g. for the README).

Needs ``node``, ``npm ci`` (node_modules) and Chromium (``$CHROMIUM`` or ``chromium`` on
the PATH): skipped without them, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# The Python core that web/demucs-core.js mirrors: one place to retarget if it moves.
from demucs.core import (
    MAX_SHIFT_SECONDS,
    BlockInput,
    Member,
    TrackStats,  # noqa: E402
    check_split_params,
    separate,
    transition_weight,
)
from demucs.io.resample import PolyphaseResampler, convert_channels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEB_TESTS = ROOT / "tests" / "web"
SNR_MIN_DB = 60.0
SONG_SECONDS = 10.3  # not a multiple of the segment
PAGE_TIMEOUT_S = 600


def _chromium() -> tp.Optional[str]:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


def _missing() -> tp.List[str]:
    missing = []
    if shutil.which("node") is None:
        missing.append("node")
    for package in ("onnxruntime-web", "puppeteer-core"):
        if not (ROOT / "node_modules" / package / "package.json").is_file():
            missing.append(f"node_modules/{package} (run `npm ci`)")
    if _chromium() is None:
        missing.append("chromium (apt-get install chromium)")
    return missing


@pytest.fixture(scope="module")
def web_tools() -> None:
    """Skips (fails under CI=true) when node, node_modules or Chromium are missing."""
    missing = _missing()
    if missing:
        message = "the browser tests need " + ", ".join(missing)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny HTDemucs (16 kHz, 0.5 s segments, random weights, seed 0) as ONNX."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from demucs.export_onnx import export_model
    from demucs.htdemucs import HTDemucs
    from demucs.configs import TINY_HTDEMUCS

    torch.manual_seed(0)
    model = HTDemucs(**TINY_HTDEMUCS).eval()
    return export_model(
        model, tmp_path_factory.mktemp("web") / "tiny.onnx", name="tinyweb", attention="portable"
    )  # what onnxruntime-web is documented with


def _write_song(path: Path, samplerate: int, seconds: float, seed: int) -> Path:
    """Stereo tones and noise, 16-bit PCM WAV."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * samplerate)) / samplerate
    left = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    right = 0.1 * np.sin(2 * np.pi * 330 * t) * (
        1 + np.sin(2 * np.pi * 0.5 * t)
    ) + 0.05 * rng.standard_normal(t.size)
    sf.write(str(path), np.stack([left, right], 1).astype(np.float32), samplerate, subtype="PCM_16")
    return path


# ----------------------------------------------------------------- JS core vs Python core


def _fake_graph(sources: int, input_samples: int) -> tp.Callable[[np.ndarray], np.ndarray]:
    """Stem ``s`` at input position ``t`` is ``input * (s + 1) * (1 + t / input_samples)``
    (position-dependent, so the padding, trimming and blending all show)."""
    ramp = (1 + np.arange(input_samples, dtype=np.float32) / input_samples).astype(np.float32)
    gains = np.arange(1, sources + 1, dtype=np.float32)[:, None, None]

    def run(batch: np.ndarray) -> np.ndarray:
        return (batch[:, None] * gains * ramp).astype(np.float32)

    return run


def _separation(
    track: np.ndarray,
    rate: int,
    sources: tp.List[str],
    segment: int,
    input_samples: int,
    shifts: int,
    overlap: float,
    power: float,
    recorded: tp.Optional[tp.List[np.ndarray]] = None,
) -> tp.Dict[str, tp.Any]:
    stats = TrackStats.of_blocks([track])
    run = _fake_graph(len(sources), input_samples)

    def recording_run(batch: np.ndarray) -> np.ndarray:
        if recorded is not None:
            recorded.extend(batch)
        return run(batch)

    member = Member(
        run=recording_run,
        segment_length=segment,
        valid_length=lambda n: input_samples,
        weights=[1.0] * len(sources),
    )
    max_shift = int(MAX_SHIFT_SECONDS * rate)
    random.seed(shifts)
    draws = [random.randint(0, max_shift) for _ in range(shifts)]
    random.seed(shifts)
    blocks = separate(
        [member],
        BlockInput([track], track.shape[0], track.shape[1]),
        sources=len(sources),
        samplerate=rate,
        shifts=shifts,
        overlap=overlap,
        transition_power=power,
        mean=stats.mean,
        std=stats.std,
    )
    stems = np.concatenate([stem[0] for _, _, stem in blocks], axis=-1)
    return dict(
        track=track.tolist(),
        sample_rate=rate,
        sources=sources,
        segment_samples=segment,
        input_samples=input_samples,
        shifts=shifts,
        overlap=overlap,
        transition_power=power,
        max_shift=max_shift,
        draws=draws,
        stems=stems.tolist(),
    )


def core_reference(onnx_path: Path) -> tp.Dict[str, tp.Any]:
    """The values tests/web/core.test.mjs checks the JS core against."""
    rng = np.random.default_rng(1)
    track = (0.3 * rng.standard_normal((2, 2600)) + 0.05).astype(np.float32)
    recorded: tp.List[np.ndarray] = []
    separations = [
        _separation(track, 1000, ["a", "b", "c"], 600, 840, 0, 0.25, 1.0, recorded),
        _separation(track, 1000, ["a", "b"], 500, 500, 2, 0.4, 2.0),
        _separation(track[:1, :450], 1000, ["a"], 600, 700, 0, 0.25, 1.0),
    ]
    stats = TrackStats.of_blocks([track])
    split_params = []
    for shifts, overlap, power in [
        (0, 0.25, 1.0),
        (3, 0.0, 1.5),
        (-1, 0.25, 1.0),
        (1, 1.0, 1.0),
        (1, -0.1, 1.0),
        (1, 0.25, 0.5),
    ]:
        try:
            check_split_params(shifts, overlap, power)
            ok = True
        except ValueError:
            ok = False
        split_params.append(dict(shifts=shifts, overlap=overlap, power=power, ok=ok))
    resampled = []
    for old_sr, new_sr in [(48000, 16000), (44100, 16000), (16000, 44100)]:
        signal = rng.standard_normal(1500).astype(np.float32)
        resampler = PolyphaseResampler(old_sr, new_sr, 1)
        out = np.concatenate([resampler.push(signal[None]), resampler.finish()], axis=1)[0]
        resampled.append(
            dict(old_sr=old_sr, new_sr=new_sr, signal=signal.tolist(), resampled=out.tolist())
        )
    three = rng.standard_normal((3, 20)).astype(np.float32)
    converted = [
        dict(
            track=source.tolist(),
            channels=channels,
            converted=convert_channels(source, channels).tolist(),
        )
        for source, channels in [(three, 1), (three, 2), (three[:1], 2)]
    ]
    wavs = []
    for subtype in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"):
        buffer = io.BytesIO()
        sf.write(
            buffer,
            np.clip(0.4 * rng.standard_normal((50, 2)), -1, 1),
            22050,
            format="WAV",
            subtype=subtype,
        )
        buffer.seek(0)
        data, rate = sf.read(buffer, dtype="float32")
        wavs.append(
            dict(
                subtype=subtype,
                base64=base64.b64encode(buffer.getvalue()).decode(),
                sample_rate=rate,
                channels=data.T.tolist(),
            )
        )
    import onnx

    metadata = {prop.key: prop.value for prop in onnx.load(str(onnx_path)).metadata_props}
    return dict(
        max_shift_seconds=MAX_SHIFT_SECONDS,
        transition_weights=[
            dict(length=n, power=p, weight=transition_weight(n, p).tolist())
            for n, p in [(600, 1.0), (7, 2.0), (8, 1.5), (1, 1.0)]
        ],
        stats=[
            dict(channels=track.tolist(), mean=stats.mean, std=stats.std),
            dict(channels=np.zeros((2, 10), np.float32).tolist(), mean=0.0, std=1.0),
        ],
        split_params=split_params,
        plan=dict(
            track=track.tolist(),
            mean=stats.mean,
            std=stats.std,
            segment_samples=600,
            input_samples=840,
            overlap=0.25,
            inputs=[item.tolist() for item in recorded],
        ),
        separations=separations,
        resampled=resampled,
        converted=converted,
        wavs=wavs,
        onnx=dict(path=str(onnx_path), metadata=metadata),
    )


def test_js_core_matches_python_core(web_tools, tiny_onnx, tmp_path):
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(core_reference(tiny_onnx)))
    result = subprocess.run(
        ["node", "--test", str(WEB_TESTS / "core.test.mjs")],
        cwd=ROOT,
        env={**os.environ, "DEMUCS_CORE_REFERENCE": str(reference)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# skipped 0" in result.stdout and "# fail 0" in result.stdout, result.stdout


# ----------------------------------------------------------------- the page in Chromium


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """``python -m demucs.web`` in a subprocess."""

    def __init__(self, *args: tp.Any) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "demucs.web", "--port", str(self.port), "-q", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if "Serving" not in line:
            self.process.kill()
            raise RuntimeError(
                f"the server did not start: {line}"
                f"{self.process.stderr.read() if self.process.stderr else ''}"
            )
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def drive_page(
    url: str, cases: tp.List[tp.Dict[str, tp.Any]], out: Path, screenshot: tp.Optional[Path] = None
) -> tp.List[tp.Dict[str, tp.Any]]:
    """Runs tests/web/drive_page.mjs on ``cases``; returns its per-case reports."""
    out.mkdir(parents=True, exist_ok=True)
    config = out / "drive.json"
    config.write_text(
        json.dumps(
            dict(
                url=url,
                chromium=_chromium(),
                out=str(out),
                cases=cases,
                screenshot=str(screenshot) if screenshot else None,
                timeoutMs=PAGE_TIMEOUT_S * 1000,
            )
        )
    )
    result = subprocess.run(
        ["node", str(WEB_TESTS / "drive_page.mjs"), str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S + 120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _demucs_onnx(onnx_path: Path, song: Path, out: Path) -> Path:
    """Stems of ``demucs --onnx`` (float32 WAV), the reference the page must match."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "demucs",
            "--onnx",
            str(onnx_path),
            "--shifts",
            "0",
            "--float32",
            "--clip-mode",
            "clamp",
            "-q",
            "-o",
            str(out),
            str(song),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return out / "tinyweb" / song.stem


def _snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def test_page_separates_like_demucs_onnx(web_tools, tiny_onnx, tmp_path):
    song = _write_song(tmp_path / "song.wav", 16000, SONG_SECONDS, seed=0)
    song48 = _write_song(tmp_path / "song48.wav", 48000, SONG_SECONDS, seed=1)
    short = _write_song(tmp_path / "short.wav", 16000, 2.2, seed=2)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 64)
    screenshot = tmp_path / "page.png"
    # The page as deployed: the site written by --export (page, ORT files, model.onnx),
    # served as plain static files.
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "demucs.web", "--onnx", str(tiny_onnx), "--export", str(site)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = _Server("--root", site)
    try:
        reports = drive_page(
            server.url,
            [
                dict(name="song", audio=str(song), shifts=0),
                dict(name="song48", audio=str(song48), shifts=0),
                dict(name="corrupt", audio=str(corrupt), shifts=0),
                dict(name="karaoke", audio=str(short), shifts=1, mode="karaoke"),
            ],
            tmp_path / "page",
            screenshot,
        )
    finally:
        server.close()
    by_name = {report["name"]: report for report in reports}
    sources = ["drums", "bass", "other", "vocals"]
    for name, path in (("song", song), ("song48", song48)):
        report = by_name[name]
        assert report["state"] == "done", report
        assert report["isolated"], "the page is not cross-origin isolated (COOP/COEP)"
        assert report["problems"] == [], report["problems"]
        assert report["external"] == [], report["external"]  # offline: no CDN
        assert sorted(report["stems"]) == sorted(sources)
        expected = _demucs_onnx(tiny_onnx, path, tmp_path / "cli")
        for stem in sources:
            got, rate = sf.read(report["stems"][stem], dtype="float32")
            ref, ref_rate = sf.read(str(expected / f"{stem}.wav"), dtype="float32")
            assert rate == ref_rate == 16000
            assert got.shape == ref.shape == (int(SONG_SECONDS * 16000), 2)
            snr = _snr_db(ref, got)
            print(f"{name} {stem}: {snr:.1f} dB against demucs --onnx")
            assert snr >= SNR_MIN_DB, (name, stem, snr)

    corrupt_report = by_name["corrupt"]
    assert corrupt_report["state"] == "error"
    assert corrupt_report["error"].startswith("Cannot decode corrupt.mp3:"), corrupt_report
    assert corrupt_report["stems"] == {}

    karaoke = by_name["karaoke"]  # "Remove vocals", with the shift trick
    assert karaoke["state"] == "done", karaoke
    assert list(karaoke["stems"]) == ["no_vocals"]
    instrumental, _ = sf.read(karaoke["stems"]["no_vocals"], dtype="float32")
    assert instrumental.shape == (int(2.2 * 16000), 2)
    assert np.isfinite(instrumental).all() and np.abs(instrumental).max() > 0

    shot = by_name["song"]["screenshot"]
    assert shot["width"] >= 900 and shot["height"] >= 900, shot
    assert shot["colours"] > 50 and shot["waveform"] > 5000, shot
    target = os.environ.get("DEMUCS_WEB_SCREENSHOT")
    if target:
        shutil.copyfile(screenshot, target)


# ----------------------------------------------------------------- the server command


def test_server_bad_input_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "demucs.web",
            "--onnx",
            str(tmp_path / "missing.onnx"),
            "--port",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demucs.web: "), result.stderr


def test_server_headers_and_export(web_tools, tiny_onnx, tmp_path):
    from urllib.request import urlopen

    server = _Server("--onnx", tiny_onnx)
    try:
        for path, kind in (
            ("", "text/html"),
            ("ort/ort.min.mjs", "text/javascript"),
            ("ort/ort-wasm-simd-threaded.jsep.wasm", "application/wasm"),
            ("model.onnx", "application/octet-stream"),
            ("demucs-core.js", "text/javascript"),
        ):
            with urlopen(server.url + path, timeout=30) as response:
                assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
                assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
                assert response.headers["Content-Type"].startswith(kind), path
        assert tiny_onnx.read_bytes()[:64] == urlopen(server.url + "model.onnx").read()[:64]
    finally:
        server.close()
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "demucs.web", "--onnx", str(tiny_onnx), "--export", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in (
        "index.html",
        "app.js",
        "worker.js",
        "demucs-core.js",
        "style.css",
        "model.onnx",
        "ort/ort.min.mjs",
    ):
        assert (site / name).is_file(), name
