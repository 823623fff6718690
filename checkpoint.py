"""Checkpoints: the weights, everything needed to rebuild the model, and the state of a training run.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts,
loaded with ``torch.load(..., weights_only=True)``: data, never code. It is
written atomically (temporary file, then rename), so a kill during a save never
destroys the previous good checkpoint. What it holds:

* ``format``, ``version``: this package's marker;
* ``config``: dataset, image shape, schedule and network (``model_config``), so
  sampling rebuilds the model with no repeated flags;
* ``model``: the ``DiffusionModel``'s ``state_dict`` (network and schedule buffers);
* written by training (``TrainState.save``): ``history`` (per-epoch losses),
  ``progress`` (epoch, batch and partial loss sums of an interrupted epoch),
  ``train_args``, ``optimizer``, ``scheduler``, ``rng`` (every rank's random
  state) and ``ema`` (the averaged weights) when the run keeps one.
"""

from __future__ import annotations

import os
import pickle
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

import distributed
from diffusion_model import DiffusionModel
from ema import EMA
from files import atomic_save, error_text
from unet import make_unet

FORMAT = "ddpm-tutorial-checkpoint"
VERSION = 1


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
    if ddpm.prediction != "eps":  # recorded only when not the paper's, so older configs stay as they were
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
        ddpm = build_model(ckpt["config"], device=device)
        ddpm.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match its own config ({type(exc).__name__}: {exc})") from exc
    return ddpm, ckpt


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


# What --resume compares: the option, and where a run's checkpoint records it.
# A setting that a run's checkpoint does not record (written before it existed) had its paper value.
RUN_SETTINGS = {
    "arch": ("--arch", lambda c: c["config"]["network"]["arch"]),
    "channels": ("--channels", lambda c: c["config"]["network"].get("base_channels")),
    "dropout": ("--dropout", lambda c: c["config"]["network"].get("dropout")),
    "patch_size": ("--patch-size", lambda c: c["config"]["network"].get("patch_size", 1)),
    "timesteps": ("--timesteps", lambda c: c["config"]["timesteps"]),
    "schedule": ("--schedule", lambda c: c["config"].get("schedule", "linear")),
    "prediction": ("--prediction", lambda c: c["config"].get("prediction", "eps")),
    "schedule_shift": ("--schedule-shift", lambda c: c["config"].get("schedule_shift", 1.0)),
    "beta_start": ("--beta-start", lambda c: c["config"]["beta_start"]),
    "beta_end": ("--beta-end", lambda c: c["config"]["beta_end"]),
    "time_emb_dim": ("--time-emb-dim", lambda c: c["config"]["network"]["time_emb_dim"]),
    "loss_weighting": ("--loss-weighting", lambda c: c["train_args"].get("loss_weighting", "none")),
    "snr_gamma": ("--snr-gamma", lambda c: c["train_args"].get("snr_gamma", 5.0)),
    "lr_schedule": ("--lr-schedule", lambda c: c["train_args"].get("lr_schedule", "step")),
    "warmup_steps": ("--warmup-steps", lambda c: c["train_args"].get("warmup_steps", 0)),
    "batch_size": ("--batch-size", lambda c: c["train_args"]["batch_size"]),
    "lr": ("--lr", lambda c: c["train_args"]["lr"]),
    "lr_step": ("--lr-step", lambda c: c["train_args"]["lr_step"]),
    "lr_gamma": ("--lr-gamma", lambda c: c["train_args"]["lr_gamma"]),
    "ema_decay": ("--ema-decay", lambda c: c["train_args"]["ema_decay"]),
    "seed": ("--seed", lambda c: c["train_args"]["seed"]),
    "class_cond": ("--class-cond", lambda c: bool(c["config"]["network"].get("num_classes", 0))),
    "label_drop": ("--label-drop", lambda c: c["train_args"].get("label_drop", 0.1)),
}


def changed_settings(ckpt: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """``"--lr 0.0005 (the run: 0.001)"`` for every run-defining setting that differs from the run's."""
    changed = []
    for key, (flag, recorded) in RUN_SETTINGS.items():
        if settings.get(key) is None:  # an option left unset (--channels, --dropout) takes the run's value
            continue
        try:
            saved = recorded(ckpt)
        except KeyError:
            saved = None
        if settings[key] != saved:
            changed.append(f"{flag} {settings[key]} (the run: {saved})")
    return changed


def rescale_position(ckpt: dict[str, Any], global_batch: int, n_batches: int) -> dict[str, Any]:
    """The saved position inside an epoch, in batches of ``global_batch`` images instead of the run's.

    At most ``n_batches``, the new loader's length (each rank's share is padded, so the counts differ).
    """
    progress = dict(ckpt["progress"])
    args = ckpt["train_args"]
    seen_images = progress["batch"] * args["batch_size"] * args["world_size"]
    progress["batch"] = min(seen_images // global_batch, n_batches)
    return progress


def checkpoints_in(folder: Path) -> list[Path]:
    """The runs in ``folder``: each ``ddpm_<name>.pt`` (known from its best or its ``_last`` file), sorted."""
    names = {p.name[: -len("_last.pt")] + ".pt" if p.name.endswith("_last.pt") else p.name
             for p in Path(folder).glob("ddpm_*.pt")}
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


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs; they are delivered, in order, when it ends.

    So a Ctrl-C (a second one too) during a checkpoint save waits for the
    complete file instead of leaving none. Python runs signal handlers in the
    main thread whichever thread the signal reached, so the handlers are swapped
    for a recorder (blocking the signal would hold back only the calling
    thread's share). A no-op outside the main thread, where handlers cannot be set.
    """
    received: list[int] = []
    try:
        previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in received:
            signal.raise_signal(signum)


@dataclass
class TrainState:
    """Everything a training run carries from one step to the next, with its one save and one restore.

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
