"""The package as pip installs it: data files, entry points, import hygiene."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_catalog_and_console_script(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("demucs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    catalog = {n.split("/")[-1] for n in names if n.startswith("demucs/remote/")}
    assert {"files.txt", "htdemucs.yaml", "htdemucs_ft.yaml", "mdx_extra_q.yaml"} <= catalog
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "demucs = demucs.separate:console_main" in text


def test_python_m_demucs_help():
    proc = subprocess.run(
        [sys.executable, "-m", "demucs", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--two-stems" in proc.stdout and "--repo" in proc.stdout


def test_no_torchaudio_and_lazy_heavy_imports():
    code = (
        "import sys, demucs.separate, demucs.api, demucs.htdemucs, demucs.export_onnx\n"
        "bad = [m for m in ('torchaudio', 'onnx', 'onnxruntime', 'av', 'diffq') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
