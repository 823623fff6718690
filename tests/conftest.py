"""Shared test set-up: a private random state per test, a private temp folder per run, and shared helpers."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from torch import nn

from diffusion_model import DiffusionModel
from unet import MyUNet

ROOT = Path(__file__).resolve().parents[1]  # the repository: main.py, bench/


@dataclass
class Ran:
    """What ``main.main`` did: its exit code, and its stderr with the log records it wrote."""

    returncode: int
    stderr: str


@pytest.fixture
def run_main(monkeypatch, capsys, caplog) -> Callable[..., Ran]:
    """``python main.py ARGS`` in this interpreter (no second start of torch: about 3.5 s saved a call).

    Tests of a fresh interpreter's behaviour (signals, file-size limits, locks between processes, the
    ``python main.py`` entry point itself) start one instead.
    """
    import main  # the repository's main.py

    monkeypatch.setenv("TQDM_DISABLE", "1")
    caplog.set_level(logging.INFO)

    def run(*args: str, cwd: Path) -> Ran:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        caplog.clear()
        try:
            code = main.main(list(args))
        except SystemExit as exc:  # argparse's refusals
            code = exc.code
        return Ran(code, capsys.readouterr().err + caplog.text)

    return run


TINY = ["--timesteps", "20", "--batch-size", "8", "--device", "cpu", "--seed", "3", "--arch", "fixed"]  # a small network


def run_cli(*args: str, cwd: Path, preamble: str = "") -> subprocess.CompletedProcess:
    """main.py in a fresh interpreter; ``preamble`` runs first (to limit file sizes, say)."""
    code = f"{preamble}\nimport runpy, sys\nsys.argv = ['main.py', *{list(args)!r}]\n" \
           f"runpy.run_path({str(ROOT / 'main.py')!r}, run_name='__main__')"
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess | Ran) -> str:
    """The one ``main.py: error:`` line of a refused command (exit 1, no traceback)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("main.py: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="session")
def one_epoch(tmp_path_factory) -> Path:
    """A folder with the tiny data and a run trained for one epoch (``runs/``), made once for the whole run
    (test_reliability and test_bounds both use it, through ``trained``)."""
    from datagen import make_mnist

    folder = tmp_path_factory.mktemp("one_epoch")
    make_mnist(folder / "data", n_train=24, n_test=8)
    result = run_cli("--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def trained(one_epoch, tmp_path) -> Path:
    """A private copy of ``one_epoch``."""
    shutil.copytree(one_epoch, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture(scope="session", autouse=True)
def private_temp_folder(tmp_path_factory) -> Iterator[Path]:
    """The system temp folder of the tests and of the processes they start, inside pytest's own base folder.

    What they write there (torchrun's ``torchelastic_*`` folders, torch.compile's cache) then goes with
    that folder (pytest.ini's retention policy) instead of piling up in the system's. Importing torch
    sets ``TORCHINDUCTOR_CACHE_DIR`` from the system's temp folder: it is moved too.
    """
    folder = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder / "torchinductor"))
        patch.setattr(tempfile, "tempdir", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def private_rng():
    """Tests that seed or consume the global RNG do not change what the next test sees."""
    with torch.random.fork_rng(devices=[]):
        yield


class ZeroNet(nn.Module):
    """A stand-in noise predictor: predicts zero noise for every input."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def tiny_ddpm(timesteps: int = 10, seed: int = 0) -> DiffusionModel:
    """The paper's UNet for 28x28 images with a short schedule, seeded weights."""
    torch.manual_seed(seed)
    return DiffusionModel(MyUNet(n_steps=timesteps, image_size=28), timesteps=timesteps)


def read_gif(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """Frames (as grey arrays) and their display durations in milliseconds."""
    frames, durations = [], []
    with Image.open(path) as gif:
        for frame in ImageSequence.Iterator(gif):
            frames.append(np.array(frame.convert("L")))
            durations.append(frame.info["duration"])
    return frames, durations


def per_image_draws(seed: int, n: int, chw: tuple[int, ...], count: int) -> list[torch.Tensor]:
    """The first ``count`` N(0, I) draws of ``utils.sample``'s images 0..n-1 (x_T, then each z), each image
    from its own generator (``samplers.noise_seed``), as (n, *chw) tensors."""
    from samplers import noise_seed

    generators = [torch.Generator().manual_seed(noise_seed(seed, i)) for i in range(n)]
    return [torch.stack([torch.randn(chw, generator=g) for g in generators]) for _ in range(count)]
