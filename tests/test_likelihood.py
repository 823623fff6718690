"""Tests of the variational bound (likelihood.py) against values computed by hand."""

import math

import pytest
import torch
from conftest import ZeroNet
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import likelihood as L
from diffusion_model import DiffusionModel


def test_normal_kl_by_hand():
    one = torch.tensor([1.0], dtype=torch.float64)
    # KL(N(0,1) || N(1,4)) = log 2 + (1 + 1) / 8 - 1/2
    kl = L.normal_kl(0 * one, one, one, 4 * one).item()
    assert kl == pytest.approx(math.log(2) + 2 / 8 - 0.5)
    assert L.normal_kl(one, 2 * one, one, 2 * one).item() == 0.0


def test_discretized_gaussian_sums_to_one_and_matches_by_hand():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, std in [(0.0, 0.1), (0.7, 0.02), (-1.0, 0.5), (0.0, 3.0)]:
        ll = L.discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean),
                                                   torch.full_like(levels, std))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # A bin in the middle: Phi((x + 1/255) / s) - Phi((x - 1/255) / s) for x = 0, mean 0, s = 0.1.
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    expected = math.log(phi(1 / 255 / 0.1) - phi(-1 / 255 / 0.1))
    zero = torch.zeros(1, dtype=torch.float64)
    got = L.discretized_gaussian_log_likelihood(zero, zero, zero + 0.1).item()
    assert got == pytest.approx(expected, rel=1e-9)
    # The top bin reaches to +inf: P(x = 1 | mean 1, s) = 1 - Phi(-1/255 / s).
    top = L.discretized_gaussian_log_likelihood(zero + 1, zero + 1, zero + 0.01).item()
    assert top == pytest.approx(math.log(1 - phi(-1 / 255 / 0.01)), rel=1e-9)


def test_posterior_matches_bayes_rule_in_one_dimension():
    """q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0): multiply the Gaussians."""
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 1, 1))
    t, x0, xt = 300, torch.tensor([0.4]), torch.tensor([-0.2])
    a, ab_prev = ddpm.alphas[t].double(), ddpm.alpha_bars[t - 1].double()
    # As a function of y = x_{t-1}: N(xt; sqrt(a) y, 1 - a) has precision a/(1-a) and mean xt / sqrt(a);
    # N(y; sqrt(ab_prev) x0, 1 - ab_prev). Precisions add; means are precision-weighted.
    p1, m1 = a / (1 - a), xt.double() / a.sqrt()
    p2, m2 = 1 / (1 - ab_prev), ab_prev.sqrt() * x0.double()
    mean, var = L.q_posterior(ddpm, x0.double(), xt.double(), t)
    # rel 1e-5: the schedule buffers are float32 (alpha_bar_t vs alpha_t * alpha_bar_{t-1} differ ~1e-7).
    assert var.item() == pytest.approx((1 / (p1 + p2)).item(), rel=1e-5)
    assert mean.item() == pytest.approx(((p1 * m1 + p2 * m2) / (p1 + p2)).item(), rel=1e-5)


def test_prior_term_by_hand_and_terms_add_up():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2), timesteps=50, beta_start=1e-3, beta_end=0.2)
    x0 = torch.zeros(3, 1, 2, 2)
    terms = L.bound_terms(ddpm, x0, torch.Generator().manual_seed(0))
    ab = ddpm.alpha_bars[-1].double().item()
    per_dim = 0.5 * (-math.log(1 - ab) + (1 - ab) - 1)  # KL(N(0, 1 - ab) || N(0, 1))
    assert torch.allclose(terms.prior, torch.full((3,), 4 * per_dim, dtype=torch.float64))
    assert (terms.diffusion > 0).all() and torch.isfinite(terms.decoder).all()
    bpd = terms.bits_per_dim(4)
    assert torch.allclose(bpd, (terms.prior + terms.diffusion + terms.decoder) / (4 * math.log(2)))


def test_a_perfect_denoiser_leaves_only_the_variance_mismatch():
    """If eps_theta returns the true noise, the model's mean is the posterior mean at every t.

    Its KL to the posterior is then only the variance mismatch (beta_t vs beta-tilde_t),
    which the bound computes by hand here.
    """

    class Oracle(nn.Module):
        def __init__(self, ddpm_ref, x0):
            super().__init__()
            self.ref, self.x0 = [ddpm_ref], x0

        def forward(self, x, t):
            ddpm = self.ref[0]
            idx = t.reshape(-1)
            return (x - ddpm.sqrt_alpha_bars[idx].reshape(-1, 1, 1, 1) * self.x0) / \
                ddpm.sqrt_one_minus_alpha_bars[idx].reshape(-1, 1, 1, 1)

    x0 = torch.full((2, 1, 2, 2), 0.5)
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2), timesteps=30, beta_start=1e-3, beta_end=0.2)
    ddpm.backward_process_model = Oracle(ddpm, x0)
    terms = L.bound_terms(ddpm, x0, torch.Generator().manual_seed(0))
    expected = 0.0
    for t in range(1, 30):
        beta = ddpm.betas[t].double()
        beta_tilde = (1 - ddpm.alpha_bars[t - 1].double()) / (1 - ddpm.alpha_bars[t].double()) * beta
        expected += 4 * 0.5 * (math.log(beta / beta_tilde) + beta_tilde / beta - 1)
    assert torch.allclose(terms.diffusion, torch.full((2,), float(expected), dtype=torch.float64), rtol=1e-4)
    # At t = 0 the mean is exactly x_0, so L_0 is the mass of N(0, beta_1) within +-1/255, per pixel.
    phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    sigma = math.sqrt(ddpm.betas[0].item())
    decoder = -4 * math.log(phi(1 / 255 / sigma) - phi(-1 / 255 / sigma))
    assert torch.allclose(terms.decoder, torch.full((2,), decoder, dtype=torch.float64), rtol=1e-3)


def test_bits_per_dim_over_a_loader():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2), timesteps=20, beta_start=1e-3, beta_end=0.3)
    loader = DataLoader(TensorDataset(torch.zeros(10, 1, 2, 2)), batch_size=4)
    result = L.bits_per_dim(ddpm, loader, n_images=6)
    assert result["n_images"] == 6
    parts = result["prior_bpd"] + result["diffusion_bpd"] + result["decoder_bpd"]
    assert result["bits_per_dim"] == pytest.approx(parts)
    assert L.bits_per_dim(ddpm, loader, n_images=6, seed=0) == result  # seeded


class MeanMatcher(nn.Module):
    """eps_theta = k_t x_t with k_t chosen so the model's mean (Eq. 7) is coef_xt[t] x_t: the posterior mean's
    x_t part. The model then misses only the posterior's x_0 part, whatever the noise: every term of the bound is
    a function of x_0 alone (at t = 0, coef_xt = 0 and the model's mean is 0)."""

    def __init__(self, ddpm: DiffusionModel) -> None:
        super().__init__()
        alpha, abar, beta = ddpm.alphas.double(), ddpm.alpha_bars.double(), ddpm.betas.double()
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        coef_xt = alpha.sqrt() * (1 - abar_prev) / (1 - abar)
        self.k = (1 - alpha.sqrt() * coef_xt) * (1 - abar).sqrt() / beta

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.k[t.reshape(-1)].reshape(-1, 1, 1, 1) * x.double()).float()


def test_bits_per_dim_over_a_loader_is_the_mean_of_the_images_bounds():
    """Six distinct images in batches of 4 (the second one cut to 2): the loader's figures are the mean over the
    images of each image's own bound, not a mean of batch means, and the images after n_images are left out."""
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2), timesteps=20, beta_start=1e-3, beta_end=0.3)
    ddpm.backward_process_model = MeanMatcher(ddpm)
    images = torch.linspace(-1, 1, 10 * 4).reshape(10, 1, 2, 2) ** 3  # every image different
    loader = DataLoader(TensorDataset(images), batch_size=4)
    result = L.bits_per_dim(ddpm, loader, n_images=6)
    per_image = [L.bound_terms(ddpm, images[i:i + 1], torch.Generator().manual_seed(100 + i)) for i in range(6)]
    scale = 4 * math.log(2)
    expected = dict(prior_bpd=[t.prior.item() / scale for t in per_image],
                    diffusion_bpd=[t.diffusion.item() / scale for t in per_image],
                    decoder_bpd=[t.decoder.item() / scale for t in per_image],
                    bits_per_dim=[t.bits_per_dim(4).item() for t in per_image])
    assert result["n_images"] == 6
    for key, values in expected.items():
        assert result[key] == pytest.approx(sum(values) / 6, rel=1e-5), key
    # the images' bounds differ, so a mean of batch means (or the wrong images) would not match
    bpd = expected["bits_per_dim"]
    assert (sum(bpd[:4]) / 4 + sum(bpd[4:]) / 2) / 2 != pytest.approx(sum(bpd) / 6, rel=1e-3)
    assert sum(bpd[:4]) / 4 != pytest.approx(sum(bpd) / 6, rel=1e-3)
    # and each image's bound does not depend on the noise drawn (what made the comparison above exact)
    again = L.bound_terms(ddpm, images[:6], torch.Generator().manual_seed(0))
    assert torch.allclose(again.bits_per_dim(4), torch.tensor(bpd, dtype=torch.float64), rtol=1e-5)


def test_prior_term_at_a_non_zero_image_by_hand():
    """L_T = KL(N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1)) per pixel: 0.5 (abar_T x_0^2 + (1 - abar_T)
    - log(1 - abar_T) - 1), summed over the pixels; in bits/dim divided by (pixels * ln 2). abar_T in float64
    from the betas."""
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2), timesteps=10, beta_start=1e-3, beta_end=0.1)
    abar_T = torch.prod(1 - torch.linspace(1e-3, 0.1, 10, dtype=torch.float64)).item()  # ~0.59: x_0 shows
    x0 = torch.tensor([[[[1.0, -1.0], [0.5, -0.25]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[0.8, 0.8], [0.8, 0.8]]]])
    terms = L.bound_terms(ddpm, x0, torch.Generator().manual_seed(0))
    for i in range(3):
        kl = sum(0.5 * (abar_T * v**2 + (1 - abar_T) - math.log(1 - abar_T) - 1) for v in x0[i].flatten().tolist())
        assert terms.prior[i].item() == pytest.approx(kl, rel=1e-6)
        bpd = L.bits_per_dim(ddpm, DataLoader(TensorDataset(x0[i:i + 1]), batch_size=1), n_images=1)
        assert bpd["prior_bpd"] == pytest.approx(kl / (4 * math.log(2)), rel=1e-6)
    assert terms.prior[0] > terms.prior[1] + 0.5  # the image's own part: abar_T * sum x_0^2 / 2 = 0.67 nats
