"""The floating-point work of a training step and the device's measured matrix-product peak.

Shared by ``bench_speed.py`` and ``profile_step.py``: a step's GFLOP/s means something only beside
what the same device does at best, measured in the same run.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import fastpath
from diffusion_model import DiffusionModel


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an n x n matrix product in ``dtype`` (the best of ``repeats``, after one warm-up)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def peaks(device: torch.device) -> tuple[float | None, float]:
    """(bf16, fp32) ``matmul_peak``; bf16 is None where the device has no native bfloat16 (``fastpath.native_bf16``):
    emulated, its product takes minutes and says nothing of what the hardware can do."""
    bf16 = matmul_peak(device, torch.bfloat16) if fastpath.native_bf16(device) else None
    return bf16, matmul_peak(device, torch.float32)


def share(rate: float, peak: float | None) -> str:
    """``rate`` as a percentage of ``peak``; "n/a" where there is no peak."""
    return f"{rate / peak:.1%}" if peak else "n/a"


def gflops(peak: float | None) -> str:
    """A measured peak in GFLOP/s, or why there is none."""
    return f"{peak:.0f} GFLOP/s" if peak else "n/a (no native bfloat16)"


def step_gflop(ddpm: DiffusionModel, batch: int, device: torch.device, **loss_options: object) -> float:
    """GFLOP of one eager fp32 training step (forward and backward) of ``batch`` images: what the maths costs.

    ``loss_options`` go to ``fastpath.loss_function`` (e.g. ``snr_gamma``, ``v_error``); the
    gradients it leaves are cleared.
    """
    x0 = torch.rand(batch, *ddpm.image_chw, device=device) * 2 - 1
    with FlopCounterMode(display=False) as counter:
        fastpath.loss_function(ddpm, frozenset(), device, batch, **loss_options)(x0).backward()  # type: ignore[arg-type]
    ddpm.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9
