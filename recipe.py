"""The training loss and the recipe options beyond the paper (docs/results.md: the ablation).

* ``diffusion_loss``: one batch's loss (Algorithm 1, Eq. 8), shared by every training path.
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

import logging
import math
from typing import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, StepLR

from config import LR_SCHEDULES
from diffusion_model import get_loss

log = logging.getLogger("ddpm")


def min_snr_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """``min(SNR, gamma) / SNR`` per time step (Hang et al. 2023, the weight for a noise predictor).

    ``snr`` is ``abar / (1 - abar)``; ``DiffusionModel`` keeps it exactly as
    ``exp(2 * lambdas)`` (float64: ``1 - abar`` of the first steps loses digits in float32).
    """
    if not gamma > 0:
        raise ValueError(f"the Min-SNR gamma must be positive, got {gamma}")
    return snr.clamp(max=gamma) / snr


def diffusion_loss(model: nn.Module, x_0: torch.Tensor, snr_gamma: float | None = None,
                   y: torch.Tensor | None = None, label_drop: float = 0.0, v_error: bool = False) -> torch.Tensor:
    """The training loss of one batch (Algorithm 1, lines 2-5): a training draw, then Eq. 8 in float32.

    ``model`` is a ``DiffusionModel`` or a wrapper whose forward is one (``DistributedDataParallel``).
    Every training path shares this: the loop, the fast path (which wraps it) and the benchmark.
    With ``snr_gamma``, each image's squared error is weighted by Min-SNR-gamma
    (``recipe.min_snr_weight`` of its time step) before the batch mean; the draws are the same.
    ``v_error`` (with ``snr_gamma``) weights the error of v instead: since eps = sqrt(1 - abar) x_t +
    sqrt(abar) v, ``|v error|^2 = |eps error|^2 / abar_t``, so each weight is divided by abar_t. At the
    noisiest steps, where a 64x64 digit's shape and class are decided, that is the error of the x_0
    the model implies, not the error of a noise that is already nearly x_t.
    A class-conditional model gets the labels ``y``, each replaced by "no label" with probability
    ``label_drop`` (classifier-free guidance training, Ho and Salimans 2022; drawn before t and the noise).
    """
    ddpm = getattr(model, "module", model)  # the DiffusionModel inside a DDP wrapper
    if y is not None and label_drop > 0:
        y = torch.where(torch.rand(y.shape, device=y.device) < label_drop, ddpm.num_classes, y)
    if v_error and snr_gamma is None:
        raise ValueError("v_error weights the Min-SNR loss: give snr_gamma too")
    if snr_gamma is None:
        _, noise, eta_theta = model(x_0, y=y)
        return get_loss(noise, eta_theta.float())  # .float(): a bf16 autocast prediction is compared in float32
    t = torch.randint(0, ddpm.timesteps, (x_0.shape[0],), device=x_0.device)
    _, noise, eta_theta = model(x_0, t=t, y=y)
    per_image = ((noise - eta_theta.float()) ** 2).flatten(1).mean(dim=1)
    weight = min_snr_weight(torch.exp(2 * ddpm.lambdas), snr_gamma)  # SNR = exp(2 lambda), float64
    if v_error:
        weight = weight * (1 + torch.exp(-2 * ddpm.lambdas))  # 1 / abar = 1 + 1 / SNR
    return (weight.float()[t] * per_image).mean()


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
        total = epochs * steps_per_epoch
        if warmup_steps > total:
            log.warning("The learning-rate warm-up of %d steps is longer than the run's %d optimizer steps: the rate "
                        "never reaches --lr %g (it ends at %.3g); lower --warmup-steps", warmup_steps, total,
                        optimizer.defaults["lr"], optimizer.defaults["lr"] * total / warmup_steps)
        return LambdaLR(optimizer, warmup_cosine(warmup_steps, total)), True
    raise ValueError(f"learning-rate schedule must be one of {LR_SCHEDULES}, got {kind!r}")
