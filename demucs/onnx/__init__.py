"""ONNX: exporting models to one self-contained graph, and running graphs in ONNX Runtime."""
