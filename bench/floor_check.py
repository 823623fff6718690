"""Does the judge's having trained on the floor's images move the floor of --evaluate?

    python bench/floor_check.py --data-root ../shared/data --checkpoint runs/distill_e4/ddpm_mnist_distilled4.pt

--evaluate's floor row scores the first N training images against the validation images, with a judge that
trained on every training image, the floor's included, while the generated images are new to it. Here two
judges are trained alike (the same seed, epochs, batch and shuffle): one on all training images, one on all but
the first N. Each scores, against the validation images, the first N training images (the floor: seen by the
first judge, unseen by the second), training images N..2N (seen by both) and, with --checkpoint, N samples of
it (EMA weights; a student of --distill on its own grid, any other model with DPM-Solver++-20, x0 clipped).
If the second judge scores the unseen floor as it scores the seen set, the overlap does not move the floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import load_for_sampling  # noqa: E402
from config import DATA_BATCH_SIZE  # noqa: E402
from Dataset import DATASETS, get_data_loaders  # noqa: E402
from quality import judge_outputs, score, train_classifier  # noqa: E402
from samplers import make_sampler  # noqa: E402
from utils import sample  # noqa: E402


def real_images(dataset: torch.utils.data.Dataset, indices: range) -> torch.Tensor:
    """The images of ``dataset`` at ``indices``, stacked."""
    return torch.stack([dataset[i][0] for i in indices])


def drawn_samples(checkpoint: Path, n: int, seed: int) -> tuple[torch.Tensor, str]:
    """N samples of ``checkpoint`` with its EMA weights, and the sampler's name."""
    ddpm, ckpt, _ = load_for_sampling(checkpoint, "cpu", use_ema=True)
    distilled = ckpt["config"].get("distillation")
    sampler = (make_sampler("distilled", ddpm, distilled["steps"]) if distilled
               else make_sampler("dpm++", ddpm, 20))
    return sample(ddpm, n, "cpu", sampler=sampler, seed=seed).images, f"{sampler.name}-{len(sampler.timesteps())}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="mnist", help="the dataset")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--n", type=int, default=2000, help="images in each scored set (the floor's N)")
    p.add_argument("--checkpoint", type=Path, default=None, help="a model whose N samples are scored too")
    p.add_argument("--seed", type=int, default=0, help="the split, the judges' and the samples' seed")
    args = p.parse_args()
    train_loader, val_loader = get_data_loaders(args.dataset, DATA_BATCH_SIZE, args.data_root, seed=args.seed,
                                                num_workers=0)
    data = train_loader.dataset
    if 2 * args.n > len(data):
        p.error(f"--n {args.n}: needs 2N <= {len(data)} training images")
    sets = {"floor: training images 0..N": real_images(data, range(args.n)),
            "training images N..2N": real_images(data, range(args.n, 2 * args.n))}
    if args.checkpoint is not None:
        start = time.perf_counter()
        images, name = drawn_samples(args.checkpoint, args.n, args.seed)
        sets[f"samples ({name}, {time.perf_counter() - start:.0f} s)"] = images
    judges = {"all training images": range(len(data)), "all but images 0..N": range(args.n, len(data))}
    print(f"{args.dataset}, N = {args.n}, seed {args.seed}: Frechet distance / KID x 1e3 / precision / recall "
          "against the validation images")
    print("| judge trained on | accuracy | set | Frechet distance | KID x 1e3 | precision / recall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for judge_name, indices in judges.items():
        loader = DataLoader(Subset(data, indices), batch_size=DATA_BATCH_SIZE, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
        start = time.perf_counter()
        judge, accuracy = train_classifier(loader, val_loader, "cpu", seed=args.seed)
        judge.eval()
        val_features, _ = judge_outputs(judge, val_loader, "cpu")
        print(f"<!-- judge on {judge_name}: trained in {time.perf_counter() - start:.0f} s -->")
        for set_name, images in sets.items():
            row = score(judge, images, val_features, "cpu")
            print(f"| {judge_name} | {100 * accuracy:.2f}% | {set_name} | {row['frechet_distance']:.2f} | "
                  f"{1e3 * row['kernel_distance']:.0f} +- {1e3 * row['kernel_distance_se']:.0f} | "
                  f"{row['precision']:.3f} / {row['recall']:.3f} |")


if __name__ == "__main__":
    main()
