"""Progress on a terminal and in a log file (progress.py, distributed.progress_bar)."""

import io
import logging
import os
import re
import subprocess
import sys

import torch
from conftest import ROOT
from datagen import make_mnist
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

import distributed
import progress


class FakeClock:
    """A clock that the test moves: each call returns the next of the given times."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_heartbeat_lines_say_where_how_fast_and_how_long(caplog):
    """Start at 0 s, eight items ending at the given times, a 120 s interval: a line after the 3rd item (190 s
    since the start: 3 items in 190 s, 5 left) and after the 8th (130 s since the last line); none between."""
    caplog.set_level(logging.INFO, logger="ddpm")
    clock = FakeClock(0, 10, 100, 190, 200, 230, 260, 290, 320)
    items = list(progress.LoggedProgress(range(8), desc="Epoch 1/2 - Training", interval=120, clock=clock))
    assert items == list(range(8))
    assert caplog.messages == ["Epoch 1/2 - Training: 3/8 (38%), 63.3 s/it, 5m17s left",
                               "Epoch 1/2 - Training: 8/8 (100%), 40.0 s/it, 0s left"]


def test_heartbeat_of_a_resumed_loop_counts_its_own_items(caplog):
    """initial=90 of total=100, five items at ten a second: the rate counts the items seen, not the position 95."""
    caplog.set_level(logging.INFO, logger="ddpm")
    clock = FakeClock(0, *[0.1 * i for i in range(1, 6)])
    wrapper = progress.LoggedProgress(iter(range(5)), desc="Sampling (ddpm)", total=100, initial=90, interval=0.5,
                                      clock=clock)
    assert list(wrapper) == [0, 1, 2, 3, 4] and wrapper.position == 95
    assert caplog.messages == ["Sampling (ddpm): 95/100 (95%), 10.00 it/s, 0s left"]
    assert progress.LoggedProgress(iter([]), desc="x", interval=1).line(3.0) == "x: 0, 0.00 it/s"


def test_duration():
    assert [progress.duration(s) for s in (0, 44.6, 60, 725, 3600, 11220)] == ["0s", "45s", "1m00s", "12m05s",
                                                                             "1h00m", "3h07m"]


def test_progress_bar_is_a_tqdm_bar_on_a_terminal_only(monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("DDPM_PROGRESS_SECONDS", "0")
    on_terminal = distributed.progress_bar(range(3), desc="d", file=Terminal())
    assert isinstance(on_terminal, tqdm) and not on_terminal.disable
    in_file = distributed.progress_bar(range(3), desc="d", file=io.StringIO())
    assert isinstance(in_file, progress.LoggedProgress) and in_file.interval == 0
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # the default stream, not a terminal
    assert isinstance(distributed.progress_bar(range(3)), progress.LoggedProgress)
    monkeypatch.setenv("TQDM_DISABLE", "1")  # --quiet: no bar and no lines
    quiet = distributed.progress_bar(range(3), desc="d")
    assert isinstance(quiet, tqdm) and quiet.disable and list(quiet) == [0, 1, 2]
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setenv("DDPM_PROGRESS_SECONDS", "soon")
    caplog.set_level(logging.INFO)
    assert distributed.progress_bar(range(3)).interval == progress.DEFAULT_INTERVAL
    assert "DDPM_PROGRESS_SECONDS='soon' is not a number of seconds >= 0" in caplog.text


def test_the_random_stream_does_not_depend_on_the_terminal(monkeypatch):
    """A shuffling DataLoader gives the same batches, and leaves the same random state, under a bar and under
    the log wrapper (the judge trains through progress_bar: the same seed, the same judge either way)."""
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    loader = DataLoader(TensorDataset(torch.arange(40)), batch_size=8, shuffle=True)

    def epochs(stream: io.StringIO) -> tuple[list[list[int]], torch.Tensor]:
        torch.manual_seed(0)
        batches = [batch[0].tolist() for _ in range(2) for batch in distributed.progress_bar(loader, file=stream)]
        return batches, torch.get_rng_state()

    (bar_batches, bar_state), (log_batches, log_state) = epochs(Terminal()), epochs(io.StringIO())
    assert bar_batches == log_batches and torch.equal(bar_state, log_state)
    assert sorted(sum(bar_batches[:5], [])) == list(range(40))


LOG_LINE = re.compile(r"\d\d:\d\d:\d\d \S")  # main.py's log format: "%(asctime)s %(message)s", time only


def test_training_into_a_log_file_writes_readable_lines(tmp_path):
    """python main.py --train 2> file: no carriage returns, no escape codes, every line a log line; one
    summary line per epoch, and (heartbeat every 0 s) a progress line per batch."""
    make_mnist(tmp_path / "data", n_train=24, n_test=8)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update(DDPM_PROGRESS_SECONDS="0", PYTHONHASHSEED="0", PYTHONWARNINGS="ignore")
    log_path = tmp_path / "train.log"
    with open(log_path, "w") as log_file:
        result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--dataset", "mnist", "--train", "--epochs",
                                 "2", "--data-root", "data", "--timesteps", "20", "--batch-size", "8", "--device",
                                 "cpu"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log_file,
                                timeout=300)
    text = log_path.read_text()
    assert result.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), [l for l in lines if not LOG_LINE.match(l)]
    for epoch in (1, 2):
        assert sum(f"Epoch {epoch}/2 - Training Loss:" in line for line in lines) == 1
        batches = [line for line in lines if f"Epoch {epoch}/2 - Training: " in line]
        assert [line.split(": ")[1].split(",")[0] for line in batches] == [f"{b}/3 ({b / 3:.0%})" for b in (1, 2, 3)]
    assert any("Training progress: 2/2 (100%)" in line for line in lines)
