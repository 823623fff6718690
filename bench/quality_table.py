"""Print a Markdown table of `main.py --evaluate` reports (quality_<dataset>_<sampler><steps>.json).

Usage: python bench/quality_table.py REPORT.json [REPORT.json ...]

One row per report (the checkpoint's folder name in the first column, so reports of different
runs can share a table), then the floor (real training images) at each sample size, and the judge's
accuracy. The kernel distance (KID, scaled by 1000, with its standard error) and precision / recall
appear for reports that have them. Bits/dim appear where a report has the likelihood bound (--bpd-images).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def sampler_name(report: dict) -> str:
    """``DPM++-20, clip, logsnr``: the sampler, its network evaluations and every option not at the paper's value."""
    options = report["sampler"]
    name = f"{options['sampler'].upper()}-{report['steps']}"
    extras = [f"clip-x0 {options['clip_x0']}" if options.get("clip_x0", "none") != "none" else "",
              "log-SNR steps" if options.get("step_schedule", "uniform") != "uniform" else "",
              "posterior variance" if options.get("variance", "beta") != "beta" else "",
              f"eta {options['eta']:g}" if options.get("eta") else "",
              f"guidance {report['guidance']:g}" if "guidance" in report else "",
              "at t {}-{}".format(*report["guidance_interval"]) if report.get("guidance_interval") else ""]
    return ", ".join([name] + [e for e in extras if e])


def histogram(scores: dict) -> str:
    return " ".join(map(str, scores["class_histogram"]))


def requested(report: dict) -> str:
    """``97.1% (91.0% for 8)``: the share read as the requested digit, and the worst digit's (conditional models)."""
    accuracy = report.get("requested_digit_accuracy")
    if not accuracy:
        return ""
    asked = [(a, d) for d, a in enumerate(accuracy["per_class"]) if a is not None]
    worst, digit = min(asked)
    return f"{accuracy['overall']:.1%} ({worst:.1%} for {digit})"


def kernel(scores: dict) -> str:
    """``KID x 1e3 +- se``, precision and recall as table cells (blank for reports written before them)."""
    if scores.get("kernel_distance") is None:
        return " | |"
    kid = f"{1e3 * scores['kernel_distance']:.2f} +- {1e3 * scores['kernel_distance_se']:.2f}"
    pr = "" if scores.get("precision") is None else f"{scores['precision']:.3f} / {scores['recall']:.3f}"
    return f" {kid} | {pr} |"


def main(paths: list[Path]) -> None:
    if not paths:
        sys.exit(__doc__)
    print("| run | weights | sampler | n | Frechet distance | x floor | KID x 1e3 | precision / recall | classifier score "
          "| mostly white | blank | classes 0-9 | sampling s | bits/dim | requested digit (worst digit) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in paths:
        report = json.loads(path.read_text())
        gen = next(v for k, v in report["rows"].items() if k.startswith("generated"))
        sampler = sampler_name(report)
        bound = report.get("likelihood_bound")
        bpd = f"{bound['bits_per_dim']:.3f} ({bound['n_images']} images)" if bound else ""
        run, weights = Path(report["checkpoint"]).parent.name, "EMA" if report.get("ema") else "raw"
        ratio = gen["frechet_distance"] / report["rows"]["real training images (floor)"]["frechet_distance"]
        print(f"| {run} | {weights} | {sampler} | {gen['n']} | "
              f"{gen['frechet_distance']:.2f} | {ratio:.1f} |{kernel(gen)} {gen['classifier_score']:.2f} | "
              f"{gen['mostly_white']:.1%} | "
              f"{gen['blank']:.1%} | {histogram(gen)} | {report['sampling_seconds']:.0f} | {bpd} | "
              f"{requested(report)} |")
    floors = {}  # one floor row per sample size (reports of equal N share their floor)
    for path in paths:
        floor = json.loads(path.read_text())["rows"]["real training images (floor)"]
        floors.setdefault(floor["n"], floor)
    for n, floor in sorted(floors.items()):
        print(f"| real training images (floor) | | | {n} | {floor['frechet_distance']:.2f} | 1.0 |{kernel(floor)} "
              f"{floor['classifier_score']:.2f} | {floor['mostly_white']:.1%} | {floor['blank']:.1%} | "
              f"{histogram(floor)} | | | |")
    print(f"\nJudge accuracy on the validation set: {report['judge_accuracy']:.2%}")


if __name__ == "__main__":
    main([Path(p) for p in sys.argv[1:]])
