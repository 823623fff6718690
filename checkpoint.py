"""Checkpoints: the weights, everything needed to rebuild the model, and the state of a training run.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts,
loaded with ``torch.load(..., weights_only=True)``: data, never code. It is
written atomically (temporary file, then rename), so a kill during a save never
destroys the previous good checkpoint. What it holds:

* ``format``, ``version``: this package's marker;
* ``config``: dataset, image shape, schedule and network (``model_config``), so
  sampling rebuilds the model with no repeated flags;
* ``model``: the ``DiffusionModel``'s ``state_dict`` (network and schedule buffers);
* a student of ``--distill`` (``distill.py``): ``config["distillation"]``, its steps, teacher and rounds;
* written by training (``TrainState.save``): ``history`` (per-epoch losses),
  ``progress`` (epoch, batch and partial loss sums of an interrupted epoch),
  ``train_args``, ``optimizer``, ``scheduler``, ``rng`` (every rank's random
  state) and ``ema`` (the averaged weights) when the run keeps one.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from config import DATASETS, ModelSettings, SettingError, check_network_config
from diffusion_model import DiffusionModel
from files import atomic_save, error_text
from unet import make_unet

log = logging.getLogger("ddpm")

FORMAT = "ddpm-tutorial-checkpoint"
VERSION = 1
STUDENT_NAME = re.compile(r"_distilled\d+$")  # the stem of a --distill student: <run>_distilled<N>


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or from another version. The message is for users."""


def model_config(dataset: str, ddpm: DiffusionModel) -> dict[str, Any]:
    """The config that rebuilds ``ddpm``: dataset, image shape, schedule and network."""
    net_cfg = getattr(ddpm.backward_process_model, "config", None)
    if net_cfg is None:
        raise TypeError("only networks with a config (MyUNet, ResAttnUNet) can be checkpointed")
    config = dict(
        dataset=dataset,
        image_chw=list(ddpm.image_chw),
        timesteps=ddpm.timesteps,
        beta_start=ddpm.beta_start,
        beta_end=ddpm.beta_end,
        schedule=ddpm.schedule,
        network=dict(net_cfg),
    )
    if ddpm.prediction != "eps":  # recorded only when not the paper's (config.ModelSettings.model_config)
        config["prediction"] = ddpm.prediction
    if ddpm.schedule_shift != 1.0:
        config["schedule_shift"] = ddpm.schedule_shift
    return config


def build_model(config: dict[str, Any], device: torch.device | str | None = None) -> DiffusionModel:
    """Build an untrained ``DiffusionModel`` from a ``model_config`` dict."""
    net = make_unet(**config["network"])
    return DiffusionModel(
        net,
        beta_start=config["beta_start"],
        beta_end=config["beta_end"],
        timesteps=config["timesteps"],
        image_chw=tuple(config["image_chw"]),
        device=device,
        schedule=config.get("schedule", "linear"),  # checkpoints before the cosine schedule: linear
        prediction=config.get("prediction", "eps"),
        schedule_shift=config.get("schedule_shift", 1.0),
    )


def save_checkpoint(path: str | os.PathLike, ddpm: DiffusionModel, config: dict[str, Any], **extra: Any) -> None:
    """Write ``{format, version, config, model, **extra}`` to ``path`` atomically."""
    atomic_save(dict(format=FORMAT, version=VERSION, config=config, model=ddpm.state_dict(), **extra), path)


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[DiffusionModel, dict[str, Any]]:
    """Load a checkpoint and rebuild its model on ``device``; returns ``(ddpm, checkpoint_dict)``.

    Raises ``CheckpointError`` with a one-line message when the file is missing,
    is not a checkpoint of this package, is of another version, or is corrupt.
    """
    path = Path(path)
    ckpt = _read(path, device)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this package (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt.get('version')!r}; this package reads version {VERSION}"
        )
    try:
        check_config(ckpt.get("config"))
    except (SettingError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} asks for a model this package refuses to build: {error_text(exc)}") from None
    try:
        ddpm = build_model(ckpt["config"], device=device)
        ddpm.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match its own config ({type(exc).__name__}: {exc})") from exc
    return ddpm, ckpt


def check_config(config: Any) -> None:
    """A checkpoint's config within what the command line accepts (``config.LIMITS``), before any allocation.

    ``SettingError`` (or ``KeyError`` / ``TypeError`` for a malformed dict) otherwise.
    """
    if not isinstance(config, dict) or not isinstance(config.get("network"), dict):
        raise SettingError("its config is not a dict with a network")
    if config.get("dataset") not in DATASETS:
        raise SettingError(f"unknown dataset {config.get('dataset')!r}")
    ModelSettings.from_config(config)  # the schedule's and the network's settings, as the CLI checks them
    net = config["network"]
    check_network_config(net)
    shape = [net.get("in_channels", 1), net["image_size"], net["image_size"]]
    if list(config["image_chw"]) != shape:
        raise SettingError(f"image_chw {config['image_chw']!r} differs from its network's {shape}")
    if "distillation" in config:  # a student of --distill: the steps it samples with
        steps = config["distillation"].get("steps") if isinstance(config["distillation"], dict) else None
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= config["timesteps"]:
            raise SettingError(f"its distillation steps must be an integer in 1..{config['timesteps']}, got {steps!r}")


def load_for_sampling(path: Path, device: torch.device | str, use_ema: bool = False,
                      ) -> tuple[DiffusionModel, dict[str, Any], Path]:
    """The model of ``path`` for --sample / --evaluate, with its EMA weights when ``use_ema`` and present.

    Where only the ``_last`` file of a run exists (stopped in its first epoch), that
    one is used, and the log says so. Returns ``(ddpm, checkpoint dict, file used)``.
    """
    path = Path(path)
    last = last_checkpoint_path(path)
    if not path.exists() and last.is_file():
        log.warning("%s does not exist yet (the run has not finished an epoch that improved on the last): "
                    "sampling its last state %s", path, last)
        path = last
    ddpm, ckpt = load_checkpoint(path, device)
    if use_ema and "ema" in ckpt:
        ddpm.backward_process_model.load_state_dict(ckpt["ema"]["model"])
        log.info("Using the EMA weights (decay %s) of %s", ckpt["ema"]["decay"], path)
    else:
        log.info("Using the raw weights of %s", path)
    return ddpm, ckpt, path


def _read(path: Path, device: torch.device | str) -> Any:
    """``torch.load(weights_only=True)`` of ``path``, every failure told in this package's words."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: pass the .pt file in it")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is an empty file, not a checkpoint (an interrupted copy?)")
    with open(path, "rb") as f:
        written_by_torch = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if not written_by_torch:
        raise CheckpointError(f"{path} is not a checkpoint of this package (not a file written by torch.save)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(f"{path} refused: it holds Python objects that could run code when loaded; "
                                  "this package's checkpoints hold data only, so do not load this file") from None
        raise CheckpointError(f"{path} is not a readable checkpoint: it is corrupt ({error_text(exc)})") from None
    except Exception as exc:  # truncated or damaged zips raise RuntimeError and others
        raise CheckpointError(f"{path} is not a readable checkpoint: it is truncated or corrupt "
                              f"({error_text(exc, 120)})") from None


def checkpoints_in(folder: Path) -> list[Path]:
    """The runs in ``folder``: each ``ddpm_<name>.pt`` (known from its best or its ``_last`` file), sorted.

    The students of --distill (``<run>_distilled<N>.pt``) are not runs: they are sampled with --checkpoint.
    """
    names = {p.name[: -len("_last.pt")] + ".pt" if p.name.endswith("_last.pt") else p.name
             for p in Path(folder).glob("ddpm_*.pt") if not STUDENT_NAME.search(p.stem)}
    return sorted(Path(folder) / name for name in names)


def find_checkpoint(folder: Path) -> Path:
    """The one run in ``folder``; a ``CheckpointError`` that says what to do when there is none or several."""
    runs = checkpoints_in(folder)
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise CheckpointError(f"no checkpoint in {folder}; train one first: python main.py --dataset mnist --train "
                              "(or pass --checkpoint PATH)")
    raise CheckpointError(f"{folder} holds several checkpoints ({', '.join(p.name for p in runs)}): "
                          "pass --dataset NAME or --checkpoint PATH")


def refuse_to_replace(checkpoint: Path) -> None:
    """A new training would replace the run at ``checkpoint`` (best or last file there): a ``CheckpointError``."""
    if checkpoint.exists() or last_checkpoint_path(checkpoint).exists():
        raise CheckpointError(f"{checkpoint} already holds a run: continue it with --resume (and a larger --epochs), "
                              "train into another --out-dir, or pass --overwrite to replace it")


def last_checkpoint_path(store_path: str | os.PathLike) -> Path:
    """Where the last (resumable) state lives beside the best checkpoint: ``<stem>_last<suffix>``."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.stem}_last{store_path.suffix}")


