"""Files and folders: where data and caches may be written, atomic saves, one-line error text.

Shared by the datasets, the Persian zip handling, the judge cache and the
checkpoints, so that each rule exists once:

* a folder marked read-only (such as a shared data folder) is never written
  into, and what would go beside the data goes to ``./data`` instead
  (``beside_data``);
* a written file is never half-written: it is written to a temporary file
  beside it and renamed into place (``write_atomic``, ``atomic_save``), and a
  failed write (a full disk, a read-only folder) is one ``OutputError`` line
  that names the path and the cause;
* a training run holds a lock on its output folder (``RunLock``), so a second
  run into it stops at once instead of overwriting the first;
* an exception is shown to users as one short line (``error_text``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

import torch

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DEFAULT_DATA_ROOT = Path("./data")


class DatasetError(Exception):
    """A user-facing data problem; the message says what is wrong and what to do."""


class OutputError(Exception):
    """A file could not be written (or a folder is in use); the message names the path and the cause."""


TMP_SUFFIX = ".tmp"


def error_text(error: BaseException, limit: int = 200) -> str:
    """``"Type: first line"`` of an exception, shortened to ``limit`` characters, for one-line messages."""
    lines = str(error).strip().splitlines()
    first = lines[0].strip().rstrip(":") if lines else ""
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_writable_dir(path: Path) -> bool:
    """Whether ``path`` (or, if absent, its nearest existing ancestor) can be written to.

    Permission bits are honoured even for root, so a folder marked read-only
    (such as a shared data folder) is never written into.
    """
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        return False
    return bool(p.stat().st_mode & 0o222)


def beside_data(data_root: PathLike, name: str) -> list[Path]:
    """Where ``name`` (an extracted dataset, a cache) may live, in order of preference.

    ``<data_root>/<name>``, then ``./data/<name>`` for when the data root is
    read-only; one entry when both are the same folder.
    """
    candidates = [Path(data_root).expanduser() / name, DEFAULT_DATA_ROOT.absolute() / name]
    unique: list[Path] = []
    for c in candidates:
        if all(c.absolute() != u.absolute() for u in unique):
            unique.append(c)
    return unique


def writable_beside_data(data_root: PathLike, name: str) -> Path:
    """The first folder of ``beside_data`` that can be written (the last one when none can)."""
    candidates = beside_data(data_root, name)
    return next((c for c in candidates if is_writable_dir(c)), candidates[-1])


def ensure_writable(path: PathLike) -> Path:
    """Create ``path``'s folder and check that a file can be written there; ``OutputError`` otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    return path


def write_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: all of it or nothing.

    Any ``OSError`` (no space left, file too large, permission denied) becomes
    one ``OutputError`` naming the path and the cause; the temporary file is
    removed and an older ``path`` stays as it was. The file gets the usual
    permissions (0666 less the umask) and is on disk before the rename.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(payload: Any, path: PathLike) -> Path:
    """``torch.save`` of ``payload`` to ``path`` with ``write_atomic`` (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, buffer.getvalue())


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs; they are delivered, in order, when it ends.

    So a Ctrl-C (a second one too) during a checkpoint save waits for the
    complete file instead of leaving none. Python runs signal handlers in the
    main thread whichever thread the signal reached, so the handlers are swapped
    for a recorder (blocking the signal would hold back only the calling
    thread's share). A no-op outside the main thread, where handlers cannot be set.
    """
    received: list[int] = []
    try:
        previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in received:
            signal.raise_signal(signum)


def write_json(path: PathLike, obj: Any) -> Path:
    """Strict JSON (no NaN or Infinity) written with ``write_atomic``."""
    return write_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


# What a training or distillation run writes: the temporary files of these are its own (``write_atomic`` names them
# ".<name>.<random>.tmp"; earlier versions "<name>.<random>.tmp" for checkpoints).
TRAINING_OUTPUTS = ("ddpm_", "distill_", "history_", "loss_curves_")


def remove_orphans(folder: PathLike) -> list[Path]:
    """Remove the temporary files that a killed training run left in ``folder`` (call it holding its ``RunLock``).

    Only the temporary files of a training run's own outputs go: a sampling or
    scoring command may be writing its own ones into the same folder.
    """
    removed = []
    for tmp in Path(folder).glob(f"*{TMP_SUFFIX}"):
        name = tmp.name[1:] if tmp.name.startswith(".") else tmp.name
        if tmp.is_file() and name.startswith(TRAINING_OUTPUTS):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


class RunLock:
    """An exclusive lock on a training run's output folder, held through the file ``.train.lock`` in it.

    The operating system's lock on that file (``fcntl.flock``) is what excludes
    a second run, and the system releases it when the holding process ends,
    however it ends: so a killed run never leaves a lock behind. The file also
    records the holder's process id, host and start time, for the message a
    second run prints. Where ``fcntl`` does not exist (Windows) there is no lock.
    """

    NAME = ".train.lock"

    def __init__(self, folder: PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self._file: Any = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not on a POSIX system
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "a run that has not written its name yet"
            f.close()
            raise OutputError(f"{self.path.parent} is in use by another training run ({holder}): wait for it, "
                              "or choose another --out-dir") from None
        f.seek(0)
        previous = f.read().strip()
        if previous:
            logger.warning("Taking over the lock of %s, which ended without releasing it (%s)",
                           self.path.parent, previous)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()  # an empty file: nobody holds it
            self._file.close()  # closing releases the system's lock
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
