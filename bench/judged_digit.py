"""Issue 11: the samples that the judge of --evaluate reads as one digit, beside the real ones it reads so.

    python bench/judged_digit.py --checkpoint runs/mnist_default/ddpm_mnist.pt --digit 2 \
        --judge runs/ablation/judges/judge_mnist.pt --data-root ../shared/data --out judged_2.png

Draws --n-samples images exactly as ``--evaluate`` does (same sampler options, seed and EMA weights, so the
count matches its class histogram) and prints, for the generated images and for the real validation
images that the judge reads as --digit: how many, how sure it is (quantiles of its probability), and
which digit it would have named second. The generated ones, least sure first, are saved as a grid
(--out), to look at what the judge counts.

With --second-judge (another judge cache, from bench/train_judge.py) it also prints that judge's class
histogram of the same samples and of the real validation images, and how it reads the samples that
the first judge reads as --digit: is a digit's excess in the samples, or in the judge?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from Dataset import get_data_loaders  # noqa: E402
from figures import save_grid  # noqa: E402
from checkpoint import load_for_sampling  # noqa: E402
from samplers import make_sampler  # noqa: E402
from quality import (  # noqa: E402
    N_CLASSES,
    class_histogram,
    confusion_matrix,
    judge_outputs,
    judged_as,
    load_judge,
)
from utils import sample  # noqa: E402


def describe(name: str, probs: torch.Tensor, digit: int) -> torch.Tensor:
    """Prints the judge's view of the images it reads as ``digit``; returns their indices, least sure first."""
    judged = judged_as(probs, digit)
    sure, n = judged["sure"], len(judged["sure"])
    q = torch.quantile(sure, torch.tensor([0.1, 0.25, 0.5], dtype=sure.dtype)).tolist() if n else []
    print(f"{name}: {n} of {len(probs)} ({n / len(probs):.2%}) judged {digit}; "
          f"p({digit}) quantiles 10/25/50%: {' '.join(f'{v:.3f}' for v in q)}; "
          f"below 0.9: {int((sure < 0.9).sum())}, below 0.5: {int((sure < 0.5).sum())}")
    print(f"  second choice 0-9: {' '.join(map(str, judged['second_choice']))}")
    return judged["indices"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the model to sample (its EMA weights, as --evaluate)")
    p.add_argument("--digit", type=int, default=2, choices=range(N_CLASSES), help="the judged digit to look at")
    p.add_argument("--judge", required=True, help="a judge cache written by --evaluate (judge_<dataset>.pt)")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--sampler", default="dpm++", help="as --evaluate's --sampler")
    p.add_argument("--sample-steps", default="20", help="as --evaluate's --sample-steps")
    p.add_argument("--n-samples", type=int, default=2000, help="as --evaluate's --n-samples")
    p.add_argument("--seed", type=int, default=0, help="as --evaluate's --seed")
    p.add_argument("--out", default="judged_digit.png", help="the grid of the generated images judged --digit")
    p.add_argument("--second-judge", default=None, help="another judge cache (bench/train_judge.py) to compare")
    args = p.parse_args()
    ddpm, ckpt, _ = load_for_sampling(Path(args.checkpoint), torch.device("cpu"), use_ema=True)
    judge = load_judge(args.judge)
    sampler = make_sampler(args.sampler, ddpm, int(args.sample_steps) if args.sampler != "ddpm" else None)
    samples = sample(ddpm, args.n_samples, "cpu", seed=args.seed, sampler=sampler).images
    _, generated = judge_outputs(judge, samples, "cpu")
    split_seed = ckpt.get("train_args", {}).get("seed", args.seed)
    _, val_loader = get_data_loaders(ckpt["config"]["dataset"], 500, args.data_root, seed=split_seed)
    _, real = judge_outputs(judge, val_loader, "cpu")
    order = describe(f"generated ({args.sampler}-{args.sample_steps}, seed {args.seed})", generated, args.digit)
    describe("real validation images", real, args.digit)
    save_grid(samples[order], args.out)
    print(f"saved {len(order)} images judged {args.digit}, least sure first: {args.out}")
    if args.second_judge:
        second = load_judge(args.second_judge)
        _, generated2 = judge_outputs(second, samples, "cpu")
        _, real2 = judge_outputs(second, val_loader, "cpu")
        print(f"second judge {args.second_judge}:")
        for name, first, other in (("generated", generated, generated2), ("real validation", real, real2)):
            differ = int((first.argmax(1) != other.argmax(1)).sum())
            print(f"  {name}, classes 0-9: first judge {' '.join(map(str, class_histogram(first)))}; "
                  f"second judge {' '.join(map(str, class_histogram(other)))}; "
                  f"read differently: {differ} of {len(first)} ({differ / len(first):.2%})")
        crossed = confusion_matrix(generated2.argmax(1), generated.argmax(1))  # rows: the first judge's reading
        print(f"  generated, judged {args.digit} by the first judge; the second reads them as 0-9: "
              f"{' '.join(map(str, crossed[args.digit].tolist()))}")


if __name__ == "__main__":
    main()
