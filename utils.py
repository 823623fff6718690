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

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

import distributed
from checkpoint import last_checkpoint_path, model_config, save_checkpoint
from diffusion_model import DiffusionModel, get_loss
from recipe import diffusion_loss
from distributed import progress_bar
from ema import EMA
from figures import save_loss_curves
from files import signals_deferred
from samplers import (DEFAULT_SAMPLE_BATCH, ImageNoise, Sampler, SamplingOutOfMemory, gif_frame_steps,
                      make_sampler)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the state of a training run


def new_history() -> dict[str, list[float]]:
    """Per-epoch ``train_loss``, ``val_loss``, ``lr`` and ``epoch_seconds``, empty."""
    return dict(train_loss=[], val_loss=[], lr=[], epoch_seconds=[])


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global random state (CPU, and CUDA when training there)."""
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@dataclass
class TrainState:
    """Everything a training run carries from one step to the next, with its one step, save and restore.

    ``model`` is what the forward pass runs: ``ddpm`` itself, or its
    ``DistributedDataParallel`` wrapper under torchrun. ``epoch`` counts the
    finished epochs; ``batch``, ``loss_sum`` and ``seen`` are the position and
    partial training-loss sums inside an interrupted epoch (all 0 between
    epochs). ``dataset`` and ``train_args`` are recorded in the checkpoint.
    The scheduler steps after every optimizer step when ``scheduler_per_step``
    (the cosine schedule), else once per epoch (Figure 12's StepLR).
    """

    ddpm: DiffusionModel
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None = None
    ema: EMA | None = None
    model: nn.Module | None = None
    dataset: str = ""
    train_args: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=new_history)
    scheduler_per_step: bool = False
    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    seen: int = 0

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = self.ddpm
        if self.scheduler is None:  # Figure 12's schedule
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=10, gamma=0.5)

    def step(self, x0: torch.Tensor, loss_fn: Callable[..., torch.Tensor],
             y: torch.Tensor | None = None) -> torch.Tensor:
        """One optimisation step on a batch (Algorithm 1): loss, gradient, Adam step, EMA update.

        ``y``: the batch's labels, for a class-conditional model (``loss_fn(x0, y)``).
        """
        loss = loss_fn(x0) if y is None else loss_fn(x0, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler_per_step:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.ddpm.backward_process_model)
        return loss

    def progress(self) -> dict[str, Any]:
        return dict(epoch=self.epoch, batch=self.batch, loss_sum=self.loss_sum, seen=self.seen)

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole state to ``path`` (rank 0 writes; every rank must call it: it gathers random states)."""
        rngs = distributed.gather_objects(rng_state(self.ddpm.device))
        if not distributed.is_main_process():
            return
        extra = dict(ema=self.ema.state_dict()) if self.ema is not None else {}
        with signals_deferred():  # a Ctrl-C now waits until the file is complete
            save_checkpoint(path, self.ddpm, model_config(self.dataset, self.ddpm), history=self.history,
                            progress=self.progress(), train_args=self.train_args,
                            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                            rng=rngs, **extra)

    def restore(self, ckpt: dict[str, Any],
                load_optimizer: Callable[[torch.optim.Optimizer, dict], None] | None = None) -> None:
        """Continue from a checkpoint dict written by ``save``: everything but the weights, already loaded.

        ``load_optimizer(optimizer, state)`` loads the optimizer state (default:
        ``optimizer.load_state_dict``; the fast path keeps its Adam kernel).
        """
        (load_optimizer or type(self.optimizer).load_state_dict)(self.optimizer, ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and "ema" in ckpt:
            self.ema.load_state_dict(ckpt["ema"])
        rngs, rank = ckpt["rng"], distributed.rank()  # one random state per rank of the run
        if rank < len(rngs):
            set_rng_state(rngs[rank], self.ddpm.device)
        else:  # a rank the run did not have: its own stream, from the seed, the rank and the epoch
            torch.manual_seed(ckpt["train_args"]["seed"] + 1000 * (int(ckpt["progress"]["epoch"]) + 1) + rank)
        self.history = ckpt["history"]
        progress = ckpt["progress"]
        self.epoch, self.batch = int(progress["epoch"]), int(progress["batch"])
        self.loss_sum, self.seen = progress["loss_sum"], progress["seen"]


def rescale_position(ckpt: dict[str, Any], global_batch: int, n_batches: int) -> dict[str, Any]:
    """The saved position inside an epoch, in batches of ``global_batch`` images instead of the run's.

    At most ``n_batches``, the new loader's length (each rank's share is padded, so the counts differ).
    """
    progress = dict(ckpt["progress"])
    args = ckpt["train_args"]
    seen_images = progress["batch"] * args["batch_size"] * args["world_size"]
    progress["batch"] = min(seen_images // global_batch, n_batches)
    return progress


# --------------------------------------------------------------------------- training


def evaluate(diffusion_model: DiffusionModel, test_loader: DataLoader, device: torch.device | str | None = None,
             seed: int = 0) -> float:
    """Mean noise-prediction MSE (Eq. 8) over a loader at random time steps (Figure 13).

    Each batch is one training draw of ``diffusion_model`` (its ``forward``)
    with time steps and noise from a generator seeded with ``seed`` (plus the
    rank under torchrun), so two calls on the same model and loader give the
    same number (the loader itself may draw its base seed from the global random state). Under torchrun
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
    loss_fn = loss_fn or (lambda x0, y=None: diffusion_loss(state.model, x0, y=y))  # labels by name, not as gamma
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


@dataclass
class Drawn:
    """What ``sample`` returns: the images as the last reverse step left them and the GIF's frames.

    ``images`` are ``raw`` clamped to the data's range [-1, 1]; ``figures`` draws
    ``raw`` with any display mode. ``frames`` are snapshots of all the images during
    the reverse process (empty unless asked for), the last one equal to ``raw``.
    """

    raw: torch.Tensor
    frames: list[torch.Tensor]

    @property
    def images(self) -> torch.Tensor:
        return self.raw.clamp(-1, 1)


def sample(
    ddpm: DiffusionModel,
    n_samples: int = 16,
    device: torch.device | str | None = None,
    *,
    sampler: Sampler | str = "ddpm",
    seed: int | None = None,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    guidance_interval: tuple[int, int] | None = None,
    frames_per_gif: int = 0,
    batch_size: int = DEFAULT_SAMPLE_BATCH,
) -> Drawn:
    """Generate ``n_samples`` images (Figure 14): x_T ~ N(0, I), then one sampler update per step.

    ``sampler``: a ``samplers.Sampler`` (or the name of one, with its defaults):
    ``ddpm`` is Algorithm 2, ``ddim`` DDIM, ``dpm++`` DPM-Solver++(2M). Each step
    asks the network for eps_theta(x_t, t) and hands it to ``sampler.step``.

    The images are drawn ``batch_size`` at a time, so memory stays flat in
    ``n_samples``; image i's x_T and every z come from its own generator
    (``noise_seed(seed, i)``), so the result does not depend on ``batch_size``.
    ``seed`` None draws a random one; the global random state is untouched.
    With ``frames_per_gif``, that many snapshots spread over the reverse process
    are returned as ``Drawn.frames`` (the GIF is ``figures.save_sampling_gif``'s job).

    A class-conditional model draws image i of class ``labels[i]`` with
    classifier-free guidance of weight ``guidance`` (``DiffusionModel.guided_backward``),
    with every sampler; ``labels = None`` draws unconditionally. ``guidance_interval = (lo, hi)`` applies
    that weight only at the steps lo <= t <= hi and plain conditional prediction (W = 1, one network pass)
    at the others (guidance in a limited interval, Kynkaanniemi et al. 2024); None guides every step.
    A batch that does not fit in memory raises ``SamplingOutOfMemory``.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples} and {batch_size}")
    if labels is not None and labels.shape != (n_samples,):
        raise ValueError(f"need one label per sample: {n_samples} samples, labels of shape {tuple(labels.shape)}")
    if guidance_interval is not None and not 0 <= guidance_interval[0] <= guidance_interval[1] < ddpm.timesteps:
        raise ValueError(f"guidance_interval must be (lo, hi) with 0 <= lo <= hi < T = {ddpm.timesteps}, "
                         f"got {guidance_interval}")
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, ddpm)
    device = torch.device(device) if device is not None else ddpm.device
    seed = torch.Generator().seed() if seed is None else seed
    steps = sampler.timesteps()
    frame_steps = gif_frame_steps(len(steps), frames_per_gif) if frames_per_gif else set()
    images, frames = [], []
    was_training = ddpm.training
    ddpm.eval()
    try:
        for start in range(0, n_samples, batch_size):
            n = min(batch_size, n_samples - start)
            y = labels[start:start + n].to(device) if labels is not None else None
            x, shots = _reverse_process(ddpm, sampler, steps, ImageNoise(seed, start, n, ddpm.image_chw, device), y,
                                        guidance, guidance_interval, frame_steps)
            images.append(x.cpu())
            frames.append(shots)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
            raise SamplingOutOfMemory(f"out of memory drawing a batch of {min(batch_size, n_samples)} images on "
                                      f"{device}: lower --sample-batch (the images do not depend on it)") from None
        raise
    finally:
        ddpm.train(was_training)
    return Drawn(torch.cat(images), [torch.cat(shot) for shot in zip(*frames)])


def _reverse_process(ddpm: DiffusionModel, sampler: Sampler, steps: list[int], noise: ImageNoise,
                     y: torch.Tensor | None, guidance: float, guidance_interval: tuple[int, int] | None,
                     frame_steps: set[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One batch from x_T to x_0: the final images and the snapshots after the ``frame_steps`` positions."""
    sampler.reset()
    shots = []
    with torch.no_grad():
        x = noise()  # x_T ~ N(0, I)
        t_batch = torch.empty(len(x), dtype=torch.long, device=x.device)
        for idx, t in enumerate(progress_bar(steps, desc=f"Sampling ({sampler.name})", leave=False)):
            w = guidance if guidance_interval is None or guidance_interval[0] <= t <= guidance_interval[1] else 1.0
            eta_theta = ddpm.guided_backward(x, t_batch.fill_(t), y, w)
            x = sampler.step(x, t, steps[idx + 1] if idx + 1 < len(steps) else -1, eta_theta, noise)
            if idx in frame_steps:
                shots.append(x.detach().to("cpu", copy=True))
    return x, shots
