"""The command line's value types: each turns one option's text into its value or refuses it in one line.

argparse calls them (``type=``) and prints ``main.py: error: argument --X: <message>``; ``cli.py``
builds the parser with them.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

from config import LIMITS
from fastpath import parse_parts

SEED_LIMIT = 2**32  # --seed takes 0 .. SEED_LIMIT - 1: every seed the package derives from it stays a valid one


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def open_unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def digit_list(text: str) -> list[int]:
    """argparse type of --digit: ``"3"`` or ``"3,3,7"``, each a digit 0-9."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and 0 <= int(p) <= 9 for p in parts):
        raise argparse.ArgumentTypeError(f"must be digits 0-9 separated by commas, got {text!r}")
    return [int(p) for p in parts]


def step_interval(text: str) -> tuple[int, int]:
    """argparse type of --guidance-interval: ``"LO,HI"``, two time steps with 0 <= LO <= HI."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) > int(parts[1]):
        raise argparse.ArgumentTypeError(f"must be two time steps LO,HI with 0 <= LO <= HI, got {text!r}")
    return int(parts[0]), int(parts[1])


def power_of_two(text: str) -> int:
    """argparse type of --distill-steps and --distill-start: 1, 2, 4, 8, ..."""
    value = int(text)
    if value < 1 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two (each round halves the steps), e.g. 64, got {text}")
    return value


def per_round(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    """argparse type of --distill-updates and --distill-lr: ``"1800"`` (every round) or ``"2000,2000,1500"``."""
    parse = lambda text: tuple(kind(part.strip()) for part in text.split(","))  # noqa: E731
    parse.__name__ = "list"  # argparse's "invalid list value: 'x'"
    return parse


def bounded_int(name: str) -> Callable[[str], int]:
    """argparse type of a size: an integer in 1..``config.LIMITS[name]`` (a checkpoint is held to the same)."""

    def parse(text: str) -> int:
        value = int(text)
        if not 1 <= value <= LIMITS[name]:
            raise argparse.ArgumentTypeError(f"must be an integer in 1..{LIMITS[name]}, got {text}")
        return value

    parse.__name__ = "integer"  # argparse's "invalid integer value: '1e9'"
    return parse


def fast_parts(text: str) -> frozenset[str]:
    """argparse type of --fast-parts: a comma-separated list of ``fastpath.PARTS``."""
    try:
        return parse_parts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def seed_value(text: str) -> int:
    """argparse type of --seed: an integer in 0 .. 2**32 - 1."""
    value = int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{SEED_LIMIT - 1}, got {text}")
    return value
