"""Packaging for demucs-onnx: Demucs v4 with a convolutional STFT backend."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
README = (HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else ""

setup(
    name="demucs",
    version="4.1.0a1",
    description="Music source separation (Demucs v4) with an ONNX-exportable conv-STFT backend",
    long_description=README,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["demucs", "demucs.*"]),
    package_data={"demucs": ["remote/*.txt", "remote/*.yaml", "py.typed"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "numpy",
        "einops",
        "pyyaml",
        "julius>=0.2.3",
        "tqdm",
        "soundfile>=0.12",
        "av>=11",
        "lameenc>=1.2",
        "soxr>=0.3",
    ],
    extras_require={
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17", "onnxscript"],
        "quantized": ["diffq>=0.2.1"],
        "dev": ["pytest>=7", "ruff", "mypy"],
        "hf": ["huggingface_hub", "safetensors"],
        "ray": ["ray[data]>=2.9"],
    },
    entry_points={"console_scripts": ["demucs=demucs.separate:console_main",
                                      "demucs-batch=demucs.batch:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Topic :: Multimedia :: Sound/Audio",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
