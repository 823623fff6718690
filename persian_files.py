"""Finding, downloading and extracting the Persian digits (paper section 2, Figure 3).

The paper downloads a zip with ``gdown``, extracts it and removes the zip. Here
the same path is kept for users who are online, and a local zip or an
already-extracted folder is used when present (nothing is downloaded then).
Extraction is safe and bounded: members with absolute paths or ``..`` are
refused before anything is written, only the ``.png`` members are extracted,
their declared sizes are checked against limits (``zip_max_bytes`` in all,
``zip_max_ratio`` per member) before anything is written, and the bytes
actually written are counted against the same limits, so a zip bomb stops
with one line whatever it declares. It is atomic: a temporary sibling folder
renamed into place.
The folder of PNGs is then read by ``Dataset.PersianDigitDataset``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional

from files import (
    DEFAULT_DATA_ROOT,
    DatasetError,
    PathLike,
    beside_data,
    current_umask,
    error_text,
    is_writable_dir,
)

logger = logging.getLogger(__name__)

PERSIAN_FILE_ID = "1bK1gYdxK92jXtDAcuUvITx6pa4CnyPAw"
PERSIAN_URL = f"https://drive.google.com/uc?export=download&id={PERSIAN_FILE_ID}"  # Figure 3
PERSIAN_ZIP_NAME = "persian_digits.zip"
PERSIAN_DIR_NAME = "persian_digits"

# Limits of an extraction, sized from the real zip with a wide margin: the bytes all extracted
# images may take, and a member's uncompressed size over its compressed size (PNGs barely compress).
ZIP_MAX_BYTES = 1 << 30
ZIP_MAX_RATIO = 100.0
_CHUNK = 1 << 20  # bytes read and written at a time while extracting a member


def _has_png(folder: Path) -> bool:
    """Whether ``folder`` holds at least one ``.png`` file anywhere below it (stops at the first)."""
    if not folder.is_dir():
        return False
    for _, _, files in os.walk(folder):
        if any(name.endswith(".png") for name in files):
            return True
    return False


def _is_image(info: zipfile.ZipInfo) -> bool:
    """Whether a zip member is extracted: a ``.png`` file (other members are left in the archive)."""
    return not info.is_dir() and info.filename.endswith(".png")


def _check_zip_members(archive: zipfile.ZipFile, zip_path: Path) -> list[zipfile.ZipInfo]:
    """The image members to extract; refuses a zip with a member outside the extraction folder, or with no PNG."""
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
            raise DatasetError(
                f"zip {zip_path} holds member {info.filename!r} with an absolute path or '..': "
                "refusing to extract anything; use a trusted copy of the archive"
            )
    images = [info for info in archive.infolist() if _is_image(info)]
    if not images:
        raise DatasetError(f"zip {zip_path} holds no .png images: is it the Persian digits archive?")
    return images


def _over_limit(zip_path: Path, problem: str, option: str, *, stopped: bool) -> DatasetError:
    """The one-line error of a limit passed: what, and how to raise the limit if the archive is trusted."""
    done = "extraction stopped and removed" if stopped else "nothing extracted"
    return DatasetError(
        f"zip {zip_path}: {problem}: {done}; if you trust the archive, raise the limit with "
        f"--{option.replace('_', '-')} (or {option}= in Python)"
    )


def _ratio(info: zipfile.ZipInfo) -> float:
    """A member's declared uncompressed size over its compressed size."""
    if info.compress_size:
        return info.file_size / info.compress_size
    return float("inf") if info.file_size else 0.0


def _check_declared_sizes(
    images: list[zipfile.ZipInfo], zip_path: Path, zip_max_bytes: int, zip_max_ratio: float
) -> None:
    """Refuse, before anything is written, images whose declared sizes pass ``zip_max_bytes`` or ``zip_max_ratio``."""
    total = 0
    for info in images:
        if _ratio(info) > zip_max_ratio:
            raise _over_limit(
                zip_path,
                f"member {info.filename!r} declares {info.file_size:,} bytes compressed into "
                f"{info.compress_size:,} (ratio {_ratio(info):.0f}), over the limit of ratio {zip_max_ratio:g}",
                "zip_max_ratio",
                stopped=False,
            )
        total += info.file_size
        if total > zip_max_bytes:
            declared = sum(i.file_size for i in images)
            raise _over_limit(
                zip_path,
                f"its images declare {declared:,} bytes uncompressed, over the limit of {zip_max_bytes:,} bytes "
                f"(passed at member {info.filename!r})",
                "zip_max_bytes",
                stopped=False,
            )


def _extract_images(
    archive: zipfile.ZipFile,
    images: list[zipfile.ZipInfo],
    zip_path: Path,
    folder: Path,
    zip_max_bytes: int,
    zip_max_ratio: float,
) -> None:
    """Write ``images`` under ``folder``, counting the bytes actually written against the limits.

    A declared size can lie: a member that unpacks past ``zip_max_ratio`` times
    its compressed size, or past ``zip_max_bytes`` for all images, stops the
    extraction before the chunk that would pass the limit is written.
    """
    written = 0
    folders: set[Path] = set()
    for info in images:
        destination = folder.joinpath(*PurePosixPath(info.filename).parts)
        if destination.parent not in folders:
            destination.parent.mkdir(parents=True, exist_ok=True)
            folders.add(destination.parent)
        member_limit = zip_max_ratio * max(info.compress_size, 1)
        member_written = 0
        with archive.open(info) as source, open(destination, "wb") as out:
            while chunk := source.read(_CHUNK):
                member_written += len(chunk)
                written += len(chunk)
                if member_written > member_limit:
                    raise _over_limit(
                        zip_path,
                        f"member {info.filename!r} unpacks to more than {zip_max_ratio:g} times its "
                        f"{info.compress_size:,} compressed bytes (more than it declares)",
                        "zip_max_ratio",
                        stopped=True,
                    )
                if written > zip_max_bytes:
                    raise _over_limit(
                        zip_path,
                        f"its images unpack to more than {zip_max_bytes:,} bytes at {info.filename!r} "
                        "(more than they declare)",
                        "zip_max_bytes",
                        stopped=True,
                    )
                out.write(chunk)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished extraction ``tmp`` to ``target`` (atomic on one file system)."""
    try:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty leftover folder: rename needs the name free
        os.rename(tmp, target)
    except OSError as error:
        if _has_png(target):  # another process finished the same extraction first
            logger.info("%s was extracted meanwhile by another process: using it", target)
            return
        raise DatasetError(f"could not create {target} ({error_text(error)}): remove it and run again") from error


def extract_zip(
    zip_path: PathLike,
    target: PathLike,
    *,
    zip_max_bytes: int = ZIP_MAX_BYTES,
    zip_max_ratio: float = ZIP_MAX_RATIO,
) -> Path:
    """Extract the ``.png`` members of ``zip_path`` into ``target`` atomically (Figure 3's extraction step).

    Every member is checked before anything is written (no absolute paths, no
    ``..``; the images' declared sizes at most ``zip_max_bytes`` in all and
    ``zip_max_ratio`` times their compressed sizes each), and the bytes
    written are held to the same limits. Other members are not extracted.
    The images are extracted into a temporary sibling folder (given the
    umask's permissions) that is renamed to ``target`` only once extraction
    has succeeded, so a corrupt zip never leaves a half-extracted folder
    behind. Returns ``target``.
    """
    if not (zip_max_bytes > 0 and zip_max_ratio > 0):
        raise ValueError(
            f"zip_max_bytes and zip_max_ratio must be positive, got {zip_max_bytes!r} and {zip_max_ratio!r}"
        )
    zip_path, target = Path(zip_path), Path(target)
    if _has_png(target):
        logger.info("%s already holds extracted images: not extracting %s again", target, zip_path)
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DatasetError(f"{target} exists but holds no .png images: remove it and run again")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetError(
            f"{zip_path} is not a readable zip file ({error_text(error)}): delete it and download it again"
        ) from error
    with archive:
        images = _check_zip_members(archive, zip_path)
        _check_declared_sizes(images, zip_path, zip_max_bytes, zip_max_ratio)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700: the folder a user expects instead
        except OSError as error:
            raise DatasetError(
                f"cannot write into {target.parent} ({error_text(error)}): pass --extract-dir DIR, a writable folder"
            ) from error
        try:
            try:
                _extract_images(archive, images, zip_path, tmp, zip_max_bytes, zip_max_ratio)
            except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                raise DatasetError(
                    f"{zip_path} is corrupt ({error_text(error)}): delete it and download it again"
                ) from error
            except OSError as error:
                raise DatasetError(
                    f"could not extract {zip_path} into {target.parent} ({error_text(error)}): "
                    "check free disk space and permissions, or pass --extract-dir DIR, another folder"
                ) from error
            _move_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s into %s", zip_path, target)
    return target


def _download_persian_zip(folder: Path) -> Path:
    """Download the Persian digits zip with gdown, as in Figure 3, into ``folder``."""
    try:
        import gdown
    except ImportError as error:
        raise DatasetError(
            "the Persian digits were not found locally and gdown is not installed: "
            f"pip install gdown, or pass --persian-zip PATH (the {PERSIAN_ZIP_NAME} file)"
        ) from error
    output = folder / PERSIAN_ZIP_NAME
    logger.info("downloading the Persian digits from %s", PERSIAN_URL)
    try:
        result = gdown.download(PERSIAN_URL, str(output), quiet=False)
    except Exception as error:  # gdown raises many types (requests, its own errors)
        raise DatasetError(
            f"could not download the Persian digits ({error_text(error)}): download {PERSIAN_URL} "
            f"by hand and pass --persian-zip PATH or put it in the data root as {PERSIAN_ZIP_NAME}"
        ) from error
    if result is None or not output.is_file():  # older gdown versions return None on failure
        raise DatasetError(
            f"could not download the Persian digits from {PERSIAN_URL}: download it by hand "
            "and pass --persian-zip PATH"
        )
    return output


def prepare_persian_digits(
    data_root: PathLike = DEFAULT_DATA_ROOT,
    *,
    persian_zip: Optional[PathLike] = None,
    extract_dir: Optional[PathLike] = None,
    download: bool = True,
    zip_max_bytes: int = ZIP_MAX_BYTES,
    zip_max_ratio: float = ZIP_MAX_RATIO,
) -> Path:
    """Return a folder of extracted Persian digit PNGs, extracting or downloading once if needed.

    Order: ``persian_zip`` naming a folder is used as it is; otherwise an
    extraction folder that already holds PNGs is reused (nothing is extracted or
    downloaded); otherwise ``persian_zip`` (or ``<data_root>/persian_digits.zip``)
    is extracted; otherwise, if ``download``, the zip is fetched with gdown,
    extracted and removed (Figure 3; the listing's hard-coded ``/content``
    paths are replaced by the data root).

    Extraction folder: ``extract_dir`` if given; else ``<data_root>/persian_digits``;
    if the data root is read-only (e.g. a shared data folder), ``./data/persian_digits``
    (relative to the working directory), announced in a log line. Extraction is
    atomic and bounded by ``zip_max_bytes`` and ``zip_max_ratio`` (see
    ``extract_zip``); delete the folder to extract again.
    """
    limits = dict(zip_max_bytes=zip_max_bytes, zip_max_ratio=zip_max_ratio)
    data_root = Path(data_root).expanduser()
    if persian_zip is not None:
        persian_zip = Path(persian_zip).expanduser()
        if persian_zip.is_dir():
            logger.info("using the extracted Persian digits in %s", persian_zip)
            return persian_zip
        if not persian_zip.is_file():
            raise DatasetError(f"Persian digits zip {persian_zip} does not exist: check the path")
    candidates = [Path(extract_dir)] if extract_dir is not None else beside_data(data_root, PERSIAN_DIR_NAME)
    for folder in candidates:
        if _has_png(folder):
            logger.info("using the extracted Persian digits in %s", folder)
            return folder
    writable = [c for c in candidates if is_writable_dir(c)]
    if not writable:
        raise DatasetError(
            f"cannot extract the Persian digits: {', '.join(map(str, candidates))} cannot be written "
            "(read-only, or a file is in the way); "
            "pass --extract-dir DIR, a writable folder"
        )
    target = writable[0]
    if target != candidates[0]:
        logger.info("data root %s is read-only: extracting the Persian digits into %s instead", data_root, target)
    zip_path = persian_zip if persian_zip is not None else data_root / PERSIAN_ZIP_NAME
    if zip_path.is_file():
        return extract_zip(zip_path, target, **limits)
    if not download:
        raise DatasetError(
            f"Persian digits not found (no PNGs in {', '.join(map(str, candidates))}, no {zip_path}) "
            "and download is off: pass --persian-zip PATH (the zip or its extracted folder) or allow the download"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        download_dir = tempfile.TemporaryDirectory(prefix=f".{target.name}.download-", dir=target.parent)
    except OSError as error:
        raise DatasetError(
            f"cannot write into {target.parent} ({error_text(error)}): pass --extract-dir DIR, a writable folder"
        ) from error
    # Leaving the block removes the downloaded zip, as the listing's os.remove does (Figure 3),
    # and also a partial or corrupt download.
    with download_dir as tmp:
        return extract_zip(_download_persian_zip(Path(tmp)), target, **limits)
