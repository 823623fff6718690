"""The variational bound on the negative log-likelihood, in bits per dimension.

Ho et al. (2020), Eq. 5: ``L = L_T + sum_{t=2..T} L_{t-1} + L_0`` with

* ``L_T = KL(q(x_T | x_0) || N(0, I))``;
* ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))``, the forward
  posterior (Ho et al. Eq. 6-7) against the model's reverse step
  (``DiffusionModel.p_mean``, the tutorial's Eq. 7, variance ``sigma_t^2 = beta_t``);
* ``L_0 = -log p_theta(x_0 | x_1)``, a Gaussian with the reverse step's mean and
  variance, discretized to the 256 grey levels of [-1, 1] (Ho et al. Eq. 13).

Time steps are 0-based as in ``DiffusionModel``: index ``i`` is the paper's ``t = i + 1``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader

from diffusion_model import DiffusionModel
from distributed import progress_bar


def normal_kl(mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor, var2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per element, in nats."""
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for images x in [-1, 1] on 256 levels (bins of width 2/255).

    The mass of N(mean, std^2) over x's bin ``[x - 1/255, x + 1/255]``; the first
    and last bins reach to -inf and +inf, so the 256 probabilities sum to 1.
    """
    x, mean, std = x.double(), mean.double(), std.double()
    upper = torch.where(x > 0.999, torch.ones_like(x), _std_normal_cdf((x + 1 / 255 - mean) / std))
    lower = torch.where(x < -0.999, torch.zeros_like(x), _std_normal_cdf((x - 1 / 255 - mean) / std))
    return torch.log((upper - lower).clamp_min(1e-12))


def q_posterior(ddpm: DiffusionModel, x_0: torch.Tensor, x_t: torch.Tensor,
                t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) at 0-based step t >= 1 (Ho et al. Eq. 6-7)."""
    a_bar_t, a_bar_prev = ddpm.alpha_bars[t].double(), ddpm.alpha_bars[t - 1].double()
    beta_t, alpha_t = ddpm.betas[t].double(), ddpm.alphas[t].double()
    coef_x0 = a_bar_prev.sqrt() * beta_t / (1 - a_bar_t)
    coef_xt = alpha_t.sqrt() * (1 - a_bar_prev) / (1 - a_bar_t)
    mean = coef_x0 * x_0 + coef_xt * x_t
    var = (1 - a_bar_prev) / (1 - a_bar_t) * beta_t
    return mean, var.expand_as(mean)


class BoundTerms(NamedTuple):
    """Per-image terms of the bound, in nats: L_T, the sum of the L_{t-1}, L_0."""

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor

    def bits_per_dim(self, dims: int) -> torch.Tensor:
        return (self.prior + self.diffusion + self.decoder) / (dims * math.log(2.0))


def bound_terms(ddpm: DiffusionModel, x_0: torch.Tensor, generator: torch.Generator | None = None) -> BoundTerms:
    """All terms of the bound for a batch of images x_0 in [-1, 1], shape (N, C, H, W).

    Uses T network evaluations per image (one for each t, each on its own x_t ~ q(x_t | x_0)).
    """
    device = x_0.device
    n = x_0.shape[0]
    x0 = x_0.double()

    def per_image(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(n, -1).sum(1)

    a_bar_T = ddpm.alpha_bars[-1].double()
    prior = per_image(normal_kl(a_bar_T.sqrt() * x0, (1 - a_bar_T).expand_as(x0),
                                torch.zeros_like(x0), torch.ones_like(x0)))
    diffusion = torch.zeros(n, dtype=torch.float64, device=device)
    decoder = torch.zeros(n, dtype=torch.float64, device=device)
    was_training = ddpm.training
    ddpm.eval()
    with torch.no_grad():
        for t in progress_bar(range(ddpm.timesteps), desc="Likelihood bound", leave=False):
            noise = torch.randn(x_0.shape, generator=generator, device=device)
            t_batch = torch.full((n,), t, device=device, dtype=torch.long)
            x_t, _ = ddpm.add_noise(x_0, t_batch, noise)
            eta_theta = ddpm.backward(x_t, t_batch)
            mean = ddpm.p_mean(x_t, t, eta_theta).double()  # Eq. 7
            var = ddpm.betas[t].double().expand_as(mean)  # sigma_t^2 = beta_t
            if t == 0:
                decoder = -per_image(discretized_gaussian_log_likelihood(x_0, mean, var.sqrt()))
            else:
                q_mean, q_var = q_posterior(ddpm, x0, x_t.double(), t)
                diffusion += per_image(normal_kl(q_mean, q_var, mean, var))
    ddpm.train(was_training)
    return BoundTerms(prior, diffusion, decoder)


def bits_per_dim(ddpm: DiffusionModel, loader: DataLoader, n_images: int, seed: int = 0) -> dict[str, float]:
    """The bound on the first ``n_images`` images of ``loader``, averaged per image.

    Returns ``bits_per_dim`` and its parts ``prior_bpd`` (L_T), ``diffusion_bpd``
    (the sum of the L_{t-1}) and ``decoder_bpd`` (L_0), plus ``n_images``.
    """
    device = ddpm.device
    gen = torch.Generator(device=device).manual_seed(seed)
    totals = dict(prior_bpd=0.0, diffusion_bpd=0.0, decoder_bpd=0.0, bits_per_dim=0.0)
    done = 0
    for batch in loader:
        x0 = batch[0][: n_images - done].to(device)
        terms = bound_terms(ddpm, x0, gen)
        dims = x0[0].numel()
        scale = dims * math.log(2.0)
        totals["prior_bpd"] += (terms.prior / scale).sum().item()
        totals["diffusion_bpd"] += (terms.diffusion / scale).sum().item()
        totals["decoder_bpd"] += (terms.decoder / scale).sum().item()
        totals["bits_per_dim"] += terms.bits_per_dim(dims).sum().item()
        done += len(x0)
        if done >= n_images:
            break
    if done == 0:
        raise ValueError("no images to bound")
    return {k: v / done for k, v in totals.items()} | dict(n_images=done)
