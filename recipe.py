"""Training-recipe options beyond the paper, each a flag recorded in the checkpoint (README: the ablation).

* Min-SNR-gamma loss weighting (Hang et al. 2023): Eq. 8's per-image squared
  error times ``min(SNR_t, gamma) / SNR_t`` with ``SNR_t = abar_t / (1 - abar_t)``,
  the weight that, for a noise predictor, caps the share of the nearly clean
  (high-SNR) time steps in the loss. ``min-snr-v`` puts the same weights on the
  error of v (Salimans and Ho 2022), that is on Eq. 8's error divided by abar_t.
* The learning-rate schedule: Figure 12's ``StepLR`` (per epoch), or a linear
  warm-up over ``warmup_steps`` optimizer steps followed by a cosine decay to 0
  at the end of the run (per step).

The cosine noise schedule (Nichol and Dhariwal 2021) is a property of the
model, so it lives in ``diffusion_model.py``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR

LOSS_WEIGHTINGS = ("none", "min-snr", "min-snr-v")
LR_SCHEDULES = ("step", "cosine")


def min_snr_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """``min(SNR, gamma) / SNR`` per time step (Hang et al. 2023, the weight for a noise predictor).

    ``snr`` is ``abar / (1 - abar)``; ``DiffusionModel`` keeps it exactly as
    ``exp(2 * lambdas)`` (float64: ``1 - abar`` of the first steps loses digits in float32).
    """
    if not gamma > 0:
        raise ValueError(f"the Min-SNR gamma must be positive, got {gamma}")
    return snr.clamp(max=gamma) / snr


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The factor of the base learning rate after ``step`` optimizer steps: linear up, then cosine down to 0.

    Step ``s < warmup_steps``: ``(s + 1) / warmup_steps``; after it,
    ``0.5 * (1 + cos(pi * p))`` with ``p`` the fraction of the remaining steps done.
    """
    if warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"need warmup_steps >= 0 and total_steps >= 1, got {warmup_steps}, {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * p))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, *, steps_per_epoch: int, epochs: int,
                   warmup_steps: int = 0, lr_step: int = 10, lr_gamma: float = 0.5) -> tuple[LRScheduler, bool]:
    """The learning-rate scheduler of ``kind`` and whether it steps per optimizer step (else per epoch).

    ``step``: Figure 12's ``StepLR(lr_step, lr_gamma)`` per epoch (a warm-up is
    refused with it). ``cosine``: ``warmup_cosine`` over ``epochs * steps_per_epoch``
    steps; a resumed run with a larger ``epochs`` stretches the rest of the cosine.
    """
    if kind == "step":
        if warmup_steps:
            raise ValueError("a warm-up needs the cosine learning-rate schedule")
        return StepLR(optimizer, step_size=lr_step, gamma=lr_gamma), False
    if kind == "cosine":
        return LambdaLR(optimizer, warmup_cosine(warmup_steps, epochs * steps_per_epoch)), True
    raise ValueError(f"learning-rate schedule must be one of {LR_SCHEDULES}, got {kind!r}")
