"""End-to-end tests of the command line (main.py) on tiny generated MNIST data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, read_gif
from datagen import make_mnist
from PIL import Image

import cli
import main

TINY = ["--timesteps", "20", "--batch-size", "8", "--device", "cpu"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the CLI, shared by the tests below."""
    work = tmp_path_factory.mktemp("cli")
    make_mnist(work / "data", n_train=24, n_test=8)
    result = run_cli("--dataset", "mnist", "--train", "--epochs", "2", "--data-root", "data", *TINY, cwd=work)
    assert result.returncode == 0, result.stderr
    return work, result


def test_train_writes_checkpoints_and_figures(trained):
    work, result = trained
    runs = work / "runs"
    for name in ("ddpm_mnist.pt", "ddpm_mnist_last.pt", "loss_curves_mnist.png", "history_mnist.json"):
        assert (runs / name).is_file(), name
    history = json.loads((runs / "history_mnist.json").read_text())
    assert len(history["train_loss"]) == 2 and len(history["val_loss"]) == 2
    assert "Epoch 2/2 - Training Loss:" in result.stderr
    assert not (work / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()  # nothing downloaded


def test_sample_needs_no_other_flags_and_is_reproducible(trained, run_main):
    work, _ = trained
    first = run_cli("--sample", "--gif", "out.gif", "--n-samples", "5", "--frames-per-gif", "6", cwd=work)
    assert first.returncode == 0, first.stderr
    frames, durations = read_gif(work / "out.gif")
    assert len(frames) == 6 and frames[0].shape == (2 * 28, 3 * 28)  # 5 samples -> 2 x 3 grid
    assert durations[-1] == 3 * durations[0]  # the final frame held a third longer
    grid = np.array(Image.open(work / "runs" / "samples_mnist.png"))
    assert grid.shape == (56, 84)
    assert np.array_equal(grid, frames[-1])
    gif_bytes = (work / "out.gif").read_bytes()
    again = run_main("--sample", "--gif", "out.gif", "--n-samples", "5", "--frames-per-gif", "6", cwd=work)  # in-process
    assert again.returncode == 0, again.stderr
    assert (work / "out.gif").read_bytes() == gif_bytes
    assert np.array_equal(np.array(Image.open(work / "runs" / "samples_mnist.png")), grid)


def test_same_seed_same_training(trained, tmp_path, run_main):
    work, _ = trained
    make_mnist(tmp_path / "data", n_train=24, n_test=8)
    result = run_main("--dataset", "mnist", "--train", "--epochs", "2", "--data-root", "data", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = json.loads((work / "runs" / "history_mnist.json").read_text())
    second = json.loads((tmp_path / "runs" / "history_mnist.json").read_text())
    assert first["train_loss"] == second["train_loss"] and first["val_loss"] == second["val_loss"]


def test_figures(trained, run_main):
    work, _ = trained
    result = run_main("--dataset", "mnist", "--figures", "--data-root", "data", "--device", "cpu", cwd=work)
    assert result.returncode == 0, result.stderr
    for name in ("dataset_samples_mnist.png", "forward_process_mnist.png", "positional_encoding_64.png"):
        assert Image.open(work / "runs" / name).size[0] > 100, name


def test_figures_alone_need_no_run_and_refuse_a_bad_schedule_in_one_line(tmp_path, run_main):
    make_mnist(tmp_path / "data", n_train=8, n_test=4)
    result = run_main("--figures", "--data-root", "data", "--device", "cpu", cwd=tmp_path)  # no runs/, no --dataset
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "forward_process_mnist.png").is_file()
    bad = run_main("--figures", "--beta-start", "0.05", "--data-root", "data", cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == \
        "main.py: error: --beta-end (0.02) must be larger than --beta-start (0.05)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="refused only where PyTorch sees no CUDA device")
def test_device_cuda_without_cuda_is_one_line(tmp_path, run_main):
    result = run_main("--sample", "--device", "cuda", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "main.py: error: --device cuda was asked for, but PyTorch sees no CUDA device"]


def test_user_errors_are_one_line_without_traceback(trained, tmp_path, run_main):
    work, _ = trained
    missing = run_main("--sample", cwd=tmp_path)
    assert missing.returncode == 1
    assert "no checkpoint in runs; train one first: python main.py --dataset mnist --train" \
        in missing.stderr
    (tmp_path / "corrupt.pt").write_bytes((work / "runs" / "ddpm_mnist.pt").read_bytes()[:1000])
    corrupt = run_main("--sample", "--checkpoint", "corrupt.pt", cwd=tmp_path)
    assert corrupt.returncode == 1 and "corrupt.pt is not a readable checkpoint" in corrupt.stderr
    (tmp_path / "a_file").write_text("")
    unwritable = run_main("--sample", "--checkpoint", str(work / "runs" / "ddpm_mnist.pt"),
                         "--gif", "a_file/out.gif", cwd=tmp_path)
    assert unwritable.returncode == 1 and "cannot write a_file/out.gif" in unwritable.stderr
    no_data = run_main("--train", "--data-root", "a_file/data", *TINY, cwd=tmp_path)
    assert no_data.returncode == 1 and "MNIST files missing in a_file/data/MNIST/raw and that folder cannot be " \
        "written" in no_data.stderr
    for result in (missing, corrupt, unwritable, no_data):
        assert "Traceback" not in result.stderr
        assert result.stderr.count("main.py: error:") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train", "--epochs", "0"], "--epochs: must be a positive integer, got 0"),
        (["--train", "--batch-size", "-4"], "--batch-size: must be a positive integer, got -4"),
        (["--sample", "--n-samples", "0"], "--n-samples: must be an integer in 1..100000, got 0"),
        (["--train", "--timesteps", "0"], "--timesteps: must be an integer in 1..100000, got 0"),
        (["--train", "--channels", "100000"], "--channels: must be an integer in 1..512, got 100000"),
        (["--train", "--beta-start", "0.01", "--beta-end", "0.001"], "must be larger than --beta-start"),
        (["--train", "--beta-end", "1.5"], "--beta-end: must lie strictly between 0 and 1, got 1.5"),
        (["--train", "--beta-start", "0"], "--beta-start: must lie strictly between 0 and 1, got 0"),
        (["--train", "--lr", "-1"], "--lr: must be a finite positive number, got -1"),
        (["--train", "--epochs", "two"], "invalid positive_int value: 'two'"),
        (["--dataset", "cifar", "--train"], "invalid choice: 'cifar'"),
        ([], "nothing to do"),
        (["--gif", "x.gif", "--train"], "--gif needs --sample"),
        (["--sample", "--gif", "out.png"], "--gif writes a GIF: give a file name ending in .gif, got 'out.png'"),
        (["--sample", "--gif", "x.gif", "--n-samples", "5000"],
         "--gif tiles every image into each frame: give --n-samples <= 1024 with it, got 5000"),
        (["--sample", "--seed", "-1"], "--seed: must be an integer in 0..4294967295, got -1"),
        (["--train", "--seed", "4294967296"], "--seed: must be an integer in 0..4294967295, got 4294967296"),
        (["--resume", "--sample"], "--resume needs --train"),
        (["--sample", "--eta", "1"], "--eta needs --sampler ddim"),
        (["--sample", "--bpd-images", "5"], "need --evaluate"),
        (["--sample", "--sampler", "dpm++", "--sample-steps", "0"], "--sample-steps: must be a positive integer"),
        (["--sample", "--sampler", "dpm++", "--step-schedule", "cosine"], "invalid choice: 'cosine'"),
        (["--sample", "--step-schedule", "logsnr"], "--step-schedule needs --sampler ddim or dpm++"),
        (["--sample", "--sampler", "dpm++", "--reverse-variance", "posterior"], "--reverse-variance needs --sampler ddpm"),
        (["--sample", "--clip-x0", "soft"], "invalid choice: 'soft'"),
    ],
)
def test_nonsensical_numbers_are_refused(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_option_has_help():
    for action in cli.build_parser()._actions:
        assert action.help, action.option_strings


def test_ddim_sampling_and_evaluate(trained, run_main):
    work, _ = trained
    ddim = run_main("--sample", "--sampler", "ddim", "--sample-steps", "5", "--n-samples", "4", "--gif", "ddim.gif",
                   cwd=work)
    assert ddim.returncode == 0, ddim.stderr
    frames, _ = read_gif(work / "ddim.gif")
    assert len(frames) == 5  # one frame per DDIM step
    result = run_main("--evaluate", "--sampler", "ddim", "--sample-steps", "4", "--n-samples", "6",
                     "--bpd-images", "3", "--data-root", "data", "--device", "cpu", cwd=work)
    assert result.returncode == 0, result.stderr
    report = json.loads((work / "runs" / "quality_mnist_ddim4_clip-clip.json").read_text())  # DDIM clips by default
    assert report["steps"] == 4 and report["arch"] == "resattn"  # the default for new runs
    bound = report["likelihood_bound"]
    assert bound["n_images"] == 3 and bound["bits_per_dim"] > 0
    assert bound["bits_per_dim"] == pytest.approx(bound["prior_bpd"] + bound["diffusion_bpd"] + bound["decoder_bpd"])
    assert set(report["rows"]) == {"generated (ddim, 4 steps)", "real training images (floor)"}
    for row in report["rows"].values():
        assert row["n"] == 6 and sum(row["class_histogram"]) == 6 and row["frechet_distance"] >= 0
    assert (work / "data" / "judges" / "judge_mnist.pt").is_file()  # cached beside the data
    assert "judge accuracy on the validation set" in result.stderr
    too_many = run_main("--sample", "--sampler", "ddpm", "--sample-steps", "5", cwd=work)
    assert too_many.returncode == 1 and "sampler to skip (--sampler ddim or dpm++)" in too_many.stderr


def test_dpm_solver_sampling_needs_no_other_flag(trained, run_main):
    work, _ = trained
    result = run_main("--sample", "--sampler", "dpm++", "--sample-steps", "20", "--gif", "dpm.gif", cwd=work)
    assert result.returncode == 0, result.stderr
    frames, _ = read_gif(work / "dpm.gif")
    assert len(frames) == 20  # one frame per network evaluation (T = 20 here)
    too_many = run_main("--sample", "--sampler", "dpm++", "--sample-steps", "21", cwd=work)
    assert too_many.returncode == 1 and "Traceback" not in too_many.stderr
    assert "main.py: error: --sample-steps must lie in 1..20 (the checkpoint's T), got 21" in too_many.stderr
    evaluated = run_main("--evaluate", "--sampler", "dpm++", "--sample-steps", "6", "--step-schedule", "logsnr",
                        "--clip-x0", "dynamic", "--n-samples", "6", "--data-root", "data", "--device", "cpu", cwd=work)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((work / "runs" / "quality_mnist_dpm++6_clip-dynamic_logsnr.json").read_text())
    assert report["sampler"] == dict(sampler="dpm++", sample_steps=6, clip_x0="dynamic", step_schedule="logsnr")
