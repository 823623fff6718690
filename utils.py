"""Training loop, evaluation and sampling (paper sections 4.6, 4.7 and 5; Figures 12-14 and 19).

* ``training_loop`` (Figure 12) trains a ``checkpoint.TrainState`` epoch by
  epoch: one ``TrainState.step`` per batch, ``evaluate`` after each epoch, the
  best and the last checkpoint, the loss curves.
* ``evaluate`` (Figure 13) is the validation loss of Eq. 8. (The command line's
  ``--evaluate`` is another thing: the sample-quality score of ``quality.py``.)
* ``sample`` (Figure 14) runs the reverse process (Algorithm 2, DDIM or DPM-Solver++) and
  captures the GIF's frames; ``figures.py`` draws them.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

import distributed
from checkpoint import TrainState, last_checkpoint_path
from diffusion_model import CLIP_MODES, DiffusionModel, diffusion_loss, get_loss, threshold_x0, timestep_schedule
from distributed import progress_bar
from figures import save_gif, save_grid, save_loss_curves, tile

log = logging.getLogger(__name__)

SAMPLERS = ("ddpm", "ddim", "dpm++")
DEFAULT_SAMPLE_STEPS = {"ddim": 50, "dpm++": 20}
# Clipping the predicted x0, per sampler, as measured on the default MNIST checkpoint (README, "Few-step
# sampling"): it lowers the Frechet distance of DDIM-20 from 478 to 160 and of DPM-Solver++-20 from 401
# to 125 (N = 2000). The 1000-step sampler keeps Algorithm 2 as the paper writes it.
DEFAULT_CLIP_X0 = {"ddpm": "none", "ddim": "clip", "dpm++": "clip"}


# --------------------------------------------------------------------------- training


def evaluate(diffusion_model: DiffusionModel, test_loader: DataLoader, device: torch.device | str | None = None,
             seed: int = 0) -> float:
    """Mean noise-prediction MSE (Eq. 8) over a loader at random time steps (Figure 13).

    Each batch is one training draw of ``diffusion_model`` (its ``forward``)
    with time steps and noise from a generator seeded with ``seed`` (plus the
    rank under torchrun), so two calls on the same model and loader give the
    same number, and the global random state is left untouched. Under torchrun
    the sums are all-reduced, so every rank returns the same mean.
    """
    device = torch.device(device) if device is not None else diffusion_model.device
    gen = torch.Generator(device=device).manual_seed(seed + distributed.rank())
    was_training = diffusion_model.training
    diffusion_model.eval()
    total_loss, total_samples = 0.0, 0
    with torch.no_grad():
        for batch in test_loader:
            x0 = batch[0].to(device)
            y = batch[1].to(device) if diffusion_model.num_classes else None  # conditional: the true labels
            _, noise, eta_theta = diffusion_model(x0, generator=gen, y=y)
            total_loss += get_loss(noise, eta_theta).item() * len(x0)
            total_samples += len(x0)
    diffusion_model.train(was_training)
    total_loss, total_samples = distributed.all_reduce_sum([total_loss, total_samples], device)
    if total_samples == 0:
        raise ValueError("evaluate got an empty loader")
    return total_loss / total_samples


class TrainingInterrupted(Exception):
    """Training stopped on request (SIGTERM, Ctrl-C); its state was saved to ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"training interrupted; its state was saved to {path}")
        self.path = path


class TrainingDiverged(Exception):
    """The loss stopped being a finite number; nothing of the diverged state was saved."""

    def __init__(self, epoch: int, batch: int | None, loss: float | str, lr: float) -> None:
        where = f"epoch {epoch}, batch {batch}" if batch is not None else f"the validation of epoch {epoch}"
        super().__init__(f"training diverged: the loss is {loss} at {where}; the checkpoints of the last good "
                         f"epoch are untouched; train again with a smaller --lr (this run: {lr:g})")


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The run's --lr: the rate a scheduler started from (its warm-up or decay scales the current one)."""
    group = optimizer.param_groups[0]
    return group.get("initial_lr", group["lr"])


class StopRequest:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the training loop checks after each batch."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal stops at once
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("Received signal %d: saving the training state after this batch", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def training_loop(
    state: TrainState,
    train_loader: DataLoader,
    val_loader: DataLoader,
    n_epochs: int,
    *,
    store_path: str | os.PathLike | None = None,
    loss_curve_path: str | os.PathLike | None = None,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """Train ``state`` with the loss of Eq. 8 (Algorithm 1; Figure 12) up to epoch ``n_epochs``.

    Each epoch: one ``state.step`` per batch of ``train_loader`` (Adam on
    ``loss_fn(x0)``, default ``diffusion_loss``, then the EMA update), the
    validation loss with ``evaluate`` (seeded, so epochs are compared on the
    same time steps and noise), one scheduler step (Figure 12's
    ``StepLR(step_size=10, gamma=0.5)`` unless the state has another) and a log line.

    Departs from Figure 12: the best model is chosen by validation loss, not by
    training loss, and the last state is kept too: with ``store_path``, the best
    state is saved there and the last one to ``last_checkpoint_path(store_path)``
    (``TrainState.save``; every rank calls it, rank 0 writes). The loss curves
    (Figures 15 and 17) are saved to ``loss_curve_path`` after every epoch
    instead of ``plt.show()``.

    A state saved in the middle of an epoch goes on from its batch (the epoch's
    order is replayed: the sampler's shuffle depends only on seed and epoch), so
    with its restored random state the run continues exactly. When
    ``should_stop()`` turns true on any rank, the state is saved to the last
    checkpoint after the current batch and ``TrainingInterrupted`` is raised.
    ``loss_fn`` is where the fast path (``fastpath.loss_function``) comes in;
    validation always runs eager fp32.

    Returns the history: per-epoch ``train_loss``, ``val_loss``, ``lr`` and ``epoch_seconds``.
    """
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    loss_fn = loss_fn or functools.partial(diffusion_loss, state.model)
    best_loss = min(state.history["val_loss"], default=float("inf"))
    for epoch in progress_bar(range(state.epoch, n_epochs), desc="Training progress", colour="#00ff00",
                              initial=state.epoch, total=n_epochs):
        start = time.perf_counter()
        train_loss = _train_epoch(state, train_loader, n_epochs, loss_fn, should_stop, store_path)
        val_loss = evaluate(state.ddpm, val_loader, seed=seed)
        lr = state.optimizer.param_groups[0]["lr"]  # the rate this epoch was trained with
        if not math.isfinite(val_loss):
            raise TrainingDiverged(epoch + 1, None, val_loss, base_lr(state.optimizer))
        if not state.scheduler_per_step:
            state.scheduler.step()
        for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("lr", lr),
                           ("epoch_seconds", time.perf_counter() - start)):
            state.history[key].append(value)
        line = (f"Epoch {epoch + 1}/{n_epochs} - Training Loss: {train_loss:.4f}, "
                f"Validation Loss: {val_loss:.4f}, Learning Rate: {lr:.6f}, "
                f"Time: {state.history['epoch_seconds'][-1]:.1f}s")
        state.epoch, state.batch, state.loss_sum, state.seen = epoch + 1, 0, 0.0, 0
        if store_path is not None:
            if val_loss < best_loss:
                state.save(store_path)
                line += " -- saving best model"
            state.save(last_checkpoint_path(store_path))
        best_loss = min(best_loss, val_loss)
        log.info(line)
        if loss_curve_path is not None and distributed.is_main_process():
            save_loss_curves(state.history, loss_curve_path)
    return state.history


def _train_epoch(state: TrainState, train_loader: DataLoader, n_epochs: int,
                 loss_fn: Callable[[torch.Tensor], torch.Tensor], should_stop: Callable[[], bool] | None,
                 store_path: str | os.PathLike | None) -> float:
    """One pass over ``train_loader`` from ``state.batch`` on; returns the epoch's mean training loss."""
    epoch, skip = state.epoch, state.batch
    if hasattr(train_loader.sampler, "set_epoch"):
        train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, a function of (seed, epoch)
    batches = iter(train_loader)
    for _ in range(skip):  # replay an interrupted epoch's order up to where it stopped
        next(batches)
    # The saved partial sums are totals over all ranks: rank 0 carries them on.
    loss_sum, seen = (state.loss_sum, state.seen) if skip and distributed.is_main_process() else (0.0, 0)
    device = state.ddpm.device
    state.model.train()
    for done, batch in enumerate(progress_bar(batches, leave=False, desc=f"Epoch {epoch + 1}/{n_epochs} - Training",
                                              initial=skip, total=len(train_loader)), start=skip + 1):
        x0 = batch[0].to(device, non_blocking=True)
        y = batch[1].to(device, non_blocking=True) if state.ddpm.num_classes else None
        loss = state.step(x0, loss_fn, y).item()
        if distributed.any_rank(not math.isfinite(loss), x0.device):  # every rank stops together
            shown = loss if not math.isfinite(loss) else "not finite on another process"
            raise TrainingDiverged(epoch + 1, done, shown, base_lr(state.optimizer))
        loss_sum += loss * len(x0)
        seen += len(x0)
        if should_stop is not None and distributed.any_rank(should_stop(), x0.device):
            total_loss, total_seen = distributed.all_reduce_sum([loss_sum, seen], x0.device)
            state.batch, state.loss_sum, state.seen = done, total_loss, int(total_seen)
            if store_path is not None:
                state.save(last_checkpoint_path(store_path))
            raise TrainingInterrupted(last_checkpoint_path(store_path or "ddpm_model.pt"))
    loss_sum, seen = distributed.all_reduce_sum([loss_sum, seen], device)
    return loss_sum / max(seen, 1)


# --------------------------------------------------------------------------- sampling


def gif_frame_steps(timesteps: int, frames_per_gif: int) -> set[int]:
    """Loop positions (0 = first reverse step) after which a GIF frame is captured.

    ``frames_per_gif`` positions evenly spread over the reverse process, always
    including the last one (the final samples); at most ``timesteps`` frames.
    """
    if frames_per_gif < 1:
        raise ValueError(f"frames_per_gif must be >= 1, got {frames_per_gif}")
    return set(np.linspace(0, timesteps - 1, min(frames_per_gif, timesteps)).round().astype(int).tolist())


def sampling_steps(ddpm: DiffusionModel, sampler: str = "ddpm", sample_steps: int | None = None,
                   step_schedule: str = "uniform") -> list[int]:
    """The 0-based time steps a sampler evaluates the network at, from noisiest to cleanest.

    ``ddpm`` (Algorithm 2) visits every step T-1..0. ``ddim`` and ``dpm++``
    visit ``sample_steps`` steps (default ``DEFAULT_SAMPLE_STEPS``, at most T)
    from T-1 down to 0, spaced by ``step_schedule`` (``uniform`` in t, or
    ``logsnr``: see ``diffusion_model.timestep_schedule``); their last update
    goes from step 0 to the clean image.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    timesteps = ddpm.timesteps
    if sample_steps is None:
        sample_steps = timesteps if sampler == "ddpm" else min(DEFAULT_SAMPLE_STEPS[sampler], timesteps)
    if not 1 <= sample_steps <= timesteps:
        raise ValueError(f"sample_steps must lie in 1..{timesteps}, got {sample_steps}")
    if sampler == "ddpm":
        if sample_steps != timesteps:
            raise ValueError("the DDPM sampler (Algorithm 2) visits every time step: use the DDIM or DPM-Solver++ "
                             "sampler to skip")
        return list(range(timesteps - 1, -1, -1))
    return timestep_schedule(ddpm.alpha_bars, sample_steps, step_schedule)


def sample(
    ddpm: DiffusionModel,
    n_samples: int = 16,
    device: torch.device | str | None = None,
    frames_per_gif: int = 100,
    gif_name: str | os.PathLike | None = "sampling.gif",
    grid_path: str | os.PathLike | None = None,
    *,
    seed: int | None = None,
    display: str = "clamp",
    sampler: str = "ddpm",
    sample_steps: int | None = None,
    ddim_eta: float = 0.0,
    clip_x0: str | None = None,
    step_schedule: str = "uniform",
    variance: str = "beta",
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[int, int] | None = None,
    grid_cols: int | None = None,
) -> torch.Tensor:
    """Generate ``n_samples`` images and return them clamped to [-1, 1] (Figure 14).

    x_T ~ N(0, I) with the shape ``ddpm.image_chw``, then one reverse update per
    step of ``sampling_steps``: ``ddpm`` is Algorithm 2 (``ddpm.step``, sigma_t^2
    from ``variance``), ``ddim`` is DDIM (``ddpm.ddim_step`` with noise scale
    ``ddim_eta``; 0 is deterministic), ``dpm++`` is DPM-Solver++(2M)
    (``ddpm.dpm_solver_step``). ``clip_x0`` (``none``, ``clip``, ``dynamic``;
    ``diffusion_model.threshold_x0``) applies to every sampler; None is ``DEFAULT_CLIP_X0[sampler]``.

    With ``gif_name``, ``frames_per_gif`` frames spread across the process are
    tiled into a grid and written as a GIF whose last frame is held for a
    third as many extra frames (the listing's hold sits outside its
    loop and never runs as meant: fixed). With ``grid_path``, the final grid is
    saved as a PNG.

    ``seed`` makes the result reproducible (a private generator draws x_T and
    every z; the global random state is untouched). ``display`` picks how frames
    are drawn (see ``figures.to_uint8``); the returned tensor is always the model's
    output clamped to [-1, 1]. ``grid_cols`` sets the images per row of the grid and GIF.

    A class-conditional model draws image i of class ``labels[i]`` with
    classifier-free guidance of weight ``guidance`` (``DiffusionModel.guided_backward``),
    with every sampler; ``labels = None`` draws unconditionally. ``guidance_interval = (lo, hi)`` applies
    that weight only at the steps lo <= t <= hi and plain conditional prediction (W = 1, one network pass)
    at the others (guidance in a limited interval, Kynkaanniemi et al. 2024); None guides every step.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if labels is not None and labels.shape != (n_samples,):
        raise ValueError(f"need one label per sample: {n_samples} samples, labels of shape {tuple(labels.shape)}")
    if guidance_interval is not None and not 0 <= guidance_interval[0] <= guidance_interval[1] < ddpm.timesteps:
        raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo <= hi < T = {ddpm.timesteps}, "
                         f"got {guidance_interval}")
    steps = sampling_steps(ddpm, sampler, sample_steps, step_schedule)
    device = torch.device(device) if device is not None else ddpm.device
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    frame_steps = gif_frame_steps(len(steps), frames_per_gif) if gif_name is not None else set()
    frames: list[np.ndarray] = []
    shape = (n_samples, *ddpm.image_chw)

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=device)

    clip_x0 = DEFAULT_CLIP_X0.get(sampler, "none") if clip_x0 is None else clip_x0
    update = ReverseUpdate(ddpm, sampler, noise, ddim_eta=ddim_eta, clip_x0=clip_x0, variance=variance)
    was_training = ddpm.training
    ddpm.eval()
    with torch.no_grad():
        x = noise()  # x_T ~ N(0, I)
        t_batch = torch.empty(n_samples, dtype=torch.long, device=device)
        y = labels.to(device) if labels is not None else None
        for idx, t in enumerate(progress_bar(steps, desc=f"Sampling ({sampler})", leave=False)):
            w = guidance if guidance_interval is None or guidance_interval[0] <= t <= guidance_interval[1] else 1.0
            eta_theta = ddpm.guided_backward(x, t_batch.fill_(t), y, w)
            x = update(x, t, steps[idx + 1] if idx + 1 < len(steps) else -1, eta_theta)
            if idx in frame_steps:
                frames.append(tile(x, display, grid_cols))
    ddpm.train(was_training)

    if gif_name is not None:
        save_gif(frames, gif_name, hold=len(frames) // 3)
    if grid_path is not None:
        save_grid(x, grid_path, display, grid_cols)
    return x.clamp(-1, 1)


class ReverseUpdate:
    """One sampler's update x_t -> x_{t_prev} given eps_theta(x_t, t); keeps what a multistep solver remembers.

    ``t_prev = -1`` is the clean image (DDIM and DPM-Solver++ end there; Algorithm 2 ends at step 0).
    """

    def __init__(self, ddpm: DiffusionModel, sampler: str, noise: Callable[[], torch.Tensor], *,
                 ddim_eta: float = 0.0, clip_x0: str = "none", variance: str = "beta") -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if clip_x0 not in CLIP_MODES:
            raise ValueError(f"clip_x0 must be one of {CLIP_MODES}, got {clip_x0!r}")
        if ddim_eta != 0 and sampler != "ddim":
            raise ValueError("ddim_eta is the DDIM sampler's noise scale: use it with sampler='ddim'")
        if variance != "beta" and sampler != "ddpm":
            raise ValueError("the reverse variance is the DDPM sampler's (Algorithm 2): use it with sampler='ddpm'")
        self.ddpm, self.sampler, self.noise = ddpm, sampler, noise
        self.ddim_eta, self.clip_x0, self.variance = ddim_eta, clip_x0, variance
        self.previous: tuple[torch.Tensor, int] | None = None  # DPM-Solver++: the last x0 prediction and its step

    def __call__(self, x: torch.Tensor, t: int, t_prev: int, eta_theta: torch.Tensor) -> torch.Tensor:
        ddpm = self.ddpm
        if self.sampler == "ddpm":
            z = self.noise() if t > 0 else None
            return ddpm.step(x, t, eta_theta=eta_theta, z=z, clip_x0=self.clip_x0, variance=self.variance).x_prev
        if self.sampler == "ddim":
            z = self.noise() if self.ddim_eta > 0 and t_prev >= 0 else None
            return ddpm.ddim_step(x, t, t_prev, eta_theta=eta_theta, ddim_eta=self.ddim_eta, z=z,
                                  clip_x0=self.clip_x0).x_prev
        x0_pred = threshold_x0(ddpm.predict_x0(x, t, eta_theta), self.clip_x0)
        x_prev = ddpm.dpm_solver_step(x, t, t_prev, x0_pred, self.previous)
        self.previous = (x0_pred, t)
        return x_prev
