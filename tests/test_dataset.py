"""Tests of the data pipeline of section 2 (Dataset.py, Figures 1-5).

Unit tests build tiny MNIST idx files and Persian-digit zips in tmp_path; the
integration tests use the read-only shared data when it is present.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from conftest import ROOT
from datagen import (
    declare_size,
    listing,
    make_mnist,
    persian_members,
    png_bytes,
    write_folder,
    write_idx,
    write_zip,
)
from PIL import Image

import Dataset as D
import figures
import persian_files as P
from unet import SUPPORTED_IMAGE_SIZES

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def away_from_the_repository(tmp_path, monkeypatch):
    """Each test runs in its own folder: the loader also searches ``./data/persian_digits`` (``files.beside_data``),
    which in the repository may hold the real extraction of a user's ``--dataset persian`` run."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_download(monkeypatch):
    """Make every download path fail loudly if it is used."""
    import gdown

    def forbidden(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", forbidden)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", forbidden)
    monkeypatch.setattr(gdown, "download", forbidden)


@pytest.fixture
def persian_zip(tmp_path_factory) -> Path:
    return write_zip(tmp_path_factory.mktemp("zips") / "persian_digits.zip", persian_members())


# --------------------------------------------------------------------------- MNIST


def test_mnist_loaders_shapes_range_labels(tmp_path, no_download):
    labels = make_mnist(tmp_path)
    train_loader, val_loader = D.get_data_loaders("mnist", 3, tmp_path)
    assert len(train_loader.dataset) == 6 and len(val_loader.dataset) == 4
    x, y = next(iter(val_loader))  # not shuffled: the first images in file order
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert y.tolist() == labels["t10k"][:3].tolist()
    assert torch.all(x[0] == -1) and torch.all(x[1] == 1)
    xs = torch.cat([b for b, _ in train_loader])
    assert xs.shape == (6, 1, 28, 28)
    assert xs.min() == -1 and xs.max() == 1
    assert not val_loader.generator and isinstance(val_loader.sampler, torch.utils.data.SequentialSampler)
    # The shuffle is a DistributedSampler with one replica: a function of (seed, epoch) alone.
    sampler = train_loader.sampler
    assert isinstance(sampler, torch.utils.data.DistributedSampler) and sampler.num_replicas == 1
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == list(range(6)) and list(sampler) != first  # reshuffled each epoch


def test_mnist_train_order_reproducible_with_seed(tmp_path, no_download):
    make_mnist(tmp_path, n_train=30)

    def order(seed):
        loader, _ = D.get_data_loaders("mnist", 30, tmp_path, seed=seed)
        return next(iter(loader))[0]

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))


def test_mnist_offline_error_names_folder_and_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(D.DatasetError) as info:
        D.get_data_loaders("mnist", 4, tmp_path / "data")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / "MNIST" / "raw") in message
    for name in D.MNIST_FILES:
        assert name in message


def test_mnist_missing_with_download_off(tmp_path, no_download):
    with pytest.raises(D.DatasetError, match="download is off") as info:
        D.load_mnist(tmp_path, download=False)
    assert all(name in str(info.value) for name in D.MNIST_FILES)


def _fewer_labels(raw: Path) -> None:
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))  # 6 images


def _truncated(raw: Path) -> None:
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:100])


def _wrong_magic(raw: Path) -> None:
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 2051) + path.read_bytes()[4:])


@pytest.mark.parametrize("corrupt, name, message", [
    (_fewer_labels, "train-labels-idx1-ubyte", "holds 5 labels but train-images-idx3-ubyte holds 6 images"),
    (_truncated, "t10k-images-idx3-ubyte", "is 100 bytes but its header declares 4 x 28 x 28 values "
                                           "(3,152 bytes with the header): it is truncated or has extra bytes"),
    (_wrong_magic, "train-labels-idx1-ubyte", "starts with magic number 2051, not 2049 (MNIST labels (idx1))"),
    (lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08"), "t10k-labels-idx1-ubyte",
     "is 3 bytes, shorter than the 8-byte header of MNIST labels (idx1)"),
    (lambda raw: write_idx(raw / "train-images-idx3-ubyte", np.zeros((6, 20, 28))), "train-images-idx3-ubyte",
     "holds 20x28 images, not MNIST's 28x28"),
])
def test_mnist_files_checked_field_by_field(tmp_path, no_download, corrupt, name, message):
    make_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    corrupt(raw)
    with pytest.raises(D.DatasetError) as info:
        D.get_data_loaders("mnist", 2, tmp_path)
    text = str(info.value)
    assert text.startswith(f"{raw / name} {message}") and "\n" not in text
    assert "run again to download" in text


# --------------------------------------------------------------------------- arguments and loader options


@pytest.mark.parametrize(
    "dataset, batch_size, match",
    [("cifar", 4, "unknown dataset"), ("mnist", 0, "batch_size"), ("persian", -1, "batch_size")],
)
def test_invalid_arguments(tmp_path, dataset, batch_size, match):
    with pytest.raises(ValueError, match=match) as info:
        D.get_data_loaders(dataset, batch_size, tmp_path)
    assert "\n" not in str(info.value)


def test_every_dataset_has_a_size_the_unet_builds():
    assert D.IMAGE_SIZES == {"mnist": 28, "persian": 64}
    assert D.DATASETS == ("mnist", "persian")
    assert set(D.IMAGE_SIZES.values()) <= set(SUPPORTED_IMAGE_SIZES)


def test_loader_defaults_cpu_and_explicit_workers(tmp_path, no_download):
    make_mnist(tmp_path)
    train, val = D.get_data_loaders("mnist", 2, tmp_path, device="cpu")
    assert (train.num_workers, train.pin_memory, train.persistent_workers) == (0, False, False)
    train, val = D.get_data_loaders("mnist", 2, tmp_path, num_workers=1, pin_memory=True)
    assert (val.num_workers, val.pin_memory, val.persistent_workers) == (1, True, True)
    assert D.default_num_workers("cpu") == 0


@pytest.mark.parametrize("cpus, workers", [(1, 0), (2, 1), (5, 4), (64, 4)])
def test_cuda_workers_leave_one_core_to_the_main_process(monkeypatch, cpus, workers):
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert D.default_num_workers("cuda") == workers


# --------------------------------------------------------------------------- Persian digits


def test_persian_from_local_zip_shapes_labels_split(tmp_path, persian_zip, no_download):
    root = tmp_path / "data"
    train, val = D.get_data_loaders("persian", 5, root, persian_zip=persian_zip, seed=3)
    assert (root / "persian_digits" / "hoda_digits").is_dir()
    assert persian_zip.is_file()  # a user's local zip is kept
    assert (len(train.dataset), len(val.dataset)) == (38, 2)  # int(0.95 * 40)
    x, y = next(iter(train))
    assert x.shape == (5, 1, 64, 64)
    full = train.dataset.dataset
    assert isinstance(full, D.PersianDigitDataset)
    assert [str(p) for p in full.image_paths] == sorted(str(p) for p in full.image_paths)
    assert all(p.name.startswith(f"{y}.") for p, y in zip(full.image_paths, full.labels))
    images = {p.name: full[i][0] for i, p in enumerate(full.image_paths)}
    black, white = images["0.test00000.png"], images["1.test00001.png"]
    assert torch.all(black == -1) and torch.all(white == 1)
    stacked = torch.stack(list(images.values()))
    assert stacked.min() >= -1 and stacked.max() <= 1
    assert full[5][1] == full.labels[5]


def test_persian_split_reproducible(tmp_path, persian_zip):
    folder = P.prepare_persian_digits(tmp_path, persian_zip=persian_zip)
    dataset = D.PersianDigitDataset(folder)
    a, _ = D.split_dataset(dataset, seed=0)
    b, _ = D.split_dataset(dataset, seed=0)
    c, _ = D.split_dataset(dataset, seed=1)
    assert a.indices == b.indices
    assert a.indices != c.indices
    assert len(a) == 38


def test_persian_zip_found_in_data_root_extracted_once(tmp_path, persian_zip, no_download, monkeypatch):
    shutil.copy(persian_zip, tmp_path / "persian_digits.zip")
    first = P.prepare_persian_digits(tmp_path)
    assert first == tmp_path / "persian_digits" and len(D.PersianDigitDataset(first)) == 40

    def no_extract(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(P.zipfile, "ZipFile", no_extract)
    assert P.prepare_persian_digits(tmp_path) == first
    assert P.prepare_persian_digits(tmp_path, persian_zip=tmp_path / "persian_digits.zip") == first


def test_persian_extracted_folder_accepted(tmp_path, no_download):
    folder = write_folder(tmp_path / "mine", persian_members(10))
    assert P.prepare_persian_digits(tmp_path / "root", persian_zip=folder) == folder
    folder2 = write_folder(tmp_path / "root2" / "persian_digits", persian_members(10))
    assert P.prepare_persian_digits(tmp_path / "root2") == folder2


def test_persian_read_only_zip_folder_falls_back_to_dot_data(tmp_path, persian_zip, no_download, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(persian_zip, shared / "persian_digits.zip")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    shared.chmod(0o555)
    try:
        folder = P.prepare_persian_digits(shared)
        assert listing(shared) == ["persian_digits.zip"]
    finally:
        shared.chmod(0o755)
    assert folder.resolve() == (work / "data" / "persian_digits").resolve()
    assert len(D.PersianDigitDataset(folder)) == 40
    explicit = P.prepare_persian_digits(shared, extract_dir=tmp_path / "elsewhere")
    assert explicit == tmp_path / "elsewhere" and P._has_png(explicit)


def test_persian_gdown_download_extracts_and_removes_zip(tmp_path, persian_zip, monkeypatch):
    import gdown

    calls = []

    def fake_download(url, output, quiet=False, **kwargs):
        calls.append(url)
        shutil.copy(persian_zip, output)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    root = tmp_path / "data"
    folder = P.prepare_persian_digits(root)
    assert len(calls) == 1 and P.PERSIAN_FILE_ID in calls[0]
    assert folder == root / "persian_digits" and len(D.PersianDigitDataset(folder)) == 40
    assert [p.name for p in root.iterdir()] == ["persian_digits"]  # zip and temp folders removed
    P.prepare_persian_digits(root)
    assert len(calls) == 1  # images present: no second download


@pytest.mark.parametrize("failure", ["offline", "corrupt"])
def test_persian_failed_download_leaves_nothing(tmp_path, monkeypatch, failure):
    import gdown

    def fake_download(url, output, quiet=False, **kwargs):
        if failure == "offline":
            raise ConnectionError("Failed to resolve 'drive.google.com'")
        Path(output).write_bytes(b"<html>quota exceeded</html>")
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    root = tmp_path / "data"
    with pytest.raises(D.DatasetError, match="persian_zip|zip") as info:
        P.prepare_persian_digits(root)
    assert "\n" not in str(info.value)
    assert listing(root) == []


def test_persian_nothing_found_download_off(tmp_path):
    with pytest.raises(D.DatasetError, match="download is off"):
        P.prepare_persian_digits(tmp_path, download=False)


def test_persian_missing_explicit_zip(tmp_path):
    with pytest.raises(D.DatasetError, match="does not exist"):
        P.prepare_persian_digits(tmp_path, persian_zip=tmp_path / "nope.zip")


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(D.DatasetError, match="no usable .png") as info:
        D.PersianDigitDataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)


def test_bad_label_name_and_skip(tmp_path, caplog):
    folder = write_folder(tmp_path / "f", persian_members(10))
    bad = folder / "hoda_digits" / "cat.png"
    bad.write_bytes(png_bytes((5, 5)))
    (folder / "12.x.png").write_bytes(png_bytes((5, 5)))  # not a single digit 0-9
    with pytest.raises(D.DatasetError, match="label 0-9") as info:
        D.PersianDigitDataset(folder)
    assert "2 PNG file(s)" in str(info.value)
    caplog.set_level("WARNING", logger="Dataset")
    dataset = D.PersianDigitDataset(folder, skip_bad_files=True)
    assert len(dataset) == 10 and bad not in dataset.image_paths
    assert str(bad) in caplog.text


def test_truncated_png_reported_with_path_or_skipped(tmp_path, caplog):
    folder = write_folder(tmp_path / "f", persian_members(10))
    broken = folder / "hoda_digits" / "3" / "3.broken.png"
    data = png_bytes((30, 30), seed=99)
    broken.write_bytes(data[: len(data) // 2])
    dataset = D.PersianDigitDataset(folder, transform=D.persian_transform())
    index = dataset.image_paths.index(broken)
    with pytest.raises(D.DatasetError) as info:
        dataset[index]
    assert str(broken) in str(info.value) and "skip_bad_files" in str(info.value)
    caplog.set_level("WARNING", logger="Dataset")
    skipped = D.PersianDigitDataset(folder, transform=D.persian_transform(), skip_bad_files=True)
    assert len(skipped) == 10 and broken not in skipped.image_paths
    assert str(broken) in caplog.text
    assert all(skipped[i][0].shape == (1, 64, 64) for i in range(len(skipped)))


def test_corrupt_zip(tmp_path, persian_zip):
    bad = tmp_path / "persian_digits.zip"
    bad.write_bytes(persian_zip.read_bytes()[: persian_zip.stat().st_size // 2])
    with pytest.raises(D.DatasetError, match="not a readable zip") as info:
        P.prepare_persian_digits(tmp_path)
    assert str(bad) in str(info.value)
    assert listing(tmp_path) == ["persian_digits.zip"]


def test_corrupt_member_leaves_no_half_extracted_folder(tmp_path):
    members = persian_members(10)
    last_name, last_data = list(members.items())[-1]
    archive = write_zip(tmp_path / "persian_digits.zip", members, zipfile.ZIP_STORED)
    raw = bytearray(archive.read_bytes())
    at = raw.index(last_data) + len(last_data) // 2
    raw[at] ^= 0xFF  # CRC error in the last member: earlier members extract fine first
    archive.write_bytes(bytes(raw))
    with pytest.raises(D.DatasetError, match="corrupt"):
        P.prepare_persian_digits(tmp_path)
    assert listing(tmp_path) == ["persian_digits.zip"]
    # a later run with a good zip is not fooled by leftovers
    write_zip(archive, members)
    assert len(D.PersianDigitDataset(P.prepare_persian_digits(tmp_path))) == 10


@pytest.mark.parametrize("evil", ["../evil.png", "ABSOLUTE", "a/../../evil.png", "a\\..\\..\\evil.png"])
def test_zip_member_escaping_is_refused_before_writing(tmp_path, evil):
    outside = tmp_path / "outside"
    outside.mkdir()
    if evil == "ABSOLUTE":
        evil = str(outside / "abs_evil.png")
    members = persian_members(4)
    members[evil] = png_bytes((5, 5))
    root = tmp_path / "root"
    root.mkdir()
    write_zip(root / "persian_digits.zip", members)
    with pytest.raises(D.DatasetError, match="absolute path or '..'") as info:
        P.prepare_persian_digits(root)
    assert repr(evil) in str(info.value)
    assert listing(root) == ["persian_digits.zip"]
    assert listing(outside) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]


def test_zip_without_png(tmp_path):
    write_zip(tmp_path / "persian_digits.zip", {"readme.txt": b"hi"})
    with pytest.raises(D.DatasetError, match="no .png"):
        P.prepare_persian_digits(tmp_path)
    assert listing(tmp_path) == ["persian_digits.zip"]


BOMB = "hoda_digits/0/0.bomb.png"


def bomb_zip(path: Path, declared: int | None = None) -> Path:
    """Four real images and a member of 5 MB of zeros (compressed about 1000 times), declaring ``declared`` bytes."""
    write_zip(path, {**persian_members(4), BOMB: bytes(5 << 20)})
    return declare_size(path, BOMB, declared) if declared is not None else path


@pytest.mark.parametrize("limits, message", [
    ({}, f"member {BOMB!r} declares 2,147,483,648 bytes compressed into"),  # the default ratio limit
    ({"zip_max_ratio": math.inf}, "its images declare 2,147,4"),  # the default limit of 1 GiB in all
])
def test_zip_bomb_declaring_2_gib_is_refused_before_writing(tmp_path, limits, message):
    root = tmp_path / "root"
    root.mkdir()
    bomb_zip(root / "persian_digits.zip", declared=2 << 30)
    with pytest.raises(D.DatasetError) as info:
        D.get_data_loaders("persian", 4, root, **limits)
    text = str(info.value)
    assert text.startswith(f"zip {root / 'persian_digits.zip'}: {message}") and "\n" not in text
    option = "zip_max_ratio" if not limits else "zip_max_bytes"
    assert "over the limit of " + ("ratio 100" if not limits else "1,073,741,824 bytes") in text
    assert text.endswith(f": nothing extracted; if you trust the archive, raise the limit with "
                         f"--{option.replace('_', '-')} (or {option}= in Python)")
    assert listing(root) == ["persian_digits.zip"]


def test_zip_limits_are_arguments(tmp_path):
    members = persian_members(10)
    total = sum(len(data) for data in members.values())
    write_zip(tmp_path / "persian_digits.zip", members)
    with pytest.raises(D.DatasetError, match=f"its images declare {total:,} bytes uncompressed, over the limit of "
                                             f"{total - 1:,} bytes \\(passed at member 'hoda_digits/9/"):
        P.prepare_persian_digits(tmp_path, zip_max_bytes=total - 1)
    assert listing(tmp_path) == ["persian_digits.zip"]
    bomb_zip(tmp_path / "persian_digits.zip")
    with pytest.raises(D.DatasetError, match=f"member {BOMB!r} declares 5,242,880 bytes .* the limit of ratio 100:"):
        P.prepare_persian_digits(tmp_path)
    folder = P.prepare_persian_digits(tmp_path, zip_max_ratio=math.inf)  # a trusted archive: the limit raised
    assert (folder / BOMB).stat().st_size == 5 << 20
    with pytest.raises(ValueError, match="must be positive"):
        P.extract_zip(tmp_path / "persian_digits.zip", tmp_path / "other", zip_max_bytes=0)


@pytest.mark.parametrize("limits, message", [
    (dict(zip_max_bytes=3000, zip_max_ratio=math.inf), f"its images unpack to more than 3,000 bytes at {BOMB!r}"),
    (dict(), f"member {BOMB!r} unpacks to more than 100 times its"),
])
def test_zip_declaring_false_sizes_stops_at_the_limit_while_writing(tmp_path, monkeypatch, limits, message):
    """The members' declared sizes pass the check (as if they lied): the bytes written are held to the limits."""
    monkeypatch.setattr(P, "_check_declared_sizes", lambda *args: None)
    written = []
    real_rmtree = shutil.rmtree

    def measuring_rmtree(path, *args, **kwargs):
        written.append(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(P.shutil, "rmtree", measuring_rmtree)
    archive = bomb_zip(tmp_path / "persian_digits.zip")
    with pytest.raises(D.DatasetError) as info:
        P.prepare_persian_digits(tmp_path, **limits)
    text = str(info.value)
    assert text.startswith(f"zip {archive}: {message}") and "extraction stopped and removed" in text
    images = sum(len(data) for data in persian_members(4).values())  # written before the bomb
    with zipfile.ZipFile(archive) as z:
        most = limits.get("zip_max_bytes", images + 100 * z.getinfo(BOMB).compress_size)
    assert len(written) == 1 and images <= written[0] <= most
    assert listing(tmp_path) == ["persian_digits.zip"]


def test_only_images_are_extracted(tmp_path):
    members = persian_members(4)
    extra = {"readme.txt": b"hi", "hoda_digits/empty/": b"", "notes/zeros.bin": bytes(5 << 20)}
    write_zip(tmp_path / "persian_digits.zip", {**members, **extra})
    folder = P.prepare_persian_digits(tmp_path)
    assert listing(folder) == listing(write_folder(tmp_path / "expected", members))


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_extracted_folder_follows_the_umask(tmp_path, persian_zip, umask):
    previous = os.umask(umask)
    try:
        folder = P.prepare_persian_digits(tmp_path, persian_zip=persian_zip)
    finally:
        os.umask(previous)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (folder / "hoda_digits" / "0").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (folder / "hoda_digits" / "0" / "sub0" / "0.test00000.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_too_few_images_to_split(tmp_path):
    folder = write_folder(tmp_path / "f", dict(list(persian_members(1).items())))
    with pytest.raises(D.DatasetError, match="too few"):
        D.split_dataset(D.PersianDigitDataset(folder))


# --------------------------------------------------------------------------- Figures 2 and 5


def test_save_dataset_samples_writes_png(tmp_path, persian_zip, no_download):
    train, val = D.get_data_loaders("persian", 4, tmp_path, persian_zip=persian_zip)
    state = train.generator.get_state()
    path = figures.save_dataset_samples(train, val.dataset, tmp_path / "out" / "samples.png", n=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 100 and image.size[1] > 100
    assert torch.equal(train.generator.get_state(), state)  # the seeded shuffle is untouched


# --------------------------------------------------------------------------- start-up


def test_torchvision_is_imported_only_to_read_data():
    """Importing torchvision loads torch._dynamo (through torchvision.ops): the package leaves it until data is
    read, so ``--sample``, ``--help`` and the refusals start without it."""
    code = ("import sys\nimport main\nbefore = 'torchvision' in sys.modules\n"
            "import Dataset\nDataset.mnist_transform()\nprint(before, 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


# --------------------------------------------------------------------------- integration (real data)

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")


@needs_shared
def test_real_mnist(no_download):
    train, val = D.get_data_loaders("mnist", 16, SHARED_DATA)
    assert (len(train.dataset), len(val.dataset)) == (60000, 10000)
    x, y = next(iter(train))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16,)
    assert x.min() >= -1 and x.max() <= 1


@pytest.fixture
def scratch_dir(tmp_path):
    """A scratch folder for the 42,352 real PNGs: RAM-backed /dev/shm when there is one.

    Creating 42k small files on this VM's ext4 disk takes 3-26 s depending on load,
    on tmpfs about 2.5 s; the folder is removed afterwards either way.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="test_dataset-", dir=shm))
    else:
        folder = tmp_path / "scratch"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@needs_shared
def test_real_persian(scratch_dir, no_download):
    before = listing(SHARED_DATA)
    train, val = D.get_data_loaders("persian", 16, SHARED_DATA, extract_dir=scratch_dir / "persian_digits")
    assert listing(SHARED_DATA) == before  # nothing written into the read-only folder
    assert len(train.dataset.dataset) == 42352
    assert (len(train.dataset), len(val.dataset)) == (40234, 2118)
    x, y = next(iter(val))
    assert x.shape == (16, 1, 64, 64) and y.shape == (16,)
    assert x.min() >= -1 and x.max() <= 1
