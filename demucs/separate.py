"""The ``demucs`` command: separate the sources of audio (or video) files.

Same flags, defaults and output layout as upstream Demucs 4.0.1
(``OUT/MODEL/TRACK/STEM.EXT``), plus ``--list-models``, ``--other-method``, ``-q`` and
``--onnx FILE``: separate with a graph exported by :mod:`demucs.export_onnx`, run by ONNX
Runtime (same output, normalisation, shifts, overlap, streaming; the folder MODEL is the
graph's ``model_name`` metadata, else the file's stem).
Folders are separated file by file and ``--skip-existing`` resumes an interrupted run
(naming rules and collisions: :mod:`demucs.tracks`); the run ends with one summary line.
Problems with one track (unreadable file, unwritable output...) are reported on one line
of stderr and the other tracks are still processed; the exit status is then 1. Problems
with the model or the options stop at once with status 1; Ctrl-C exits with 130 and
leaves no partial files behind.

Called in process, :func:`main` returns ``None`` when every track was separated, as
upstream's does, and raises ``SystemExit`` with a non-zero status only on failure (as
argparse does for bad flags), so a program can run it and carry on; Ctrl-C raises
``KeyboardInterrupt`` once partial files are removed. The console script is
:func:`console_main`, which turns all of this into exit statuses.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import sys
import typing as tp
from pathlib import Path

import numpy as np

from .allocator import bound_allocator
from .api import Separator
from .audio import LoadAudioError
from .errors import ModelLoadingError
from .flags import DEFAULT_MODEL, add_model_flags
from .lazy import lazy_exports
from .io import StemWriter, open_stem_writer
from .io.writers import ResamplingWriter
from .tracks import (
    InputError,
    TrackInput,
    describe_collisions,
    discover,
    find_collisions,
    is_complete,
    plain_track,
    stale_temporaries,
    stem_paths,
)

if tp.TYPE_CHECKING:  # pragma: no cover
    import torch

# PyTorch and the model code are imported only on the PyTorch path: with --onnx the
# command runs on numpy and ONNX Runtime alone (demucs.api's ONNX backend).

PROG = "demucs"
#: Above this many shifts, the command warns that the run will be long.
MANY_SHIFTS = 10
TEMPLATE_KEYS = ("track", "trackext", "stem", "ext")


class Default(str):
    """A flag's default value, as opposed to the same value given on the command line."""


def default_device() -> str:
    """``cuda`` when PyTorch sees a GPU, else ``cpu``, without importing PyTorch on a
    machine that has no NVIDIA driver (the ``--onnx`` path never needs it)."""
    if "torch" not in sys.modules and not os.path.exists("/dev/nvidiactl"):
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _given(value: tp.Any) -> bool:
    return value is not None and not isinstance(value, Default)


class CommandError(Exception):
    """A problem that stops the whole command (one line, exit status 1)."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(PROG, description="Separate the sources for the given tracks")
    parser.add_argument(
        "tracks",
        nargs="*",
        type=Path,
        default=[],
        help="Path to tracks, or folders: every audio or video file under a "
        "folder is separated (recursively, sorted; other files are skipped) "
        "and its subfolders are kept in the output ({track} = sub/name).",
    )
    add_model_flags(parser)
    # Upstream's defaults, marked so that --onnx can tell them from values the user gave.
    parser.set_defaults(name=Default(DEFAULT_MODEL), device=Default(default_device()))
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="FILE",
        help="Separate with this ONNX graph (python -m demucs.export_onnx) "
        "through ONNX Runtime instead of a PyTorch model; replaces "
        "-n/-s/--repo. The segment is the one fixed in the file.",
    )
    parser.add_argument(
        "--list-models",
        action="store_true",
        help="List the models of --repo (or the remote catalog) and exit.",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true")
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="Only print errors (no progress bar)."
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("separated"),
        help="Folder where to put extracted tracks. A subfolder "
        "with the model name will be created.",
    )
    parser.add_argument(
        "--filename",
        default="{track}/{stem}.{ext}",
        help='Set the name of output file. Use "{track}", "{trackext}", '
        '"{stem}", "{ext}" to use variables of track name without extension, '
        "track extension, stem name and default output file extension. "
        'Default is "{track}/{stem}.{ext}".',
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="Do not separate again a track whose stems all exist (stems "
        "appear only once complete, so an interrupted run can be resumed).",
    )
    parser.add_argument(
        "-d",
        "--device",
        help="Device to use, default is cuda if available else cpu "
        "(with --onnx: cuda needs onnxruntime-gpu)",
    )
    parser.add_argument(
        "--shifts",
        default=1,
        type=int,
        help="Number of random shifts for equivariant stabilization. "
        "Increase separation time but improves quality for Demucs. "
        f"10 was used in the original paper. Any number is accepted; above "
        f"{MANY_SHIFTS} a warning says how much longer the run takes.",
    )
    parser.add_argument("--overlap", default=0.25, type=float, help="Overlap between the splits.")
    split_group = parser.add_mutually_exclusive_group()
    split_group.add_argument(
        "--no-split",
        action="store_false",
        dest="split",
        default=True,
        help="Doesn't split audio in chunks. This can use large amounts of memory.",
    )
    split_group.add_argument(
        "--segment",
        type=float,
        help="Set split size of each chunk (seconds). This can help save memory of graphic card.",
    )
    parser.add_argument(
        "--two-stems",
        dest="stem",
        metavar="STEM",
        help="Only separate audio into {STEM} and no_{STEM} (or minus_{STEM}, see --other-method).",
    )
    parser.add_argument(
        "--other-method",
        dest="other_method",
        default="add",
        choices=["none", "add", "minus"],
        help="With --two-stems: how the rest is made: no_{STEM} = sum of "
        "the other stems (add, default: runs every model of a bag), "
        "minus_{STEM} = mix minus STEM (minus), or not saved (none). minus "
        "and none run only the bag members STEM needs (htdemucs_ft: one "
        "model of four).",
    )
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--int24", action="store_true", help="Save wav output as 24 bits wav.")
    depth.add_argument(
        "--float32", action="store_true", help="Save wav output as float32 (2x bigger)."
    )
    parser.add_argument(
        "--clip-mode",
        default="rescale",
        choices=["rescale", "clamp", "none"],
        help="Strategy for avoiding clipping: rescaling entire signal "
        "if necessary (rescale), hard clipping (clamp) or none (write as "
        "computed: --float32 keeps values beyond 1).",
    )
    format_group = parser.add_mutually_exclusive_group()
    format_group.add_argument(
        "--flac", action="store_true", help="Convert the output wavs to flac."
    )
    format_group.add_argument("--mp3", action="store_true", help="Convert the output wavs to mp3.")
    parser.add_argument("--mp3-bitrate", default=320, type=int, help="Bitrate of converted mp3.")
    parser.add_argument(
        "--mp3-preset",
        choices=range(2, 8),
        type=int,
        default=2,
        help="Encoder preset of MP3, 2 for highest quality, 7 for fastest speed. Default is 2",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        default=0,
        type=int,
        help="Number of jobs. This can increase memory usage but will "
        "be much faster when multiple cores are available.",
    )
    parser.add_argument(
        "--keep-samplerate",
        action="store_true",
        help="Write the stems at the input's sample rate and length (e.g. "
        "48 kHz in, 48 kHz out) instead of the model's rate.",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Seed of the shift trick's random offsets, set before each "
        "track: runs with the same seed give identical stems.",
    )
    parser.add_argument(
        "--onnx-providers",
        default=None,
        metavar="LIST",
        help="With --onnx: comma-separated ONNX Runtime execution "
        "providers (cuda, coreml, dml, rocm, cpu or full names); default: "
        "the best available.",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="PyTorch models: fp32 (default, exact), bf16 (CPUs with "
        "AVX-512 BF16 / AMX, GPUs) or fp16 (CUDA): faster, slightly "
        "different stems.",
    )
    return parser


# ---------------------------------------------------------------------- helpers


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_template(template: str) -> None:
    """Raises CommandError unless ``template`` formats with the four known keys and
    gives a different name to each stem."""
    names = []
    for stem in ("stem_a", "stem_b"):
        try:
            names.append(template.format(track="t", trackext="e", stem=stem, ext="x"))
        except KeyError as err:
            raise CommandError(
                f"--filename {template!r}: unknown key {{{err.args[0]}}}; use "
                + ", ".join("{" + key + "}" for key in TEMPLATE_KEYS)
            ) from None
        except (IndexError, ValueError, AttributeError) as err:
            raise CommandError(f"--filename {template!r}: invalid template ({err})") from None
    if names[0] == names[1]:
        raise CommandError(
            f"--filename {template!r} must contain {{stem}}, otherwise "
            "every stem is written to the same file"
        )
    if not names[0].strip() or names[0].endswith(("/", "\\")):
        raise CommandError(f"--filename {template!r} does not name a file")


def output_extension(args: argparse.Namespace) -> str:
    return "mp3" if args.mp3 else "flac" if args.flac else "wav"


def _check_device(device: str) -> None:
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise CommandError(f"invalid device {device!r}: {_one_line(err)}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"device {device!r} requested but CUDA is not available")


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    from .pretrained import get_model_from_args

    try:
        return get_model_from_args(args)
    except ModelLoadingError as err:
        raise CommandError(f"cannot load model: {_one_line(err)}") from None
    except (OSError, RuntimeError, ValueError, ImportError) as err:
        raise CommandError(f"cannot load model {_model_name(args)}: {_one_line(err)}") from None


def _model_name(args: argparse.Namespace) -> str:
    return str(getattr(args, "sig", None) or args.name or DEFAULT_MODEL)  # str: no Default


def _check_onnx_flags(args: argparse.Namespace) -> None:
    """Raises CommandError for the flags that do not apply to ``--onnx``."""
    given = [
        flag
        for flag, value in (
            ("-n/--name", args.name),
            ("-s/--sig", args.sig),
            ("--repo", args.repo),
            ("--random-weights", args.random_weights or None),
        )
        if _given(value)
    ]
    if given:
        raise CommandError(
            f"--onnx replaces {', '.join(given)}: the graph is the model; give one or the other"
        )
    if args.segment is not None:
        raise CommandError(
            "--segment cannot be used with --onnx: the segment is fixed in "
            "the ONNX file (export again with python -m demucs.export_onnx "
            "--segment SECONDS)"
        )
    if not args.split:
        raise CommandError(
            "--no-split cannot be used with --onnx: the graph separates segments of a fixed length"
        )
    if args.precision != "fp32":
        raise CommandError(
            "--precision applies to PyTorch models; an ONNX graph has its own "
            "(export it with python -m demucs.export_onnx --precision)"
        )


def _wanted_stems(args: argparse.Namespace) -> tp.Optional[tp.List[str]]:
    """The stems the run needs: all, unless --two-stems with a rest that is not the sum
    of the other stems (then bag members that only make other stems are skipped)."""
    if args.stem is not None and args.other_method in ("minus", "none"):
        return [args.stem]
    return None


def _onnx_separator(args: argparse.Namespace, progress: bool) -> Separator:
    _check_onnx_flags(args)
    bound_allocator()  # steady peak RSS across segments (see demucs.allocator)
    providers = [p for p in (args.onnx_providers or "").split(",") if p.strip()]
    try:
        device = args.device if _given(args.device) else None  # None: the best providers
        separator = Separator(
            onnx=args.onnx,
            device=device,
            shifts=args.shifts,
            overlap=args.overlap,
            progress=progress,
            onnx_providers=providers or None,
        )
    except (ModelLoadingError, ValueError) as err:
        raise CommandError(_one_line(err)) from None
    _check_stem(args, separator)
    separator.update_parameter(stems=_wanted_stems(args))
    return separator


def _check_stem(args: argparse.Namespace, separator: Separator) -> None:
    if args.stem is not None and args.stem not in separator.sources:
        raise CommandError(
            f'stem "{args.stem}" is not in selected model. '
            f"STEM must be one of {', '.join(separator.sources)}."
        )
    if args.stem is not None and args.other_method == "add" and len(separator.sources) < 2:
        raise CommandError(
            f"--other-method add sums the other stems, but the model only "
            f"makes {args.stem}: use --other-method minus or none"
        )


def _torch_separator(args: argparse.Namespace, progress: bool) -> Separator:
    from .apply import BagOfModels, max_allowed_segment

    if args.onnx_providers:
        raise CommandError("--onnx-providers needs --onnx")
    device = str(args.device) if args.device else default_device()
    _check_device(device)
    model = _load_model(args)
    limit = max_allowed_segment(model)
    if args.segment is not None and not args.segment <= limit:
        raise CommandError(
            "Cannot use a Transformer model with a longer segment than it was "
            f"trained for. Maximum segment is: {limit}"
        )
    try:
        separator = Separator(
            model,
            device=device,
            shifts=args.shifts,
            overlap=args.overlap,
            split=args.split,
            segment=args.segment,
            jobs=args.jobs,
            progress=progress,
            precision=args.precision,
        )
    except ValueError as err:
        raise CommandError(_one_line(err)) from None
    _check_stem(args, separator)
    separator.update_parameter(stems=_wanted_stems(args))
    if not args.quiet and isinstance(model, BagOfModels) and len(model.models) > 1:
        running = sum(
            1
            for sub, weights in zip(model.models, model.weights)
            if args.stem is None
            or _wanted_stems(args) is None
            or weights[model.sources.index(args.stem)] != 0
        )
        print(
            f"Selected model is a bag of {len(model.models)} models"
            + (f", {running} of which make {args.stem}" if running < len(model.models) else "")
            + ". You will see that many progress bars per track."
        )
    return separator


def _print_models(repo: tp.Optional[Path]) -> None:
    from .api import list_models

    try:
        models = list_models(repo)
    except (ModelLoadingError, OSError) as err:
        raise CommandError(_one_line(err)) from None
    print("Bags of models:", " ".join(models["bag"]) or "(none)")
    if repo is not None:
        print("Single models:", " ".join(models["single"]) or "(none)")


class _Written:
    """Files written for the current track, removed again if the user interrupts."""

    def __init__(self) -> None:
        self.paths: tp.List[Path] = []

    def remove_all(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.unlink()
        self.paths.clear()


def rest_name(args: argparse.Namespace) -> str:
    """Name of the second stem of --two-stems: ``minus_STEM`` (mix minus the stem, upstream
    4.1.0's name) or ``no_STEM`` (sum of the other stems)."""
    return ("minus_" if args.other_method == "minus" else "no_") + args.stem


WrittenFiles = _Written  # public name for demucs.batch's workers


def _save_options(args: argparse.Namespace, samplerate: int) -> tp.Dict[str, tp.Any]:
    return {
        "samplerate": samplerate,
        "bitrate": args.mp3_bitrate,
        "preset": args.mp3_preset,
        "clip": args.clip_mode,
        "as_float": args.float32,
        "bits_per_sample": 24 if args.int24 else 16,
    }


def _output_path(
    track: Path,
    stem: str,
    args: argparse.Namespace,
    out: Path,
    item: tp.Optional[TrackInput] = None,
) -> Path:
    """Final path of one stem; ``item`` gives the track name (default: upstream's)."""
    item = item or plain_track(track)
    (path,) = stem_paths(item, [stem], args.filename, output_extension(args), out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _stem_names(sources: tp.Sequence[str], args: argparse.Namespace) -> tp.List[str]:
    if args.stem is None:
        return list(sources)
    if args.other_method == "none":
        return [args.stem]
    return [args.stem, rest_name(args)]


def _stem_blocks(
    stems: np.ndarray, origin: np.ndarray, sources: tp.Sequence[str], args: argparse.Namespace
) -> tp.List[np.ndarray]:
    """Blocks to write, in the order of :func:`_stem_names`: the stems, or STEM and the
    rest (sum of the other stems, or mix minus STEM) for --two-stems."""
    if args.stem is None:
        return list(stems)
    index = list(sources).index(args.stem)
    result = [stems[index]]
    if args.other_method == "add":
        result.append(np.delete(stems, index, axis=0).sum(0))
    elif args.other_method == "minus":
        result.append(origin - stems[index])
    return result


def separate_track(
    track: Path,
    separator: Separator,
    args: argparse.Namespace,
    out: Path,
    written: _Written,
    item: tp.Optional[TrackInput] = None,
) -> None:
    """Separates one track and writes its stems; raises LoadAudioError / OSError.

    The track is decoded, separated and written block by block (memory does not grow
    with its length), or separated in memory with ``-j N`` / ``--no-split``. ``item``
    names the outputs (:mod:`demucs.tracks`; default: upstream's layout). Every stem
    goes to a hidden temporary file renamed at the end; on any error (or Ctrl-C) the
    temporaries are removed and the stems already renamed are listed in ``written`` for
    the caller to remove.
    """
    if args.seed is not None:
        random.seed(args.seed)
    opened = separator.open_track(track)
    if not args.quiet:
        print(f"Separating track {track}", flush=True)
    rate, channels = separator.samplerate, separator.audio_channels
    keep = getattr(args, "keep_samplerate", False) and opened.input_samplerate != rate
    options = _save_options(args, opened.input_samplerate if keep else rate)
    writers: tp.List[StemWriter] = []
    try:
        for stem in _stem_names(separator.sources, args):
            writer = open_stem_writer(
                _output_path(track, stem, args, out, item), channels=channels, **options
            )
            if keep:
                writer = ResamplingWriter(
                    writer, rate, opened.input_samplerate, channels, opened.input_length
                )
            writers.append(writer)
        for origin, stems in _separated_blocks(separator, opened, args):
            for writer, block in zip(writers, _stem_blocks(stems, origin, separator.stems, args)):
                writer.write(block)
        finish_writers(writers, written.paths)
    except BaseException:
        for writer in writers:
            writer.abort()  # no-op for the stems already finished
        raise


def _separated_blocks(
    separator: Separator, opened: tp.Any, args: argparse.Namespace
) -> tp.Iterator[tp.Tuple[np.ndarray, np.ndarray]]:
    """``(origin (C, n), stems (S, C, n))`` blocks: streamed, or the whole track at once
    with ``-j N`` (upstream's parallel segments) or ``--no-split``."""
    parallel = args.jobs and not args.onnx
    if args.split and not parallel:
        yield from separator.stream_track(opened)
        return
    origin, stems = separator.separate_tensor(separator.track_audio(opened))
    yield _numpy(origin), np.stack([_numpy(stems[name]) for name in separator.stems])


def _numpy(array: tp.Any) -> np.ndarray:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


def finish_writers(
    writers: tp.Sequence[StemWriter], done: tp.List[Path], workers: tp.Optional[int] = None
) -> None:
    """Closes every stem writer, several at a time; appends each finished path to ``done``.

    Closing does the last pass over a stem: with ``--clip-mode rescale`` (the default)
    the raw samples are rescaled and encoded (mp3: ~1.7 s per stem of a 60 s track),
    so one thread per core finishes the stems ~2x faster on two cores (lameenc,
    libsndfile and numpy release the GIL). Every close started is waited for, even on an
    error or Ctrl-C, so that no writer is still busy when the caller aborts the others;
    the first error, in writer order, is then raised.

    Args:
        workers: threads (default: one per core, at most one per writer).
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    workers = min(len(writers), workers or os.cpu_count() or 1)
    if workers <= 1:
        for writer in writers:
            writer.close()
            done.append(writer.path)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="demucs-stem")
    futures = [pool.submit(writer.close) for writer in writers]
    try:
        wait(futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        done.extend(
            writer.path
            for writer, future in zip(writers, futures)
            if not future.cancelled() and future.exception() is None
        )
    for future in futures:
        future.result()


def _describe_write_error(err: OSError) -> str:
    target = err.filename if err.filename else ""
    reason = err.strerror or _one_line(err)
    return f"cannot write output {target}: {reason}" if target else f"cannot write output: {reason}"


def check_separation_flags(args: argparse.Namespace) -> None:
    """Raises CommandError for --shifts/--overlap/--segment values that cannot work; warns
    when --shifts makes the run very long."""
    from .core.plan import check_split_params

    try:
        check_split_params(args.shifts, args.overlap, segment=args.segment)
    except ValueError as err:
        flag = next((f for f in ("shifts", "overlap", "segment") if f in str(err)), "")
        raise CommandError(f"--{flag}: {err}" if flag else str(err)) from None
    if args.shifts > MANY_SHIFTS:
        print(
            f"{PROG}: warning: --shifts {args.shifts} runs every model {args.shifts} times "
            f"per track (upstream's paper used 10)",
            file=sys.stderr,
            flush=True,
        )


def build_separator(args: argparse.Namespace, progress: bool = False) -> tp.Tuple[Separator, str]:
    """The separator the flags ask for and the model's name (the output subfolder).

    Raises CommandError for a model or flags that cannot work; ``demucs-batch`` workers
    build theirs with it too.
    """
    if args.onnx is not None:
        separator = _onnx_separator(args, progress)
        return separator, separator.name
    return _torch_separator(args, progress), _model_name(args)


def check_options(args: argparse.Namespace) -> None:
    """Raises CommandError for output options that cannot work (before any model load)."""
    check_template(args.filename)
    check_separation_flags(args)
    if args.mp3 and not 8 <= args.mp3_bitrate <= 320:
        raise CommandError(f"--mp3-bitrate must be between 8 and 320, got {args.mp3_bitrate}")


def find_tracks(
    paths: tp.Sequence[Path],
    args: argparse.Namespace,
    stems: tp.Sequence[str] = ("{stem}",),
    lists: bool = False,
) -> tp.List[TrackInput]:
    """Expands the inputs (folders, and ``.txt`` lists when ``lists``) into tracks.

    Raises CommandError when two of them would write the same stem (nothing is separated
    then) or a folder cannot be read.
    """
    try:
        items = discover(paths, lists=lists, exclude=[args.out])
        collisions = find_collisions(items, stems, args.filename, output_extension(args))
    except (InputError, ValueError) as err:
        raise CommandError(_one_line(err)) from None
    if collisions:
        raise CommandError(describe_collisions(collisions))
    return items


@dataclasses.dataclass
class TrackOutcome:
    """What became of one track: ``status`` is done, skipped or failed."""

    status: str
    stems: tp.List[Path]
    error: tp.Optional[str] = None
    details: tp.List[str] = dataclasses.field(default_factory=list)
    seconds: tp.Optional[float] = None


def expected_stems(
    item: TrackInput, separator: Separator, args: argparse.Namespace, out: Path
) -> tp.List[Path]:
    """Final paths of the stems that separating ``item`` writes."""
    return stem_paths(
        item, _stem_names(separator.sources, args), args.filename, output_extension(args), out
    )


def _audio_seconds(path: Path) -> tp.Optional[float]:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception:  # noqa: BLE001 - the duration is informative only
        return None
    return info.frames / info.samplerate if info.samplerate else None


def process_track(
    item: TrackInput, separator: Separator, args: argparse.Namespace, out: Path, written: _Written
) -> TrackOutcome:
    """Separates one track unless ``--skip-existing`` finds it complete; never raises for
    a problem of this track (bad input, unwritable output): the outcome says it, and the
    stems it had written are removed again (a track is either complete or absent)."""
    written.paths.clear()
    try:
        expected = expected_stems(item, separator, args, out)
    except ValueError as err:
        return TrackOutcome("failed", [], f"{item.path}: {_one_line(err)}")
    if getattr(args, "skip_existing", False) and is_complete(expected):
        return TrackOutcome("skipped", expected, seconds=_audio_seconds(expected[0]))
    for stale in stale_temporaries(expected):  # left by a run that was killed
        with contextlib.suppress(OSError):
            stale.unlink()
    try:
        separate_track(item.path, separator, args, out, written, item)
    except LoadAudioError as err:
        outcome = TrackOutcome("failed", [], str(err), list(err.details))
    except OSError as err:
        outcome = TrackOutcome("failed", [], f"{item.path}: {_describe_write_error(err)}")
    except (RuntimeError, ValueError) as err:
        outcome = TrackOutcome("failed", [], f"{item.path}: separation failed: {_one_line(err)}")
    else:
        stems = list(written.paths)
        written.paths.clear()
        return TrackOutcome("done", stems, seconds=_audio_seconds(stems[0]) if stems else None)
    written.remove_all()
    return outcome


def summary_line(counts: tp.Mapping[str, int]) -> str:
    return (
        f"{counts.get('done', 0)} separated, {counts.get('skipped', 0)} skipped, "
        f"{counts.get('failed', 0)} failed"
    )


def _run(args: argparse.Namespace, written: _Written) -> int:
    check_options(args)
    find_tracks(args.tracks, args)  # collisions stop the command before the model loads
    progress = not args.quiet and sys.stdout.isatty() and sys.stderr.isatty()
    separator, name = build_separator(args, progress)
    items = find_tracks(args.tracks, args, _stem_names(separator.sources, args))

    out = args.out / name
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(
            f"cannot create output folder {out}: {err.strerror or _one_line(err)}"
        ) from None
    if not args.quiet:
        print(f"Separated tracks will be stored in {out.resolve()}")

    counts = {"done": 0, "skipped": 0, "failed": 0}
    for item in items:
        outcome = process_track(item, separator, args, out, written)
        counts[outcome.status] += 1
        if outcome.status == "skipped" and args.verbose:
            print(f"Skipping {item.path}: its stems exist")
        if outcome.error is not None:
            _error(outcome.error)
            if args.verbose:
                for detail in outcome.details:
                    print(f"  {detail}", file=sys.stderr)
    written.paths.clear()
    if not args.quiet:
        print(summary_line(counts), flush=True)
    return 1 if counts["failed"] else 0


def load_track(track: tp.Union[str, Path], audio_channels: int, samplerate: int) -> torch.Tensor:
    """Reads an audio (or video) file as a float32 tensor ``(audio_channels, samples)`` at
    ``samplerate`` (upstream 4.0.1's helper, kept for the programs that call it).

    Channels are converted as :func:`demucs.audio.convert_audio_channels` does and the
    rate with julius. A file that cannot be read is reported on one line of stderr
    naming it, then ``SystemExit(1)`` is raised, as upstream does (upstream prints
    each decoder's error to stdout instead).
    """
    from .audio import convert_audio, read_audio

    try:
        wav, rate = read_audio(track)
    except LoadAudioError as err:
        _error(str(err))
        raise SystemExit(1) from None
    return convert_audio(wav, rate, samplerate, audio_channels)


def _main(opts: tp.Optional[tp.Sequence[str]]) -> int:
    """Runs the command; returns its exit status. Ctrl-C: partial files are removed, then
    ``KeyboardInterrupt`` propagates."""
    parser = get_parser()
    args = parser.parse_args(opts)
    written = _Written()
    try:
        if args.list_models:
            if args.onnx is not None:
                raise CommandError(
                    "--list-models lists the models of --repo; it does not take --onnx"
                )
            _print_models(args.repo)
            return 0
        if not args.tracks:
            parser.error("the following arguments are required: tracks")
        return _run(args, written)
    except CommandError as err:
        _error(str(err))
        return 1
    except KeyboardInterrupt:
        written.remove_all()
        raise


def main(opts: tp.Optional[tp.Sequence[str]] = None) -> None:
    """Runs ``demucs`` with the arguments ``opts`` (default: ``sys.argv[1:]``).

    Returns ``None`` on success, so programs can call it and continue. On failure the
    problems are reported on stderr and ``SystemExit`` is raised with the exit status
    (1, or 2 for bad flags, from argparse). Ctrl-C raises ``KeyboardInterrupt`` after
    removing partial outputs.
    """
    status = _main(opts)
    if status:
        raise SystemExit(status)


def console_main(opts: tp.Optional[tp.Sequence[str]] = None) -> tp.NoReturn:
    """The ``demucs`` console script (and ``python -m demucs[.separate]``): :func:`main`,
    then exits with its status: 0 success, 1 failure, 2 bad flags, 130 Ctrl-C."""
    from .io import install_signal_cleanup, install_warning_format

    install_signal_cleanup()  # SIGTERM/SIGHUP remove the temporary stems, as Ctrl-C does
    install_warning_format(PROG)
    try:
        main(opts)
    except KeyboardInterrupt:
        newline = "\n" if sys.stderr.isatty() else ""  # end a progress bar's line
        print(f"{newline}{PROG}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(0)


#: Names upstream's ``demucs.separate`` exposes (imports of its own), loaded on first use
#: so that ``demucs --onnx`` never imports PyTorch.
_REEXPORTS = {
    "AudioFile": "audio",
    "convert_audio": "audio",
    "save_audio": "audio",
    "BagOfModels": "apply",
    "apply_model": "apply",
    "HTDemucs": "htdemucs",
    "fatal": "utils",
    "get_model_from_args": "pretrained",
    "list_models": "api",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _REEXPORTS)


if __name__ == "__main__":
    console_main()
