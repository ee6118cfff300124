"""``python -m demucs.web --onnx model.onnx``: serve the browser page (``web/``) locally.

The page separates audio in the browser with onnxruntime-web (see ``web/demucs-core.js``).
This server only hands out static files, with the headers that make the page
cross-origin isolated (``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``), which WebAssembly threads need:

* ``/`` and the page's files from ``--root`` (default: the ``web/`` folder of this
  checkout);
* ``/ort/`` from ``--ort`` (default: ``web/ort/`` if present, else the npm install,
  ``node_modules/onnxruntime-web/dist``): the page works offline, no CDN;
* ``/model.onnx``: the graph given with ``--onnx`` (the page's default model).

``--export DIR`` instead writes the same site as plain files (page, ORT runtime files,
model) for any static host; the host must send the two headers above for threads.
Standard library only (``http.server``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import typing as tp
from pathlib import Path

__all__ = [
    "ISOLATION_HEADERS",
    "ORT_FILES",
    "default_root",
    "default_ort",
    "make_handler",
    "export_site",
    "main",
]

_CHECKOUT = Path(__file__).resolve().parents[1]
#: Headers that make the page cross-origin isolated (SharedArrayBuffer, WASM threads).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
#: onnxruntime-web files the page loads: the ES module bundle (WASM and WebGPU backends)
#: and the WebAssembly build it imports (SIMD, threads, WebGPU through JSEP).
ORT_FILES = ("ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
MODEL_PATH = "/model.onnx"
ORT_PREFIX = "/ort/"
MIME_TYPES = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".css": "text/css",
    ".png": "image/png",
}


class WebError(ValueError):
    """Bad command-line input (missing files); the message is one line."""


def default_root() -> Path:
    """The ``web/`` folder of this checkout."""
    return _CHECKOUT / "web"


def default_ort(root: Path) -> Path:
    """``root/ort`` when it holds the runtime, else the npm install of this checkout."""
    local = root / "ort"
    if (local / ORT_FILES[0]).is_file():
        return local
    return _CHECKOUT / "node_modules" / "onnxruntime-web" / "dist"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with the isolation headers, ``/ort/`` and ``/model.onnx`` mapped."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    ort_dir: Path
    model: tp.Optional[Path]
    quiet: bool

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean == MODEL_PATH and self.model is not None:
            return str(self.model)
        if clean.startswith(ORT_PREFIX):
            name = clean[len(ORT_PREFIX) :]
            if "/" not in name and name not in ("", ".", ".."):
                return str(self.ort_dir / name)
        return super().translate_path(path)

    def end_headers(self) -> None:
        for key, value in ISOLATION_HEADERS.items():
            self.send_header(key, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args: tp.Any) -> None:  # noqa: A002 (base name)
        if not self.quiet:
            super().log_message(format, *args)


def make_handler(
    root: Path, ort_dir: Path, model: tp.Optional[Path], quiet: bool = False
) -> tp.Callable[..., http.server.BaseHTTPRequestHandler]:
    """The request handler class serving ``root``, ``ort_dir`` and ``model``."""
    handler = type(
        "DemucsWebHandler", (_Handler,), {"ort_dir": ort_dir, "model": model, "quiet": quiet}
    )
    return functools.partial(handler, directory=str(root))


def _check_paths(root: Path, ort_dir: Path, model: tp.Optional[Path]) -> None:
    if not (root / "index.html").is_file():
        raise WebError(f"{root}: no index.html (the page's folder, see --root)")
    if not (ort_dir / ORT_FILES[0]).is_file():
        raise WebError(
            f"{ort_dir}: no onnxruntime-web files ({ORT_FILES[0]}): run `npm ci` "
            "in the checkout or give --ort"
        )
    if model is not None and not model.is_file():
        raise WebError(f"{model}: no such file")


def export_site(target: Path, root: Path, ort_dir: Path, model: tp.Optional[Path]) -> Path:
    """Copies the page, the ORT runtime files (into ``ort/``) and the model (as
    ``model.onnx``) to ``target``, ready for a static host."""
    _check_paths(root, ort_dir, model)
    target.mkdir(parents=True, exist_ok=True)
    for item in root.iterdir():
        if item.is_file() and item.suffix in (".html", ".js", ".css"):
            shutil.copy2(item, target / item.name)
    (target / "ort").mkdir(exist_ok=True)
    for name in ORT_FILES:
        if (ort_dir / name).is_file():
            shutil.copy2(ort_dir / name, target / "ort" / name)
    if model is not None:
        shutil.copy2(model, target / "model.onnx")
    return target


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        "demucs.web", description="Serve the Demucs browser page (COOP/COEP headers)."
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="FILE",
        help="graph served as /model.onnx, the page's default model (python -m demucs.export_onnx)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder of the page (default: web/ of this checkout)",
    )
    parser.add_argument(
        "--ort",
        type=Path,
        default=None,
        help="folder of the onnxruntime-web files (default: web/ort, else "
        "node_modules/onnxruntime-web/dist)",
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the site as static files to DIR instead of serving it",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no request log")
    return parser


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    root = (args.root or default_root()).resolve()
    ort_dir = (args.ort or default_ort(root)).resolve()
    model = args.onnx.resolve() if args.onnx is not None else None
    try:
        if args.export is not None:
            export_site(args.export, root, ort_dir, model)
            print(f"Site written to {args.export}")
            return 0
        _check_paths(root, ort_dir, model)
        server = http.server.ThreadingHTTPServer(
            (args.host, args.port), make_handler(root, ort_dir, model, args.quiet)
        )
    except (WebError, OSError) as err:
        print(f"demucs.web: {err}", file=sys.stderr)
        return 2
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"Serving the Demucs page on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
