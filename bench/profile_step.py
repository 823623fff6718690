"""Where one training step's time goes, and how near the hardware's limit it runs.

    python bench/profile_step.py                          # the default network, --fast's parts for this device
    python bench/profile_step.py --arch fixed --parts none

For one network (MNIST, batch 64 as the default recipe trains) and one set of fast-path parts:

1. the floating-point work of one training step (forward and backward, ``torch.utils.flop_counter``),
2. the step's images/s and GFLOP/s over ``--steps`` timed steps after a warm-up,
3. the device's measured peak: a large bfloat16 and a float32 matrix product timed in the same run,
   and the step's share of each,
4. a ``torch.profiler`` table of the timed steps grouped by operator (self time, forward and backward
   together: an ``...Backward`` row is the backward of its operator), the top ``--top`` rows.

Random images in [-1, 1] stand in for the data (the step's cost does not depend on the pixels).
Run it alone on the machine: the numbers are time, and every other process takes some.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import fastpath  # noqa: E402
from checkpoint import build_model  # noqa: E402
from config import ARCHITECTURES, DATASETS, ModelSettings, TrainSettings  # noqa: E402
from distributed import resolve_device  # noqa: E402
from ema import EMA  # noqa: E402
from flops import gflops, peaks, share, step_gflop  # noqa: E402
from utils import TrainState  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHITECTURES, default="resattn", help="the network (default: the package's)")
    p.add_argument("--dataset", choices=tuple(DATASETS), default="mnist", help="the image size")
    p.add_argument("--parts", default=None, help="fast-path parts, as --fast-parts (default: --fast's for the device)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the dataset's default recipe's")
    p.add_argument("--steps", type=int, default=20, help="timed (and profiled) steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--top", type=int, default=15, help="rows of the operator table")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="'auto': CUDA when available")
    args = p.parse_args()
    device = resolve_device(args.device)
    batch = args.batch_size or DATASETS[args.dataset].batch_size
    torch.manual_seed(0)
    model = ModelSettings(arch=args.arch) if args.arch != "paper" else ModelSettings(arch="paper", prediction="eps")
    train = TrainSettings()
    ddpm = build_model(model.model_config(args.dataset), device)
    parts = fastpath.recommended_parts(device, ddpm) if args.parts is None else fastpath.parse_parts(args.parts)
    ddpm = fastpath.prepare_model(ddpm, parts)
    loss_fn = fastpath.loss_function(ddpm, parts, device, batch, snr_gamma=train.snr_gamma, v_error=True)
    state = TrainState(ddpm, fastpath.make_optimizer(ddpm.parameters(), train.lr, parts),
                       ema=EMA(ddpm.backward_process_model, train.ema_decay))
    x0 = torch.rand(batch, *ddpm.image_chw, device=device) * 2 - 1
    gflop = step_gflop(ddpm, batch, device, snr_gamma=train.snr_gamma, v_error=True)
    for _ in range(args.warmup):
        state.step(x0, loss_fn)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) \
            as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            state.step(x0, loss_fn).item()
        seconds = (time.perf_counter() - start) / args.steps
    bf16, fp32 = peaks(device)
    rate = gflop / seconds
    print(f"{args.arch} on {args.dataset} ({ModelSettings(arch=args.arch).network_config(args.dataset).get('base_channels', '-')} "
          f"channels), batch {batch}, parts {fastpath.describe(parts)}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"one training step: {gflop:.2f} GFLOP ({gflop / batch * 1e3:.1f} MFLOP per image), "
          f"{seconds * 1e3:.1f} ms (profiler on), {batch / seconds:.0f} images/s, {rate:.0f} GFLOP/s")
    print(f"measured peak (4096 x 4096 matrix product): bf16 {gflops(bf16)}, fp32 {gflops(fp32)}; "
          f"the step runs at {share(rate, bf16)} of the bf16 peak and {share(rate, fp32)} of the fp32 peak")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
