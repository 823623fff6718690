"""What a --sample, --evaluate or --export call asks for, resolved from the command line.

The model (a checkpoint, with its EMA weights unless --no-ema, or an --export
folder), the sampler with its options (``samplers.make_sampler``), the labels of
a class-conditional draw and its guidance (the dataset's measured default for
what is not given). Every refusal is a ``cli.UsageError`` of one line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from checkpoint import CheckpointError, checkpoints_in, load_for_sampling
from cli import UsageError, sampler_options
from config import DEFAULT_DATASET, dataset_info
from diffusion_model import DiffusionModel
from export import load_exported
from samplers import Sampler, class_labels, guidance_setting, make_sampler

log = logging.getLogger("ddpm")


def open_model(args: argparse.Namespace, device: torch.device,
               checkpoint: Path) -> tuple[DiffusionModel, dict[str, Any], Sampler, Path]:
    """The checkpoint's model (EMA weights unless --no-ema), the checkpoint dict, the sampler asked for, the file."""
    try:
        if checkpoint.is_dir():  # an --export folder: its weights as exported
            (ddpm, config), used = load_exported(checkpoint, device), checkpoint
            ckpt = dict(config=config, train_args=config.get("train_args", {}))
            log.info("Using the %s weights exported to %s", config.get("weights", "exported"), checkpoint)
        else:
            ddpm, ckpt, used = load_for_sampling(checkpoint, device, use_ema=not args.no_ema)
    except CheckpointError as exc:
        if not checkpoint.exists():
            others = ", ".join(p.name for p in checkpoints_in(checkpoint.parent))
            raise UsageError(f"{exc}{f' ({checkpoint.parent} holds {others})' if others else ''}; train one first: "
                             f"python main.py --dataset {args.dataset or DEFAULT_DATASET} --train (or pass "
                             "--checkpoint PATH)") from exc
        raise
    dataset, steps, timesteps = ckpt["config"]["dataset"], args.sample_steps, ddpm.timesteps
    if steps is not None and not 1 <= steps <= timesteps:
        raise UsageError(f"--sample-steps must lie in 1..{timesteps} (the checkpoint's T), got {steps}")
    if args.dataset not in (None, dataset):
        raise UsageError(f"--dataset {args.dataset}, but {used} is a {dataset} model: drop --dataset or pass the "
                         f"checkpoint of a {args.dataset} model")
    try:
        sampler = make_sampler(args.sampler, ddpm, args.sample_steps, **sampler_options(args))
    except ValueError as exc:
        raise UsageError(f"--sampler {args.sampler}: {exc}") from None
    return ddpm, ckpt, sampler, used


def requested_labels(args: argparse.Namespace, ddpm: DiffusionModel, used: Path) -> tuple[torch.Tensor | None, int | None]:
    """--sample's labels and images per grid row (``samplers.class_labels``); None, None when unconditional.
    --digit or --guidance-interval with an unconditional checkpoint is a ``UsageError``."""
    if ddpm.num_classes:
        return class_labels(args.n_samples, ddpm.num_classes, args.digit)
    for flag, value in (("--digit", args.digit), ("--guidance-interval", args.guidance_interval)):
        if value is not None:
            raise UsageError(f"{flag} needs a class-conditional checkpoint; {used} is unconditional "
                             "(train one with --class-cond)")
    return None, None


def guidance_of(args: argparse.Namespace, ddpm: DiffusionModel, dataset: str) -> tuple[float, tuple[int, int] | None]:
    """--guidance and --guidance-interval, the dataset's measured setting for what is not given."""
    info = dataset_info(dataset)
    try:
        return guidance_setting(args.guidance, args.guidance_interval, info.guidance, info.guidance_share,
                                ddpm.timesteps)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
