"""What a --sample, --evaluate, --export or --distill call asks for, resolved from the command line.

The data loaders with the command line's data options (``load_data``), the
model (a checkpoint, with its EMA weights unless --no-ema, or an --export
folder), the sampler with its options (``samplers.make_sampler``; a distilled
checkpoint's own by default), the labels of a class-conditional draw and its
guidance (the dataset's measured default for what is not given; a distilled
student's is built in). Every refusal is a ``cli.UsageError`` of one line.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

import distributed
from checkpoint import CheckpointError, checkpoints_in, load_for_sampling
from cli import UsageError, sampler_options, seed_of
from config import DATA_BATCH_SIZE, DEFAULT_DATASET, dataset_info
from Dataset import get_data_loaders
from diffusion_model import DiffusionModel
from export import load_exported
from samplers import SAMPLERS, Sampler, class_labels, describe_guidance, guidance_setting, make_sampler

log = logging.getLogger("ddpm")


def load_data(args: argparse.Namespace, device: torch.device, dataset: str, batch_size: int = DATA_BATCH_SIZE,
              seed: int | None = None):
    """Train and validation loaders of ``dataset`` with the CLI's data options (split by ``seed``, else --seed)."""
    return get_data_loaders(dataset, batch_size, args.data_root, seed=seed_of(args) if seed is None else seed,
                            rank=distributed.rank(), world_size=distributed.world_size(),
                            num_workers=args.num_workers, device=device, persian_zip=args.persian_zip,
                            extract_dir=args.extract_dir, skip_bad_files=args.skip_bad_files,
                            zip_max_bytes=args.zip_max_bytes, zip_max_ratio=args.zip_max_ratio)


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
    distilled, name = ckpt["config"].get("distillation"), args.sampler
    if distilled and not ddpm.num_classes and args.digit is not None:
        raise UsageError(f"--digit needs a class-conditional checkpoint; {used} is the student of an unconditional "
                         "teacher (distill a model trained with --class-cond)")
    if distilled and (name is None or SAMPLERS[name].student_grid):  # a student of --distill: its grid and steps
        name, steps = name or "distilled", distilled["steps"] if steps is None else steps
        log.info("%s is a %d-step student of progressive distillation (teacher %s%s)", used, distilled["steps"],
                 distilled.get("teacher"), "" if distilled.get("guidance") is None else
                 f", {describe_guidance(distilled['guidance'], distilled.get('guidance_interval'))} distilled in")
        if steps != distilled["steps"]:
            log.warning("Sampling the %d-step student with %d steps: it learned %d", distilled["steps"], steps,
                        distilled["steps"])
    elif distilled:
        log.warning("%s is a %d-step student of progressive distillation: --sampler %s samples it on that "
                    "sampler's own steps, not on the grid it learned (--sampler distilled)", used, distilled["steps"],
                    name)
    try:
        sampler = make_sampler(name or "ddpm", ddpm, steps, **sampler_options(args))
    except ValueError as exc:
        raise UsageError(f"--sampler {name or 'ddpm'}: {exc}") from None
    return ddpm, ckpt, sampler, used


def requested_labels(args: argparse.Namespace, ddpm: DiffusionModel, used: Path) -> tuple[torch.Tensor | None, int | None]:
    """--sample's labels and images per grid row (``samplers.class_labels``); None, None when unconditional.
    --digit, --guidance or --guidance-interval with an unconditional checkpoint is a ``UsageError``."""
    if ddpm.num_classes:
        return class_labels(args.n_samples, ddpm.num_classes, args.digit)
    for flag, value in (("--digit", args.digit), ("--guidance", args.guidance),
                        ("--guidance-interval", args.guidance_interval)):
        if value is not None:
            raise UsageError(f"{flag} needs a class-conditional checkpoint; {used} is unconditional "
                             "(train one with --class-cond)")
    return None, None


def guidance_of(args: argparse.Namespace, ddpm: DiffusionModel, dataset: str,
                ckpt: dict[str, Any] | None = None) -> tuple[float, tuple[int, int] | None]:
    """--guidance and --guidance-interval, the dataset's measured setting for what is not given.

    A class-conditional student of --distill (``ckpt``) learned its teacher's guided output: it samples with
    W = 1 (one pass a step), and refuses a guidance of its own.
    """
    distilled = (ckpt or {}).get("config", {}).get("distillation")
    if distilled and ddpm.num_classes:
        if args.guidance is not None or args.guidance_interval is not None:
            raise UsageError(f"--guidance and --guidance-interval: this student has its teacher's guidance distilled "
                             f"in ({describe_guidance(distilled['guidance'], distilled.get('guidance_interval'))}); "
                             f"drop them, or sample its teacher {distilled.get('origin')} with them")
        return 1.0, None
    info = dataset_info(dataset)
    try:
        return guidance_setting(args.guidance, args.guidance_interval, info.guidance, info.guidance_share,
                                ddpm.timesteps)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
