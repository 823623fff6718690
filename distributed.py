"""Where a run computes: the device, and under torchrun the process group, rank checks and collectives.

Without torchrun (no ``WORLD_SIZE`` in the environment) every helper here is a
no-op for a single process, so the rest of the package does not branch on it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from progress import LoggedProgress, is_terminal, log_interval


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) has set RANK / WORLD_SIZE / LOCAL_RANK."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes checkpoints, figures and logs and shows progress bars."""
    return rank() == 0


def resolve_device(name: str = "auto") -> torch.device:
    """The device of a single process: ``auto`` means CUDA when available (the paper trains on CUDA), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


def setup(device_name: str) -> torch.device:
    """Join the process group torchrun prepared (NCCL on CUDA, gloo on CPU); return this rank's device."""
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA device")
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers over all ranks (identity in a single process)."""
    if not is_distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks stop together)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class MainProcessFailed(Exception):
    """Raised on the other ranks when rank 0 failed in ``main_process_first``."""


def main_process_first(prepare: Callable[[], None]) -> None:
    """Run ``prepare`` on rank 0 alone while the other ranks wait, then go on together.

    For what one process must do before the others start (check output paths,
    download the data, draw figures). If it raises on rank 0, rank 0 re-raises
    it and every other rank raises ``MainProcessFailed``, so no rank is left
    waiting for a collective that never comes. A no-op wrapper in one process.
    """
    if not is_distributed():
        prepare()
        return
    error: BaseException | None = None
    if is_main_process():
        try:
            prepare()
        except BaseException as exc:  # Ctrl-C too: shared with the other ranks below, then re-raised
            error = exc
    failed = [error is not None]
    dist.broadcast_object_list(failed, src=0)  # the other ranks wait here for rank 0
    if error is not None:
        raise error
    if failed[0]:
        raise MainProcessFailed("rank 0 failed to prepare the run (its error is above); stopping this rank too")


def progress_bar(iterable: Any, logger: logging.Logger | None = None, **kwargs: Any) -> Iterable:
    """Progress over ``iterable``, shown by rank 0 only and hidden when ``TQDM_DISABLE`` is set (``main.py --quiet``).

    On a terminal (stderr, or tqdm's ``file``): a tqdm bar. Elsewhere (a log file, a pipe): no bar and no
    escape codes, but ``progress.LoggedProgress``, one line through ``logger`` (default ``ddpm``) every
    ``DDPM_PROGRESS_SECONDS`` (default: a few minutes). The variables are read at each call (tqdm itself
    reads ``TQDM_DISABLE`` once, at import).
    """
    if not is_main_process() or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
    if kwargs.get("disable") or is_terminal(kwargs.get("file", sys.stderr)):
        return tqdm(iterable, **kwargs)
    # tqdm.auto's bar calls iter(iterable) once when built, which for a shuffling DataLoader draws a seed
    # from torch's generator; so does this branch, so that a run's random stream (the judge's batches)
    # does not depend on whether stderr is a terminal.
    iter(iterable)
    return LoggedProgress(iterable, desc=kwargs.get("desc"), total=kwargs.get("total"),
                          initial=kwargs.get("initial", 0), interval=log_interval(), logger=logger)
