"""Start-up time of the command line: fresh interpreters, one after the other, median of --repeats.

    python bench/startup.py [--repeats 5]

Times ``import main``, ``import main`` plus torchvision (what every command paid before Dataset.py imported
torchvision only where it reads data) and ``python main.py --help``, each in a new process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "import main": [sys.executable, "-c", "import main"],
    "import main, torchvision": [sys.executable, "-c", "import main, torchvision"],
    "python main.py --help": [sys.executable, str(ROOT / "main.py"), "--help"],
}


def seconds(cmd: list[str]) -> float:
    """Wall seconds of one run of ``cmd`` in the repository."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each case (default 5); the median is printed")
    args = parser.parse_args()
    seconds(CASES["import main"])  # a first run fills the file cache
    print("| case | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for name, cmd in CASES.items():
        runs = [seconds(cmd) for _ in range(args.repeats)]
        print(f"| {name} | {statistics.median(runs):.2f} | {min(runs):.2f} | {max(runs):.2f} |")


if __name__ == "__main__":
    main()
