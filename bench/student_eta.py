"""Score a distilled student sampled by stochastic DDIM (eta > 0) on its own grid: a variant tried, not kept.

Usage: STUDENT_ETAS="0.3 1" python bench/student_eta.py --evaluate --checkpoint STUDENT.pt \\
           --sampler distilled-eta0.3 [any other main.py option]

Registers one sampler per eta in ``STUDENT_ETAS`` (default "0.3 1"), named ``distilled-eta<E>``: the grid and
network passes of ``samplers.DistilledSampler``, each step DDIM (Song et al. 2021, Eq. 12) with noise scale E
(fresh noise at every step but the last), then runs ``main.main`` with the arguments given. The package keeps
deterministic DDIM (eta = 0) for students; docs/results.md has the comparison.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import samplers  # noqa: E402
from samplers import DistilledSampler, Noise  # noqa: E402


def student_eta_sampler(eta: float) -> type[DistilledSampler]:
    """A ``DistilledSampler`` whose every step but the last is DDIM with noise scale ``eta``."""

    class StudentEta(DistilledSampler):
        name = f"distilled-eta{eta:g}"

        def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
            z = noise() if t_prev >= 0 else None
            return self.ddpm.ddim_step(x, t, t_prev, eta_theta=eps, ddim_eta=eta, z=z, clip_x0=self.clip_x0).x_prev

    return StudentEta


if __name__ == "__main__":
    for value in os.environ.get("STUDENT_ETAS", "0.3 1").split():
        cls = student_eta_sampler(float(value))
        samplers.SAMPLERS[cls.name] = cls
    import main  # after the registration: the command line reads its sampler names from the registry

    sys.exit(main.main(sys.argv[1:]))
