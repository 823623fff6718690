"""Tiny data sets written for the tests: MNIST idx files and Persian-digit PNGs and zips."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in MNIST's idx format (magic 2051 images / 2049 labels, big-endian dims)."""
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train: int = 6, n_test: int = 4) -> dict:
    """Tiny MNIST in torchvision's layout; image 0 is black and image 1 white in each split."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0], images[1] = 0, 255
        labels[prefix] = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[prefix])
    return labels


def png_bytes(size: tuple[int, int], value: int | None = None, seed: int = 0) -> bytes:
    """PNG of the given (width, height): constant ``value`` or random noise."""
    w, h = size
    if value is None:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)
    else:
        pixels = np.full((h, w), value, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


SIZES = [(9, 11), (13, 13), (20, 7), (34, 30)]


def persian_members(n: int = 40) -> dict[str, bytes]:
    """``n`` PNGs of varying sizes in nested folders, label = name up to the first dot.

    Member 0 is black, member 1 white (a 0 and a 1); the rest are noise.
    """
    members = {}
    for i in range(n):
        label = i % 10
        value = 0 if i == 0 else 255 if i == 1 else None
        members[f"hoda_digits/{label}/sub{i % 2}/{label}.test{i:05d}.png"] = png_bytes(SIZES[i % 4], value, seed=i)
    return members


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def declare_size(path: Path, name: str, size: int) -> Path:
    """Make member ``name`` of the zip at ``path`` declare ``size`` uncompressed bytes (a lying zip).

    Only its central directory record changes, where Python's ``zipfile`` reads the sizes.
    """
    raw = bytearray(path.read_bytes())
    start = -1
    while True:
        start = raw.index(b"PK\x01\x02", start + 1)  # ValueError when no record names the member
        (name_length,) = struct.unpack_from("<H", raw, start + 28)
        if raw[start + 46 : start + 46 + name_length] == name.encode():
            struct.pack_into("<I", raw, start + 24, size)
            path.write_bytes(bytes(raw))
            return path


def write_folder(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def listing(folder: Path) -> list[str]:
    """Every path under ``folder``, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
