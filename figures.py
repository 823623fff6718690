"""The paper's figures and how images are displayed, written to PNG and GIF files.

Every figure is drawn with matplotlib's object API (``matplotlib.figure.Figure``),
which never opens a window and needs no interactive backend; sample grids and
GIF frames are tiled with einops and written with imageio.

* ``to_uint8`` / ``tile``: how samples are shown (``clamp``: the real output;
  ``minmax``: the paper's per-image stretch), any number of them on a grid.
* ``save_grid``, ``save_gif``: Figures 16 and 18 (sample grids) and 19 (the GIF).
* ``save_dataset_samples`` (Figures 2 and 5), ``save_forward_process`` (7 and 8),
  ``save_embedding_matrix`` (9), ``save_loss_curves`` (15 and 17).
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence, Union

import einops
import imageio.v2 as imageio
import numpy as np
import torch
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset

from diffusion_model import DiffusionModel
from files import PathLike, write_atomic
from unet import sinusoidal_embedding

logger = logging.getLogger(__name__)

DISPLAY_MODES = ("clamp", "minmax")


# --------------------------------------------------------------------------- display


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


def tile(images: torch.Tensor, display: str = "clamp", cols: int | None = None) -> np.ndarray:
    """Tile (N, C, H, W) images into one (rows*H, cols*W, C) uint8 array with einops.

    ``cols`` images per row (default: as square as possible, ``grid_shape``); a
    grid with more cells than images is padded with black images.
    """
    rows, cols = grid_shape(len(images)) if cols is None else (math.ceil(len(images) / cols), cols)
    pixels = to_uint8(images.detach().cpu().float(), display)
    pad = rows * cols - len(pixels)
    if pad:
        pixels = torch.cat([pixels, pixels.new_zeros((pad, *pixels.shape[1:]))])
    return einops.rearrange(pixels, "(b1 b2) c h w -> (b1 h) (b2 w) c", b1=rows).numpy()


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike, hold: int, fps: float = 20.0) -> None:
    """Write grey frames (H, W, 1) as an endlessly looping GIF, the last frame repeated ``hold`` times."""
    frames = list(frames) + [frames[-1]] * hold
    buffer = io.BytesIO()
    imageio.mimsave(buffer, [f[:, :, 0] for f in frames], format="GIF", duration=1000.0 / fps, loop=0)
    write_atomic(path, buffer.getvalue())


def save_sampling_gif(frames: Sequence[torch.Tensor], path: str | os.PathLike, display: str = "clamp",
                      cols: int | None = None) -> None:
    """The reverse process as a GIF (Figure 14): each frame (a batch of images) tiled into a grid, the last
    held for a third as many extra frames (the listing's hold sits outside its loop and never runs: fixed)."""
    save_gif([tile(frame, display, cols) for frame in frames], path, hold=len(frames) // 3)


def save_grid(images: torch.Tensor, path: str | os.PathLike, display: str = "clamp", cols: int | None = None) -> None:
    """Save a batch of images as one PNG grid at native resolution (Figures 16 and 18), ``cols`` per row."""
    buffer = io.BytesIO()
    imageio.imwrite(buffer, tile(images, display, cols)[:, :, 0], format="PNG")
    write_atomic(path, buffer.getvalue())



# --------------------------------------------------------------------------- figures


def save_figure(fig: Figure, path: PathLike, **options: Any) -> None:
    """``fig`` as a PNG at ``path``, rendered in memory and written with ``files.write_atomic``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **options)
    write_atomic(path, buffer.getvalue())


def _as_dataset(data: Union[Dataset, DataLoader]) -> Dataset:
    """The dataset behind a loader (indexed directly, so a seeded loader's shuffle order is untouched)."""
    return data.dataset if isinstance(data, DataLoader) else data


def save_dataset_samples(
    train_data: Union[Dataset, DataLoader],
    val_data: Union[Dataset, DataLoader],
    path: PathLike,
    n: int = 8,
    columns: int = 8,
) -> Path:
    """Save a grid of the first ``n`` training and ``n`` validation samples to a PNG (Figures 2 and 5).

    Each image is shown from [-1, 1] mapped to [0, 1], titled with its label.
    Uses ``matplotlib.figure.Figure`` (Agg rendering, no pyplot, no window).
    Returns the path written; raises ``DatasetError`` if it cannot be written.
    """
    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be at least 1, got n={n}, columns={columns}")
    splits: Sequence[tuple[str, Dataset]] = (("train", _as_dataset(train_data)), ("validation", _as_dataset(val_data)))
    counts = [min(n, len(ds)) for _, ds in splits]
    cols = max(1, min(columns, max(counts)))
    rows_per_split = [max(1, -(-c // cols)) for c in counts]
    fig = Figure(figsize=(1.3 * cols, 1.5 * sum(rows_per_split)))
    axes = fig.subplots(sum(rows_per_split), cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    row0 = 0
    for (split, ds), count, rows in zip(splits, counts, rows_per_split):
        for i in range(count):
            image, label = ds[i]
            ax = axes[row0 + i // cols][i % cols]
            picture = ((torch.as_tensor(image).float() + 1) / 2).clamp(0, 1)
            ax.imshow(picture.squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{split} {int(label)}", fontsize=8)
        row0 += rows
    fig.tight_layout()
    save_figure(fig, path)
    logger.info("saved dataset samples to %s", path)
    return Path(path)


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
    save_figure(fig, path, dpi=100, bbox_inches="tight")


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
    save_figure(fig, path, dpi=100, bbox_inches="tight")


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
    save_figure(fig, path, dpi=100, bbox_inches="tight")
