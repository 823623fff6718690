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
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Union

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


def write_atomic(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename: all of it or nothing.

    Any ``OSError`` (no space left, file too large, permission denied) becomes
    one ``OutputError`` naming the path and the cause; the temporary file is
    removed and an older ``path`` stays as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def atomic_save(payload: Any, path: PathLike) -> Path:
    """``torch.save`` of ``payload`` to ``path`` with ``write_atomic`` (serialised in memory first)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, buffer.getvalue())


def write_json(path: PathLike, obj: Any) -> Path:
    """Strict JSON (no NaN or Infinity) written with ``write_atomic``."""
    return write_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def remove_orphans(folder: PathLike) -> list[Path]:
    """Remove the temporary files that a killed write left in ``folder`` (call it while holding its ``RunLock``)."""
    removed = []
    # ".<name>.<random>.tmp" (write_atomic), "<name>.pt.<random>.tmp" (atomic saves of earlier versions)
    for tmp in [*Path(folder).glob(f".*{TMP_SUFFIX}"), *Path(folder).glob(f"*.pt.*{TMP_SUFFIX}")]:
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        logger.info("Removed %d temporary file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


class RunLock:
    """An exclusive lock on a training run's output folder: the file ``.train.lock`` in it.

    It records this process's id, host and start time. A second run finds it
    and stops with one ``OutputError`` line naming the running one; a lock whose
    process is gone (killed) is stale and is taken over with a warning.
    """

    NAME = ".train.lock"

    def __init__(self, folder: PathLike) -> None:
        self.path = Path(folder) / self.NAME
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and self._alive(owner):
                    raise OutputError(
                        f"{self.path.parent} is in use by another training run (pid {owner.get('pid')} on "
                        f"{owner.get('host')}, started {owner.get('started')}): wait for it, or choose another "
                        "--out-dir") from None
                logger.warning("Taking over the stale lock %s of a run that no longer exists (%s)", self.path,
                               owner or "unreadable")
                self.path.unlink(missing_ok=True)
                continue
            except OSError as exc:
                raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return self
        raise OutputError(f"cannot take the lock {self.path}: another run keeps creating it")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner: dict[str, Any]) -> bool:
        """Whether the owner still runs; a lock from another host counts as alive (it cannot be checked)."""
        if owner.get("host") != socket.gethostname():
            return True
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            return True
        return True
