"""Peak memory of ``main.py --sample`` against --n-samples: flat in N since sampling runs in batches.

    python bench/sample_memory.py                       # N = 100, 500, 2000, 20000, this repository
    python bench/sample_memory.py --repo OLD --n 500 2000   # another checkout, for a before/after

Writes an untrained checkpoint of the default MNIST network (the weights do not change the memory),
then times one ``main.py --sample`` process per N (DPM-Solver++ at 2 steps, so that N = 20,000
runs in minutes) and prints its peak resident memory (``/usr/bin/time``'s maximum RSS) and seconds.
Run it alone on the machine: the seconds, not the memory, depend on what else runs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from checkpoint import build_model, save_checkpoint  # noqa: E402
from config import ModelSettings  # noqa: E402


def peak_of(repo: Path, checkpoint: Path, n: int, out: Path, extra: list[str]) -> tuple[int, float]:
    """Peak RSS (kB) and wall seconds of one ``main.py --sample`` of ``n`` images."""
    command = ["/usr/bin/time", "-f", "peak_kb=%M", sys.executable, str(repo / "main.py"), "--sample",
               "--checkpoint", str(checkpoint), "--n-samples", str(n), "--sampler", "dpm++", "--sample-steps", "2",
               "--device", "cpu", "--out-dir", str(out), "--quiet", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"main.py failed for N = {n}:\n{result.stderr[-2000:]}")
    return int(re.search(r"peak_kb=(\d+)", result.stderr).group(1)), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(ROOT), help="the checkout whose main.py samples (default: this one)")
    p.add_argument("--n", type=int, nargs="+", default=[100, 500, 2000, 20000], help="the --n-samples to measure")
    p.add_argument("--extra", default="", help="more main.py options, e.g. '--sample-batch 1000'")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        settings = ModelSettings()  # the default network: resattn, 32 channels at 28x28, v-prediction
        config = settings.model_config("mnist")
        checkpoint = Path(tmp) / "ddpm_mnist.pt"
        save_checkpoint(checkpoint, build_model(config), config)
        print(f"main.py of {args.repo}; default MNIST network, DPM-Solver++-2, {args.extra or 'default options'}")
        print(f"{'N':>7} {'peak MiB':>8} {'x N=' + str(args.n[0]):>8} {'seconds':>8}")
        first = None
        for n in args.n:
            peak, seconds = peak_of(Path(args.repo), checkpoint, n, Path(tmp) / f"out{n}", args.extra.split())
            first = first or peak
            print(f"{n:>7} {peak / 1024:>8.0f} {peak / first:>8.2f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
