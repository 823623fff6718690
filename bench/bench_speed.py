"""Training and sampling speed of the package, in one run on the same data and network.

    python bench/bench_speed.py --data-root ../shared/data            # the full benchmark (~15 min on 2 cores)
    python bench/bench_speed.py --data-root ../shared/data --quick    # a smoke run (~3 min)

Prints, for MNIST (``--dataset``) and one network (``--arch``, default: the package's default 'resattn', with the
CLI's default ``--channels`` and ``--patch-size`` for the dataset's image size) at batch 128:

1. Training images/s of the paper's fp32 eager path, of each fast-path part
   alone (``fastpath.PARTS``) and of ``--fast`` (the parts kept), over the
   same timed steps after a warm-up (which absorbs ``torch.compile``), with
   the peak memory of the timed steps, and each path's GFLOP/s (the flop counter's work of one eager
   step times its images/s) with its share of the device's measured bf16 and fp32 matrix-product peak.
2. One whole first epoch of the eager path and of ``--fast`` from the same
   initial weights and data order, and of the eager path with the next seed:
   wall time (compilation included), the loss curves in windows, and the
   validation loss after the epoch. The fast path's curve is "within noise"
   when no window moves further from the eager curve than the other seed's does.
3. Sampling images/s of the 1000-step ancestral sampler (Algorithm 2), of DDIM
   with 50 steps and of DPM-Solver++ with 20 and 10 steps, at the same batch size,
   with peak memory (``--sampling-only``: this part alone).

Every measurement runs in a fresh process (so no compilation cache, allocator
pool or page cache of one is counted for another), one after the other.
Peak memory is the process's peak resident set size during the measured part
(its high-water mark, reset with /proc/self/clear_refs) on the CPU, and
``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import fastpath  # noqa: E402
from config import DATASETS, ModelSettings  # noqa: E402
from Dataset import get_data_loaders  # noqa: E402
from diffusion_model import DiffusionModel  # noqa: E402
from ema import EMA  # noqa: E402
from flops import gflops, peaks, share, step_gflop  # noqa: E402
from config import ARCHITECTURES  # noqa: E402
from checkpoint import build_model  # noqa: E402
from distributed import resolve_device  # noqa: E402
from samplers import make_sampler  # noqa: E402
from utils import TrainState, evaluate, sample  # noqa: E402

# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status_kib("VmHWM") / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- one measurement (child process)


def build(seed: int, device: torch.device, opts: argparse.Namespace) -> DiffusionModel:
    """A fresh seeded model for ``opts.dataset`` and ``opts.arch`` with the CLI's default sizes."""
    torch.manual_seed(seed)
    settings = ModelSettings(arch=opts.arch, channels=opts.channels, patch_size=opts.patch_size, prediction="eps")
    return build_model(settings.model_config(opts.dataset), device)


def train_run(opts: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train from a fresh seeded model with the parts in ``opts.parts``; time steps after the warm-up."""
    parts = fastpath.parse_parts(opts.parts)
    ddpm = fastpath.prepare_model(build(opts.seed, device, opts), parts)
    train_loader, val_loader = get_data_loaders(opts.dataset, opts.batch_size, opts.data_root, seed=opts.seed,
                                                device=device, download=False)
    stack_start = time.perf_counter()
    if "tensor_data" in parts:
        train_loader = fastpath.to_tensor_loader(train_loader, device)
    stack_seconds = time.perf_counter() - stack_start  # counted in the whole-epoch time
    optim = fastpath.make_optimizer(ddpm.parameters(), 1e-3, parts)
    state = TrainState(ddpm, optim, ema=EMA(ddpm.backward_process_model, 0.999))
    loss_fn = fastpath.loss_function(ddpm, parts, device, opts.batch_size)
    train_loader.sampler.set_epoch(0)
    n_steps = len(train_loader) if opts.epoch else opts.warmup + opts.steps
    losses: list[float] = []
    times: list[float] = []
    ddpm.train()
    start = time.perf_counter()
    for step, (x0, _) in enumerate(train_loader):
        if step == n_steps:
            break
        if step == opts.warmup and not opts.epoch:
            sync(device)
            reset_peak(device)
            start_timed = time.perf_counter()
        x0 = x0.to(device, non_blocking=True)
        loss = state.step(x0, loss_fn)  # the training loop's own step
        losses.append(loss.item())  # .item() synchronises, as the training loop's does
        times.append(time.perf_counter() - start)
    result: dict[str, Any] = dict(parts=sorted(parts), name=fastpath.describe(parts), losses=losses, times=times)
    if opts.epoch:
        result.update(seconds=times[-1] + stack_seconds, stack_seconds=stack_seconds, images=len(train_loader.dataset),
                      val_loss=evaluate(ddpm, val_loader, device, seed=opts.seed))
    else:
        timed = time.perf_counter() - start_timed
        result.update(warmup_seconds=times[opts.warmup - 1], seconds=timed, images=opts.steps * opts.batch_size,
                      peak_mib=peak_mib(device))
    result["images_per_s"] = result["images"] / result["seconds"]
    return result


def sample_run(opts: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Draw ``opts.n_samples`` images with the sampler in ``opts.sampler`` from a fresh model."""
    ddpm = build(opts.seed, device, opts).eval()
    steps = opts.sample_steps if opts.sampler != "ddpm" else None
    # Warm the kernels at this batch size (2 DDIM steps), so neither sampler pays their set-up.
    sample(ddpm, opts.n_samples, device, seed=opts.seed, sampler=make_sampler("ddim", ddpm, 2))
    reset_peak(device)
    start = time.perf_counter()
    sample(ddpm, opts.n_samples, device, seed=opts.seed, sampler=make_sampler(opts.sampler, ddpm, steps, clip_x0="clip"))
    sync(device)
    seconds = time.perf_counter() - start
    return dict(name=f"{opts.sampler}-{steps or ddpm.timesteps}", seconds=seconds, images=opts.n_samples,
                images_per_s=opts.n_samples / seconds, peak_mib=peak_mib(device))


# --------------------------------------------------------------------------- the parent: run children, print tables


def child(opts: argparse.Namespace, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; return its JSON result."""
    argv = [sys.executable, __file__, "--child", "--data-root", opts.data_root, "--device", opts.device,
            "--seed", str(opts.seed), "--batch-size", str(opts.batch_size), "--steps", str(opts.steps),
            "--warmup", str(opts.warmup), "--n-samples", str(opts.n_samples), "--arch", opts.arch,
            "--dataset", opts.dataset]
    argv += ["--channels", str(opts.channels)] if opts.channels else []
    argv += ["--patch-size", str(opts.patch_size)] if opts.patch_size else []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    with tempfile.TemporaryDirectory(prefix="bench-inductor-") as cache:  # no compiled code carried over
        env = dict(os.environ, TQDM_DISABLE="1", TORCHINDUCTOR_CACHE_DIR=cache)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def paired_windows(eager: list[float], fast: list[float], windows: int) -> list[tuple[float, float, float, float]]:
    """Per window: the mean eager loss, the mean fast loss, and the mean and standard error of the
    step-by-step differences (fast - eager). The two runs see the same batches in the same order, so
    pairing them step by step cancels the loss's downward trend; the leftover steps join the last window."""
    e = torch.tensor(eager, dtype=torch.float64)
    f = torch.tensor(fast, dtype=torch.float64)
    bounds = [round(w * len(e) / windows) for w in range(windows + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:]):
        d = f[lo:hi] - e[lo:hi]
        out.append((e[lo:hi].mean().item(), f[lo:hi].mean().item(), d.mean().item(),
                    (d.std() / math.sqrt(len(d))).item()))
    return out


def training_table(opts: argparse.Namespace, fast: frozenset[str]) -> Any:
    """Time every fast-path part alone, the extra combinations and --fast; print the table."""
    combos = [",".join(sorted(fastpath.parse_parts(c))) for c in opts.combos.split(";") if c.strip()]
    alone = [] if opts.eager_and_fast else list(fastpath.PARTS)
    configs = ["none", *alone, *combos, ",".join(sorted(fast))]
    rows = []
    for parts in configs:
        r = child(opts, parts=parts)
        rows.append(r)
        print(f"  measured {r['name']}: {r['images_per_s']:.1f} img/s", flush=True)
    eager = rows[0]
    device = resolve_device(opts.device)
    per_image = step_gflop(build(opts.seed, device, opts), opts.batch_size, device) / opts.batch_size
    bf16, fp32 = peaks(device)
    print(f"\nTraining, steady state ({opts.steps} timed steps of {opts.batch_size} images after {opts.warmup} "
          f"warm-up steps; 'fast' is the last row). One step costs {per_image * 1e3:.0f} MFLOP per image "
          f"(forward and backward, the flop counter); the measured peak of a 4096 x 4096 matrix product, in this "
          f"run: bf16 {gflops(bf16)}, fp32 {gflops(fp32)}:")
    print(f"{'path':<44} {'img/s':>8} {'x eager':>8} {'GFLOP/s':>8} {'of bf16':>8} {'of fp32':>8} "
          f"{'warm-up s':>10} {'peak MiB':>9}")
    for r in rows:
        rate = r["images_per_s"] * per_image
        r.update(gflop_per_s=rate, bf16_peak=bf16, fp32_peak=fp32)
        print(f"{r['name']:<44} {r['images_per_s']:8.1f} {r['images_per_s'] / eager['images_per_s']:8.2f} "
              f"{rate:8.0f} {share(rate, bf16):>8} {share(rate, fp32):>8} {r['warmup_seconds']:10.1f} {r['peak_mib']:9.0f}")
    return rows


def first_epoch_comparison(opts: argparse.Namespace, fast: frozenset[str]) -> Any:
    """One whole first epoch: eager, --fast, and eager with the next seed (the noise yardstick)."""
    slow = child(opts, parts="none", epoch=True)
    quick = child(opts, parts=",".join(sorted(fast)), epoch=True)
    other = child(opts, parts="none", epoch=True, seed=opts.seed + 1)  # the yardstick of noise
    print(f"\nOne whole first epoch ({slow['images']} images, same initial weights and data order; "
          f"compilation and the {quick['stack_seconds']:.1f} s of stacking the data included):")
    for label, r in (("fp32 eager", slow), ("fast", quick), (f"eager, seed {opts.seed + 1}", other)):
        print(f"  {label:<15}: {r['seconds']:7.1f} s = {r['images_per_s']:6.1f} img/s, "
              f"validation loss {r['val_loss']:.4f}")
    print(f"  fast / eager: {slow['seconds'] / quick['seconds']:.2f}x")
    print(f"  loss curve in {opts.windows} windows of about {len(slow['losses']) // opts.windows} steps "
          f"(mean training loss; d = fast - eager, paired step by step, +- its standard error; "
          f"seed noise = eager seed {opts.seed + 1} - eager seed {opts.seed}):")
    fast_gap = noise_gap = 0.0
    for w, ((m1, m2, d, se), (_, m3, _, _)) in enumerate(zip(
            paired_windows(slow["losses"], quick["losses"], opts.windows),
            paired_windows(slow["losses"], other["losses"], opts.windows))):
        fast_gap, noise_gap = max(fast_gap, abs(m2 - m1)), max(noise_gap, abs(m3 - m1))
        z = d / se if se > 0 else 0.0
        print(f"    window {w + 1:2d}: eager {m1:.4f}   fast {m2:.4f}   d {d:+.4f} +- {se:.4f} (z {z:+.1f})   "
              f"seed noise {m3 - m1:+.4f}")
    verdict = "within" if fast_gap <= noise_gap else "NOT within"
    print(f"  largest window gap: fast {fast_gap:.4f}, another seed {noise_gap:.4f}: the fast path's curve is "
          f"{verdict} the noise of the seed")
    return [slow, quick, other]


def sampling_table(opts: argparse.Namespace) -> Any:
    """Images/s of the 1000-step sampler, DDIM-50 and DPM-Solver++ at 20 and 10 steps, at the same batch size."""
    samplers = [child(opts, sampler="ddpm"), child(opts, sampler="ddim", sample_steps=50),
                child(opts, sampler="dpm++", sample_steps=20), child(opts, sampler="dpm++", sample_steps=10)]
    print(f"\nSampling {opts.n_samples} images at once (fresh weights; the cost does not depend on them):")
    for r in samplers:
        print(f"  {r['name']:<10} {r['seconds']:8.1f} s = {r['images_per_s']:7.2f} img/s, peak {r['peak_mib']:.0f} MiB, "
              f"{r['images_per_s'] / samplers[0]['images_per_s']:6.1f}x DDPM-1000")
    return samplers


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="folder holding MNIST/raw")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="'auto': CUDA when available")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order, t and noise")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (the paper's)")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per path")
    p.add_argument("--warmup", type=int, default=8, help="untimed training steps first (compilation happens here)")
    p.add_argument("--n-samples", type=int, default=64, help="sampling batch size (both samplers)")
    p.add_argument("--windows", type=int, default=10, help="windows of the first-epoch loss curve")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, no whole epoch, 8 samples")
    p.add_argument("--skip-epoch", action="store_true", help="skip the whole-epoch comparison")
    p.add_argument("--sampling-only", action="store_true", help="measure the samplers alone")
    p.add_argument("--skip-sampling", action="store_true", help="skip the samplers")
    p.add_argument("--dataset", choices=tuple(DATASETS), default="mnist", help="the data and image size")
    p.add_argument("--channels", type=int, default=None, help="'resattn': --channels (default: the CLI's)")
    p.add_argument("--patch-size", type=int, default=None, help="'resattn': --patch-size (default: the CLI's)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="resattn",
                   help="the network (docs/speed.md's fast-path tables were measured with 'fixed')")
    p.add_argument("--eager-and-fast", action="store_true",
                   help="training: time only the eager path and --fast, not each part alone")
    p.add_argument("--combos", default="",
                   help="extra part combinations to time, ';'-separated, e.g. 'compile,bf16;bf16,channels_last'")
    p.add_argument("--json", default=None, help="also save every result to this JSON file")
    # one measurement, in a child process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--parts", default="none", help=argparse.SUPPRESS)
    p.add_argument("--epoch", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sampler", default=None, help=argparse.SUPPRESS)
    p.add_argument("--sample-steps", type=int, default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.warmup < 1 or opts.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    device = resolve_device(opts.device)
    if opts.child:
        result = sample_run(opts, device) if opts.sampler else train_run(opts, device)
        print(json.dumps(result))
        return
    if opts.quick:
        opts.steps, opts.warmup, opts.n_samples, opts.skip_epoch = 6, 3, 8, True
    net = build(opts.seed, torch.device("cpu"), opts).backward_process_model
    fast = fastpath.recommended_parts(device, net)
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, {opts.dataset}, "
          f"{opts.arch} UNet {net.config}, batch {opts.batch_size}; "
          f"--fast on {device.type} = {fastpath.describe(fast)}")
    results: dict[str, Any] = {} if opts.sampling_only else dict(training=training_table(opts, fast))
    if not opts.skip_epoch and not opts.sampling_only:
        results["epoch"] = first_epoch_comparison(opts, fast)
    if not opts.skip_sampling:
        results["sampling"] = sampling_table(opts)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
