"""The reverse-process samplers: one class each, and the registry the command line reads.

Every sampler has two duties (as the schedulers of the field's libraries do):
``timesteps()``, the 0-based steps at which it evaluates the network, from the
noisiest to the cleanest, and ``step(x, t, t_prev, eps, noise)``, one update
x_t -> x_{t_prev} from the noise prediction (``t_prev = -1``: the clean image).
The equations stay in ``DiffusionModel``; a sampler chooses which one to call
with which steps and remembers what a multistep solver needs.

* ``DDPMSampler``: Algorithm 2 of the paper, every step (``DiffusionModel.step``).
* ``DDIMSampler``: DDIM (Song et al. 2021), any number of steps, noise scale ``eta``.
* ``DPMSolverSampler``: DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep ODE solver.
* ``DistilledSampler``: deterministic DDIM on ``distillation_grid``, the steps a student of progressive
  distillation (Salimans and Ho 2022; ``distill.py``) was trained to take.
* ``StochasticDistilledSampler``: the same grid and network passes, each step two grid steps of DDIM
  and forward noise back by one (Meng et al. 2023, section 3.2).

Adding a sampler is one class here and one line in ``SAMPLERS``; the command line
takes its name, its defaults and which options it accepts from the class.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import numpy as np
import torch

from diffusion_model import CLIP_MODES, VARIANCES, DiffusionModel, log_snr, threshold_x0

Noise = Callable[[], torch.Tensor]  # draws z ~ N(0, I) of the batch's shape
STEP_SCHEDULES = ("uniform", "logsnr")


def timestep_schedule(alpha_bars: torch.Tensor, n: int, kind: str = "uniform") -> list[int]:
    """``n`` distinct 0-based time steps from T-1 down to 0 (both included) for a few-step sampler.

    ``uniform``: evenly spaced in t. ``logsnr``: evenly spaced in
    lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t)), half the log signal-to-noise
    ratio (Lu et al., 2022, section 3.3), each target rounded to the step of nearest
    lambda; where two targets round to the same step, the later one moves down by
    one, so the list stays strictly decreasing.
    """
    timesteps = len(alpha_bars)
    if not 1 <= n <= timesteps:
        raise ValueError(f"the number of steps must lie in 1..{timesteps}, got {n}")
    if kind not in STEP_SCHEDULES:
        raise ValueError(f"step schedule must be one of {STEP_SCHEDULES}, got {kind!r}")
    if n == 1:
        return [timesteps - 1]
    if kind == "uniform":
        return np.linspace(timesteps - 1, 0, n).round().astype(int).tolist()
    lam = log_snr(alpha_bars).cpu().numpy()
    targets = np.linspace(lam[-1], lam[0], n)
    steps = [int(np.abs(lam - target).argmin()) for target in targets]
    steps[0], steps[-1] = timesteps - 1, 0
    for k in range(1, n):  # strictly decreasing, leaving room for the steps still to come
        steps[k] = max(min(steps[k], steps[k - 1] - 1), n - 1 - k)
    return steps


def distillation_grid(timesteps: int, n: int) -> list[int]:
    """The ``n + 1`` boundaries of an ``n``-step grid over T = ``timesteps`` steps, noisiest first, ``-1`` last.

    ``s_k = T - 1 - round(k T / n)`` for k = 0..n (rounding half up, in integers), so ``s_0 = T - 1`` and
    ``s_n = -1``, the clean image (abar = 1). The 2n-step grid nests it exactly: its boundary 2k is
    ``s_k``, and its boundary 2k + 1 is the midpoint a teacher's first DDIM step lands on (Salimans and
    Ho 2022, Algorithm 2: t' = t - 0.5/N, t'' = t - 1/N in discrete steps). Strictly decreasing for n <= T.
    """
    if not 1 <= n <= timesteps:
        raise ValueError(f"the number of steps must lie in 1..{timesteps}, got {n}")
    return [timesteps - 1 - (2 * k * timesteps + n) // (2 * n) for k in range(n + 1)]


class Sampler:
    """A reverse process over ``ddpm``'s schedule.

    Class attributes: ``name`` (the CLI's ``--sampler``), ``default_steps``
    (None: every step), ``default_clip`` (``--clip-x0`` when not given;
    docs/results.md, "Few-step sampling"), ``options`` (the optional CLI options it accepts).
    """

    name: ClassVar[str]
    default_steps: ClassVar[int | None] = None
    default_clip: ClassVar[str] = "none"
    options: ClassVar[tuple[str, ...]] = ()
    student_grid: ClassVar[bool] = False  # samples a distilled checkpoint at its own steps by default

    def __init__(self, ddpm: DiffusionModel, steps: int | None = None, *, clip_x0: str | None = None) -> None:
        clip_x0 = self.default_clip if clip_x0 is None else clip_x0
        if clip_x0 not in CLIP_MODES:
            raise ValueError(f"clip_x0 must be one of {CLIP_MODES}, got {clip_x0!r}")
        timesteps = ddpm.timesteps
        steps = (timesteps if self.default_steps is None else min(self.default_steps, timesteps)) \
            if steps is None else steps
        if not 1 <= steps <= timesteps:
            raise ValueError(f"sample_steps must lie in 1..{timesteps} (the model's T), got {steps}")
        self.ddpm, self.steps, self.clip_x0 = ddpm, steps, clip_x0

    def timesteps(self) -> list[int]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what earlier steps left (a new batch starts at x_T)."""

    def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, object]:
        """What identifies the sampler in a report: its name, steps and options."""
        return dict(sampler=self.name, sample_steps=self.steps, clip_x0=self.clip_x0)


class DDPMSampler(Sampler):
    """Algorithm 2: every step T-1..0, Eq. 7's mean plus sigma_t z (no noise at the last step).

    ``variance``: sigma_t^2 = beta_t (the paper) or the forward posterior's beta-tilde_t.
    """

    name = "ddpm"
    options = ("variance",)

    def __init__(self, ddpm: DiffusionModel, steps: int | None = None, *, clip_x0: str | None = None,
                 variance: str = "beta") -> None:
        super().__init__(ddpm, steps, clip_x0=clip_x0)
        if self.steps != ddpm.timesteps:
            raise ValueError(f"the DDPM sampler (Algorithm 2) visits all {ddpm.timesteps} steps; use the DDIM or "
                             "DPM-Solver++ sampler to skip (--sampler ddim or dpm++)")
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.variance = variance

    def timesteps(self) -> list[int]:
        return list(range(self.ddpm.timesteps - 1, -1, -1))

    def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
        z = noise() if t > 0 else None  # Algorithm 2, line 3: z ~ N(0, I) if t > 1, else z = 0
        return self.ddpm.step(x, t, eta_theta=eps, z=z, clip_x0=self.clip_x0, variance=self.variance).x_prev

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "variance": self.variance}


class _SkippingSampler(Sampler):
    """A sampler over ``steps`` of the T time steps, spaced by ``step_schedule`` (uniform or log-SNR)."""

    default_clip = "clip"

    def __init__(self, ddpm: DiffusionModel, steps: int | None = None, *, clip_x0: str | None = None,
                 step_schedule: str = "uniform") -> None:
        super().__init__(ddpm, steps, clip_x0=clip_x0)
        if step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"step schedule must be one of {STEP_SCHEDULES}, got {step_schedule!r}")
        self.step_schedule = step_schedule

    def timesteps(self) -> list[int]:
        return timestep_schedule(self.ddpm.alpha_bars, self.steps, self.step_schedule)

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "step_schedule": self.step_schedule}


class DDIMSampler(_SkippingSampler):
    """DDIM (Song et al. 2021, Eq. 12): ``eta`` 0 is deterministic, 1 with every step is DDPM with beta-tilde."""

    name = "ddim"
    default_steps = 50
    options = ("step_schedule", "eta")

    def __init__(self, ddpm: DiffusionModel, steps: int | None = None, *, clip_x0: str | None = None,
                 step_schedule: str = "uniform", eta: float = 0.0) -> None:
        super().__init__(ddpm, steps, clip_x0=clip_x0, step_schedule=step_schedule)
        if not 0 <= eta <= 1:  # Song et al. define eta in [0, 1]; above 1, sigma_t^2 outgrows 1 - abar_{t-1}
            raise ValueError(f"the DDIM noise scale eta must lie in [0, 1], got {eta}")
        self.eta = eta

    def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
        z = noise() if self.eta > 0 and t_prev >= 0 else None
        return self.ddpm.ddim_step(x, t, t_prev, eta_theta=eps, ddim_eta=self.eta, z=z, clip_x0=self.clip_x0).x_prev

    def settings(self) -> dict[str, object]:
        return {**super().settings(), "eta": self.eta}


class DPMSolverSampler(_SkippingSampler):
    """DPM-Solver++(2M) (Lu et al. 2022): first order at the first step, then the last two x0 predictions."""

    name = "dpm++"
    default_steps = 20
    options = ("step_schedule",)

    def __init__(self, ddpm: DiffusionModel, steps: int | None = None, *, clip_x0: str | None = None,
                 step_schedule: str = "uniform") -> None:
        super().__init__(ddpm, steps, clip_x0=clip_x0, step_schedule=step_schedule)
        self.previous: tuple[torch.Tensor, int] | None = None  # the last x0 prediction and its step

    def reset(self) -> None:
        self.previous = None

    def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
        x0_pred = threshold_x0(self.ddpm.predict_x0(x, t, eps), self.clip_x0)
        x_prev = self.ddpm.dpm_solver_step(x, t, t_prev, x0_pred, self.previous)
        self.previous = (x0_pred, t)
        return x_prev


class DistilledSampler(Sampler):
    """Deterministic DDIM (Song et al. 2021, Eq. 12 with eta = 0) on ``distillation_grid``: a distilled student.

    The update is the one a student of progressive distillation learned to take (``distill.py``), so its
    default is no clipping, as in training; ``steps`` defaults to every step (a distilled checkpoint's own
    steps come from ``sampling_setup.open_model``).
    """

    name = "distilled"
    student_grid = True

    def timesteps(self) -> list[int]:
        return distillation_grid(self.ddpm.timesteps, self.steps)[:-1]

    def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
        return self.ddpm.ddim_step(x, t, t_prev, eta_theta=eps, ddim_eta=0.0, clip_x0=self.clip_x0).x_prev


class StochasticDistilledSampler(DistilledSampler):
    """Meng et al. (2023), section 3.2: the N-step stochastic sampler of a distilled student.

    On the grid s_0 > s_1 > ... > s_N = -1 of ``DistilledSampler``, from x at s_i: a deterministic DDIM step
    (Song et al. 2021, Eq. 12, eta = 0) two grid steps long, to s_{i+2}, then forward noise back to s_{i+1},
    q(x_{s_{i+1}} | x_{s_{i+2}}) (``DiffusionModel.renoise``), as Karras et al. (2022) re-inject noise; the
    last step (to the clean image) is the deterministic one. The same N network passes, with fresh noise
    at every step but the last.
    """

    name = "distilled-stochastic"

    def step(self, x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, noise: Noise) -> torch.Tensor:
        if t_prev < 0:
            return super().step(x, t, t_prev, eps, noise)
        grid = distillation_grid(self.ddpm.timesteps, self.steps)
        k = grid[grid.index(t_prev) + 1]  # two grid steps below t
        x_k = self.ddpm.ddim_step(x, t, k, eta_theta=eps, ddim_eta=0.0, clip_x0=self.clip_x0).x_prev
        return self.ddpm.renoise(x_k, k, t_prev, noise())


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (DDPMSampler, DDIMSampler, DPMSolverSampler,
                                                                DistilledSampler, StochasticDistilledSampler)}


def make_sampler(name: str, ddpm: DiffusionModel, steps: int | None = None, **options: object) -> Sampler:
    """The sampler ``name`` over ``ddpm``; ``options`` left at None take the class's defaults.

    An option the sampler does not take, given a value other than None, is a ``ValueError``.
    """
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    cls = SAMPLERS[name]
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(cls.options) - {"clip_x0"})
    if foreign:
        raise ValueError(f"the {name} sampler takes no {', '.join(foreign)}")
    return cls(ddpm, steps, **given)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- what ``utils.sample`` draws with


DEFAULT_SAMPLE_BATCH = 250  # images drawn at once by ``utils.sample``: memory stays flat in n_samples


class SamplingOutOfMemory(MemoryError):
    """A batch of images did not fit in memory; the message names the option to lower."""


def noise_seed(seed: int, index: int) -> int:
    """The seed of image ``index``'s own noise generator: its x_T and every z come from it, in order."""
    return (seed * 1_000_003 + index) % (2**63 - 1)


class ImageNoise:
    """N(0, I) draws for images ``start .. start + n - 1``, each from its own generator (``noise_seed``).

    So an image's noise depends on the seed and its index alone, never on which
    batch it was drawn in: any batch size gives the same images.
    """

    def __init__(self, seed: int, start: int, n: int, chw: tuple[int, ...], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(noise_seed(seed, start + i)) for i in range(n)]
        self.chw, self.device = chw, device

    def __call__(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.chw, generator=g, device=self.device) for g in self.generators])


def gif_frame_steps(timesteps: int, frames_per_gif: int) -> set[int]:
    """Loop positions (0 = first reverse step) after which a GIF frame is captured.

    ``frames_per_gif`` positions evenly spread over the reverse process, always
    including the last one (the final samples); at most ``timesteps`` frames.
    """
    if frames_per_gif < 1:
        raise ValueError(f"frames_per_gif must be >= 1, got {frames_per_gif}")
    return set(np.linspace(0, timesteps - 1, min(frames_per_gif, timesteps)).round().astype(int).tolist())


# --------------------------------------------------------------------------- class-conditional sampling


def class_labels(n_samples: int, num_classes: int, digits: list[int] | None = None) -> tuple[torch.Tensor, int | None]:
    """The labels of a class-conditional draw and the images per grid row: ``digits`` repeated to
    ``n_samples`` (rows as ``figures.grid_shape`` chooses: None), else one row per class, ``n_samples``
    rounded up to fill the rows."""
    if digits is not None:
        return torch.tensor([digits[i % len(digits)] for i in range(n_samples)]), None
    per_class = -(-n_samples // num_classes)
    return torch.arange(num_classes).repeat_interleave(per_class), per_class


def guidance_setting(weight: float | None, interval: tuple[int, int] | None, default_weight: float,
                     default_share: float | None, timesteps: int) -> tuple[float, tuple[int, int] | None]:
    """The guidance weight and interval: those given, and for what is not given the dataset's measured
    default (``config.DatasetInfo``: W at the steps t <= share x T); a weight given alone guides every step."""
    share = default_share
    if weight is None:
        weight = default_weight
    else:
        share = None
    if interval is None and share is not None:
        interval = (0, int(share * timesteps))
    if interval is not None and interval[1] >= timesteps:
        raise ValueError(f"--guidance-interval: time steps lie in 0..{timesteps - 1} (the checkpoint's T), "
                         f"got {interval[1]}")
    return weight, interval


def describe_guidance(weight: float, interval: tuple[int, int] | None) -> str:
    """``guidance 2.5 at t 0-500`` or ``guidance 1.5``."""
    return f"guidance {weight:g}" + ("" if interval is None else f" at t {interval[0]}-{interval[1]}")
