"""Demucs and ONNX: exporting a model to one self-contained graph (waveform in, stems out,
STFT inside) and running such graphs.

Modules: :mod:`.graph` (ONNX helpers and names shared by the others), :mod:`.prepare`
(the torch module that becomes the graph), :mod:`.export` (tracing and the export
pipeline), :mod:`.passes` (graph rewriting after tracing), :mod:`.precision` (fp16, int8
and mixed-precision files), :mod:`.verify` (checking a file against PyTorch), :mod:`.cli`
(``python -m demucs.export_onnx``) and :mod:`.runtime` (the ONNX Runtime backend of the
separation core; no torch).
"""
