"""Checkpoints: the weights plus everything needed to rebuild the model.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts,
loaded with ``torch.load(..., weights_only=True)``: data, never code. It is
written atomically (temporary file, then rename), so a kill during a save never
destroys the previous good checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffusion_model import DiffusionModel
from unet import MyUNet

FORMAT = "ddpm-tutorial-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or from another version. The message is for users."""


def model_config(dataset: str, ddpm: DiffusionModel) -> dict[str, Any]:
    """The config that rebuilds ``ddpm``: dataset, image shape, schedule and network."""
    net_cfg = getattr(ddpm.backward_process_model, "config", None)
    if net_cfg is None:
        raise TypeError("only networks with a config (MyUNet) can be checkpointed")
    return dict(
        dataset=dataset,
        image_chw=list(ddpm.image_chw),
        timesteps=ddpm.timesteps,
        beta_start=ddpm.beta_start,
        beta_end=ddpm.beta_end,
        network=dict(net_cfg),
    )


def build_model(config: dict[str, Any], device: torch.device | str | None = None) -> DiffusionModel:
    """Build an untrained ``DiffusionModel`` from a ``model_config`` dict."""
    net = MyUNet(**config["network"])
    return DiffusionModel(
        net,
        beta_start=config["beta_start"],
        beta_end=config["beta_end"],
        timesteps=config["timesteps"],
        image_chw=tuple(config["image_chw"]),
        device=device,
    )


def save_checkpoint(path: str | os.PathLike, ddpm: DiffusionModel, config: dict[str, Any], **extra: Any) -> None:
    """Write ``{format, version, config, model, **extra}`` to ``path`` atomically."""
    atomic_save(dict(format=FORMAT, version=VERSION, config=config, model=ddpm.state_dict(), **extra), path)


def atomic_save(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[DiffusionModel, dict[str, Any]]:
    """Load a checkpoint and rebuild its model on ``device``; returns ``(ddpm, checkpoint_dict)``.

    Raises ``CheckpointError`` with a one-line message when the file is missing,
    is not a checkpoint of this package, is of another version, or is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling errors, truncated zips, foreign pickles
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this package (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')!r}; this package reads version {VERSION}"
        )
    try:
        ddpm = build_model(ckpt["config"], device=device)
        ddpm.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match its own config ({type(exc).__name__}: {exc})") from exc
    return ddpm, ckpt
