"""Progress for a person or for a log file: a tqdm bar on a terminal, a heartbeat log line elsewhere.

A bar redrawn with carriage returns and escape codes is unreadable in a file
(``python main.py --train 2> train.log``, a batch job's output). Where the
stream is not a terminal, ``LoggedProgress`` iterates silently and logs one
plain line every ``interval`` seconds: what runs, where it is, its rate and the
time left.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Iterable, Iterator

DEFAULT_INTERVAL = 180.0
INTERVAL_VARIABLE = "DDPM_PROGRESS_SECONDS"  # seconds between heartbeat lines; overrides DEFAULT_INTERVAL


def log_interval() -> float:
    """Seconds between heartbeat lines: ``DDPM_PROGRESS_SECONDS`` when set to a number >= 0 (a warning
    and ``DEFAULT_INTERVAL`` for anything else), else ``DEFAULT_INTERVAL``."""
    value = os.environ.get(INTERVAL_VARIABLE)
    if value is None:
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        logging.getLogger("ddpm").warning("%s=%r is not a number of seconds >= 0: logging progress every %gs",
                                          INTERVAL_VARIABLE, value, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL
    return seconds


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def duration(seconds: float) -> str:
    """``45s``, ``12m05s`` or ``3h07m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LoggedProgress:
    """Iterate over ``iterable``, logging ``desc: position/total (percent), rate, time left`` at most once
    every ``interval`` seconds of ``clock`` (never at the start). ``total`` defaults to ``len(iterable)``
    when it has one; ``initial`` is where the count starts (a resumed epoch). The rate and the time left
    count only the items this wrapper has seen."""

    def __init__(self, iterable: Iterable, desc: str | None = None, total: int | None = None, initial: int = 0,
                 interval: float = DEFAULT_INTERVAL, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.iterable = iterable
        self.desc = desc or "progress"
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.initial = self.position = initial
        self.interval = interval
        self.logger = logger or logging.getLogger("ddpm")
        self.clock = clock

    def __iter__(self) -> Iterator:
        start = last = self.clock()
        for item in self.iterable:
            yield item
            self.position += 1
            now = self.clock()
            if now - last >= self.interval:
                self.logger.info(self.line(now - start))
                last = now

    def line(self, elapsed: float) -> str:
        """The heartbeat line after ``elapsed`` seconds of this wrapper's iteration."""
        done = self.position - self.initial
        rate = done / elapsed if elapsed > 0 else float("inf")
        where = f"{self.position}"
        if self.total:
            where += f"/{self.total} ({self.position / self.total:.0%})"
        parts = [f"{self.desc}: {where}", f"{rate:.2f} it/s" if rate >= 1 or done == 0 else f"{1 / rate:.1f} s/it"]
        if self.total and 0 < rate < float("inf"):
            parts.append(f"{duration(max(self.total - self.position, 0) / rate)} left")
        return ", ".join(parts)
