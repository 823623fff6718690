"""Which weights the command line samples and scores with: the EMA weights by default, the raw ones with
--no-ema, and the raw ones of a run trained with --ema-decay 0 (which keeps no EMA).

The checkpoints here hold raw weights W and EMA weights E far apart; a twin checkpoint holds them swapped
(raw E, EMA W), so "used E" and "used W" are told apart without re-implementing the sampler.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import make_mnist
from PIL import Image

import main
import utils
from figures import save_grid
from checkpoint import load_checkpoint

NET = "backward_process_model."  # the network's keys inside the DiffusionModel's state_dict
TINY = ["--timesteps", "10", "--batch-size", "8", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny run (one epoch, EMA on), and from it ``ema.pt`` (raw W, EMA E) and ``swapped.pt`` (raw E, EMA W)."""
    work = tmp_path_factory.mktemp("ema")
    make_mnist(work / "data", n_train=24, n_test=8)
    assert main.main(["--dataset", "mnist", "--train", "--epochs", "1", "--data-root", str(work / "data"),
                      "--out-dir", str(work / "run"), *TINY]) == 0
    ckpt = torch.load(work / "run" / "ddpm_mnist.pt", weights_only=True)
    raw = {k[len(NET):]: v for k, v in ckpt["model"].items() if k.startswith(NET)}
    assert raw.keys() == ckpt["ema"]["model"].keys()
    gen = torch.Generator().manual_seed(0)
    far = {k: v + 0.2 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in raw.items()}
    for name, (model, ema) in {"ema.pt": (raw, far), "swapped.pt": (far, raw)}.items():
        state = dict(ckpt, model=dict(ckpt["model"]) | {NET + k: v for k, v in model.items()},
                     ema=dict(ckpt["ema"], model=ema))
        torch.save(state, work / name)
    return work


def grid(work: Path, run_main, checkpoint: str, *extra: str) -> np.ndarray:
    """The sample grid of ``main.py --sample`` (4 images, seed 1) from ``checkpoint``."""
    out = work / f"out_{checkpoint}_{'_'.join(extra)}"
    ran = run_main("--sample", "--checkpoint", str(work / checkpoint), "--n-samples", "4", "--seed", "1",
                   "--out-dir", str(out), "--device", "cpu", *extra, cwd=work)
    assert ran.returncode == 0, ran.stderr
    return np.array(Image.open(out / "samples_mnist.png"))


def direct_grid(work: Path, checkpoint: str, use_ema: bool) -> np.ndarray:
    """The same grid from ``utils.sample`` with the checkpoint's EMA or raw network weights loaded by hand."""
    ddpm, ckpt = load_checkpoint(work / checkpoint)
    if use_ema:
        ddpm.backward_process_model.load_state_dict(ckpt["ema"]["model"])
    path = work / f"direct_{checkpoint}_{use_ema}.png"
    save_grid(utils.sample(ddpm, 4, "cpu", seed=1).raw, path)
    return np.array(Image.open(path))


def test_sample_uses_the_ema_weights_and_no_ema_the_raw_ones(work, run_main):
    with_ema, without = grid(work, run_main, "ema.pt"), grid(work, run_main, "ema.pt", "--no-ema")
    assert not np.array_equal(with_ema, without)  # the two sets of weights draw different images
    assert np.array_equal(with_ema, direct_grid(work, "ema.pt", use_ema=True))
    assert np.array_equal(without, direct_grid(work, "ema.pt", use_ema=False))
    # the twin: its raw weights are the first one's EMA weights and the other way round
    assert np.array_equal(with_ema, grid(work, run_main, "swapped.pt", "--no-ema"))
    assert np.array_equal(without, grid(work, run_main, "swapped.pt"))


def evaluate(work: Path, run_main, checkpoint: str, *extra: str) -> dict:
    """The report of ``main.py --evaluate`` (6 samples, DDIM 5 steps, seed 2) of ``checkpoint``."""
    out = work / f"eval_{checkpoint}_{'_'.join(extra)}"
    ran = run_main("--evaluate", "--checkpoint", str(work / checkpoint), "--n-samples", "6", "--seed", "2",
                   "--sampler", "ddim", "--sample-steps", "5", "--data-root", str(work / "data"),
                   "--judge-dir", str(work / "judges"), "--out-dir", str(out), "--device", "cpu", *extra, cwd=work)
    assert ran.returncode == 0, ran.stderr
    return json.loads((out / "quality_mnist_ddim5_clip-clip.json").read_text())


def test_evaluate_scores_the_ema_weights_and_no_ema_the_raw_ones(work, run_main):
    with_ema, without = evaluate(work, run_main, "ema.pt"), evaluate(work, run_main, "ema.pt", "--no-ema")
    generated = "generated (ddim, 5 steps)"
    assert with_ema["ema"] is True and without["ema"] is False
    assert with_ema["rows"][generated] != without["rows"][generated]
    assert with_ema["rows"]["real training images (floor)"] == without["rows"]["real training images (floor)"]
    assert with_ema["rows"][generated] == evaluate(work, run_main, "swapped.pt", "--no-ema")["rows"][generated]
    assert without["rows"][generated] == evaluate(work, run_main, "swapped.pt")["rows"][generated]


def test_ema_decay_zero_keeps_no_ema_and_samples_the_raw_weights(work, run_main):
    ran = run_main("--dataset", "mnist", "--train", "--epochs", "1", "--data-root", str(work / "data"),
                   "--out-dir", str(work / "no_ema_run"), "--ema-decay", "0", *TINY, cwd=work)
    assert ran.returncode == 0, ran.stderr
    checkpoint = "no_ema_run/ddpm_mnist.pt"
    _, ckpt = load_checkpoint(work / checkpoint)
    assert "ema" not in ckpt and ckpt["train_args"]["ema_decay"] == 0
    _, last = load_checkpoint(work / "no_ema_run" / "ddpm_mnist_last.pt")
    assert "ema" not in last
    sampled = grid(work, run_main, checkpoint)
    assert np.array_equal(sampled, direct_grid(work, checkpoint, use_ema=False))
    assert np.array_equal(sampled, grid(work, run_main, checkpoint, "--no-ema"))
