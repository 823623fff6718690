"""Issue 16: where a model goes wrong at 64x64 against 28x28, measured on trained checkpoints.

    python bench/persian_diagnosis.py --data-root ../shared/data CKPT [CKPT ...]

For each checkpoint (its dataset and network come from the checkpoint), prints:

1. The validation loss of Eq. 8 per time-step bucket (10 buckets of T/10 steps; within a bucket t is
   drawn uniformly; seeded), so 64x64 and 28x28 models can be compared where the loss lives; beside
   it, the same loss of the "copy" guess eps = sqrt(1 - abar_t) x_t, which knows nothing of images and
   is nearly exact at large t: a network worse than it there cannot pass its input through.
2. The network's effective receptive field at the output's centre: the gradient of the centre pixel
   of eps_theta(x_t, t) with respect to x_t, at t in the middle of the schedule, on validation
   images; the radius (in pixels, Chebyshev) that holds 50% and 90% of its absolute mass, against
   the image size.
3. The brightness of samples: per-image mean of N samples (DPM-Solver++-20, EMA, clipped x0, seed 0)
   against the same of N real training images, and the shares of mostly-white and blank images
   (``quality.saturation``: over half the pixels at 0.9 or more; under 1% of the pixels above 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import load_checkpoint  # noqa: E402
from Dataset import get_data_loaders  # noqa: E402
from quality import saturation  # noqa: E402
from utils import sample  # noqa: E402


def loss_per_bucket(ddpm, loader, buckets: int = 10, seed: int = 0) -> tuple[list[float], list[float]]:
    """Mean Eq. 8 loss per time-step bucket, t uniform inside each bucket, the same draws for every model:
    the network's, and the copy guess's ``eps = sqrt(1 - abar_t) x_t``."""
    gen = torch.Generator().manual_seed(seed)
    width = ddpm.timesteps // buckets
    sums, copy_sums, counts = [0.0] * buckets, [0.0] * buckets, [0] * buckets
    with torch.no_grad():
        for x0, _ in loader:
            for b in range(buckets):
                t = torch.randint(b * width, (b + 1) * width, (len(x0),), generator=gen)
                noise = torch.randn(x0.shape, generator=gen)
                x_t, _ = ddpm.add_noise(x0, t, noise)
                sums[b] += ((ddpm.backward(x_t, t) - noise) ** 2).mean(dim=(1, 2, 3)).sum().item()
                copy = ddpm.sqrt_one_minus_alpha_bars[t].view(-1, 1, 1, 1) * x_t
                copy_sums[b] += ((copy - noise) ** 2).mean(dim=(1, 2, 3)).sum().item()
                counts[b] += len(x0)
    return [s / c for s, c in zip(sums, counts)], [s / c for s, c in zip(copy_sums, counts)]


def receptive_field(ddpm, images: torch.Tensor, t: int) -> tuple[int, int]:
    """Radii around the centre holding 50% and 90% of |d eps(centre) / d x_t|, summed over ``images``."""
    x = images.clone().requires_grad_(True)
    n, _, h, w = x.shape
    tt = torch.full((n,), t, dtype=torch.long)
    out = ddpm.backward(ddpm.add_noise(x, tt)[0], tt)
    out[:, 0, h // 2, w // 2].sum().backward()
    mass = x.grad.abs().sum(dim=(0, 1))
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    radius = torch.maximum((ys - h // 2).abs(), (xs - w // 2).abs())
    total = mass.sum()
    found = []
    for share in (0.5, 0.9):
        r = next(r for r in range(max(h, w)) if mass[radius <= r].sum() >= share * total)
        found.append(r)
    return found[0], found[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints to diagnose")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--n-samples", type=int, default=500, help="samples for the brightness measure")
    p.add_argument("--val-images", type=int, default=1000, help="validation images for the per-bucket loss")
    opts = p.parse_args()
    torch.manual_seed(0)
    for path in opts.checkpoints:
        ddpm, ckpt = load_checkpoint(path)
        if "ema" in ckpt:
            ddpm.backward_process_model.load_state_dict(ckpt["ema"]["model"])
        ddpm.eval()
        dataset = ckpt["config"]["dataset"]
        train, val = get_data_loaders(dataset, 100, opts.data_root, seed=ckpt.get("train_args", {}).get("seed", 0),
                                      download=False)
        subset = torch.utils.data.Subset(val.dataset, range(min(opts.val_images, len(val.dataset))))
        loader = torch.utils.data.DataLoader(subset, batch_size=100)
        size = ckpt["config"]["image_chw"][-1]
        print(f"\n{path}: {dataset}, {size}x{size}, {ckpt['config']['network']['arch']}, "
              f"predicts {ddpm.prediction}, "
              f"{len(ckpt.get('history', {}).get('val_loss', []))} epochs, EMA {'ema' in ckpt}")
        losses, copy = loss_per_bucket(ddpm, loader)
        width = ddpm.timesteps // 10
        for name, values in (("Eq. 8 loss per bucket of t", losses), ("copy guess sqrt(1-abar) x_t", copy)):
            print(f"  {name}: " + "  ".join(
                f"{b * width}-{(b + 1) * width - 1}: {v:.5f}" for b, v in enumerate(values)))
        print(f"  mean over buckets: {sum(losses) / len(losses):.4f}")
        images = torch.stack([subset[i][0] for i in range(min(16, len(subset)))])
        for t in (ddpm.timesteps // 10, ddpm.timesteps // 2):
            r50, r90 = receptive_field(ddpm, images, t)
            print(f"  effective receptive field at t={t}: 50% of the gradient within {r50} px, 90% within {r90} px "
                  f"of the centre (image half-width {size // 2} px)")
        samples = sample(ddpm, opts.n_samples, "cpu", seed=0, sampler="dpm++").images
        real = torch.stack([train.dataset[i][0] for i in range(min(opts.n_samples, len(train.dataset)))])
        for name, imgs in (("samples", samples), ("real", real)):
            means = imgs.flatten(1).mean(1)
            sat = saturation(imgs)
            print(f"  {name:<8} per-image mean {means.mean():+.3f} (sd {means.std():.3f}, 90th pct "
                  f"{means.quantile(0.9):+.3f}); mostly white {sat['mostly_white']:.1%}, blank {sat['blank']:.1%}")


if __name__ == "__main__":
    main()
