"""No silent loss: one test per failure of issue 14, each reproducing it through the command line.

Most run ``main.main`` in this interpreter (the ``run_main`` fixture); those that need a process of
their own (a signal, a file-size limit, a lock held by another process) start ``main.py`` in one.

Runs that could overwrite each other, a diverging loss, a full disk, a signal during a save,
resumes with other settings, bad checkpoint files, the help text, a schedule that never reaches
noise, orphan temporary files and the CI's virtual environment.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY, one_error_line, run_cli
from datagen import make_mnist, persian_members, write_zip

import utils
import cli
import main
from checkpoint import load_checkpoint


@pytest.fixture
def work(tmp_path):
    make_mnist(tmp_path / "data", n_train=24, n_test=8)  # 3 batches of 8
    write_zip(tmp_path / "data" / "persian_digits.zip", persian_members(40))
    return tmp_path


# 1. Training MNIST and then Persian into the default folder keeps both models.
def test_mnist_then_persian_keeps_both_and_sample_asks_which(work, run_main):
    for dataset in ("mnist", "persian"):
        result = run_main("--dataset", dataset, "--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=work)
        assert result.returncode == 0, result.stderr
    runs = work / "runs"
    assert load_checkpoint(runs / "ddpm_mnist.pt")[1]["config"]["dataset"] == "mnist"
    assert load_checkpoint(runs / "ddpm_persian.pt")[1]["config"]["dataset"] == "persian"
    line = one_error_line(run_main("--sample", cwd=work))
    assert "runs holds several checkpoints (ddpm_mnist.pt, ddpm_persian.pt): pass --dataset NAME" in line
    chosen = run_main("--sample", "--dataset", "persian", "--n-samples", "2", cwd=work)
    assert chosen.returncode == 0, chosen.stderr
    assert (runs / "samples_persian.png").is_file() and not (runs / "samples_mnist.png").exists()
    (runs / "ddpm_persian.pt").rename(work / "elsewhere.pt")
    (runs / "ddpm_persian_last.pt").unlink()
    line = one_error_line(run_main("--sample", "--dataset", "persian", cwd=work))
    assert line == ("main.py: error: no checkpoint at runs/ddpm_persian.pt (runs holds ddpm_mnist.pt); train one "
                    "first: python main.py --dataset persian --train (or pass --checkpoint PATH)")


def test_a_new_training_does_not_replace_a_finished_run_unless_asked(trained, run_main):
    before = (trained / "runs" / "ddpm_mnist.pt").read_bytes()
    line = one_error_line(run_main("--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=trained))
    assert "runs/ddpm_mnist.pt already holds a run: continue it with --resume" in line
    assert (trained / "runs" / "ddpm_mnist.pt").read_bytes() == before
    again = run_main("--train", "--epochs", "1", "--overwrite", "--data-root", "data", *TINY, "--seed", "4", cwd=trained)
    assert again.returncode == 0, again.stderr
    assert (trained / "runs" / "ddpm_mnist.pt").read_bytes() != before


# 2. A second training into a folder that a running training holds stops at once.
def test_a_second_training_into_the_same_folder_is_refused(tmp_path, run_main):
    make_mnist(tmp_path / "data", n_train=80, n_test=8)
    args = ["--train", "--epochs", "30", "--data-root", "data", *TINY]
    first = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, "--quiet"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "runs" / ".train.lock"
    try:
        deadline = time.monotonic() + 60
        while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        if not lock.exists():  # (the finally below ends the first run)
            pytest.fail("the first run took no lock within 60 s")
        line = one_error_line(run_main(*args, cwd=tmp_path))
        assert f"runs is in use by another training run (pid {first.pid} on" in line
        elsewhere = one_error_line(run_main(*args, "--out-dir", "other", "--checkpoint", "runs/shared.pt",
                                           cwd=tmp_path))  # another output folder, the same checkpoint folder
        assert "runs is in use by another training run" in elsewhere
        last, deadline = tmp_path / "runs" / "ddpm_mnist_last.pt", time.monotonic() + 60
        while not last.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)  # an epoch done: its training loop, which handles SIGTERM, is running
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143 and lock.read_text() == ""  # released when the first run ended


def test_a_lock_held_before_its_holder_wrote_its_name_still_excludes(work, run_main):
    """The system's lock, not the file's content, decides: an empty lock file that a live process holds."""
    (work / "runs").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               "f = open('runs/.train.lock', 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); time.sleep(60)"], cwd=work, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_error_line(run_main("--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=work))
        assert "runs is in use by another training run (a run that has not written its name yet)" in line
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_run_is_taken_over(work, run_main):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (work / "runs").mkdir()
    (work / "runs" / ".train.lock").write_text(f"pid {dead.pid} on {os.uname().nodename}, started earlier")
    result = run_main("--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=work)
    assert result.returncode == 0, result.stderr
    assert "Taking over the lock of runs, which ended without releasing it (pid" in result.stderr
    assert (work / "runs" / ".train.lock").read_text() == ""


# 3. A diverging run stops with one line, leaves the last good checkpoint alone and strict JSON.
@pytest.mark.parametrize("lr", ["1e30", "1e15"])
def test_divergence_stops_with_one_line_and_keeps_the_good_checkpoint(trained, lr, run_main):
    before = {p.name: p.read_bytes() for p in (trained / "runs").glob("*")}
    line = one_error_line(run_main("--train", "--epochs", "2", "--lr", lr, "--overwrite", "--data-root", "data", *TINY,
                                  cwd=trained))
    assert "training diverged: the loss is" in line and "at epoch 1, batch" in line
    assert f"smaller --lr (this run: {float(lr):g})" in line
    # The good run's files, its history JSON included, are as they were: the diverged run finished no epoch.
    assert {p.name: p.read_bytes() for p in (trained / "runs").glob("*")} == before
    history = json.loads((trained / "runs" / "history_mnist.json").read_text(),
                         parse_constant=lambda name: pytest.fail(f"{name} in the history JSON"))
    assert len(history["train_loss"]) == 1


def test_an_infinite_learning_rate_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main.main(["--train", "--lr", "inf"])
    assert info.value.code == 2 and "--lr: must be a finite positive number, got inf" in capsys.readouterr().err


# 4. A full disk: one line naming the file and the cause, no partial file, the old file intact.
FILE_LIMIT = "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n" \
             "resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0}))"


def test_a_full_disk_during_a_checkpoint_save(trained):
    last = trained / "runs" / "ddpm_mnist_last.pt"
    before = last.read_bytes()
    result = run_cli("--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY, cwd=trained,
                     preamble=FILE_LIMIT.format(1_000_000))
    line = one_error_line(result)
    assert "cannot write runs/ddpm_mnist" in line and line.endswith("File too large")
    assert last.read_bytes() == before
    assert not [p.name for p in (trained / "runs").iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_the_gif(trained):
    result = run_cli("--sample", "--gif", "out.gif", "--n-samples", "16", cwd=trained,
                     preamble=FILE_LIMIT.format(20_000))
    line = one_error_line(result)
    assert line == "main.py: error: cannot write out.gif: File too large"
    assert not (trained / "out.gif").exists()
    assert not [p.name for p in trained.iterdir() if p.name.endswith(".tmp")]


# 5. A second Ctrl-C that lands inside the save waits for the save.
def test_a_second_signal_during_the_save_leaves_a_complete_checkpoint(work, monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(work)
    real_step, real_save = utils.TrainState.step, torch.save
    steps = {"n": 0}

    def step_then_ctrl_c(self, x0, loss_fn, y=None):
        steps["n"] += 1
        if steps["n"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, in batch 2 of epoch 1
        return real_step(self, x0, loss_fn, y)

    def save_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the second one lands inside torch.save
        return real_save(*args, **kwargs)

    monkeypatch.setattr(utils.TrainState, "step", step_then_ctrl_c)
    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    code = main.main(["--train", "--epochs", "2", "--data-root", "data", *TINY])
    assert code in (130, 143)
    monkeypatch.undo()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.chdir(work)
    _, ckpt = load_checkpoint(work / "runs" / "ddpm_mnist_last.pt")  # complete, from the first epoch
    assert ckpt["progress"] == dict(epoch=0, batch=2, loss_sum=ckpt["progress"]["loss_sum"], seen=16)
    assert main.main(["--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY]) == 0


# 6. --resume: changed settings listed and refused; a finished run said so; the best file as fallback;
#    another number of processes continues with a warning.
def test_resume_refuses_every_changed_setting(trained, capsys, run_main):
    line = one_error_line(run_main("--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY,
                                  "--arch", "paper", "--lr", "5e-4", "--timesteps", "30", cwd=trained))
    assert "--arch paper (the run: fixed)" in line and "--lr 0.0005 (the run: 0.001)" in line
    assert "--timesteps 30 (the run: 20)" in line


def test_resume_of_a_finished_run_says_so(trained, run_main):
    result = run_main("--train", "--epochs", "1", "--resume", "--data-root", "data", *TINY, cwd=trained)
    assert result.returncode == 0
    assert "Nothing to train: the run in runs is complete (1 of 1 epochs)" in result.stderr
    assert "Resuming" not in result.stderr


def test_resume_falls_back_to_the_best_checkpoint(trained, run_main):
    (trained / "runs" / "ddpm_mnist_last.pt").unlink()  # as if the first _last write had crashed
    result = run_main("--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY, cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "resuming from the best checkpoint runs/ddpm_mnist.pt" in result.stderr
    assert load_checkpoint(trained / "runs" / "ddpm_mnist_last.pt")[1]["progress"]["epoch"] == 2


def test_resume_of_a_file_without_training_state_is_refused_without_the_fallback_warning(trained, run_main):
    ckpt = torch.load(trained / "runs" / "ddpm_mnist.pt", weights_only=True)
    del ckpt["progress"]  # as a distilled student or a hand-made file: weights and config only
    torch.save(ckpt, trained / "weights.pt")
    result = run_main("--train", "--resume", "--checkpoint", "weights.pt", "--data-root", "data", *TINY, cwd=trained)
    assert one_error_line(result) == "main.py: error: weights.pt holds no training state to resume from"
    assert "is missing" not in result.stderr


def test_resume_with_another_number_of_processes_warns_and_goes_on(trained, run_main):
    last = trained / "runs" / "ddpm_mnist_last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["train_args"]["world_size"] = 2  # as written by torchrun with 2 processes, stopped inside epoch 2
    ckpt["rng"] = ckpt["rng"] * 2
    for batch, position in ((1, 2), (2, 3)):  # 1 and 2 batches of 2 x 8 images = 2 and (capped) 3 batches of 8
        ckpt["progress"] = dict(epoch=1, batch=batch, loss_sum=0.5 * 16 * batch, seen=16 * batch)
        torch.save(ckpt, last)
        result = run_main("--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY, cwd=trained)
        assert result.returncode == 0, result.stderr
        assert "Resuming a run of 2 process(es) with 1" in result.stderr and "no longer" in result.stderr
        assert f"from epoch 2, batch {position}" in result.stderr


# 7. Checkpoint files that are not checkpoints: the package's own words, no torch advice.
class Payload:
    def __reduce__(self):
        return (print, ("this ran at load time",))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a directory, not a checkpoint file"),
    (lambda p: p.write_text("hello"), "is not a checkpoint of this package (not a file written by torch.save)"),
    (lambda p: p.write_bytes(b""), "is an empty file, not a checkpoint"),
    (lambda p: torch.save({"weights": Payload()}, p), "refused: it holds Python objects that could run code"),
    (lambda p: torch.save({"weights": torch.zeros(2)}, p), "is not a checkpoint of this package (no"),
])
def test_checkpoint_errors_in_the_packages_words(tmp_path, make, message, run_main):
    path = tmp_path / "model.pt"
    make(path)
    line = one_error_line(run_main("--sample", "--checkpoint", str(path), cwd=tmp_path))
    assert message in line
    assert "weights_only" not in line and len(line) < 300


# 8. Flags in messages; each default once in --help, none for switches.
def test_help_shows_each_default_once_and_none_for_switches():
    parser = cli.build_parser()
    text = parser.format_help()
    assert "(default: False)" not in text and "(default: None)" not in text
    formatter = cli.DefaultsOnceFormatter("main.py")
    for action in parser._actions:  # each option's help as printed, the appended default included
        shown = formatter._get_help_string(action) % dict(vars(action), prog="main.py") if action.help else ""
        assert shown.count("default") <= 1, action.option_strings
        if action.nargs == 0:  # a switch
            assert "default" not in shown, action.option_strings
    assert "--seed SEED" in text and "random seed (default 0; --resume: the run's)" in " ".join(text.split())


def test_dataset_errors_name_the_flag(work, run_main):
    (work / "bad").mkdir()
    (work / "bad" / "x.png").write_bytes(b"not a png")
    line = one_error_line(run_main("--train", "--dataset", "persian", "--persian-zip", "bad", *TINY, cwd=work))
    assert "pass --skip-bad-files" in line


# 9. A schedule whose last step keeps most of the image is warned about.
def test_alpha_bar_T_far_from_zero_is_warned_about(work, run_main):
    result = run_main("--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=work)
    assert result.returncode == 0
    alpha_bar_T = math.prod(1 - (1e-4 + k * (0.02 - 1e-4) / 19) for k in range(20))  # Eq. 5 for T = 20
    assert f"alpha_bar_T is {alpha_bar_T:.3g} with --timesteps 20 and --beta-end 0.02" in result.stderr
    assert "raise --beta-end or --timesteps" in result.stderr
    fine = run_main("--train", "--epochs", "1", "--data-root", "data", *TINY, "--beta-end", "0.6",
                   "--out-dir", "other", cwd=work)
    assert fine.returncode == 0 and "alpha_bar_T" not in fine.stderr


# 10. Orphan temporary files are cleaned; CI removes its virtual environment.
def test_orphan_temporary_files_are_removed(work, run_main):
    runs = work / "runs"
    runs.mkdir()
    orphans = [runs / ".ddpm_mnist.pt.k3j2.tmp", runs / "ddpm_model.pt.x8a1.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    (runs / "notes.txt").write_text("mine")
    assert run_main("--train", "--epochs", "1", "--data-root", "data", *TINY, cwd=work).returncode == 0
    assert not any(o.exists() for o in orphans) and (runs / "notes.txt").exists()


def test_ci_removes_its_virtual_environment_even_when_it_fails(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\nmkdir -p "$3/bin"; echo 5.6GB > "$3/bin/big"; exit 1\n')
    (fake / "python3").chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", TMPDIR=str(temp))
    result = subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert list(temp.iterdir()) == []  # mktemp's folder, with the venv the fake python3 began, is gone
