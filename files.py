"""Files and folders: where data and caches may be written, atomic saves, one-line error text.

Shared by the datasets, the Persian zip handling, the judge cache and the
checkpoints, so that each rule exists once:

* a folder marked read-only (such as a shared data folder) is never written
  into, and what would go beside the data goes to ``./data`` instead
  (``beside_data``);
* a saved file is never half-written (``atomic_save``);
* an exception is shown to users as one short line (``error_text``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]

DEFAULT_DATA_ROOT = Path("./data")


class DatasetError(Exception):
    """A user-facing data problem; the message says what is wrong and what to do."""


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


def atomic_save(payload: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
