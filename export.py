"""Weights to share: a folder with ``model.safetensors`` and ``config.json``, the Hugging Face layout.

``model.safetensors`` holds the ``DiffusionModel``'s state dict (network and
schedule buffers) as plain tensors: no pickle, so loading it runs no code, and
any safetensors reader opens it without this package. ``config.json`` holds the
model config of ``checkpoint.model_config`` (dataset, image shape, schedule,
network) at its top level, so ``checkpoint.build_model`` rebuilds the network
from it, beside what else the exporter records (the training arguments, say).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from checkpoint import CheckpointError, build_model, check_config
from config import SettingError
from diffusion_model import DiffusionModel
from files import error_text, write_atomic, write_json

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "ddpm-tutorial-export"
VERSION = 1


def export_model(ddpm: DiffusionModel, config: dict[str, Any], folder: str | os.PathLike, *,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``ddpm``'s weights as they are (load the EMA weights first to share those) and ``config``
    (a ``checkpoint.model_config`` dict) with ``extra``'s entries to ``folder``; returns the folder.

    Each file is written atomically (``files.write_atomic``); ``extra`` may not reuse a config key.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & (set(config) | {"format", "version"}))
    if clash:
        raise ValueError(f"extra entries {clash} would replace the model config's own")
    folder = Path(folder)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in ddpm.state_dict().items()}
    write_atomic(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    write_json(folder / CONFIG_NAME, dict(format=FORMAT, version=VERSION, **config, **extra))
    return folder


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of an exported model; a one-line ``CheckpointError`` when it is missing, not a JSON object,
    or marked as another format or version (a config without the marker, written by hand, is read)."""
    path = Path(folder) / CONFIG_NAME
    _require(path)
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({error_text(exc, 120)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not the object of a model config")
    if (config.get("format", FORMAT), config.get("version", VERSION)) != (FORMAT, VERSION):
        raise CheckpointError(f"{path} is marked {config.get('format')!r} version {config.get('version')!r}; "
                              f"this package reads {FORMAT!r} version {VERSION}")
    return config


def load_exported(folder: str | os.PathLike,
                  device: torch.device | str = "cpu") -> tuple[DiffusionModel, dict[str, Any]]:
    """Rebuild the model that ``export_model`` wrote to ``folder`` on ``device``; returns ``(ddpm, config)``.

    Every failure (a missing folder or file, bad JSON, a config that builds no model, weights that do not
    match it) is a ``CheckpointError`` with a one-line message.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no exported model at {folder}: an exported model is a folder with "
                              f"{WEIGHTS_NAME} and {CONFIG_NAME}")
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    _require(weights)
    try:
        check_config(config)  # the command line's bounds, before anything is allocated
        ddpm = build_model(config, device=device)
    except (KeyError, TypeError, ValueError, SettingError) as exc:
        raise CheckpointError(f"{folder / CONFIG_NAME} does not describe a model of this package "
                              f"({error_text(exc, 120)})") from None
    try:
        tensors = load_file(weights, device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({error_text(exc, 120)})") from None
    mismatch = describe_mismatch(ddpm.state_dict(), tensors)
    if mismatch:
        raise CheckpointError(f"{weights} does not match {CONFIG_NAME}: {mismatch}")
    ddpm.load_state_dict(tensors)
    return ddpm, config


def describe_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], shown: int = 3) -> str:
    """What differs between a model's state dict and loaded tensors (names, shapes), in one line; empty when
    they match."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")

    checks = (
        ("missing", [k for k in expected if k not in found]),
        ("unexpected", [k for k in found if k not in expected]),
        ("another shape", [f"{k} {tuple(found[k].shape)} for {tuple(expected[k].shape)}"
                           for k in expected if k in found and found[k].shape != expected[k].shape]),
    )
    return "; ".join(f"{what}: {names(keys)}" for what, keys in checks if keys)


def _require(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} is a directory, not a checkpoint file, and it has no {path.name}: pass "
                              f"a .pt checkpoint, or a folder written by --export ({WEIGHTS_NAME} and {CONFIG_NAME})")
