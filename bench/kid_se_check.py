"""Issue 33: does the kernel distance's standard error describe the draw of the images?

    python bench/kid_se_check.py --judge runs/mnist_default/judges/judge_mnist.pt --data-root ../shared/data

Real training images stand in for a generator whose every draw is independent: disjoint random sets of
N training images are scored against the validation images with ``quality.kernel_distance``, as the
floor row of --evaluate is. Per N it prints each draw's estimate and reported error, then the mean of
the estimates, their standard deviation over the draws and the mean reported error: an error that
describes the draw is close to that standard deviation, and the means agree across N (the estimate is
unbiased). ``--scale`` multiplies the features of the drawn sets (1.05: a set a little apart from the
validation images, to check the error away from zero too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import DATA_BATCH_SIZE  # noqa: E402
from Dataset import DATASETS, get_data_loaders  # noqa: E402
from quality import judge_outputs, kernel_distance, load_judge  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", required=True, help="a judge cache file of --evaluate (judges/judge_<dataset>.pt)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="the judge's dataset")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--n", type=int, nargs="+", default=[2000, 10000], help="set sizes N")
    p.add_argument("--draws", type=int, default=6, help="disjoint draws per N (at most training images / N)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the drawn sets' features by this")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws")
    args = p.parse_args()
    judge = load_judge(args.judge)
    train_loader, val_loader = get_data_loaders(args.dataset, DATA_BATCH_SIZE, args.data_root, download=False)
    train, _ = judge_outputs(judge, train_loader, "cpu")
    val, _ = judge_outputs(judge, val_loader, "cpu")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    print(f"{len(train)} training and {len(val)} validation images; features x {args.scale:g}; KID x 1e3")
    print(f"{'N':>6} {'draws':>5} {'mean estimate':>14} {'sd over draws':>14} {'mean error':>11}")
    for n in args.n:
        draws = min(args.draws, len(train) // n)
        if draws < 2:
            sys.exit(f"N = {n}: fewer than 2 disjoint draws of {len(train)} training images")
        results = [kernel_distance(train[order[i * n:(i + 1) * n]] * args.scale, val) for i in range(draws)]
        for i, (estimate, error) in enumerate(results):
            print(f"   draw {i}: {1e3 * estimate:.1f} +- {1e3 * error:.1f}")
        estimates = torch.tensor([r[0] for r in results], dtype=torch.float64)
        errors = torch.tensor([r[1] for r in results], dtype=torch.float64)
        print(f"{n:>6} {draws:>5} {1e3 * estimates.mean():>14.1f} {1e3 * estimates.std():>14.1f} "
              f"{1e3 * errors.mean():>11.1f}")


if __name__ == "__main__":
    main()
