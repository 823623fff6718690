"""--resume: which file a run continues from, which options must match it, and restoring its state.

A run continues from its ``_last`` checkpoint (the state after the last finished
epoch, or where a stop request saved it), else from its best one. Every model and
training option given on the command line must equal the run's
(``config.changed_settings``); the options not given are the run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

import distributed
from checkpoint import CheckpointError, last_checkpoint_path, load_checkpoint
from config import SettingError, changed_settings
from diffusion_model import DiffusionModel
from fastpath import describe, restore_optimizer
from utils import TrainState, rescale_position

log = logging.getLogger("ddpm")


class ResumeRefused(Exception):
    """The run cannot go on as asked; the message is one line for users."""


def resume_point(checkpoint: Path, device: torch.device, dataset: str | None, given: Mapping[str, Any],
                 recipe: str | None = None) -> tuple[DiffusionModel, dict[str, Any], Path]:
    """The model, checkpoint dict and file that --resume continues: ``checkpoint``'s ``_last`` file, else it.

    ``dataset``, ``recipe`` (None: any) and the options ``given`` (None: not given) must match
    the run's; else ``ResumeRefused`` lists every difference. A corrupt ``_last``
    beside a readable best checkpoint is refused with the file to move away.
    """
    last = last_checkpoint_path(checkpoint)
    used = last
    if not last.is_file() and checkpoint.is_file():
        used = checkpoint
    try:
        ddpm, ckpt = load_checkpoint(used, device)
    except CheckpointError as exc:
        if used == last and checkpoint.is_file():
            raise CheckpointError(f"{exc}; to resume from the best checkpoint {checkpoint} instead (the state "
                                  f"after its epoch), move {last} away, e.g. to {last}.bad") from None
        raise
    if "progress" not in ckpt:
        raise ResumeRefused(f"{used} holds no training state to resume from")
    if used != last:  # (only for a file that holds a training state)
        log.warning("%s is missing (a save was interrupted?): resuming from the best checkpoint %s, "
                    "the state after its epoch", last, checkpoint)
    if dataset not in (None, ckpt["config"]["dataset"]):
        raise ResumeRefused(f"cannot resume {used}: it is a {ckpt['config']['dataset']} run, not {dataset}")
    try:
        changed = changed_settings(ckpt, given)
    except SettingError as exc:
        raise CheckpointError(f"{used} records settings this package refuses: {exc}") from None
    run_recipe = ckpt.get("train_args", {}).get("recipe", "default")
    if recipe not in (None, run_recipe):
        changed.insert(0, f"--recipe {recipe} (the run: {run_recipe})")
    if changed:
        raise ResumeRefused(f"cannot resume {used}: {', '.join(changed)}; resume with the run's settings, or "
                            "train a new run into another --out-dir")
    return ddpm, ckpt, used


def continue_run(state: TrainState, saved: dict[str, Any], parts: frozenset[str], n_batches: int,
                 used: Path) -> None:
    """Restore a resumed run into ``state``, warning where it no longer repeats an uninterrupted run exactly.

    ``n_batches``: the new training loader's length (a saved position is rescaled to it
    when the number of processes changed).
    """
    recorded = saved["train_args"]
    if recorded.get("world_size") != distributed.world_size():
        log.warning("Resuming a run of %s process(es) with %d: it goes on from the saved state, but no longer "
                    "repeats an uninterrupted run exactly (the global batch and the shard order change)",
                    recorded.get("world_size"), distributed.world_size())
        saved["progress"] = rescale_position(saved, recorded["batch_size"] * distributed.world_size(), n_batches)
    if sorted(parts) != recorded.get("fast_parts", []):
        log.warning("Resuming with fast-path parts %s; the run was trained with %s: the rest of the run "
                    "will not repeat an uninterrupted one exactly", describe(parts),
                    describe(recorded.get("fast_parts", [])))
    state.restore(saved, load_optimizer=restore_optimizer)
    log.info("Resuming %s from epoch %d, batch %d", used, state.epoch + 1, state.batch)
