"""Demucs v4 music source separation, with an ONNX-exportable conv-STFT backend."""

__version__ = "4.1.0a1"
