"""Tests of the few-step samplers and their options (diffusion_model.py, utils.sample).

DPM-Solver++(2M) against numbers written from Lu et al. (2022), Algorithm 2, in
float64; against the exact solution of the diffusion ODE for Gaussian data;
x_0 clipping and the posterior variance against hand-computed values.
"""

import math

import pytest
import torch
from conftest import ZeroNet, per_image_draws
from torch import nn

import samplers
import utils
from samplers import SAMPLERS, make_sampler
from diffusion_model import DiffusionModel, log_snr, threshold_x0
from samplers import timestep_schedule

# float64 reference of the paper's schedule (Listing 1, Eq. 1 and 5), independent of the module.
BETAS64 = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ALPHA_BARS64 = torch.cumprod(1 - BETAS64, dim=0)


class Affine(nn.Module):
    """The stand-in noise predictor eps(x, t) = 0.1 x + 0.01 t / T."""

    def __init__(self, timesteps: int = 1000) -> None:
        super().__init__()
        self.timesteps = timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * x + 0.01 * t.reshape(-1, 1, 1, 1).to(x.dtype) / self.timesteps


def ref(t: int) -> tuple[float, float, float]:
    """alpha_t, sigma_t and lambda_t of the reference schedule at 0-based step t (t = -1: the clean image)."""
    abar = 1.0 if t < 0 else ALPHA_BARS64[t].item()
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    return alpha, sigma, (math.log(alpha / sigma) if sigma > 0 else math.inf)


def x0_of(x: torch.Tensor, t: int) -> torch.Tensor:
    """The data prediction of the Affine network: Eq. 4 solved for x_0, in float64."""
    alpha, sigma, _ = ref(t)
    return (x - sigma * (0.1 * x + 0.01 * t / 1000)) / alpha


def test_two_multistep_updates_equal_hand_computed_values():
    ddpm = DiffusionModel(Affine(), image_chw=(1, 2, 2))
    x = torch.tensor([[[[0.5, -1.2], [2.0, 0.0]]]], dtype=torch.float64)
    t0, t1, t2 = 999, 600, 250
    # Step 1, first order (Algorithm 2, line 3): x_t1 = sigma1/sigma0 x - alpha1 (e^-h1 - 1) x0(t0).
    a0, s0, l0 = ref(t0)
    a1, s1, l1 = ref(t1)
    a2, s2, l2 = ref(t2)
    h1, h2 = l1 - l0, l2 - l1
    d0 = x0_of(x, t0)
    x1 = s1 / s0 * x - a1 * math.expm1(-h1) * d0
    # Step 2, second order: r = h1 / h2, D = (1 + 1/(2r)) x0(t1) - 1/(2r) x0(t0).
    d1 = x0_of(x1, t1)
    r = h1 / h2
    x2 = s2 / s1 * x1 - a2 * math.expm1(-h2) * ((1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0)

    got1 = ddpm.dpm_solver_step(x, t0, t1, ddpm.predict_x0(x, t0, ddpm.backward(x, torch.tensor([t0]))))
    torch.testing.assert_close(got1, x1, rtol=1e-6, atol=1e-7)
    pred1 = ddpm.predict_x0(got1, t1, ddpm.backward(got1, torch.tensor([t1])))
    got2 = ddpm.dpm_solver_step(got1, t1, t2, pred1, previous=(ddpm.predict_x0(x, t0, 0.1 * x + 0.01 * t0 / 1000), t0))
    torch.testing.assert_close(got2, x2, rtol=1e-6, atol=1e-7)
    # The last step goes to the clean image: first order, it lands on the data prediction.
    assert torch.equal(ddpm.dpm_solver_step(got2, 0, -1, d1), d1)


def test_the_first_step_is_the_ddim_step():
    ddpm = DiffusionModel(Affine(), image_chw=(1, 3, 3))
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    eps = ddpm.backward(x, torch.full((2,), 700))
    dpm = ddpm.dpm_solver_step(x, 700, 350, ddpm.predict_x0(x, 700, eps))
    ddim = ddpm.ddim_step(x, 700, 350, eta_theta=eps).x_prev
    torch.testing.assert_close(dpm, ddim, rtol=1e-5, atol=1e-6)


def test_dpm_solver_refuses_bad_steps():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 1, 1))
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="-1 <= t_prev < t"):
        ddpm.dpm_solver_step(x, 10, 10, x)
    with pytest.raises(ValueError, match="previous step must lie after t=10"):
        ddpm.dpm_solver_step(x, 10, 5, x, previous=(x, 3))


@pytest.mark.parametrize("n", [2, 3, 10, 20, 25, 100, 999, 1000])
def test_logsnr_schedule_is_monotonic_with_both_ends(n):
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 1, 1))
    for kind in ("uniform", "logsnr"):
        steps = timestep_schedule(ddpm.alpha_bars, n, kind)
        assert len(steps) == n and steps[0] == 999 and steps[-1] == 0
        assert all(a > b for a, b in zip(steps, steps[1:])), kind


def test_logsnr_schedule_is_even_in_lambda():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 1, 1))
    lam = log_snr(ALPHA_BARS64)
    assert lam[0].item() == pytest.approx(math.log(math.sqrt(ALPHA_BARS64[0]) / math.sqrt(1 - ALPHA_BARS64[0])))
    steps = timestep_schedule(ddpm.alpha_bars, 10, "logsnr")
    gaps = torch.diff(lam[steps])
    expected = (lam[0] - lam[-1]).item() / 9
    assert gaps.min().item() > 0.8 * expected and gaps.max().item() < 1.2 * expected
    assert timestep_schedule(ddpm.alpha_bars, 10, "uniform") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timestep_schedule(ddpm.alpha_bars, 1, "logsnr") == [999]
    with pytest.raises(ValueError, match="step schedule must be one of"):
        timestep_schedule(ddpm.alpha_bars, 10, "cosine")
    with pytest.raises(ValueError, match="must lie in 1..1000"):
        timestep_schedule(ddpm.alpha_bars, 0)


class GaussianOracle(nn.Module):
    """The optimal noise predictor for data x_0 ~ N(mu, s^2 I): E[eps | x_t] = sigma (x_t - alpha mu) / var_t."""

    def __init__(self, alpha_bars: torch.Tensor, mu: float, s: float) -> None:
        super().__init__()
        self.alpha_bars, self.mu, self.s = alpha_bars.double(), mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.alpha_bars[t.reshape(-1)].reshape(-1, 1, 1, 1)
        var = abar * self.s**2 + (1 - abar)
        return ((1 - abar).sqrt() * (x.double() - abar.sqrt() * self.mu) / var).to(x.dtype)


def test_dpm_solver_beats_ddim_on_the_exact_ode_solution_of_gaussian_data():
    """For Gaussian data the diffusion ODE maps x_T to mu + s (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2).

    Both samplers on the log-SNR schedule (Lu et al.'s choice): the root-mean-square error falls as
    the steps grow, and DPM-Solver++ at 20 steps is far closer than DDIM at 20 (measured: 0.0028 vs 0.024).
    """
    mu, s = 0.1, 0.2  # the exact solution stays inside [-1, 1], where sample() clamps
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 8, 8))
    ddpm.backward_process_model = GaussianOracle(ddpm.alpha_bars, mu, s)
    x_T = per_image_draws(4, 64, (1, 8, 8), 1)[0]  # sample()'s x_T for seed 4
    abar_T = ALPHA_BARS64[-1].item()
    exact = mu + s * (x_T.double() - math.sqrt(abar_T) * mu) / math.sqrt(abar_T * s**2 + 1 - abar_T)
    assert exact.abs().max() < 1

    def error(sampler: str, steps: int) -> float:
        out = utils.sample(ddpm, 64, seed=4, sampler=make_sampler(sampler, ddpm, steps, step_schedule="logsnr",
                                                                   clip_x0="none")).images
        return (out.double() - exact).pow(2).mean().sqrt().item()

    ddim = {n: error("ddim", n) for n in (10, 20, 50, 200)}
    dpm = {n: error("dpm++", n) for n in (10, 20, 50, 200)}
    assert dpm[20] < ddim[20] / 5
    assert dpm[10] < ddim[10] / 5
    for errors in (ddim, dpm):  # both converge as the steps grow
        assert errors[10] > errors[20] > errors[50] > errors[200]
    assert dpm[200] < 1e-3 and ddim[200] < 5e-3


def test_threshold_x0_by_hand():
    x0 = torch.tensor([[[[-3.0, -0.5, 0.5, 2.0]]], [[[0.1, -0.2, 0.3, -0.4]]]])
    assert torch.equal(threshold_x0(x0, "none"), x0)
    assert threshold_x0(x0, "clip").flatten().tolist() == pytest.approx([-1, -0.5, 0.5, 1, 0.1, -0.2, 0.3, -0.4])
    # dynamic, quantile 0.5 of |x0| per image: image 1 -> |x0| = 3, 0.5, 0.5, 2 -> median 1.25; image 2 -> 0.25 -> 1
    dyn = threshold_x0(x0, "dynamic", quantile=0.5)
    assert dyn[0].flatten().tolist() == pytest.approx([-1.0, -0.4, 0.4, 1.0])
    assert dyn[1].flatten().tolist() == pytest.approx([0.1, -0.2, 0.3, -0.4])
    with pytest.raises(ValueError, match="clip mode must be one of"):
        threshold_x0(x0, "tanh")


def test_posterior_variance_and_clipped_ddpm_step_by_hand():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2))
    assert ddpm.posterior_variance[0].item() == 0.0  # nothing to add before the clean image
    t = 487
    abar, abar_prev, beta = ALPHA_BARS64[t].item(), ALPHA_BARS64[t - 1].item(), BETAS64[t].item()
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    assert ddpm.posterior_variance[t].item() == pytest.approx(beta_tilde, rel=1e-5)
    g = torch.Generator().manual_seed(1)
    x_t, eps, z = (torch.randn(1, 1, 2, 2, generator=g) * 3 for _ in range(3))
    step = ddpm.step(x_t, t, eta_theta=eps, z=z, clip_x0="clip", variance="posterior")
    x0 = ((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
    mean = (math.sqrt(abar_prev) * beta / (1 - abar)) * x0 + (math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)) * x_t
    torch.testing.assert_close(step.x0_pred, x0)
    torch.testing.assert_close(step.x_prev, mean + math.sqrt(beta_tilde) * z, rtol=1e-5, atol=1e-6)
    # Unclipped, the posterior mean is Eq. 7 (the paper's mean), up to float rounding.
    x0_raw = ddpm.predict_x0(x_t, t, eps)
    torch.testing.assert_close(ddpm.posterior_mean(x0_raw, x_t, t), ddpm.p_mean(x_t, t, eps), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm.step(x_t, t, eta_theta=eps, variance="learned")


def test_clipped_ddim_step_stays_on_eq_4_with_the_clipped_x0():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2))
    x_t = torch.tensor([[[[3.0, -0.2], [0.4, -5.0]]]])
    eps = torch.zeros_like(x_t)  # then x0_pred = x_t / sqrt(abar_t), far outside [-1, 1]
    t, t_prev = 300, 100
    out = ddpm.ddim_step(x_t, t, t_prev, eta_theta=eps, clip_x0="clip")
    x0 = (x_t / ddpm.sqrt_alpha_bars[t]).clamp(-1, 1)
    eps_clipped = (x_t - ddpm.sqrt_alpha_bars[t] * x0) / ddpm.sqrt_one_minus_alpha_bars[t]
    expected = ddpm.sqrt_alpha_bars[t_prev] * x0 + ddpm.sqrt_one_minus_alpha_bars[t_prev] * eps_clipped
    torch.testing.assert_close(out.x_prev, expected)
    assert out.x0_pred.abs().max().item() == 1.0


def test_sample_with_every_sampler_and_option_and_refusals():
    torch.manual_seed(0)
    ddpm = DiffusionModel(Affine(20), timesteps=20, image_chw=(1, 4, 4))
    outs = {}
    for sampler, kw in [("ddpm", {}), ("ddpm", dict(clip_x0="dynamic", variance="posterior")),
                        ("ddim", dict(steps=5, clip_x0="clip")),
                        ("dpm++", dict(steps=5, step_schedule="logsnr", clip_x0="clip")),
                        ("dpm++", dict(steps=5))]:
        out = utils.sample(ddpm, 3, seed=1, sampler=make_sampler(sampler, ddpm, **kw)).images
        assert out.shape == (3, 1, 4, 4) and torch.isfinite(out).all()
        outs[(sampler, tuple(kw.items()))] = out
    assert len({o.sum().item() for o in outs.values()}) == len(outs)  # every option changed the result
    none = dict(clip_x0="none")  # each DDPM option alone changes the draw (a sampler that dropped one would not)
    plain = utils.sample(ddpm, 3, seed=1, sampler=make_sampler("ddpm", ddpm, **none)).images
    for kw in (dict(none, variance="posterior"), dict(clip_x0="dynamic")):
        assert not torch.equal(utils.sample(ddpm, 3, seed=1, sampler=make_sampler("ddpm", ddpm, **kw)).images, plain)
    with pytest.raises(ValueError, match="the dpm.. sampler takes no eta"):
        make_sampler("dpm++", ddpm, eta=0.5)
    with pytest.raises(ValueError, match="the ddim sampler takes no variance"):
        make_sampler("ddim", ddpm, variance="posterior")
    with pytest.raises(ValueError, match="clip_x0 must be one of"):
        make_sampler("ddpm", ddpm, clip_x0="soft")
    for eta in (-0.1, 1.5, float("nan")):  # Song et al.'s eta lies in [0, 1]
        with pytest.raises(ValueError, match=r"the DDIM noise scale eta must lie in \[0, 1\]"):
            make_sampler("ddim", ddpm, eta=eta)
    assert make_sampler("dpm++", ddpm).timesteps() == list(range(19, -1, -1))  # default 20 steps, capped at T


def test_the_clipping_default_is_per_sampler(monkeypatch):
    """Algorithm 2 keeps x0 as the paper writes it; the few-step samplers clip it (docs/results.md); a distilled
    student's sampler does not, as it was trained."""
    ddpm = DiffusionModel(Affine(20), timesteps=20, image_chw=(1, 2, 2))
    used = {name: make_sampler(name, ddpm, None if name == "ddpm" else 5).clip_x0 for name in SAMPLERS}
    assert used == {"ddpm": "none", "ddim": "clip", "dpm++": "clip", "distilled": "none",
                    "distilled-stochastic": "none"}
    assert make_sampler("dpm++", ddpm, 5, clip_x0="none").clip_x0 == "none"  # an explicit choice wins
    seen = []
    real = threshold_x0

    def spy(x0, mode="none", *args):
        seen.append(mode)
        return real(x0, mode, *args)

    monkeypatch.setattr(samplers, "threshold_x0", spy)
    utils.sample(ddpm, 1, sampler="dpm++")  # the name alone: the class's defaults
    assert seen and set(seen) == {"clip"}


class Recorder(nn.Module):
    """A noise predictor (default: Affine) that keeps a float64 copy of every (x_t, t, eps) it is asked about."""

    def __init__(self, inner: nn.Module | None = None) -> None:
        super().__init__()
        self.inner, self.seen = inner or Affine(), []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.inner(x, t)
        self.seen.append((x.double().clone(), int(t.reshape(-1)[0]), out.double().clone()))
        return out


def ddim_sigma(t: int, t_prev: int, eta: float) -> float:
    """Song et al. (2021), Eq. 16: eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev), float64."""
    abar_t, abar_prev = ALPHA_BARS64[t].item(), ALPHA_BARS64[t_prev].item()
    return eta * math.sqrt((1 - abar_prev) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_prev)


def ddim_by_hand(x: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, eta: float, z: torch.Tensor) -> torch.Tensor:
    """Song et al. (2021), Eq. 12 in float64 from the betas alone."""
    abar_t, abar_prev = ALPHA_BARS64[t].item(), ALPHA_BARS64[t_prev].item()
    sigma = ddim_sigma(t, t_prev, eta)
    x0 = (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
    return math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev - sigma**2) * eps + sigma * z


def test_noisy_ddim_skipping_steps_uses_song_et_als_sigma():
    """eta > 0 over a skipped step (900 -> 450): sigma is Eq. 16 of the two steps' abar, not one built from beta_t.

    (Over a single step, t_prev = t - 1, both are the same: only a skip tells them apart.)
    """
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2))
    g = torch.Generator().manual_seed(7)
    x, eps, z = (torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t, t_prev, eta = 900, 450, 0.5
    sigma = ddim_sigma(t, t_prev, eta)
    beta_based = eta * math.sqrt(BETAS64[t].item() * (1 - ALPHA_BARS64[t - 1].item()) / (1 - ALPHA_BARS64[t].item()))
    assert abs(sigma - beta_based) > 0.3  # the two readings are far apart here: ~0.47 against ~0.07
    got = ddpm.ddim_step(x.float(), t, t_prev, eta_theta=eps.float(), ddim_eta=eta, z=z.float()).x_prev
    torch.testing.assert_close(got.double(), ddim_by_hand(x, t, t_prev, eps, eta, z), rtol=1e-5, atol=1e-5)
    # And eta = 1 is still not DDPM's single-step posterior noise over the skip.
    got1 = ddpm.ddim_step(x.float(), t, t_prev, eta_theta=eps.float(), ddim_eta=1.0, z=z.float()).x_prev
    torch.testing.assert_close(got1.double(), ddim_by_hand(x, t, t_prev, eps, 1.0, z), rtol=1e-5, atol=1e-5)


def test_noisy_ddim_sampler_over_skipped_steps_by_hand():
    """utils.sample with DDIM, 3 steps (999 -> 500 -> 0 -> clean), eta 0.5: each update is Eq. 12 with Eq. 16's sigma
    and each image's next draw of its own generator (x_T first, then one z per noisy update), no clipping."""
    net = Recorder()
    ddpm = DiffusionModel(net, image_chw=(1, 3, 3))
    out = utils.sample(ddpm, 2, seed=5, sampler=make_sampler("ddim", ddpm, 3, eta=0.5, clip_x0="none")).images
    assert [t for _, t, _ in net.seen] == [999, 500, 0]
    x_T, z1, z2 = (draw.double() for draw in per_image_draws(5, 2, (1, 3, 3), 3))
    eps = lambda x, t: 0.1 * x + 0.01 * t / 1000  # noqa: E731
    torch.testing.assert_close(net.seen[0][0], x_T)
    x1 = ddim_by_hand(x_T, 999, 500, eps(x_T, 999), 0.5, z1)
    torch.testing.assert_close(net.seen[1][0], x1, rtol=1e-5, atol=1e-5)
    x2 = ddim_by_hand(x1, 500, 0, eps(x1, 500), 0.5, z2)
    torch.testing.assert_close(net.seen[2][0], x2, rtol=1e-5, atol=1e-5)
    # The last update lands on the clean image without noise: x_0 = the data prediction at step 0.
    abar0 = ALPHA_BARS64[0].item()
    x0 = (x2 - math.sqrt(1 - abar0) * eps(x2, 0)) / math.sqrt(abar0)
    torch.testing.assert_close(out.double(), x0.clamp(-1, 1), rtol=1e-5, atol=1e-5)


class ScaledX0(nn.Module):
    """A noise predictor whose data prediction is 1.5 x_t at every step: eps = (x - 1.5 alpha_t x) / sigma_t."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = ALPHA_BARS64[t.reshape(-1)].reshape(-1, 1, 1, 1)
        return ((x.double() - 1.5 * abar.sqrt() * x.double()) / (1 - abar).sqrt()).to(x.dtype)


def test_clipped_dpm_solver_sampler_two_steps_by_hand():
    """utils.sample with DPM-Solver++(2M) and clip_x0="clip", 3 steps (999 -> 500 -> 0 -> clean), against Lu et al.
    (2022), Algorithm 2 in float64 from the betas: each data prediction is clipped to [-1, 1] before it is used,
    the first update is first order, the second uses the clipped predictions at 500 and 999 with r = h_prev / h."""
    net = Recorder(ScaledX0())
    ddpm = DiffusionModel(net, image_chw=(1, 4, 4))
    out = utils.sample(ddpm, 2, seed=3, sampler=make_sampler("dpm++", ddpm, 3, clip_x0="clip")).images
    assert [t for _, t, _ in net.seen] == [999, 500, 0]
    x_T = net.seen[0][0]
    torch.testing.assert_close(x_T, per_image_draws(3, 2, (1, 4, 4), 1)[0].double())

    def data_prediction(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 solved for x_0 from the k-th network call's input and output, raw and clipped."""
        x, t, eps = net.seen[k]
        alpha, sigma, _ = ref(t)
        raw = (x - sigma * eps) / alpha
        return raw, raw.clamp(-1, 1)

    a0, s0, l0 = ref(999)
    a1, s1, l1 = ref(500)
    a2, s2, l2 = ref(0)
    d0_raw, d0 = data_prediction(0)
    x1 = s1 / s0 * x_T - a1 * math.expm1(-(l1 - l0)) * d0
    torch.testing.assert_close(net.seen[1][0], x1, rtol=1e-5, atol=2e-5)
    d1_raw, d1 = data_prediction(1)
    for raw in (d0_raw, d1_raw):  # the clipping matters at both steps, and leaves some pixels alone
        assert (raw.abs() > 1.05).any() and (raw.abs() < 0.95).any()
    assert (d1 - d0).abs().max() > 0.2  # so the second-order correction is not zero
    h_prev, h = l1 - l0, l2 - l1
    r = h_prev / h
    x2 = s2 / s1 * x1 - a2 * math.expm1(-h) * ((1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0)
    torch.testing.assert_close(net.seen[2][0], x2, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out.double(), data_prediction(2)[1], rtol=1e-5, atol=2e-5)
