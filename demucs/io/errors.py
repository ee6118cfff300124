"""Errors and warnings of the audio I/O layer, and the one policy for non-finite samples.

Non-finite samples (NaN, +Inf, -Inf) are replaced by ``0``, ``+1`` and ``-1`` wherever
audio enters or leaves the package (readers and writers alike), and one
:class:`AudioWarning` per file says how many were replaced. The replacement happens before
any clipping or rescaling, so one NaN can neither turn a whole stem into NaN nor into
full-scale noise.
"""

from __future__ import annotations

import os
import typing as tp
import warnings
from pathlib import Path

import numpy as np

PathLike = tp.Union[str, os.PathLike]

#: Values that replace NaN, +Inf and -Inf samples.
NAN_REPLACEMENT = 0.0
POSINF_REPLACEMENT = 1.0
NEGINF_REPLACEMENT = -1.0


class LoadAudioError(Exception):
    """An audio file could not be read. ``str(err)`` is one line naming the file.

    ``details`` lists what each decoder said, for verbose diagnostics.
    """

    def __init__(self, path: PathLike, reason: str, details: tp.Sequence[str] = ()):
        self.path = Path(path)
        self.reason = reason
        self.details = list(details)
        super().__init__(f"{path}: {reason}")


class AudioWarning(UserWarning):
    """Something about an input or output file that the user should know (truncated file,
    non-finite samples replaced); the message is one line naming the file."""


def one_line(error: BaseException) -> str:
    """``error`` as a short single line (native decoders put newlines in their messages)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]


def warn(path: PathLike, message: str) -> None:
    """Emits an :class:`AudioWarning` ``"<path>: <message>"``."""
    warnings.warn(f"{path}: {message}", AudioWarning, stacklevel=3)


class NonFinite:
    """Applies the non-finite policy block by block and counts what it replaced."""

    def __init__(self) -> None:
        self.count = 0

    def clean(self, block: np.ndarray) -> np.ndarray:
        """``block`` with NaN/Inf replaced (a copy if anything changed)."""
        if block.dtype.kind != "f":
            return block
        finite = np.isfinite(block)
        if finite.all():
            return block
        self.count += int(block.size - np.count_nonzero(finite))
        return np.nan_to_num(
            block, nan=NAN_REPLACEMENT, posinf=POSINF_REPLACEMENT, neginf=NEGINF_REPLACEMENT
        )

    def report(self, path: PathLike) -> None:
        """Warns once if anything was replaced."""
        if self.count:
            warn(path, f"{self.count} non-finite samples (NaN/Inf) replaced by 0 / +-1")
            self.count = 0


def install_warning_format(prog: str = "demucs") -> None:
    """Shows :class:`AudioWarning` as one line ``"<prog>: warning: <message>"`` on stderr
    (for command-line programs); other warnings keep Python's format."""
    import sys

    previous = warnings.showwarning

    def show(
        message: tp.Any,
        category: tp.Type[Warning],
        filename: str,
        lineno: int,
        file: tp.Any = None,
        line: tp.Optional[str] = None,
    ) -> None:
        if issubclass(category, AudioWarning):
            print(f"{prog}: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
