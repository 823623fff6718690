"""Print the Markdown table of bench/compare_arch.sh from its JSON reports.

Usage: python bench/arch_table.py OUT_DIR   (reads OUT_DIR/{paper,fixed}/quality_mnist_*.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    print("| UNet | sampler | n | Frechet distance | classifier score | mostly white | blank | classes 0-9 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    floor = None
    for arch in ("paper", "fixed"):
        for name in ("quality_mnist_ddpm1000.json", "quality_mnist_ddim50.json"):
            path = out / arch / name
            if not path.exists():
                continue
            report = json.loads(path.read_text())
            rows = report["rows"]
            gen = next(v for k, v in rows.items() if k.startswith("generated"))
            floor = rows["real training images (floor)"]
            sampler = f"{report['sampler']['sampler'].upper()}-{report['steps']}"
            print(f"| {arch} | {sampler} | {gen['n']} | {gen['frechet_distance']:.2f} | "
                  f"{gen['classifier_score']:.2f} | {gen['mostly_white']:.1%} | {gen['blank']:.1%} | "
                  f"{' '.join(map(str, gen['class_histogram']))} |")
            judge = report["judge_accuracy"]
    if floor is not None:
        print(f"| real training images (floor) | | {floor['n']} | {floor['frechet_distance']:.2f} | "
              f"{floor['classifier_score']:.2f} | {floor['mostly_white']:.1%} | {floor['blank']:.1%} | "
              f"{' '.join(map(str, floor['class_histogram']))} |")
        print(f"\nJudge accuracy on the MNIST test set: {judge:.2%}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/compare_arch"))
