"""Issue 11: a second judge for --evaluate, to see whether a result holds under another judge.

    python bench/train_judge.py --epochs 10 --seed 1 --judge-dir runs/judge10 --data-root ../shared/data
    python main.py --evaluate --checkpoint runs/mnist_default/ddpm_mnist.pt --judge-dir runs/judge10 ...

Trains the judge of --evaluate (the same design, data and split) for --epochs with initial weights from
--seed, and writes it into --judge-dir under the name that ``--evaluate --judge-dir`` looks for. It
prints its accuracy on the validation images. Every number in docs/results.md uses the default judge (2
epochs, seed 0); the second judge appears only where it says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import DATA_BATCH_SIZE  # noqa: E402
from Dataset import DATASETS, get_data_loaders  # noqa: E402
from quality import judge_cache  # noqa: E402
from quality import load_or_train_judge  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="the judge's dataset")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (--evaluate's judge: 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of its initial weights (--evaluate's judge: 0)")
    p.add_argument("--split-seed", type=int, default=0, help="the training run's --seed, which sets the data split")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--judge-dir", required=True, help="the folder to write it to, for --evaluate --judge-dir")
    args = p.parse_args()
    out = judge_cache(args.judge_dir, args.data_root, args.dataset, args.split_seed)
    if out.exists():
        sys.exit(f"{out} exists: a judge is never replaced here (remove it first)")
    train_loader, val_loader = get_data_loaders(args.dataset, DATA_BATCH_SIZE, args.data_root, seed=args.split_seed)
    _, acc = load_or_train_judge(out, train_loader, val_loader, "cpu", epochs=args.epochs, seed=args.seed)
    print(f"judge ({args.dataset}, {args.epochs} epochs, seed {args.seed}): validation accuracy {acc:.2%}; {out}")


if __name__ == "__main__":
    main()
