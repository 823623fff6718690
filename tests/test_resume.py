"""Exact resume, clean interruption and atomic checkpoints (main.py --resume, SIGTERM)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from datagen import make_mnist
from torch.optim.optimizer import register_optimizer_step_post_hook

import main as cli
import utils
from checkpoint import load_checkpoint


def train_args(out: Path, epochs: int, *extra: str) -> list[str]:
    return ["--train", "--dataset", "mnist", "--data-root", str(out.parent / "data"), "--out-dir", str(out),
            "--epochs", str(epochs), "--timesteps", "20", "--batch-size", "8", "--lr-step", "1", "--device", "cpu",
            "--seed", "3", "--quiet", *extra]


@pytest.fixture
def data(tmp_path):
    make_mnist(tmp_path / "data", n_train=40, n_test=8)  # 5 batches per epoch
    return tmp_path


def final_state(out: Path) -> tuple[dict, dict]:
    _, ckpt = load_checkpoint(out / "ddpm_mnist_last.pt")
    return ckpt["history"], ckpt


def assert_same_run(a: Path, b: Path) -> None:
    hist_a, ckpt_a = final_state(a)
    hist_b, ckpt_b = final_state(b)
    assert hist_a["train_loss"] == hist_b["train_loss"]
    assert hist_a["val_loss"] == hist_b["val_loss"]
    assert hist_a["lr"] == hist_b["lr"]
    for name, tensor in ckpt_a["model"].items():
        assert torch.equal(tensor, ckpt_b["model"][name]), name
    for name, tensor in ckpt_a["ema"]["model"].items():
        assert torch.equal(tensor, ckpt_b["ema"]["model"][name]), name
    assert ckpt_a["ema"]["num_updates"] == ckpt_b["ema"]["num_updates"]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_two_epochs_equal_one_plus_one_resumed(data, workers):
    """Bit-for-bit on the CPU: weights, EMA, losses, learning rates (also with a loader worker).

    With Figure 12's per-epoch StepLR: the cosine schedule ends at --epochs, so a run of 1 epoch
    extended to 2 follows another schedule (the mid-epoch test below resumes the cosine exactly)."""
    w = ("--num-workers", workers, "--lr-schedule", "step")
    assert cli.main(train_args(data / "whole", 2, *w)) == 0
    assert cli.main(train_args(data / "parts", 1, *w)) == 0
    assert cli.main(train_args(data / "parts", 2, "--resume", *w)) == 0
    assert_same_run(data / "whole", data / "parts")
    hist, ckpt = final_state(data / "parts")
    assert len(hist["train_loss"]) == 2 and ckpt["progress"]["epoch"] == 2
    assert hist["lr"] == [1e-3, 5e-4]  # the scheduler's state was restored too


def test_interrupted_mid_epoch_resumes_exactly(data, monkeypatch, capsys):
    """A stop after batch 3 of epoch 2 saves the state; resuming finishes the same run."""
    assert cli.main(train_args(data / "whole", 3)) == 0
    checks = {"n": 0}

    def stop_after_eight_batches(self) -> bool:
        checks["n"] += 1
        return checks["n"] == 8  # epoch 1 has 5 batches: batch 3 of epoch 2

    monkeypatch.setattr(utils.StopRequest, "__call__", stop_after_eight_batches)
    assert cli.main(train_args(data / "parts", 3)) == 143
    assert "continue with the same command and --resume" in capsys.readouterr().err
    _, ckpt = final_state(data / "parts")
    assert ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["batch"] == 3
    monkeypatch.undo()
    assert cli.main(train_args(data / "parts", 3, "--resume")) == 0
    assert_same_run(data / "whole", data / "parts")


def test_resume_without_a_checkpoint_is_a_clear_error(data, capsys):
    assert cli.main(train_args(data / "none", 2, "--resume")) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_resume_with_other_settings_is_refused(data, capsys):
    assert cli.main(train_args(data / "run", 1)) == 0
    args = train_args(data / "run", 2, "--resume")
    args[args.index("--batch-size") + 1] = "4"
    assert cli.main(args) == 1
    assert "--batch-size 4 (the run: 8)" in capsys.readouterr().err
    assert cli.main(train_args(data / "run", 2, "--resume", "--prediction", "eps")) == 1
    assert "--prediction eps (the run: v)" in capsys.readouterr().err
    assert cli.main(train_args(data / "run", 2, "--resume", "--schedule-shift", "2")) == 1
    assert "--schedule-shift 2.0 (the run: 1.0)" in capsys.readouterr().err
    args = train_args(data / "run", 2, "--resume")
    args[args.index("--seed") + 1] = "0"  # the default, given: it differs from the run's 3
    assert cli.main(args) == 1
    assert "--seed 0 (the run: 3)" in capsys.readouterr().err
    assert cli.main(train_args(data / "run", 2, "--resume", "--recipe", "paper")) == 1
    assert "cannot resume" in (err := capsys.readouterr().err) and "--recipe paper (the run: default)" in err


def test_resume_keeps_the_runs_prediction_loss_weighting_and_batch_size(data):
    """Options left out on --resume (--seed too) take the run's values, not today's defaults."""
    assert cli.main(train_args(data / "run", 1, "--prediction", "v", "--loss-weighting", "min-snr-v")) == 0
    resume = train_args(data / "run", 2, "--resume", "--recipe", "default")  # the run's recipe, given again
    del resume[resume.index("--batch-size"):resume.index("--batch-size") + 2]  # the run's 8, not MNIST's 64
    del resume[resume.index("--seed"):resume.index("--seed") + 2]  # the run's 3, not the default 0
    assert cli.main(resume) == 0
    _, ckpt = final_state(data / "run")
    assert ckpt["train_args"]["loss_weighting"] == "min-snr-v" and ckpt["config"]["prediction"] == "v"
    assert ckpt["train_args"]["batch_size"] == 8 and ckpt["train_args"]["seed"] == 3
    assert len(ckpt["history"]["train_loss"]) == 2


def test_sigterm_mid_run_leaves_a_loadable_checkpoint(tmp_path):
    make_mnist(tmp_path / "data", n_train=80, n_test=8)  # 10 batches per epoch
    out = tmp_path / "run"
    args = [a for a in train_args(out, 30) if a != "--quiet"]  # the log must show the signal
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = out / "ddpm_mnist_last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not last.exists():  # kill first: the run would otherwise go on for all its epochs
        proc.kill()
        pytest.fail(f"no checkpoint after 120 s: {proc.communicate()[1][-2000:]}")
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Received signal 15" in err and "Traceback" not in err
    ddpm, ckpt = load_checkpoint(last)
    assert ckpt["progress"]["epoch"] < 30 and ddpm.timesteps == 20
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]  # atomic writes leave no temporary file


def test_resume_trains_only_the_remaining_epoch(data, run_main):
    """A --resume that silently trained again from epoch 0 would end bit-identical to the exact resume (same seed,
    same data): the resumed call must take only the last epoch's 5 optimizer steps, log only that epoch, and keep
    the first call's record of epoch 1 (its measured time) as it was."""
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        args = [a for a in train_args(data / "run", 1) if a != "--quiet"]
        first = run_main(*args, cwd=data)
        assert first.returncode == 0, first.stderr
        assert len(steps) == 5  # 40 images in batches of 8
        first_history, _ = final_state(data / "run")
        steps.clear()
        resumed = run_main(*[a for a in train_args(data / "run", 2, "--resume") if a != "--quiet"], cwd=data)
    finally:
        handle.remove()
    assert resumed.returncode == 0, resumed.stderr
    assert len(steps) == 5, f"the resumed call took {len(steps)} optimizer steps, not the 5 of epoch 2"
    assert "from epoch 2, batch 0" in resumed.stderr
    assert "Epoch 2/2 - Training Loss" in resumed.stderr and "Epoch 1/2" not in resumed.stderr
    history, ckpt = final_state(data / "run")
    assert ckpt["progress"]["epoch"] == 2 and len(history["epoch_seconds"]) == 2
    assert history["epoch_seconds"][0] == first_history["epoch_seconds"][0]  # epoch 1 was not run again
    assert history["train_loss"][0] == first_history["train_loss"][0]
    assert ckpt["ema"]["num_updates"] == 10
