"""Tests of the forward process, the schedule and the reverse step (diffusion_model.py)."""

import math
import re

import pytest
import torch
from conftest import ZeroNet

from diffusion_model import DiffusionModel, get_loss
from unet import MyUNet


def make_ddpm(**kwargs) -> DiffusionModel:
    return DiffusionModel(ZeroNet(), image_chw=(1, 4, 4), **kwargs)


# float64 reference of the paper's schedule (Listing 1, Eq. 1 and 5), independent of the module.
BETAS64 = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ALPHA_BARS64 = torch.cumprod(1 - BETAS64, dim=0)


def test_schedule_matches_the_paper():
    ddpm = make_ddpm()
    assert ddpm.betas.shape == (1000,)
    assert ddpm.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert ddpm.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    # Linear: constant differences (Listing 1).
    diffs = torch.diff(ddpm.betas.double())
    assert torch.allclose(diffs, torch.full_like(diffs, (0.02 - 1e-4) / 999), rtol=1e-4)
    assert torch.allclose(ddpm.alphas, 1 - ddpm.betas)  # Eq. 1
    assert (torch.diff(ddpm.alpha_bars) < 0).all()  # strictly decreasing
    # float64 reference values of prod(1 - beta_i) (Eq. 5).
    assert ddpm.alpha_bars[-1].item() == pytest.approx(4.036e-05, rel=1e-3)
    assert ddpm.alpha_bars[499].item() == pytest.approx(0.0786, rel=1e-3)
    ref = math.prod(1 - (1e-4 + i * (0.02 - 1e-4) / 999) for i in range(1000))
    assert ddpm.alpha_bars[-1].item() == pytest.approx(ref, rel=1e-5)


def test_schedule_is_registered_buffers():
    ddpm = DiffusionModel(MyUNet(n_steps=10, image_size=28), timesteps=10)
    state = ddpm.state_dict()
    for name in ("betas", "alphas", "alpha_bars"):
        assert name in state
        assert name in dict(ddpm.named_buffers())
    for name in ("sqrt_alpha_bars", "sqrt_one_minus_alpha_bars"):  # derived: moved by .to(), not saved
        assert name in dict(ddpm.named_buffers()) and name not in state
    assert ddpm.image_chw == (1, 28, 28)  # taken from the network, not hard-coded
    assert ddpm.device == torch.device("cpu")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(timesteps=0), "timesteps must be >= 1"),
        (dict(beta_start=0.02, beta_end=0.01), "must be larger than beta_start"),
        (dict(beta_start=0.0), "betas must lie in (0, 1)"),
        (dict(beta_end=1.0), "betas must lie in (0, 1)"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_ddpm(**kwargs)


def test_add_noise_is_eq4_per_sample():
    ddpm = make_ddpm()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.tensor([0, 499, 999])
    x_t, returned = ddpm.add_noise(x0, t, noise)
    assert returned is noise
    for i, ti in enumerate(t.tolist()):
        a_bar = ALPHA_BARS64[ti]
        expected = a_bar.sqrt() * x0[i].double() + (1 - a_bar).sqrt() * noise[i].double()
        assert torch.allclose(x_t[i].double(), expected, atol=1e-6)
    # (N, 1) time steps as the paper passes them give the same result.
    x_t2, _ = ddpm.add_noise(x0, t.reshape(3, 1), noise)
    assert torch.equal(x_t, x_t2)
    # At t = 999 almost nothing of x_0 is left (Eq. 6).
    assert math.sqrt(ddpm.alpha_bars[999].item()) < 0.007


def test_add_noise_rejects_mismatched_inputs():
    ddpm = make_ddpm()
    with pytest.raises(ValueError, match="2 images but 3 time steps"):
        ddpm.add_noise(torch.zeros(2, 1, 4, 4), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise shape"):
        ddpm.add_noise(torch.zeros(2, 1, 4, 4), torch.tensor([1, 2]), torch.zeros(2, 1, 4, 5))


def test_closed_form_matches_the_markov_chain_statistically():
    """Eq. 4 in one jump has the distribution of Eq. 2 applied t times.

    20,000 chains of 16 pixels each give 320,000 draws per statistic. For the mean
    the standard error is sqrt(1 - abar) / sqrt(320000) < 0.0018, so 0.01 is over
    5 standard errors; for the variance (about 1 - abar <= 1) the standard error
    is about sqrt(2/320000) = 0.0025, so 0.015 is 6 of them.
    """
    timesteps = 100
    ddpm = make_ddpm(timesteps=timesteps, beta_start=1e-3, beta_end=0.05)
    torch.manual_seed(0)
    x0 = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    chains = x0.repeat(20000, 1, 1, 1)
    for i in range(timesteps // 2):  # Eq. 2, steps t = 1..50
        chains = ddpm.alphas[i].sqrt() * chains + (1 - ddpm.alphas[i]).sqrt() * torch.randn_like(chains)
    t = torch.full((20000,), timesteps // 2 - 1)
    jumped, _ = ddpm.add_noise(x0.repeat(20000, 1, 1, 1), t)
    a_bar = ddpm.alpha_bars[timesteps // 2 - 1]
    expected_mean = a_bar.sqrt() * x0[0]
    expected_var = (1 - a_bar).item()
    for sample in (chains, jumped):
        assert torch.allclose(sample.mean(0), expected_mean, atol=0.01)  # per pixel
        assert (sample - expected_mean).pow(2).mean().item() == pytest.approx(expected_var, abs=0.015)


def test_forward_returns_noise_and_prediction():
    ddpm = DiffusionModel(MyUNet(n_steps=50, image_size=28), timesteps=50)
    x0 = torch.rand(5, 1, 28, 28) * 2 - 1
    noisy, noise, eta_theta = ddpm(x0)
    assert noisy.shape == noise.shape == eta_theta.shape == x0.shape
    assert not torch.equal(noisy, x0)


def test_reverse_step_is_eq7_plus_sigma_z():
    ddpm = make_ddpm()
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 1, 4, 4, generator=g)
    eps = torch.randn(2, 1, 4, 4, generator=g)
    z = torch.randn(2, 1, 4, 4, generator=g)
    t = 487
    out = ddpm.step(x_t, t, eta_theta=eps, z=z)
    a, b, ab = ddpm.alphas[t], ddpm.betas[t], ddpm.alpha_bars[t]
    mean = 1 / a.sqrt() * (x_t - b / (1 - ab).sqrt() * eps)
    assert torch.allclose(out.x_prev, mean + b.sqrt() * z, atol=1e-6)
    # Golden value of the step's standard deviation: sqrt(beta_488) in the paper's 1-based terms.
    assert b.item() == pytest.approx(1e-4 + 487 * (0.02 - 1e-4) / 999, rel=1e-6)
    # The predicted x_0 inverts Eq. 4.
    x0 = torch.rand(2, 1, 4, 4, generator=g)
    x_t2, noise = ddpm.add_noise(x0, torch.tensor([t, t]), eps)
    assert torch.allclose(ddpm.step(x_t2, t, eta_theta=noise, z=z).x0_pred, x0, atol=1e-4)


def test_reverse_step_at_zero_adds_no_noise():
    ddpm = make_ddpm()
    x_1 = torch.randn(4, 1, 4, 4)
    eps = torch.randn(4, 1, 4, 4)
    torch.manual_seed(0)
    a = ddpm.step(x_1, 0, eta_theta=eps).x_prev
    torch.manual_seed(1)
    b = ddpm.step(x_1, 0, eta_theta=eps).x_prev
    assert torch.equal(a, b)  # no randomness at t = 0
    mean = (x_1.double() - BETAS64[0] / (1 - ALPHA_BARS64[0]).sqrt() * eps.double()) / (1 - BETAS64[0]).sqrt()
    assert torch.allclose(a.double(), mean, atol=1e-5)
    # And at t > 0 the step does add noise: two seeds differ.
    torch.manual_seed(0)
    c = ddpm.step(x_1, 1, eta_theta=eps).x_prev
    torch.manual_seed(1)
    d = ddpm.step(x_1, 1, eta_theta=eps).x_prev
    assert not torch.equal(c, d)


def test_reverse_step_calls_the_network_with_its_time_step():
    seen = []

    class Recorder(ZeroNet):
        def forward(self, x, t):
            seen.append(t.clone())
            return super().forward(x, t)

    ddpm = DiffusionModel(Recorder(), image_chw=(1, 4, 4), timesteps=10)
    ddpm.step(torch.zeros(3, 1, 4, 4), 7)
    assert torch.equal(seen[0], torch.tensor([7, 7, 7]))
    with pytest.raises(ValueError, match="outside 0..9"):
        ddpm.step(torch.zeros(3, 1, 4, 4), 10)


def test_ddim_with_eta_one_and_every_step_is_ddpm_with_posterior_variance():
    ddpm = make_ddpm()
    g = torch.Generator().manual_seed(2)
    x_t, eps, z = (torch.randn(2, 1, 4, 4, generator=g) for _ in range(3))
    t = 487
    ddim = ddpm.ddim_step(x_t, t, t - 1, eta_theta=eps, ddim_eta=1.0, z=z).x_prev
    mean = ddpm.step(x_t, t, eta_theta=eps, z=torch.zeros_like(z)).x_prev  # Eq. 7
    beta_tilde = (1 - ddpm.alpha_bars[t - 1]) / (1 - ddpm.alpha_bars[t]) * ddpm.betas[t]
    assert torch.allclose(ddim, mean + beta_tilde.sqrt() * z, atol=1e-5)
    # The posterior variance vanishes at the last step (the paper's t = 1): no noise into x_0.
    last = ddpm.ddim_step(x_t, 0, -1, eta_theta=eps, ddim_eta=1.0, z=z).x_prev
    assert torch.allclose(last, ddpm.step(x_t, 0, eta_theta=eps).x_prev, atol=1e-5)


def test_ddim_with_eta_zero_is_deterministic_and_exact_for_the_true_noise():
    """If eps_theta is the noise that made x_t, DDIM lands on Eq. 4 at t_prev with that noise."""
    ddpm = make_ddpm()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, generator=g)
    x_t, _ = ddpm.add_noise(x0, torch.tensor([900, 900]), eps)
    out = ddpm.ddim_step(x_t, 900, 450, eta_theta=eps, ddim_eta=0.0, z=torch.randn(2, 1, 4, 4))
    expected, _ = ddpm.add_noise(x0, torch.tensor([450, 450]), eps)
    assert torch.allclose(out.x_prev, expected, atol=1e-4)
    assert torch.allclose(out.x0_pred, x0, atol=1e-3)
    assert torch.allclose(ddpm.ddim_step(x_t, 900, -1, eta_theta=eps).x_prev, x0, atol=1e-3)


def test_ddim_refuses_bad_steps():
    ddpm = make_ddpm()
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="t_prev < t"):
        ddpm.ddim_step(x, 10, 10)
    with pytest.raises(ValueError, match="ddim_eta must be >= 0"):
        ddpm.ddim_step(x, 10, 5, ddim_eta=-0.5)
    with pytest.raises(ValueError, match="outside 0..999"):
        ddpm.ddim_step(x, 1000, 5)


def test_get_loss_is_mse():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 8.0]])
    assert get_loss(a, b).item() == pytest.approx((4 + 16) / 4)
