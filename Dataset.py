"""Datasets and data loaders of section 2 of the paper (Figures 1-5).

* MNIST (Figure 1): torchvision's ``MNIST``, ``ToTensor()`` then scaling to
  [-1, 1], 28x28; the official train split trains, the test split validates.
* Persian digits (Figures 3-4): the folder of PNGs that ``persian_files`` finds,
  extracts or downloads, read by ``PersianDigitDataset``, resized to 64x64,
  scaled to [-1, 1] and split 95% / 5%.

Every user-facing data problem raises ``DatasetError`` with a one-line message
that says what is wrong and what to do; invalid arguments raise ``ValueError``.
The figures of the data (Figures 2 and 5) are drawn by ``figures.save_dataset_samples``.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.error import URLError

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, random_split

from config import DATASETS as CONFIG_DATASETS
from files import DEFAULT_DATA_ROOT, DatasetError, PathLike, error_text, is_writable_dir
from persian_files import ZIP_MAX_BYTES, ZIP_MAX_RATIO, prepare_persian_digits

if TYPE_CHECKING:
    from torchvision.transforms import Compose

# torchvision is imported where data is read, not here: importing it loads torch._dynamo (through
# torchvision.ops), which the commands that read no data (--sample, --help, the refusals) need not wait for.

logger = logging.getLogger(__name__)

IMAGE_SIZES = {name: info.image_size for name, info in CONFIG_DATASETS.items()}
DATASETS = tuple(IMAGE_SIZES)

MNIST_SPLITS = ("train", "t10k")
MNIST_FILES = tuple(f"{split}-{kind}" for split in MNIST_SPLITS for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
IDX_MAGIC = {1: 2049, 3: 2051}  # the idx format's magic number of unsigned bytes in 1 (labels) or 3 (images) dims
_REDOWNLOAD = "delete it and run again to download it, or put a good copy there"
TRAIN_RATIO = 0.95  # Figure 4
LABELS = frozenset("0123456789")

# Exceptions PIL raises for unreadable, truncated or hostile image files.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)


# --------------------------------------------------------------------------- transforms


def scale_to_minus_one_one(x: torch.Tensor) -> torch.Tensor:
    """Map a ``ToTensor()`` image from [0, 1] to [-1, 1] (Figures 1 and 4)."""
    return (x - 0.5) * 2


def mnist_transform() -> Compose:
    """The MNIST transform of Figure 1: ``ToTensor()`` then scaling to [-1, 1]."""
    # The listing uses an inline lambda; a module-level function keeps the
    # transform picklable for DataLoader workers started with "spawn".
    from torchvision.transforms import Compose, Lambda, ToTensor

    return Compose([ToTensor(), Lambda(scale_to_minus_one_one)])


def persian_transform(size: int = IMAGE_SIZES["persian"]) -> Compose:
    """The Persian-digit transform of Figure 4: resize to 64x64, ``ToTensor()``, scale to [-1, 1]."""
    from torchvision.transforms import Compose, Lambda, Resize, ToTensor

    return Compose([Resize((size, size)), ToTensor(), Lambda(scale_to_minus_one_one)])


# --------------------------------------------------------------------------- helpers


def _label_of(path: Path) -> Optional[int]:
    """The label of Figure 4: the file name up to the first dot, if it is a digit 0-9."""
    head = path.name.split(".")[0]
    return int(head) if head in LABELS else None


def _list_pngs(root: Path) -> list[Path]:
    """Every ``.png`` under ``root``, walked recursively, in sorted (reproducible) order.

    macOS archive debris (``__MACOSX`` folders, ``._*`` AppleDouble files) is ignored.
    """
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__MACOSX"]
        paths.extend(Path(folder, f) for f in files if f.endswith(".png") and not f.startswith("._"))
    return sorted(paths)  # os.walk order depends on the file system (the listing does not sort)


# --------------------------------------------------------------------------- Persian digits


class PersianDigitDataset(Dataset):
    """Figure 4's dataset: every ``.png`` under ``root_dir``, grayscale, label = file name up to the first dot.

    Files are listed recursively in sorted order, so indices (and therefore a
    seeded split) are reproducible. A file whose name does not start with a
    label 0-9 raises ``DatasetError`` at construction. Images are decoded
    lazily; an unreadable one raises ``DatasetError`` naming its path in
    ``__getitem__``. With ``skip_bad_files=True`` badly named files are skipped
    and every image is checked up front with PIL's cheap ``verify()`` (a few
    seconds for the real zip's images); bad ones are skipped and logged instead.
    """

    def __init__(
        self,
        root_dir: PathLike,
        transform: Optional[Callable] = None,
        skip_bad_files: bool = False,
    ) -> None:
        self.root_dir = Path(root_dir)
        self.transform = transform
        if not self.root_dir.is_dir():
            raise DatasetError(
                f"Persian digits folder {self.root_dir} does not exist: "
                "pass the folder of extracted PNGs or the zip file"
            )
        paths = _list_pngs(self.root_dir)
        labels = [_label_of(p) for p in paths]
        bad = [(p, "its name does not start with a label 0-9 and a dot") for p, y in zip(paths, labels) if y is None]
        if bad and not skip_bad_files:
            raise DatasetError(
                f"{len(bad)} PNG file(s) under {self.root_dir} have no digit label 0-9, e.g. {bad[0][0]}: "
                "name each file '<digit 0-9>.<anything>.png', remove it, "
                "or pass --skip-bad-files (skip_bad_files=True in Python)"
            )
        kept = [(p, y) for p, y in zip(paths, labels) if y is not None]
        if skip_bad_files:
            good = []
            for p, y in kept:
                problem = self._verify(p)
                if problem is None:
                    good.append((p, y))
                else:
                    bad.append((p, problem))
            kept = good
            for p, problem in bad[:20]:
                logger.warning("skipping %s: %s", p, problem)
            if len(bad) > 20:
                logger.warning("skipping %d more bad files under %s", len(bad) - 20, self.root_dir)
        if not kept:
            raise DatasetError(
                f"no usable .png images found under {self.root_dir}: "
                "point to the folder that holds the extracted Persian digits (or its zip)"
            )
        self.image_paths: list[Path] = [p for p, _ in kept]
        self.labels: list[int] = [y for _, y in kept]

    @staticmethod
    def _verify(path: Path) -> Optional[str]:
        """``None`` if PIL's ``verify()`` accepts the image, else a short reason."""
        try:
            with Image.open(path) as image:
                image.verify()
        except _IMAGE_ERRORS as error:
            return f"unreadable image ({error_text(error)})"
        return None

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        path = self.image_paths[idx]
        try:
            with Image.open(path) as image:
                image = image.convert("L")  # grayscale, as in Figure 4
        except _IMAGE_ERRORS as error:
            raise DatasetError(
                f"cannot read image {path} ({error_text(error)}): "
                "delete or replace it, or pass --skip-bad-files (skip_bad_files=True in Python)"
            ) from error
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[idx]


def split_dataset(dataset: Dataset, seed: int = 0, train_ratio: float = TRAIN_RATIO) -> tuple[Subset, Subset]:
    """The random 95% / 5% split of Figure 4, seeded so that the same seed gives the same split.

    ``train_length = int(0.95 * len)``; the listing's split is unseeded.
    """
    train_length = int(train_ratio * len(dataset))
    val_length = len(dataset) - train_length
    if train_length < 1 or val_length < 1:
        raise DatasetError(f"{len(dataset)} image(s) are too few to split into training and validation sets")
    generator = torch.Generator().manual_seed(seed)
    train, val = random_split(dataset, [train_length, val_length], generator=generator)
    return train, val


# --------------------------------------------------------------------------- MNIST


def _idx_shape(path: Path, dims: int) -> tuple[int, ...]:
    """The dimensions in an MNIST idx file's header, once its magic number and its length are checked."""
    header_size = 4 * (1 + dims)
    kind = "labels (idx1)" if dims == 1 else "images (idx3)"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(header_size)
    except OSError as error:
        raise DatasetError(f"cannot read {path} ({error_text(error)}): check its permissions") from error
    if len(header) < header_size:
        raise DatasetError(
            f"{path} is {size} bytes, shorter than the {header_size}-byte header of MNIST {kind}: {_REDOWNLOAD}"
        )
    magic, *shape = struct.unpack(f">{1 + dims}I", header)
    if magic != IDX_MAGIC[dims]:
        raise DatasetError(
            f"{path} starts with magic number {magic}, not {IDX_MAGIC[dims]} (MNIST {kind}): {_REDOWNLOAD}"
        )
    expected = header_size + math.prod(shape)
    if size != expected:
        raise DatasetError(
            f"{path} is {size:,} bytes but its header declares {' x '.join(map(str, shape))} values "
            f"({expected:,} bytes with the header): it is truncated or has extra bytes; {_REDOWNLOAD}"
        )
    return tuple(shape)


def check_mnist_files(raw: Path) -> None:
    """Check MNIST's idx files in ``raw`` field by field before torchvision reads them.

    Magic numbers (2049 labels, 2051 images), 28x28 images, each file's length
    against its header, and as many labels as images in each split; a problem
    is a one-line ``DatasetError`` naming the file.
    """
    side = IMAGE_SIZES["mnist"]
    for split in MNIST_SPLITS:
        images, labels = raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"
        n_images, rows, cols = _idx_shape(images, 3)
        (n_labels,) = _idx_shape(labels, 1)
        if (rows, cols) != (side, side):
            raise DatasetError(f"{images} holds {rows}x{cols} images, not MNIST's {side}x{side}: {_REDOWNLOAD}")
        if n_labels != n_images:
            raise DatasetError(
                f"{labels} holds {n_labels} labels but {images.name} holds {n_images} images: "
                "they must hold as many; delete both and run again to download them"
            )


def load_mnist(data_root: PathLike = DEFAULT_DATA_ROOT, download: bool = True) -> tuple[Dataset, Dataset]:
    """MNIST train and test splits with Figure 1's transform; downloads only if files are missing.

    The files live in ``<data_root>/MNIST/raw`` (torchvision's layout). If any is
    missing, torchvision's download is tried (when ``download``); a failure
    raises ``DatasetError`` naming the folder and the four expected files. The
    files are then checked by ``check_mnist_files``.
    """
    from torchvision import datasets

    data_root = Path(data_root).expanduser()
    raw = data_root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    how_to = (
        f"put the uncompressed files {', '.join(MNIST_FILES)} in {raw} "
        "(or pass the data root that holds MNIST/raw)"
    )
    if missing:
        if not download:
            raise DatasetError(f"MNIST files missing in {raw} ({', '.join(missing)}) and download is off: {how_to}")
        if not is_writable_dir(raw):
            raise DatasetError(
                f"MNIST files missing in {raw} and that folder cannot be written "
                f"(read-only, or a file is in the way): {how_to}"
            )
        logger.info("MNIST files missing in %s: downloading with torchvision", raw)
        try:
            datasets.MNIST(str(data_root), train=True, download=True)
        except (RuntimeError, URLError, OSError) as error:
            raise DatasetError(f"could not download MNIST ({error_text(error, 120)}): {how_to}") from error
    check_mnist_files(raw)
    try:
        # download=False: the files are there, so nothing is fetched (the listing always passes True)
        train = datasets.MNIST(str(data_root), train=True, transform=mnist_transform(), download=False)
        val = datasets.MNIST(str(data_root), train=False, transform=mnist_transform(), download=False)
    except (AssertionError, RuntimeError, ValueError, KeyError, TypeError, OSError) as error:
        raise DatasetError(
            f"MNIST files in {raw} are unreadable ({error_text(error, 120)}): delete them and download again"
        ) from error
    return train, val


# --------------------------------------------------------------------------- both


def _check_dataset_name(dataset: str) -> str:
    """Normalise and validate a dataset name."""
    name = str(dataset).strip().lower()
    if name not in IMAGE_SIZES:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    return name


def get_datasets(
    dataset: str,
    data_root: PathLike = DEFAULT_DATA_ROOT,
    *,
    seed: int = 0,
    persian_zip: Optional[PathLike] = None,
    extract_dir: Optional[PathLike] = None,
    download: bool = True,
    skip_bad_files: bool = False,
    zip_max_bytes: int = ZIP_MAX_BYTES,
    zip_max_ratio: float = ZIP_MAX_RATIO,
) -> tuple[Dataset, Dataset]:
    """Training and validation datasets of section 2.

    MNIST: the train and test splits (Figure 1); Persian digits: the seeded 95% / 5% split (Figure 4).
    """
    name = _check_dataset_name(dataset)
    if name == "mnist":
        train, val = load_mnist(data_root, download=download)
    else:
        folder = prepare_persian_digits(data_root, persian_zip=persian_zip, extract_dir=extract_dir, download=download,
                                        zip_max_bytes=zip_max_bytes, zip_max_ratio=zip_max_ratio)
        full = PersianDigitDataset(folder, transform=persian_transform(), skip_bad_files=skip_bad_files)
        train, val = split_dataset(full, seed=seed)
    # logged instead of the listing's debug prints (Figure 4)
    logger.info("%s: %d training / %d validation images", name, len(train), len(val))
    return train, val


def default_num_workers(device: Union[str, torch.device] = "cpu") -> int:
    """DataLoader workers when none are asked for.

    CPU training: 0, the model's forward/backward already uses every core and
    decoding a batch is cheap beside it (workers gained nothing on 2 cores). CUDA:
    up to 4, one core left to the main process, so loading overlaps GPU compute.
    """
    if torch.device(device).type != "cuda":
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def get_data_loaders(
    dataset: str,
    batch_size: int,
    data_root: PathLike = DEFAULT_DATA_ROOT,
    *,
    seed: int = 0,
    num_workers: Optional[int] = None,
    pin_memory: Optional[bool] = None,
    device: Union[str, torch.device] = "cpu",
    rank: int = 0,
    world_size: int = 1,
    **source: Any,
) -> tuple[DataLoader, DataLoader]:
    """Return ``(train_loader, val_loader)`` for ``"mnist"`` (Figure 1) or ``"persian"`` (Figures 3-4).

    The training loader shuffles with a ``DistributedSampler`` seeded from
    ``seed``, reshuffled by ``set_epoch`` (the training loop calls it every
    epoch; the Persian split uses the same seed); the validation loader does
    not shuffle.
    ``batch_size`` is the caller's (the Figure 4 listing overrides it with 128).
    ``num_workers`` defaults to ``default_num_workers(device)``, ``pin_memory``
    to "device is CUDA and available"; workers persist between epochs.
    ``source``: where the images come from, the keyword options of ``get_datasets``
    (``download``; for the Persian digits alone ``persian_zip``, ``extract_dir``,
    ``skip_bad_files``, ``zip_max_bytes``, ``zip_max_ratio``): see ``prepare_persian_digits`` for where the
    zip is looked for and extracted (``<data_root>/persian_digits``, or
    ``./data/persian_digits`` when the data root is read-only, unless
    ``extract_dir`` is given) and ``extract_zip`` for the limits of an extraction.
    With ``world_size > 1`` (torchrun) each loader reads this ``rank``'s shard,
    and ``batch_size`` is per process.
    Raises ``ValueError`` for bad arguments and ``DatasetError`` for data problems.
    """
    name = _check_dataset_name(dataset)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    bad_workers = isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
    if num_workers is not None and bad_workers:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid device {device!r}: use e.g. 'cpu' or 'cuda'") from error
    train, val = get_datasets(name, data_root, seed=seed, **source)
    workers = default_num_workers(device) if num_workers is None else num_workers
    pin = (device.type == "cuda" and torch.cuda.is_available()) if pin_memory is None else bool(pin_memory)
    options = dict(batch_size=batch_size, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    # The training shuffle is a function of (seed, epoch) alone (DistributedSampler with set_epoch,
    # one replica in a single process), so an exact resume needs no generator state, also with
    # worker processes; the loader's own generator only seeds the workers.
    train_sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    train_loader = DataLoader(train, sampler=train_sampler, generator=torch.Generator().manual_seed(seed), **options)
    if world_size > 1:
        val_loader = DataLoader(val, sampler=DistributedSampler(val, num_replicas=world_size, rank=rank,
                                                                shuffle=False), **options)
    else:
        val_loader = DataLoader(val, shuffle=False, **options)
    return train_loader, val_loader


__all__ = [
    "DATASETS",
    "IMAGE_SIZES",
    "DatasetError",
    "PersianDigitDataset",
    "check_mnist_files",
    "default_num_workers",
    "get_data_loaders",
    "get_datasets",
    "load_mnist",
    "mnist_transform",
    "persian_transform",
    "scale_to_minus_one_one",
    "split_dataset",
]
