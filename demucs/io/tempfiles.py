"""Temporary files that become outputs by rename, and their cleanup.

Every output is written to a hidden temporary file in the target folder and renamed onto
its final name when complete, so a reader never sees half a file. The temporary file:

* is created like any file a program creates (mode ``0o666`` minus the umask, not
  ``tempfile.mkstemp``'s ``0o600``), so the renamed output has normal permissions;
* has a name no longer than the folder allows, whatever the length of the final name;
* is listed in a registry of live temporary files while it exists, so that
  :func:`install_signal_cleanup` can remove them when the process is terminated
  (SIGTERM, SIGHUP), and is removed on any exception (Ctrl-C included).

Errors while writing name the final path (``OSError`` with ``filename`` set to it), not the
hidden temporary file; a full disk says "no space left on device".
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import threading
import typing as tp
from pathlib import Path

from .errors import PathLike

#: Mode of created files before the umask is applied (what ``open(path, "w")`` uses).
FILE_MODE = 0o666
#: Longest file name when the file system does not say.
DEFAULT_NAME_MAX = 255
#: Signals after which live temporary files are removed by :func:`install_signal_cleanup`.
CLEANUP_SIGNALS = ("SIGTERM", "SIGHUP")
_SUFFIX = ".tmp"
_RANDOM_CHARS = 8  # token_hex(4)

_live: tp.Set[Path] = set()
_lock = threading.RLock()  # re-entrant: the signal handler runs on the main thread
_terminating = threading.Event()  # set by remove_all_temporaries: no new files after it
_exit_status: tp.List[int] = []  # set by the signal handler
#: Code of functions a C library calls back (our file object behind libsndfile's virtual
#: I/O; soundfile's own ``vio_*`` callbacks are recognised by name): an exception raised
#: there would be swallowed, so the signal handler defers its exit to the writer.
_CALLBACK_CODES: tp.Set[tp.Any] = set()
F = tp.TypeVar("F", bound=tp.Callable[..., tp.Any])


def library_callback(func: F) -> F:
    """Marks ``func`` as called back from C (see :func:`raise_if_terminating`)."""
    _CALLBACK_CODES.add(func.__code__)
    return func


def live_temporary_files() -> tp.List[Path]:
    """Temporary files created by this process and not yet renamed or removed."""
    with _lock:
        return sorted(_live)


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return DEFAULT_NAME_MAX


def _temporary_name(name: str, limit: int) -> str:
    """``.<name, shortened>.<random>.tmp`` in at most ``limit`` bytes (UTF-8)."""
    token = secrets.token_hex(_RANDOM_CHARS // 2)
    room = limit - len(f"..{token}{_SUFFIX}".encode())
    encoded = name.encode("utf-8", "surrogateescape")[: max(room, 0)]
    stem = encoded.decode("utf-8", "ignore")  # never cut a character in half
    return f".{stem}.{token}{_SUFFIX}"


def is_temporary_of(candidate: str, path: PathLike) -> bool:
    """True if the file name ``candidate`` is a temporary file of the final ``path`` (as
    :func:`create_temporary` names them, shortened names included)."""
    name = Path(path).name
    if not (candidate.startswith(".") and candidate.endswith(_SUFFIX)):
        return False
    stem, dot, token = candidate[1 : -len(_SUFFIX)].rpartition(".")
    return bool(dot) and token.isalnum() and bool(stem) and name.startswith(stem)


def output_error(error: OSError, path: PathLike) -> OSError:
    """``error`` re-addressed to the final ``path`` (a disk-full error says so)."""
    code = error.errno
    reason = os.strerror(code).lower() if code else str(error)
    if code == errno.ENOSPC:
        reason = "no space left on device"
    made = OSError(code, reason) if code else OSError(reason)
    made.filename = str(path)
    return made


def create_temporary(path: PathLike) -> Path:
    """Creates an empty hidden temporary file beside ``path`` and registers it."""
    path = Path(path)
    folder = path.parent
    limit = _name_max(folder)
    while True:
        tmp = folder / _temporary_name(path.name, limit)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            continue
        except OSError as err:
            raise output_error(err, path) from None
        os.close(fd)
        with _lock:
            if not _terminating.is_set():
                _live.add(tmp)
                return tmp
        os.unlink(tmp)  # a signal asked to stop: no new outputs (e.g. from worker threads)
        raise OSError(errno.EINTR, f"{path}: not written, the program is terminating")


def open_output(tmp: Path) -> tp.BinaryIO:
    """Opens a temporary file made by :func:`create_temporary` for writing."""
    return open(tmp, "r+b")


def remove_temporary(tmp: Path) -> None:
    """Removes a temporary file (if still there) and forgets it."""
    with contextlib.suppress(OSError):
        tmp.unlink()
    with _lock:
        _live.discard(tmp)


def publish(tmp: Path, path: PathLike) -> None:
    """Renames the finished temporary file onto ``path``."""
    try:
        os.replace(tmp, path)
    except OSError as err:
        remove_temporary(tmp)
        raise output_error(err, path) from None
    with _lock:
        _live.discard(tmp)


def remove_all_temporaries() -> None:
    """Removes every live temporary file and refuses new ones (used on termination)."""
    with _lock:
        _terminating.set()
        files = list(_live)
        _live.clear()
    for tmp in files:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _on_signal(signum: int, frame: tp.Any) -> None:
    remove_all_temporaries()
    _exit_status.append(128 + signum)
    while frame is not None:
        if frame.f_code in _CALLBACK_CODES or (
            frame.f_globals.get("__name__") == "soundfile"
            and frame.f_code.co_name.startswith("vio_")
        ):
            return  # inside a C callback: the writer raises once the call returns
        frame = frame.f_back
    # Exits with the shell's convention for a signal; ``finally`` blocks still run.
    raise SystemExit(128 + signum)


def raise_if_terminating() -> None:
    """Raises the ``SystemExit`` of a cleanup signal that arrived during a C library's
    callback (libsndfile's virtual I/O through cffi would swallow it there): writers call
    this once the library call returns."""
    if _exit_status:
        raise SystemExit(_exit_status[0])


def install_signal_cleanup() -> None:
    """Removes live temporary files on SIGTERM and SIGHUP, then exits with status
    ``128 + signal``. Call once from the main thread of a program (the CLI does);
    SIGINT already unwinds as ``KeyboardInterrupt`` through the writers' cleanup."""
    for name in CLEANUP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, _on_signal)


@contextlib.contextmanager
def atomic_write(path: PathLike) -> tp.Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    On any exception, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``path`` is left untouched.
    """
    tmp = create_temporary(path)
    try:
        yield tmp
    except BaseException:
        remove_temporary(tmp)
        raise
    publish(tmp, path)


class TempFileWriter:
    """Base of the incremental writers: output goes to a temporary file beside ``path``
    (:func:`create_temporary`); :meth:`close` finishes it (:meth:`_finish`) and puts it in
    place (:meth:`_publish`); :meth:`abort`, or any exception while closing, removes it and
    leaves ``path`` untouched. Subclasses open ``self._file`` on ``self._tmp``.
    ``OSError`` raised while finishing names ``path``."""

    path: Path
    _tmp: Path
    _file: tp.Any = None

    def _finish(self) -> None:
        """Completes and closes ``self._file`` (default: just closes it)."""
        self._file.close()

    def _publish(self) -> None:
        """Puts the finished temporary file in place (default: rename onto ``path``)."""
        publish(self._tmp, self.path)

    def close(self) -> None:
        """Finishes the file and puts it in place; idempotent."""
        if self._file is None:
            return
        try:
            self._finish()
            self._file = None
            self._publish()
        except OSError as err:
            self.abort()
            if err.filename == str(self.path):
                raise
            raise output_error(err, self.path) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drops the partial output (temporary file removed, ``path`` untouched)."""
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        remove_temporary(self._tmp)
