"""Issue 13: how much does the label help a class-conditional checkpoint denoise, and at which steps?

    python bench/label_diagnosis.py --data-root ../shared/data CKPT [CKPT ...]

For 256 validation images (seeded), the Eq. 8 loss of the EMA network at a few time steps with the
true label, with "no label" and with a wrong label, on the same noise. A label that steers lowers the
loss below "no label" where the image alone does not yet tell the digit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checkpoint import load_checkpoint  # noqa: E402
from Dataset import get_datasets  # noqa: E402

STEPS = (100, 300, 500, 700, 850, 950)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="class-conditional checkpoints")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"), help="the datasets' folder")
    p.add_argument("--images", type=int, default=256, help="validation images")
    opts = p.parse_args()
    for path in opts.checkpoints:
        ddpm, ckpt = load_checkpoint(path)
        if not ddpm.num_classes:
            raise SystemExit(f"{path} is not class-conditional")
        ddpm.backward_process_model.load_state_dict(ckpt["ema"]["model"])
        ddpm.eval()
        _, val = get_datasets(ckpt["config"]["dataset"], opts.data_root, seed=ckpt["train_args"]["seed"],
                              download=False)
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(val), generator=gen)[:opts.images]
        x0 = torch.stack([val[i][0] for i in idx])
        y = torch.tensor([val[i][1] for i in idx])
        null = torch.full_like(y, ddpm.num_classes)
        wrong = (y + 1 + torch.randint(0, 9, y.shape, generator=gen)) % 10
        norms = ddpm.backward_process_model.label_embed.weight.norm(dim=1)
        print(f"\n{path}: label embedding norms (0-9, no label): {' '.join(f'{v:.2f}' for v in norms.tolist())}")
        print("  t      true label   no label   wrong label   no label / true")
        for t in STEPS:
            noise = torch.randn(x0.shape, generator=gen)
            tt = torch.full((len(x0),), t)
            x_t, _ = ddpm.add_noise(x0, tt, noise)
            with torch.no_grad():
                loss = [((ddpm.backward(x_t, tt, labels) - noise) ** 2).mean().item() for labels in (y, null, wrong)]
            print(f"  {t:<5}  {loss[0]:.5f}      {loss[1]:.5f}    {loss[2]:.5f}       {loss[1] / loss[0]:.3f}")


if __name__ == "__main__":
    main()
