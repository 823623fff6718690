"""The forward (noising) and reverse (denoising) processes of DDPM (paper sections 3 and 4).

Index convention, used everywhere in this package: tensors are 0-based. Index
``i`` in ``betas``, ``alphas`` and ``alpha_bars``, and the integer time step
``i`` given to the network, stand for the paper's time step ``t = i + 1``
(``t = 1..T``). So ``betas[0] = beta_1 = beta_start`` and
``betas[T-1] = beta_T = beta_end``; training draws ``i ~ U{0..T-1}`` (Algorithm 1,
``t ~ U{1..T}``) and sampling runs ``i = T-1, ..., 0`` (Algorithm 2,
``t = T, ..., 1``), adding no noise at ``i = 0`` (the paper's ``t = 1``).

Reverse processes, all from the same trained noise predictor eps_theta:

* ``step``: Algorithm 2 with the mean of Eq. 7 (``sigma_t^2 = beta_t`` as the
  paper, or the posterior variance beta-tilde_t of Ho et al.);
* ``ddim_step``: DDIM (Song et al., 2021), any subset of the steps;
* ``dpm_solver_step``: DPM-Solver++(2M) (Lu et al., 2022), a second-order
  multistep solver of the same ODE as deterministic DDIM;
* ``renoise``: q(x_s | x_k) for s > k, the forward process over several steps
  (the stochastic sampler of a distilled student, Meng et al. 2023).

Each can clip the predicted x_0 (``threshold_x0``); ``samplers.py`` picks the
steps a sampler visits and calls these. The network predicts the noise (the paper)
or, with ``prediction="v"``, the velocity of Salimans and Ho (2022), which
``DiffusionModel.backward`` turns into the same noise prediction.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from config import BETA_SCHEDULES, PREDICTIONS

CLIP_MODES = ("none", "clip", "dynamic")
VARIANCES = ("beta", "posterior")


class ReverseStep(NamedTuple):
    """Result of one reverse step: x_{t-1} and the x_0 implied by the noise prediction."""

    x_prev: torch.Tensor
    x0_pred: torch.Tensor


def _per_sample(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` for a batch of time steps and shape it (N, 1, 1, ...) to broadcast."""
    return values[t.reshape(-1)].reshape(-1, *([1] * (ndim - 1)))


def threshold_x0(x0: torch.Tensor, mode: str = "none", quantile: float = 0.995) -> torch.Tensor:
    """Keep a predicted x_0 inside the data's range [-1, 1] (images are scaled to it, Figures 1 and 4).

    ``none``: unchanged, as Algorithm 2 writes it. ``clip``: clamp to [-1, 1], as
    Ho et al.'s released sampler does. ``dynamic``: dynamic thresholding
    (Saharia et al., 2022): per image, s = the ``quantile`` of |x_0|, at least
    1; clamp to [-s, s] and divide by s.
    """
    if mode == "none":
        return x0
    if mode == "clip":
        return x0.clamp(-1.0, 1.0)
    if mode == "dynamic":
        s = torch.quantile(x0.abs().flatten(1).float(), quantile, dim=1).clamp_min(1.0).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.dim() - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s
    raise ValueError(f"clip mode must be one of {CLIP_MODES}, got {mode!r}")


def log_snr(alpha_bars: torch.Tensor) -> torch.Tensor:
    """lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), in float64."""
    abar = alpha_bars.double()
    return 0.5 * (torch.log(abar) - torch.log1p(-abar))


def get_loss(noise: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
    """The simplified DDPM loss of Eq. 8: mean squared error between true and predicted noise."""
    return torch.mean((noise - noise_pred) ** 2)


class DiffusionModel(nn.Module):
    """DDPM with a linear (the paper's) or cosine beta schedule around a backward-process network (Listing 2).

    Args:
        backward_process_model: the noise predictor eps_theta(x, t), e.g. ``MyUNet``.
        beta_start, beta_end: beta_1 and beta_T of the linear schedule (Listing 1).
        timesteps: the number of diffusion steps T.
        device: where to put the model; None leaves it where it is.
        image_chw: (C, H, W) of the images. The paper hard-codes (1, 28, 28);
            here it defaults to the network's ``config`` (MyUNet has one).
        schedule: ``linear`` (the paper's) or ``cosine`` (Nichol and Dhariwal
            2021; beta_start and beta_end are then unused).
        schedule_shift: ``s > 0`` divides the schedule's signal-to-noise ratio abar / (1 - abar) at every
            step by ``s ** 2`` (the shifted schedule of Hoogeboom et al. 2023, "simple diffusion"): a 64x64
            image keeps about (64 / 28)^2 times more signal than a 28x28 one at the same noise level, so
            ``s = 64 / 28`` gives Persian digits the noise levels MNIST sees. 1: the schedule unchanged.
        prediction: what the network outputs: ``eps``, the noise (Eq. 8, the paper), or
            ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans and Ho 2022), which
            ``backward`` turns into eps (see there).

    The schedule tensors are registered buffers, so ``.to(device)``,
    ``state_dict()`` and checkpoints carry them.
    """

    def __init__(
        self,
        backward_process_model: nn.Module,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        timesteps: int = 1000,
        device: torch.device | str | None = None,
        image_chw: tuple[int, int, int] | None = None,
        schedule: str = "linear",
        prediction: str = "eps",
        schedule_shift: float = 1.0,
    ) -> None:
        super().__init__()
        if schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")
        if not (schedule_shift > 0 and np.isfinite(schedule_shift)):
            raise ValueError(f"schedule_shift must be a finite positive number, got {schedule_shift}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not 0.0 < beta_start < 1.0 or not 0.0 < beta_end < 1.0:
            raise ValueError(f"betas must lie in (0, 1), got beta_start={beta_start}, beta_end={beta_end}")
        if timesteps > 1 and beta_end <= beta_start:
            raise ValueError(f"beta_end ({beta_end}) must be larger than beta_start ({beta_start})")
        if image_chw is None:
            cfg = getattr(backward_process_model, "config", None)
            if cfg is None:
                raise ValueError("image_chw is required when the network has no config")
            image_chw = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.timesteps = int(timesteps)
        self.schedule = schedule
        self.prediction = prediction
        self.schedule_shift = float(schedule_shift)
        self.image_chw = tuple(int(v) for v in image_chw)
        self.backward_process_model = backward_process_model

        # Computed in float64 and stored as float32: alpha_bars is a product of
        # 1000 factors, and float64 keeps its last digits right.
        betas = (self.get_linear_beta_schedule(beta_start, beta_end, timesteps, dtype=torch.float64)
                 if schedule == "linear" else self.get_cosine_beta_schedule(timesteps))
        if schedule_shift != 1.0:
            betas = self.shift_schedule(betas, schedule_shift)
        alphas = 1.0 - betas  # Eq. 1
        alpha_bars = torch.cumprod(alphas, dim=0)  # Eq. 5
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("alpha_bars", alpha_bars.float())
        # sqrt(abar_t) and sqrt(1 - abar_t) of Eq. 4, taken in float64: 1 - abar_t is
        # about 1e-4 at t = 0 and loses most of its digits when formed in float32.
        # Derived from the schedule, so not saved in state_dict (persistent=False).
        self.register_buffer("sqrt_alpha_bars", alpha_bars.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bars", (1.0 - alpha_bars).sqrt().float(), persistent=False)
        # The forward posterior q(x_{t-1} | x_t, x_0) (Ho et al. Eq. 6-7), with abar_{-1} = 1 before the
        # first step: its variance beta-tilde_t and the coefficients of its mean.
        abar_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        for name, value in (("posterior_variance", (1 - abar_prev) / (1 - alpha_bars) * betas),
                            ("posterior_mean_coef_x0", abar_prev.sqrt() * betas / (1 - alpha_bars)),
                            ("posterior_mean_coef_xt", alphas.sqrt() * (1 - abar_prev) / (1 - alpha_bars))):
            self.register_buffer(name, value.float(), persistent=False)
        self.register_buffer("lambdas", log_snr(alpha_bars), persistent=False)  # float64, for DPM-Solver++
        if device is not None:
            self.to(device)

    @staticmethod
    def get_linear_beta_schedule(
        beta_start: float = 1e-4, beta_end: float = 0.02, timesteps: int = 1000, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """beta_1..beta_T evenly spaced from beta_start to beta_end (Listing 1, ``linspace``)."""
        return torch.linspace(beta_start, beta_end, timesteps, dtype=dtype)

    @staticmethod
    def get_cosine_beta_schedule(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
        """The cosine schedule (Nichol and Dhariwal 2021, Eq. 17), float64.

        ``abar(t) = f(t) / f(0)`` with ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``;
        ``beta_t = 1 - abar(t) / abar(t - 1)`` for t = 1..T, capped at ``max_beta``
        (their choice: the last betas would otherwise reach 1).
        """
        steps = torch.arange(timesteps + 1, dtype=torch.float64)
        f = torch.cos((steps / timesteps + s) / (1 + s) * torch.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)

    @staticmethod
    def shift_schedule(betas: torch.Tensor, shift: float) -> torch.Tensor:
        """The betas whose SNR_t = abar_t / (1 - abar_t) is ``SNR_t / shift**2`` (Hoogeboom et al. 2023), float64.

        ``log SNR'_t = log SNR_t - 2 log shift``, ``abar'_t = sigmoid(log SNR'_t)`` and
        ``beta'_t = 1 - abar'_t / abar'_{t-1}`` (abar'_0 = 1 before the first step).
        """
        abar = torch.cumprod(1.0 - betas.double(), dim=0)
        shifted = torch.sigmoid(torch.log(abar) - torch.log1p(-abar) - 2.0 * np.log(shift))
        return 1.0 - shifted / torch.cat([shifted.new_ones(1), shifted[:-1]])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def add_noise(
        self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample x_t ~ q(x_t | x_0) in closed form (Eq. 3-4), one time step per sample.

        ``x_0``: clean images (N, C, H, W) in [-1, 1]; ``t``: 0-based steps, shape (N,) or (N, 1), in 0..T-1;
        ``noise``: eps ~ N(0, I) shaped like x_0, drawn when None.
        Returns ``(x_t, noise)`` with ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
        """
        t = t.reshape(-1)
        if t.shape[0] != x_0.shape[0]:
            raise ValueError(f"add_noise got {x_0.shape[0]} images but {t.shape[0]} time steps")
        if noise is None:
            noise = torch.randn_like(x_0)
        elif noise.shape != x_0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_0 shape {tuple(x_0.shape)}")
        mean_coef = _per_sample(self.sqrt_alpha_bars, t, x_0.dim())
        std = _per_sample(self.sqrt_one_minus_alpha_bars, t, x_0.dim())
        return mean_coef * x_0 + std * noise, noise

    def renoise(self, x_k: torch.Tensor, k: int, s: int, z: torch.Tensor) -> torch.Tensor:
        """Sample q(x_s | x_k) for 0-based steps ``-1 <= k < s`` (``k = -1``: the clean image, abar = 1).

        Eq. 2 composed over the steps k+1..s: ``x_s = sqrt(abar_s / abar_k) x_k + sqrt(1 - abar_s / abar_k) z``;
        with ``k = -1`` it is Eq. 4 (``add_noise``) at one step for the whole batch.
        """
        if not -1 <= k < s < self.timesteps:
            raise ValueError(f"renoise needs -1 <= k < s <= {self.timesteps - 1}, got k={k}, s={s}")
        ratio = self.alpha_bars[s] / (self.alpha_bars[k] if k >= 0 else 1.0)
        return ratio.sqrt() * x_k + (1 - ratio).sqrt() * z

    @property
    def num_classes(self) -> int:
        """The classes of a class-conditional network (0: unconditional, as in the paper)."""
        return getattr(self.backward_process_model, "config", {}).get("num_classes", 0)

    def backward(self, x: torch.Tensor, t: torch.Tensor,  # type: ignore[override]
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's noise prediction eps_theta(x_t, t) (Eq. 8); with labels y, eps_theta(x_t, t, y).

        Named as in the paper; this is not ``nn.Module``'s autograd ``backward``.
        With ``prediction="v"`` the network's output is v, and since
        ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` (Eq. 4), ``eps = sqrt(1 - abar) x_t + sqrt(abar) v``.
        At large t (abar near 0) eps is then x_t itself, whatever the network says: a network that
        cannot copy its input to its output (``ResAttnUNet`` with 4x4 patches) no longer ruins the
        x_0 it implies there. The loss stays Eq. 8 on this eps, so in v terms each image's error is
        weighted by abar_t (with Min-SNR: min(SNR, gamma) / (SNR + 1), Hang et al.'s v weighting).
        """
        out = self.backward_process_model(x, t) if y is None else self.backward_process_model(x, t, y)
        if self.prediction == "v":
            out = (_per_sample(self.sqrt_one_minus_alpha_bars, t, x.dim()) * x
                   + _per_sample(self.sqrt_alpha_bars, t, x.dim()) * out)
        return out

    def guided_backward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                        guidance: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Classifier-free guidance (Ho and Salimans 2022): ``eps_u + w * (eps_c - eps_u)``.

        ``eps_c`` is the prediction with the labels ``y``, ``eps_u`` with "no label";
        ``w = guidance``: 0 is the unconditional model, 1 the conditional one (one
        network pass each), any other w both in one batch. ``y = None``: plain ``backward``.
        ``guidance`` may also be one weight per image, shape (N,) (distillation: each image its own t).
        """
        if y is None:
            return self.backward(x, t)
        per_image = isinstance(guidance, torch.Tensor)
        if not per_image and guidance == 1.0:
            return self.backward(x, t, y)
        null = torch.full_like(y, self.num_classes)
        if not per_image and guidance == 0.0:
            return self.backward(x, t, null)
        both = self.backward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        eps_c, eps_u = both.chunk(2)
        w = guidance.to(eps_c.dtype).reshape(-1, *([1] * (x.dim() - 1))) if per_image else guidance
        return eps_u + w * (eps_c - eps_u)

    def forward(
        self, x_0: torch.Tensor, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training draw (Algorithm 1, lines 2-4): returns ``(noisy, noise, eta_theta)``.

        Draws ``t ~ U{0..T-1}`` per sample (the paper's t ~ U{1..T}) and the noise
        ``eta ~ N(0, I)``, from ``generator`` when given (``evaluate`` passes a
        seeded one) else from the global random state, noises x_0 with Eq. 4 and
        predicts the noise; the loss of Eq. 8 is ``get_loss(noise, eta_theta)``.
        ``t`` (0-based, shape (N,)) replaces the draw of the time steps when given;
        ``y`` are the labels of a class-conditional network.
        (Algorithm 1, line 5 writes sqrt(alpha_t) where Eq. 4 and Eq. 9 have
        sqrt(alpha_bar_t); the closed form uses alpha_bar_t.)
        """
        n = x_0.shape[0]
        if t is None:
            t = torch.randint(0, self.timesteps, (n,), generator=generator, device=x_0.device)
        noisy, noise = self.add_noise(x_0, t, torch.randn_like(x_0, generator=generator))
        eta_theta = self.backward(noisy, t, y)
        return noisy, noise, eta_theta

    def _predict(self, x_t: torch.Tensor, t: int, eta_theta: torch.Tensor | None) -> torch.Tensor:
        """eps_theta(x_t, t) for one 0-based step shared by the batch, unless already given."""
        if not 0 <= t < self.timesteps:
            raise ValueError(f"time step {t} outside 0..{self.timesteps - 1}")
        if eta_theta is not None:
            return eta_theta
        return self.backward(x_t, torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long))

    def predict_x0(self, x_t: torch.Tensor, t: int, eta_theta: torch.Tensor) -> torch.Tensor:
        """The x_0 implied by a noise prediction: Eq. 4 solved for x_0."""
        return (x_t - self.sqrt_one_minus_alpha_bars[t] * eta_theta) / self.sqrt_alpha_bars[t]

    def p_mean(self, x_t: torch.Tensor, t: int, eta_theta: torch.Tensor) -> torch.Tensor:
        """The reverse step's mean, Eq. 7: ``(x_t - beta_t / sqrt(1 - abar_t) * eps_theta) / sqrt(alpha_t)``.

        Algorithm 2 writes (1 - alpha_t) / sqrt(1 - alpha_t); Eq. 7 has the correct
        beta_t / sqrt(1 - alpha_bar_t), which is what the paper's own listing computes.
        """
        return (x_t - self.betas[t] / self.sqrt_one_minus_alpha_bars[t] * eta_theta) / self.alphas[t].sqrt()

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The mean of q(x_{t-1} | x_t, x_0) (Ho et al. Eq. 7); with x_0 from Eq. 4 solved for x_0 it is Eq. 7 here."""
        return self.posterior_mean_coef_x0[t] * x0 + self.posterior_mean_coef_xt[t] * x_t

    def step(
        self,
        x_t: torch.Tensor,
        t: int,
        eta_theta: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        *,
        clip_x0: str = "none",
        variance: str = "beta",
    ) -> ReverseStep:
        """One reverse step x_t -> x_{t-1} (Algorithm 2, lines 3-4) at 0-based step ``t``.

        Mean of Eq. 7, ``mu = (x_t - beta_t / sqrt(1 - abar_t) * eps_theta) / sqrt(alpha_t)``,
        plus ``sigma_t z`` with ``z ~ N(0, I)``, except at ``t = 0`` (the paper's
        t = 1), where no noise is added. ``variance``: ``beta`` is the paper's
        ``sigma_t^2 = beta_t``; ``posterior`` is beta-tilde_t, the variance of
        q(x_{t-1} | x_t, x_0) (Ho et al. section 3.2 discuss both).

        With ``clip_x0`` other than ``none``, the x_0 implied by eps_theta (Eq. 4
        solved for x_0) is clipped (``threshold_x0``) and the mean is the
        posterior mean from it, as Ho et al.'s released sampler does; unclipped,
        that mean equals Eq. 7.

        ``x_t``: images (N, C, H, W); ``t``: 0..T-1, one for the batch; ``eta_theta``: the network's
        prediction at (x_t, t), computed when None; ``z``: the noise to add, drawn when None and t > 0.
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        eta_theta = self._predict(x_t, t, eta_theta)
        x0_pred = self.predict_x0(x_t, t, eta_theta)
        if clip_x0 == "none":
            mean = self.p_mean(x_t, t, eta_theta)  # Eq. 7, exactly as Algorithm 2
        else:
            x0_pred = threshold_x0(x0_pred, clip_x0)
            mean = self.posterior_mean(x0_pred, x_t, t)
        if t == 0:
            return ReverseStep(mean, x0_pred)
        if z is None:
            z = torch.randn_like(x_t)
        sigma = self.betas[t].sqrt() if variance == "beta" else self.posterior_variance[t].sqrt()
        return ReverseStep(mean + sigma * z, x0_pred)

    def ddim_step(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        eta_theta: torch.Tensor | None = None,
        ddim_eta: float = 0.0,
        z: torch.Tensor | None = None,
        *,
        clip_x0: str = "none",
    ) -> ReverseStep:
        """One DDIM step from 0-based step ``t`` to ``t_prev < t`` (Song et al., 2021, Eq. 12).

        ``x_prev = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps_theta + sigma z`` with
        ``sigma = ddim_eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)``.
        ``t_prev = -1`` means the clean image (abar = 1). ``ddim_eta = 0`` (Song et al.'s eta) is
        deterministic; ``ddim_eta = 1`` with every step (``t_prev = t - 1``) is DDPM with the posterior
        variance beta-tilde. The same trained network serves: no retraining.
        With ``clip_x0``, x0_pred is clipped (``threshold_x0``) and the noise
        re-derived from it (Eq. 4 solved for eps), so the step stays on Eq. 4.
        """
        if not -1 <= t_prev < t:
            raise ValueError(f"DDIM needs -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
        if ddim_eta < 0:
            raise ValueError(f"ddim_eta must be >= 0, got {ddim_eta}")
        eta_theta = self._predict(x_t, t, eta_theta)
        a_bar_t = self.alpha_bars[t]
        a_bar_prev = self.alpha_bars[t_prev] if t_prev >= 0 else torch.ones_like(a_bar_t)
        x0_pred = self.predict_x0(x_t, t, eta_theta)
        if clip_x0 != "none":
            x0_pred = threshold_x0(x0_pred, clip_x0)
            eta_theta = (x_t - self.sqrt_alpha_bars[t] * x0_pred) / self.sqrt_one_minus_alpha_bars[t]
        sigma = ddim_eta * ((1 - a_bar_prev) / (1 - a_bar_t) * (1 - a_bar_t / a_bar_prev)).sqrt()
        x_prev = a_bar_prev.sqrt() * x0_pred + (1 - a_bar_prev - sigma**2).clamp_min(0).sqrt() * eta_theta
        if ddim_eta > 0 and t_prev >= 0:  # sigma > 0
            x_prev = x_prev + sigma * (torch.randn_like(x_t) if z is None else z)
        return ReverseStep(x_prev, x0_pred)

    def dpm_solver_step(
        self,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        x0_pred: torch.Tensor,
        previous: tuple[torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        """One DPM-Solver++(2M) step from 0-based step ``t`` to ``t_prev < t`` (Lu et al., 2022, Algorithm 2).

        The solver of the diffusion ODE in data prediction: with alpha_t =
        sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
        and h = lambda_{t_prev} - lambda_t,

            x_{t_prev} = (sigma_{t_prev} / sigma_t) x_t - alpha_{t_prev} (e^{-h} - 1) D

        where D = x0_pred (first order: the same update as deterministic DDIM), or,
        given ``previous = (x0_pred at the step s before t, s)``, the second-order
        multistep D = (1 + 1/(2r)) x0_pred - 1/(2r) x0_s with r = (lambda_t - lambda_s) / h.
        ``x0_pred`` is the data prediction at (x_t, t), Eq. 4 solved for x_0 (clipped
        or not by the caller). ``t_prev = -1`` is the clean image (sigma = 0, alpha = 1):
        the last step is first order and lands on ``x0_pred``.
        """
        if not -1 <= t_prev < t:
            raise ValueError(f"DPM-Solver++ needs -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
        if t_prev == -1:
            return x0_pred
        h = self.lambdas[t_prev] - self.lambdas[t]
        d = x0_pred
        if previous is not None:
            x0_before, t_before = previous
            if not t < t_before < self.timesteps:
                raise ValueError(f"the previous step must lie after t={t}, got {t_before}")
            r = (self.lambdas[t] - self.lambdas[t_before]) / h
            d = (1 + 1 / (2 * r)).to(x0_pred.dtype) * x0_pred - (1 / (2 * r)).to(x0_pred.dtype) * x0_before
        # alpha^2 = abar = sigmoid(2 lambda) and sigma^2 = sigmoid(-2 lambda): every coefficient in float64.
        sigma_ratio = (torch.sigmoid(-2 * self.lambdas[t_prev]) / torch.sigmoid(-2 * self.lambdas[t])).sqrt()
        coef = torch.sigmoid(2 * self.lambdas[t_prev]).sqrt() * torch.expm1(-h)
        return sigma_ratio.to(x_t.dtype) * x_t - coef.to(x_t.dtype) * d
