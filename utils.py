"""Training loop, evaluation, sampling and the paper's figures (sections 4.6, 4.7 and 5).

Every figure is written to a PNG (or GIF) file with matplotlib's object API
(``matplotlib.figure.Figure``), which never opens a window and needs no
interactive backend.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import einops
import imageio.v2 as imageio
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.optim.lr_scheduler import LRScheduler, StepLR
from torch.utils.data import DataLoader

import distributed
from diffusion_model import DiffusionModel
from distributed import progress_bar
from ema import EMA
from unet import sinusoidal_embedding

log = logging.getLogger(__name__)

DISPLAY_MODES = ("clamp", "minmax")
SAMPLERS = ("ddpm", "ddim")


def get_loss(noise: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
    """The simplified DDPM loss of Eq. 8: mean squared error between true and predicted noise."""
    return torch.mean((noise - noise_pred) ** 2)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when available (the paper trains on CUDA), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


# --------------------------------------------------------------------------- training


def evaluate(diffusion_model: DiffusionModel, test_loader: DataLoader, device: torch.device | str | None = None,
             seed: int = 0) -> float:
    """Mean noise-prediction MSE (Eq. 8) over a loader at random time steps (Figure 13).

    Time steps and noise come from a generator seeded with ``seed`` (plus the
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
            n = len(x0)
            t = torch.randint(0, diffusion_model.timesteps, (n,), generator=gen, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            noisy, _ = diffusion_model.add_noise(x0, t, noise)
            eta_theta = diffusion_model.backward(noisy, t)
            total_loss += get_loss(noise, eta_theta).item() * n
            total_samples += n
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


def last_checkpoint_path(store_path: str | os.PathLike) -> Path:
    """Where the last (resumable) state lives beside the best checkpoint: ``<stem>_last<suffix>``."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.stem}_last{store_path.suffix}")


def new_history() -> dict[str, list[float]]:
    return dict(train_loss=[], val_loss=[], lr=[], epoch_seconds=[])


def training_loop(
    ddpm: DiffusionModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    n_epochs: int,
    optim: torch.optim.Optimizer,
    device: torch.device | str,
    *,
    scheduler: LRScheduler | None = None,
    store_path: str | os.PathLike = "ddpm_model.pt",
    save_fn: Callable[[Path, dict[str, Any]], None] | None = None,
    loss_curve_path: str | os.PathLike | None = None,
    seed: int = 0,
    model: torch.nn.Module | None = None,
    ema: EMA | None = None,
    resume: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """Train ``ddpm`` with the loss of Eq. 8 (Algorithm 1; Figure 12) up to epoch ``n_epochs``.

    Each epoch: one pass over ``train_loader`` (Adam steps on
    ``get_loss(noise, eta_theta)``, then an ``ema`` update if given), the
    validation loss with ``evaluate`` (seeded, so epochs are compared on the
    same time steps and noise), one scheduler step (default
    ``StepLR(step_size=10, gamma=0.5)``) and a log line.

    Departs from Figure 12: the best model is chosen by validation loss, not by
    training loss, and the last state is kept too. ``save_fn(path, state)``
    writes a checkpoint from ``state`` (history and progress): the best one to
    ``store_path``, the last one to ``last_checkpoint_path(store_path)``. It is
    called on every rank (only rank 0 should write). The loss curves (Figures
    15 and 17) are saved to ``loss_curve_path`` after every epoch instead of
    ``plt.show()``.

    ``model`` is what the forward pass runs (a DistributedDataParallel wrapper
    of ``ddpm`` under torchrun); it defaults to ``ddpm``. ``resume`` is the
    ``progress`` dict of a saved state (with its ``history``): training goes on
    from that epoch and batch (the epoch's order is replayed: the sampler's
    shuffle depends only on seed and epoch), so that together with the
    restored random state the run continues exactly. When
    ``should_stop()`` turns true on any rank, the state is saved to the last
    checkpoint after the current batch and ``TrainingInterrupted`` is raised.
    ``loss_fn(x0)`` replaces the fp32 eager loss computation of a batch (the
    fast path of ``fastpath.loss_function``); validation always runs eager fp32.

    Returns the history: per-epoch ``train_loss``, ``val_loss``, ``lr`` and
    ``epoch_seconds``.
    """
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be >= 1, got {n_epochs}")
    if scheduler is None:
        scheduler = StepLR(optim, step_size=10, gamma=0.5)
    model = ddpm if model is None else model
    store_path = Path(store_path)
    last_path = last_checkpoint_path(store_path)
    resume = resume or {}
    history = resume.get("history") or new_history()
    start_epoch = int(resume.get("epoch", 0))
    best_loss = min(history["val_loss"], default=float("inf"))
    main_process = distributed.is_main_process()

    def save(path: Path, progress: dict[str, Any]) -> None:
        if save_fn is not None:
            save_fn(path, dict(history=history, progress=progress))

    for epoch in progress_bar(range(start_epoch, n_epochs), desc="Training progress", colour="#00ff00",
                              initial=start_epoch, total=n_epochs):
        start = time.perf_counter()
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, a function of (seed, epoch)
        resuming = resume.get("batch", 0) > 0 and epoch == start_epoch
        batches = iter(train_loader)
        skip = resume["batch"] if resuming else 0
        for _ in range(skip):  # replay the interrupted epoch's order up to where it stopped
            next(batches)
        # The saved partial sums are totals over all ranks: rank 0 carries them on.
        loss_sum, seen = (resume["loss_sum"], resume["seen"]) if resuming and main_process else (0.0, 0)
        model.train()
        for done, batch in enumerate(progress_bar(batches, leave=False, desc=f"Epoch {epoch + 1}/{n_epochs} - Training",
                                                  initial=skip, total=len(train_loader)), start=skip + 1):
            x0 = batch[0].to(device, non_blocking=True)
            if loss_fn is None:
                _, noise, eta_theta = model(x0)
                loss = get_loss(noise, eta_theta)
            else:
                loss = loss_fn(x0)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if ema is not None:
                ema.update(ddpm.backward_process_model)
            loss_sum += loss.item() * len(x0)
            seen += len(x0)
            if should_stop is not None and distributed.any_rank(should_stop(), x0.device):
                total_loss, total_seen = distributed.all_reduce_sum([loss_sum, seen], x0.device)
                save(last_path, dict(epoch=epoch, batch=done, loss_sum=total_loss, seen=int(total_seen)))
                raise TrainingInterrupted(last_path)
        loss_sum, seen = distributed.all_reduce_sum([loss_sum, seen], torch.device(device))
        epoch_train_loss = loss_sum / max(seen, 1)
        epoch_val_loss = evaluate(ddpm, val_loader, device, seed=seed)
        lr = optim.param_groups[0]["lr"]  # the rate this epoch was trained with
        scheduler.step()

        history["train_loss"].append(epoch_train_loss)
        history["val_loss"].append(epoch_val_loss)
        history["lr"].append(lr)
        history["epoch_seconds"].append(time.perf_counter() - start)
        line = (f"Epoch {epoch + 1}/{n_epochs} - Training Loss: {epoch_train_loss:.4f}, "
                f"Validation Loss: {epoch_val_loss:.4f}, Learning Rate: {lr:.6f}, "
                f"Time: {history['epoch_seconds'][-1]:.1f}s")
        progress = dict(epoch=epoch + 1, batch=0, loss_sum=0.0, seen=0)
        if epoch_val_loss < best_loss:
            best_loss = epoch_val_loss
            save(store_path, progress)
            line += " -- saving best model"
        save(last_path, progress)
        log.info(line)
        if loss_curve_path is not None and main_process:
            save_loss_curves(history, loss_curve_path)
    return history


# --------------------------------------------------------------------------- sampling


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of a tidy grid for ``n`` images: as square as possible, no empty row."""
    if n < 1:
        raise ValueError(f"need at least one image, got {n}")
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def to_uint8(images: torch.Tensor, display: str = "clamp") -> torch.Tensor:
    """Map images to uint8 for display.

    ``clamp``: the model's real output, clamped to [-1, 1] and mapped linearly to
    0..255, so a broken model looks broken. ``minmax``: the paper's display
    (Figure 14), each image stretched to its own min and max.
    """
    if display == "clamp":
        scaled = (images.clamp(-1, 1) + 1) * 127.5
    elif display == "minmax":
        flat = images.flatten(1)
        lo = flat.min(1).values.reshape(-1, *[1] * (images.dim() - 1))
        hi = flat.max(1).values.reshape(-1, *[1] * (images.dim() - 1))
        scaled = (images - lo) * (255.0 / (hi - lo).clamp_min(1e-12))
    else:
        raise ValueError(f"display must be one of {DISPLAY_MODES}, got {display!r}")
    return scaled.round().clamp(0, 255).to(torch.uint8)


def tile(images: torch.Tensor, display: str = "clamp") -> np.ndarray:
    """Tile (N, C, H, W) images into one (rows*H, cols*W, C) uint8 array with einops.

    When N is not a perfect square, the grid is padded with black images.
    """
    rows, cols = grid_shape(len(images))
    pixels = to_uint8(images.detach().cpu().float(), display)
    pad = rows * cols - len(pixels)
    if pad:
        pixels = torch.cat([pixels, pixels.new_zeros((pad, *pixels.shape[1:]))])
    return einops.rearrange(pixels, "(b1 b2) c h w -> (b1 h) (b2 w) c", b1=rows).numpy()


def gif_frame_steps(timesteps: int, frames_per_gif: int) -> set[int]:
    """Loop positions (0 = first reverse step) after which a GIF frame is captured.

    ``frames_per_gif`` positions evenly spread over the reverse process, always
    including the last one (the final samples); at most ``timesteps`` frames.
    """
    if frames_per_gif < 1:
        raise ValueError(f"frames_per_gif must be >= 1, got {frames_per_gif}")
    return set(np.linspace(0, timesteps - 1, min(frames_per_gif, timesteps)).round().astype(int).tolist())


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, hold: int, fps: float = 20.0) -> None:
    """Write grey frames (H, W, 1) as an endlessly looping GIF, the last frame repeated ``hold`` times."""
    frames = list(frames) + [frames[-1]] * hold
    imageio.mimsave(path, [f[:, :, 0] for f in frames], format="GIF", duration=1000.0 / fps, loop=0)


def save_grid(images: torch.Tensor, path: str | os.PathLike, display: str = "clamp") -> None:
    """Save a batch of images as one PNG grid at native resolution (Figures 16 and 18)."""
    imageio.imwrite(path, tile(images, display)[:, :, 0], format="PNG")


def sampling_steps(timesteps: int, sampler: str = "ddpm", sample_steps: int | None = None) -> list[int]:
    """The 0-based time steps a sampler visits, from noisiest to cleanest.

    ``ddpm`` (Algorithm 2) visits every step T-1..0. ``ddim`` visits
    ``sample_steps`` steps evenly spaced over 0..T-1, always including T-1 and 0.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sample_steps is None:
        sample_steps = timesteps
    if not 1 <= sample_steps <= timesteps:
        raise ValueError(f"sample_steps must lie in 1..{timesteps}, got {sample_steps}")
    if sampler == "ddpm":
        if sample_steps != timesteps:
            raise ValueError("the DDPM sampler (Algorithm 2) visits every time step: use the DDIM sampler to skip")
        return list(range(timesteps - 1, -1, -1))
    if sample_steps == 1:
        return [timesteps - 1]
    return np.linspace(timesteps - 1, 0, sample_steps).round().astype(int).tolist()


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
    eta: float = 0.0,
) -> torch.Tensor:
    """Generate ``n_samples`` images and return them clamped to [-1, 1] (Figure 14).

    ``sampler="ddpm"`` is Algorithm 2: x_T ~ N(0, I) with the shape
    ``ddpm.image_chw``, then ``ddpm.step`` for t = T-1 .. 0 (0-based).
    ``sampler="ddim"`` uses ``ddpm.ddim_step`` over ``sample_steps`` evenly
    spaced steps with noise scale ``eta`` (0: deterministic).

    With ``gif_name``, ``frames_per_gif`` frames spread across the process are
    tiled into a grid and written as a GIF whose last frame is held for a
    third as many extra frames (the listing's hold sits outside its
    loop and never runs as meant: fixed). With ``grid_path``, the final grid is
    saved as a PNG.

    ``seed`` makes the result reproducible (a private generator draws x_T and
    every z; the global random state is untouched). ``display`` picks how frames
    are drawn (see ``to_uint8``); the returned tensor is always the model's
    output clamped to [-1, 1].
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    steps = sampling_steps(ddpm.timesteps, sampler, sample_steps)
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

    was_training = ddpm.training
    ddpm.eval()
    with torch.no_grad():
        x = noise()  # x_T ~ N(0, I)
        t_batch = torch.empty(n_samples, dtype=torch.long, device=device)
        for idx, t in enumerate(progress_bar(steps, desc=f"Sampling ({sampler})", leave=False)):
            eta_theta = ddpm.backward(x, t_batch.fill_(t))
            if sampler == "ddpm":
                x = ddpm.step(x, t, eta_theta=eta_theta, z=noise() if t > 0 else None).x_prev
            else:
                t_prev = steps[idx + 1] if idx + 1 < len(steps) else -1
                z = noise() if eta > 0 and t_prev >= 0 else None
                x = ddpm.ddim_step(x, t, t_prev, eta_theta=eta_theta, eta=eta, z=z).x_prev
            if idx in frame_steps:
                frames.append(tile(x, display))
    ddpm.train(was_training)

    if gif_name is not None:
        save_gif(frames, gif_name, hold=len(frames) // 3)
    if grid_path is not None:
        save_grid(x, grid_path, display)
    return x.clamp(-1, 1)


# --------------------------------------------------------------------------- figures


def save_loss_curves(history: dict[str, list[float]], path: str | os.PathLike) -> None:
    """Training and validation loss per epoch (Figures 15 and 17)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = range(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], marker=".", color="b", label="Training Loss")
    ax.plot(epochs, history["val_loss"], marker=".", color="r", label="Validation Loss")
    ax.set(title="Loss per Epoch", xlabel="Epoch", ylabel="Loss (Eq. 8)")
    ax.legend()
    ax.grid(True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_forward_process(
    ddpm: DiffusionModel,
    images: torch.Tensor,
    path: str | os.PathLike,
    steps: Sequence[int] = (0, 50, 100, 200, 300, 500, 750, 999),
    seed: int = 0,
) -> None:
    """The forward process of Eq. 4 for a few images at chosen 0-based steps (Figures 7 and 8).

    One row per image, one column per step; the same noise is used for every
    step of a row, so the columns show only the effect of alpha_bar_t.
    """
    steps = [s for s in steps if 0 <= s < ddpm.timesteps]
    if not steps:
        raise ValueError("no step of `steps` lies in 0..T-1")
    images = images.to(ddpm.device)
    gen = torch.Generator(device=ddpm.device).manual_seed(seed)
    noise = torch.randn(images.shape, generator=gen, device=ddpm.device)
    fig = Figure(figsize=(1.5 * len(steps), 1.5 * len(images)))
    axes = fig.subplots(len(images), len(steps), squeeze=False)
    for col, step in enumerate(steps):
        t = torch.full((len(images),), step, device=ddpm.device)
        noisy, _ = ddpm.add_noise(images, t, noise)
        for row in range(len(images)):
            ax = axes[row][col]
            ax.imshow(noisy[row, 0].clamp(-1, 1).cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {step + 1}")  # the paper's 1-based step
    fig.savefig(path, dpi=100, bbox_inches="tight")


def save_embedding_matrix(path: str | os.PathLike, n: int = 64, d: int = 100) -> None:
    """Dot products between the sinusoidal encodings of n positions (Figure 9).

    Entry (i, j) depends only on |i - j| (Eq. 10-11), the relative-distance
    property the paper points out.
    """
    emb = sinusoidal_embedding(n, d)
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    im = ax.imshow((emb @ emb.T).numpy(), cmap="viridis")
    fig.colorbar(im, ax=ax)
    ax.set(title=f"PE(i) . PE(j), {n} positions, d = {d}", xlabel="position j", ylabel="position i")
    fig.savefig(path, dpi=100, bbox_inches="tight")
