"""Issue 11: which digits does the judge of --evaluate read as which, on real validation images?

    python bench/judge_confusion.py --judge runs/ablation/judges/judge_mnist.pt --data-root ../shared/data

Prints the true and the judged class counts of the validation set and the confusion matrix (rows: true
digit, columns: judged digit). A judge that reads some real 8s as 2s over-counts 2s in a generated
class histogram too; this says by how much on real digits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from Dataset import get_data_loaders  # noqa: E402
from quality import N_CLASSES, confusion_matrix, load_judge, predictions  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--judge", required=True, help="a judge cache written by --evaluate (judge_<dataset>.pt)")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "persian"), help="whose validation set")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--seed", type=int, default=0, help="the split seed (Persian's validation set depends on it)")
    args = p.parse_args()
    judge = load_judge(args.judge)
    _, val_loader = get_data_loaders(args.dataset, 500, args.data_root, seed=args.seed)
    predicted, labels = predictions(judge, val_loader, "cpu")
    counts = confusion_matrix(predicted, labels)
    print(f"{len(labels)} validation images; judge accuracy {counts.trace().item() / len(labels):.2%}")
    print("digit  " + " ".join(f"{d:>5}" for d in range(N_CLASSES)))
    print("true   " + " ".join(f"{n:>5}" for n in counts.sum(1).tolist()))
    print("judged " + " ".join(f"{n:>5}" for n in counts.sum(0).tolist()))
    print("\nconfusion (rows: true digit, columns: judged digit)")
    for d in range(N_CLASSES):
        print(f"{d:>5}  " + " ".join(f"{n:>5}" for n in counts[d].tolist()))


if __name__ == "__main__":
    main()
