"""Progressive distillation (distill.py, Salimans and Ho 2022, Algorithm 2): the target, the rounds, the
checkpoints, sampling a student, resume, divergence and the refusals.

The two-step target is checked against a float64 computation written here from the paper's formulas
(z_t = alpha_t x + sigma_t eps; x^ = alpha_t z_t - sigma_t v^; DDIM t -> t' -> t''; x~ and v~), on the
tiny models of the other tests: T = 20, 28x28 images, the paper's `fixed` UNet.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datagen import make_mnist

import distill
import main
import utils
from checkpoint import build_model, load_checkpoint
from cli import UsageError, parse_args
from config import DistillSettings
from diffusion_model import DiffusionModel
from samplers import DistilledSampler, distillation_grid, make_sampler
from unet import make_unet
from utils import sample

T = 20
BETAS64 = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)  # Listing 1, independent of the module
ALPHA_BARS64 = torch.cumprod(1 - BETAS64, dim=0)


def coefficients(t: int) -> tuple[float, float]:
    """alpha_t and sigma_t of the reference schedule at 0-based step t (t = -1: the clean image, 1 and 0)."""
    abar = 1.0 if t < 0 else ALPHA_BARS64[t].item()
    return math.sqrt(abar), math.sqrt(1.0 - abar)


def tiny(num_classes: int = 0, seed: int = 0) -> DiffusionModel:
    """A v-prediction DDPM with the `fixed` UNet, T = 20, weights moved off their initial values (labels too)."""
    extra = dict(num_classes=num_classes) if num_classes else {}
    torch.manual_seed(seed)
    net = make_unet(arch="fixed", n_steps=T, image_size=28, **extra)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return DiffusionModel(net, timesteps=T, prediction="v").eval()


def v_of(ddpm: DiffusionModel, z: torch.Tensor, t: int, y: torch.Tensor | None = None,
         guidance: float = 1.0) -> torch.Tensor:
    """The network's v at (z, t) in float64; with labels, guided: v_u + W (v_c - v_u)."""
    net = ddpm.backward_process_model
    steps = torch.full((len(z),), t)
    with torch.no_grad():
        if y is None:
            return net(z.float(), steps).double()
        v_c, v_u = net(z.float(), steps, y).double(), net(z.float(), steps, torch.full_like(y, 10)).double()
    return v_u + guidance * (v_c - v_u)


def hand_chain(ddpm: DiffusionModel, z: torch.Tensor, t: int, t_mid: int, t_end: int,
               y: torch.Tensor | None = None, weight_of=lambda t: 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Salimans and Ho (2022), Algorithm 2, lines 6-9, in float64 from v: the teacher's z_t'' after two DDIM
    steps, and the target v~."""
    a, s = coefficients(t)
    a1, s1 = coefficients(t_mid)
    a2, s2 = coefficients(t_end)
    x1 = a * z - s * v_of(ddpm, z, t, y, weight_of(t))  # x^ = alpha z - sigma v
    z1 = a1 * x1 + s1 * (z - a * x1) / s  # z_t' = alpha_t' x^ + sigma_t' eps^
    x2 = a1 * z1 - s1 * v_of(ddpm, z1, t_mid, y, weight_of(t_mid))
    z2 = a2 * x2 + s2 * (z1 - a1 * x2) / s1  # z_t''
    x_tilde = (z2 - s2 / s * z) / (a2 - s2 / s * a)
    eps_tilde = (z - a * x_tilde) / s
    return z2, a * eps_tilde - s * x_tilde


def hand_target(*args, **kwargs) -> torch.Tensor:
    return hand_chain(*args, **kwargs)[1]


# --------------------------------------------------------------------------- the grid and the sampler


def test_the_grid_halves_and_nests_exactly():
    assert distillation_grid(1000, 4) == [999, 749, 499, 249, -1]
    assert distillation_grid(1000, 1) == [999, -1]
    assert distillation_grid(20, 8) == [19, 16, 14, 11, 9, 6, 4, 1, -1]  # 2.5 k rounded half up
    assert distillation_grid(20, 4) == [19, 14, 9, 4, -1]
    for timesteps in (20, 1000):
        n = 1
        while 2 * n <= timesteps:
            fine, coarse = distillation_grid(timesteps, 2 * n), distillation_grid(timesteps, n)
            assert fine[::2] == coarse  # the teacher's grid holds the student's, and one midpoint between
            assert all(a > b for a, b in zip(fine, fine[1:]))
            n *= 2
    with pytest.raises(ValueError, match=r"must lie in 1\.\.20"):
        distillation_grid(20, 21)


def test_the_distilled_sampler_is_deterministic_ddim_on_the_grid():
    ddpm = tiny()
    sampler = make_sampler("distilled", ddpm, 4)
    assert isinstance(sampler, DistilledSampler) and sampler.timesteps() == [19, 14, 9, 4]
    assert sampler.settings() == dict(sampler="distilled", sample_steps=4, clip_x0="none")
    drawn = sample(ddpm, 2, "cpu", sampler=sampler, seed=5).raw
    x = torch.stack([torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(s))
                     for s in (5 * 1_000_003, 5 * 1_000_003 + 1)])  # samplers.noise_seed of images 0 and 1
    with torch.no_grad():
        for t, t_prev in zip([19, 14, 9, 4], [14, 9, 4, -1]):
            x = ddpm.ddim_step(x, t, t_prev, ddim_eta=0.0).x_prev
    assert torch.allclose(drawn, x, atol=1e-6)


def test_the_stochastic_student_sampler_is_meng_et_al_section_3_2():
    """Meng et al. (2023), section 3.2, in float64 from this file's schedule: from z_t, x^ = alpha_t z_t -
    sigma_t v^; z_k = alpha_k x^ + sigma_k (z_t - alpha_t x^) / sigma_t two grid steps down (k = t - 2/N);
    z_s = (alpha_s / alpha_k) z_k + sqrt(sigma_s^2 - (alpha_s / alpha_k)^2 sigma_k^2) eps one grid step
    down; the last step deterministic. Each image's noise from its own generator, x_T first."""
    ddpm = tiny()
    sampler = make_sampler("distilled-stochastic", ddpm, 4)
    assert sampler.timesteps() == [19, 14, 9, 4] and sampler.clip_x0 == "none"
    drawn = sample(ddpm, 2, "cpu", sampler=sampler, seed=5).raw
    gens = [torch.Generator().manual_seed(5 * 1_000_003 + i) for i in range(2)]
    draw = lambda: torch.stack([torch.randn(1, 28, 28, generator=g) for g in gens]).double()  # noqa: E731
    z, grid = draw(), [19, 14, 9, 4, -1]
    for i, t in enumerate(grid[:-1]):
        (a_t, s_t), s = coefficients(t), grid[i + 1]
        x_hat = a_t * z - s_t * v_of(ddpm, z, t)
        if s < 0:
            z = x_hat
            continue
        (a_k, s_k), (a_s, s_s) = coefficients(grid[i + 2]), coefficients(s)
        z_k = a_k * x_hat + s_k * (z - a_t * x_hat) / s_t
        z = a_s / a_k * z_k + math.sqrt(s_s**2 - (a_s / a_k) ** 2 * s_k**2) * draw()
    assert torch.allclose(drawn.double(), z, atol=2e-5)
    deterministic = sample(ddpm, 2, "cpu", sampler=make_sampler("distilled", ddpm, 4), seed=5).raw
    assert (drawn - deterministic).abs().max() > 0.1  # the noise changed the images
    one = sample(ddpm, 2, "cpu", sampler=make_sampler("distilled-stochastic", ddpm, 1), seed=5).raw
    assert torch.equal(one, sample(ddpm, 2, "cpu", sampler=make_sampler("distilled", ddpm, 1), seed=5).raw)


def test_renoise_is_the_forward_process_over_several_steps():
    ddpm = tiny()
    x, z = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    ratio = ALPHA_BARS64[14] / ALPHA_BARS64[9]
    expected = ratio.sqrt() * x.double() + (1 - ratio).sqrt() * z.double()
    assert torch.allclose(ddpm.renoise(x, 9, 14, z).double(), expected, atol=1e-6)
    assert torch.allclose(ddpm.renoise(x, -1, 14, z), ddpm.add_noise(x, torch.full((2,), 14), z)[0], atol=1e-6)
    for k, s in ((9, 9), (14, 9), (-2, 3), (3, 20)):
        with pytest.raises(ValueError, match="renoise needs -1 <= k < s <= 19"):
            ddpm.renoise(x, k, s, z)


def test_the_per_image_ddim_step_is_the_packages():
    ddpm = tiny()
    z = torch.randn(3, 1, 28, 28)
    for t, t_to in ((19, 14), (4, -1)):
        steps = torch.full((3,), t)
        with torch.no_grad():
            eps = ddpm.backward(z, steps)
            expected = ddpm.ddim_step(z, t, t_to, eta_theta=eps, ddim_eta=0.0).x_prev
        jumped = distill.ddim_jump(ddpm, z.double(), steps, torch.full((3,), t_to), eps.double())
        assert torch.allclose(jumped.float(), expected, atol=1e-5)


# --------------------------------------------------------------------------- Algorithm 2's target and loss


def test_the_target_is_the_hand_computed_two_step_target():
    """k = 0 (t 19 -> 14 -> 9) and k = 1 (9 -> 4 -> the clean image) of a 2-step student; the loss."""
    teacher, student = tiny(seed=0), tiny(seed=1)
    torch.manual_seed(3)
    x0, noise = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, 1, 28, 28)
    k = torch.tensor([0, 1, 1, 0])
    chains = {0: (19, 14, 9), 1: (9, 4, -1)}
    z, targets, weights = [], [], []
    for i in range(4):
        t, t_mid, t_end = chains[int(k[i])]
        a, s = coefficients(t)
        z_i = a * x0[i:i + 1].double() + s * noise[i:i + 1].double()  # z_t = alpha_t x + sigma_t eps
        z.append(z_i)
        targets.append(hand_target(teacher, z_i, t, t_mid, t_end))
        weights.append(max(a * a, s * s))  # max(SNR, 1) on x is max(alpha^2, sigma^2) on v
    t_of = torch.tensor([chains[int(i)][0] for i in k])
    got = distill.distillation_target(teacher, torch.cat(z).float(), t_of,
                                      torch.tensor([chains[int(i)][1] for i in k]),
                                      torch.tensor([chains[int(i)][2] for i in k]))
    assert torch.allclose(got.double(), torch.cat(targets), atol=2e-4, rtol=1e-4)
    v_student = torch.cat([v_of(student, z[i], int(t_of[i])) for i in range(4)])
    per_image = ((v_student - torch.cat(targets)) ** 2).flatten(1).mean(dim=1)
    expected = (torch.tensor(weights, dtype=torch.float64) * per_image).mean()
    loss = distill.distillation_loss(teacher, student, x0, None, 2, k=k, noise=noise)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)


def test_the_loss_weights_by_sigma_squared_where_the_noise_dominates():
    """max(SNR, 1) is truncated: on a schedule where sigma_t > alpha_t at the student's first step (betas up to
    0.2, abar_19 near 0.12) that image weighs sigma_t^2 on v, not alpha_t^2 (plain SNR weighting on x)."""
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.2, T, dtype=torch.float64), dim=0)
    teacher, student = (DiffusionModel(tiny(seed=seed).backward_process_model, beta_end=0.2, timesteps=T,
                                       prediction="v").eval() for seed in (0, 1))
    torch.manual_seed(4)
    x0, noise, k = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    t, t_mid, t_end = torch.tensor([19, 9]), torch.tensor([14, 4]), torch.tensor([9, -1])
    assert 1 - abar[19] > 0.8 > abar[19] and abar[9] > 0.5  # sigma dominates at t = 19, alpha at t = 9
    a, s = abar[t].sqrt().reshape(-1, 1, 1, 1), (1 - abar[t]).sqrt().reshape(-1, 1, 1, 1)
    z = (a * x0.double() + s * noise.double()).float()
    target = distill.distillation_target(teacher, z, t, t_mid, t_end).double()
    with torch.no_grad():
        per_image = ((student.backward_process_model(z, t).double() - target) ** 2).flatten(1).mean(dim=1)
    expected = (torch.maximum(abar[t], 1 - abar[t]) * per_image).mean()
    loss = distill.distillation_loss(teacher, student, x0, None, 2, k=k, noise=noise)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)


def test_the_guided_loss_guides_each_image_at_its_own_steps():
    """Guidance (2, t in 0-9) on a 2-step student: image 0 (19 -> 14 -> 9) lies outside the interval and learns
    the plain conditional teacher, image 1 (9 -> 4 -> clean) the guided one, each with its label."""
    teacher, student = tiny(num_classes=10, seed=0), tiny(num_classes=10, seed=1)
    torch.manual_seed(5)
    x0, noise, k, y = torch.rand(2, 1, 28, 28) * 2 - 1, torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), \
        torch.tensor([3, 7])
    terms = []
    for i, (t, t_mid, t_end) in enumerate(((19, 14, 9), (9, 4, -1))):
        a, s = coefficients(t)
        z_i = a * x0[i:i + 1].double() + s * noise[i:i + 1].double()
        target = hand_target(teacher, z_i, t, t_mid, t_end, y[i:i + 1], weight_of=lambda t: 2.0 if t <= 9 else 1.0)
        error = ((v_of(student, z_i, t, y[i:i + 1]) - target) ** 2).mean()
        terms.append(max(a * a, s * s) * error)
    loss = distill.distillation_loss(teacher, student, x0, y, 2, (2.0, (0, 9)), k=k, noise=noise)
    assert loss.item() == pytest.approx(sum(terms).item() / 2, rel=1e-3)
    unguided = distill.distillation_loss(teacher, student, x0, y, 2, None, k=k, noise=noise)
    assert unguided.item() != pytest.approx(loss.item(), rel=1e-2)


def test_one_student_step_with_the_target_lands_where_the_teacher_does():
    """The target's defining property: one DDIM step from z_t with v~ gives the teacher's z_t'' (also x_0)."""
    teacher = tiny()
    z = torch.randn(2, 1, 28, 28)
    for t, t_mid, t_end in ((19, 14, 9), (9, 4, -1)):
        v = distill.distillation_target(teacher, z, torch.full((2,), t), torch.full((2,), t_mid),
                                        torch.full((2,), t_end)).double()
        a, s = coefficients(t)
        a2, s2 = coefficients(t_end)
        x_hat = a * z.double() - s * v
        one_step = a2 * x_hat + s2 * (z.double() - a * x_hat) / s
        two_steps, _ = hand_chain(teacher, z.double(), t, t_mid, t_end)
        assert torch.allclose(one_step, two_steps, atol=1e-4)


def test_a_guided_teacher_guides_each_step_of_the_target():
    """W = 2 where t lies in the interval (t' = 14), plain conditional outside (t = 19): Meng et al.'s target."""
    teacher = tiny(num_classes=10)
    z, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 7])
    got = distill.distillation_target(teacher, z, torch.full((2,), 19), torch.full((2,), 14), torch.full((2,), 9),
                                      y, guidance=(2.0, (0, 14)))
    expected = hand_target(teacher, z.double(), 19, 14, 9, y, weight_of=lambda t: 2.0 if t <= 14 else 1.0)
    assert torch.allclose(got.double(), expected, atol=2e-4, rtol=1e-4)
    unguided = distill.distillation_target(teacher, z, torch.full((2,), 19), torch.full((2,), 14),
                                           torch.full((2,), 9), y)
    assert not torch.allclose(got, unguided, atol=1e-3)


def test_the_rounds_halve_the_steps():
    assert DistillSettings().rounds() == [32, 16, 8, 4]  # the default: 64 -> 4
    assert DistillSettings(start=64, steps=1).rounds() == [32, 16, 8, 4, 2, 1]
    assert DistillSettings(start=8, steps=2, updates=(3, 5), lr=(1e-4,)).of_round(1) == (5, 1e-4)


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    """A trained tiny v-prediction teacher (unconditional and class-conditional) and its data."""
    root = tmp_path_factory.mktemp("teachers")
    make_mnist(root / "data", n_train=40, n_test=8)
    common = ["--train", "--dataset", "mnist", "--epochs", "1", "--arch", "fixed", "--timesteps", str(T),
              "--batch-size", "8", "--data-root", str(root / "data"), "--quiet"]
    assert main.main([*common, "--out-dir", str(root / "plain")]) == 0
    assert main.main([*common, "--out-dir", str(root / "cond"), "--class-cond"]) == 0
    return root


def distill_args(*extra: str) -> list[str]:
    return ["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--data-root", "data", "--distill-start", "8",
            "--distill-steps", "2", "--distill-updates", "4", "--batch-size", "4", *extra]


@pytest.fixture
def work(teachers, tmp_path) -> Path:
    """A folder with the data and the unconditional teacher in runs/."""
    shutil.copytree(teachers / "data", tmp_path / "data")
    (tmp_path / "runs").mkdir()
    shutil.copy(teachers / "plain" / "ddpm_mnist.pt", tmp_path / "runs")
    return tmp_path


def test_a_distillation_writes_each_rounds_student_and_says_what_it_is(work, run_main, monkeypatch):
    done = run_main(*distill_args(), cwd=work)
    assert done.returncode == 0, done.stderr
    assert "Round 1/2: 8 -> 4 steps, 4 updates" in done.stderr and "Round 2/2: 4 -> 2 steps" in done.stderr
    teacher_ckpt = load_checkpoint(work / "runs" / "ddpm_mnist.pt")[1]
    assert "distillation" not in teacher_ckpt["config"]  # the teacher's file is untouched
    assert not (work / "runs" / "distill_ddpm_mnist_last.pt").exists()  # the finished run's state is gone
    for steps, rounds in ((4, 1), (2, 2)):
        student, ckpt = load_checkpoint(work / "runs" / f"ddpm_mnist_distilled{steps}.pt")
        record = ckpt["config"]["distillation"]
        assert record["steps"] == steps and record["teacher"] == record["origin"] == "runs/ddpm_mnist.pt"
        assert record["teacher_weights"] == "ema" and record["guidance"] is None and len(record["rounds"]) == rounds
        last = record["rounds"][-1]
        assert (last["teacher_steps"], last["steps"], last["updates"], last["lr"]) == (2 * steps, steps, 4, 1e-4)
        assert math.isfinite(last["final_loss"]) and last["minutes"] >= 0 and last["batch_size"] == 4
        assert student.prediction == "v" and "ema" in ckpt
        rebuilt = build_model(ckpt["config"])  # the config still builds the network
        assert rebuilt.backward_process_model.config == student.backward_process_model.config
    calls: list[dict] = []
    monkeypatch.setattr(main, "sample", lambda *a, **k: calls.append(k) or sample(*a, **k))
    sampled = run_main("--sample", "--checkpoint", "runs/ddpm_mnist_distilled2.pt", "--gif", "out.gif",
                       "--n-samples", "4", cwd=work)
    assert sampled.returncode == 0, sampled.stderr
    assert calls[-1]["sampler"].settings() == dict(sampler="distilled", sample_steps=2, clip_x0="none")
    assert (work / "out.gif").is_file() and "is a 2-step student" in sampled.stderr
    stochastic = run_main("--sample", "--checkpoint", "runs/ddpm_mnist_distilled2.pt", "--sampler",
                          "distilled-stochastic", "--n-samples", "2", cwd=work)  # the student's own steps
    assert stochastic.returncode == 0, stochastic.stderr
    assert calls[-1]["sampler"].settings() == dict(sampler="distilled-stochastic", sample_steps=2, clip_x0="none")
    on_ddim = run_main("--sample", "--checkpoint", "runs/ddpm_mnist_distilled2.pt", "--sampler", "ddim",
                       "--sample-steps", "2", "--n-samples", "2", cwd=work)  # allowed, with a warning
    assert on_ddim.returncode == 0 and calls[-1]["sampler"].timesteps() == [19, 0], on_ddim.stderr
    assert ("runs/ddpm_mnist_distilled2.pt is a 2-step student of progressive distillation: --sampler ddim samples "
            "it on that sampler's own steps, not on the grid it learned (--sampler distilled)") in on_ddim.stderr
    assert "on that sampler's own steps" not in stochastic.stderr + sampled.stderr
    plain = run_main("--sample", "--n-samples", "2", cwd=work)  # the students are not runs of runs/
    assert plain.returncode == 0 and calls[-1]["sampler"].name == "ddpm", plain.stderr
    scored = run_main("--evaluate", "--checkpoint", "runs/ddpm_mnist_distilled4.pt", "--n-samples", "6",
                      "--data-root", "data", cwd=work)
    assert scored.returncode == 0, scored.stderr
    assert (work / "runs" / "quality_mnist_distilled4.json").is_file()


def test_an_interrupted_distillation_resumes_exactly(work, run_main, monkeypatch):
    """Stopped at update 2 of round 2 and resumed: bit for bit the students of an uninterrupted run."""
    shutil.copytree(work / "runs", work / "whole")
    whole = run_main(*distill_args("--checkpoint", "whole/ddpm_mnist.pt", "--out-dir", "whole"), cwd=work)
    assert whole.returncode == 0, whole.stderr
    checks = {"n": 0}

    def stop_at_the_sixth_update(self) -> bool:
        checks["n"] += 1
        return checks["n"] == 6  # 4 updates in round 1, then update 2 of round 2

    monkeypatch.setattr(utils.StopRequest, "__call__", stop_at_the_sixth_update)
    stopped = run_main(*distill_args(), cwd=work)
    assert stopped.returncode == 143 and "continue with the same command and --resume" in stopped.stderr
    _, state = load_checkpoint(work / "runs" / "distill_ddpm_mnist_last.pt")
    assert (state["distill_state"]["round"], state["distill_state"]["update"]) == (1, 2)
    assert not (work / "runs" / "ddpm_mnist_distilled2.pt").exists()
    monkeypatch.undo()
    refused = run_main(*distill_args("--resume", "--distill-lr", "0.001"), cwd=work)
    assert refused.returncode == 1 and "--distill-lr 0.001 (the run: 0.0001)" in refused.stderr
    resumed = run_main(*distill_args("--resume"), cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert "from round 2, update 2" in resumed.stderr
    for steps in (4, 2):
        _, a = load_checkpoint(work / "whole" / f"ddpm_mnist_distilled{steps}.pt")
        _, b = load_checkpoint(work / "runs" / f"ddpm_mnist_distilled{steps}.pt")
        for part in ("model", "ema"):
            weights_a, weights_b = (a[part] if part == "model" else a[part]["model"],
                                    b[part] if part == "model" else b[part]["model"])
            assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a), (steps, part)
        assert a["config"]["distillation"]["rounds"][-1]["final_loss"] == \
            b["config"]["distillation"]["rounds"][-1]["final_loss"]


def test_the_state_is_saved_every_few_updates_and_after_each_round(work, run_main, monkeypatch):
    saved: list[tuple[int, int]] = []
    real = distill.DistillRun.save
    monkeypatch.setattr(distill, "SAVE_EVERY", 3)
    monkeypatch.setattr(distill.DistillRun, "save", lambda self, path: saved.append((self.round, self.update))
                        or real(self, path))
    done = run_main(*distill_args("--distill-updates", "4,7"), cwd=work)
    assert done.returncode == 0, done.stderr
    assert saved == [(0, 3), (1, 0), (1, 3), (1, 6)]  # not at a round's end: its student is saved then
    _, ckpt = load_checkpoint(work / "runs" / "ddpm_mnist_distilled2.pt")
    assert [r["updates"] for r in ckpt["config"]["distillation"]["rounds"]] == [4, 7]


def test_a_loss_that_is_not_finite_stops_the_round_and_keeps_the_last_student(work, run_main, monkeypatch):
    real, calls = distill.distillation_loss, {"n": 0}

    def nan_in_round_two(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(distill, "distillation_loss", nan_in_round_two)
    failed = run_main(*distill_args(), cwd=work)
    assert failed.returncode == 1
    last = [line for line in failed.stderr.splitlines() if line.startswith("main.py:")]
    assert last == ["main.py: error: distillation diverged: the loss is nan at update 2 of round 2 (4 -> 2 steps); "
                    "the 4-step student runs/ddpm_mnist_distilled4.pt stays: distill it further with a smaller "
                    "--distill-lr (this round: 0.0001)"]
    assert (work / "runs" / "ddpm_mnist_distilled4.pt").is_file()
    assert not (work / "runs" / "ddpm_mnist_distilled2.pt").exists()
    assert not (work / "runs" / "distill_ddpm_mnist_last.pt").exists()


def test_a_class_conditional_teacher_is_distilled_with_its_guidance(teachers, tmp_path, run_main, monkeypatch):
    shutil.copytree(teachers / "data", tmp_path / "data")
    (tmp_path / "runs").mkdir()
    shutil.copy(teachers / "cond" / "ddpm_mnist.pt", tmp_path / "runs")
    targets: list[tuple[int, object]] = []  # (student steps, guidance) of each update's loss
    loss = distill.distillation_loss
    monkeypatch.setattr(distill, "distillation_loss", lambda teacher, student, x0, y, n, guidance=None, **k:
                        targets.append((n, guidance)) or loss(teacher, student, x0, y, n, guidance, **k))
    done = run_main(*distill_args(), cwd=tmp_path)  # two rounds: 8 -> 4 -> 2 steps
    assert done.returncode == 0, done.stderr
    # round 1 learns the guided teacher; round 2 its student, whose guidance is built in: guided again, W would
    # compound (the conditional direction weighted W^2)
    assert targets == [(4, (2.0, (0, 9)))] * 4 + [(2, None)] * 4
    for steps in (4, 2):
        _, ckpt = load_checkpoint(tmp_path / "runs" / f"ddpm_mnist_distilled{steps}.pt")
        record = ckpt["config"]["distillation"]
        assert (record["guidance"], record["guidance_interval"]) == (2.0, [0, 9])  # MNIST's default: t <= 0.45 T
    calls: list[dict] = []
    monkeypatch.setattr(main, "sample", lambda *a, **k: calls.append(k) or sample(*a, **k))
    sampled = run_main("--sample", "--checkpoint", "runs/ddpm_mnist_distilled4.pt", "--digit", "3",
                       "--n-samples", "2", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert (calls[-1]["guidance"], calls[-1]["guidance_interval"]) == (1.0, None)  # built in: one pass a step
    assert "guidance 2 at t 0-9 distilled in" in sampled.stderr
    refused = run_main("--sample", "--checkpoint", "runs/ddpm_mnist_distilled4.pt", "--guidance", "2", cwd=tmp_path)
    assert refused.returncode == 1
    assert "has its teacher's guidance distilled in (guidance 2 at t 0-9); drop them" in refused.stderr
    for checkpoint, guidance, name in (("runs/ddpm_mnist.pt", (2.0, (0, 9)), "ddpm20_w2_t0-9"),
                                       ("runs/ddpm_mnist_distilled4.pt", (1.0, None), "distilled4_w1")):
        scored = run_main("--evaluate", "--checkpoint", checkpoint, "--n-samples", "10", "--data-root", "data",
                          cwd=tmp_path)  # the teacher guided by MNIST's default, the student with it built in
        assert scored.returncode == 0, scored.stderr
        assert (calls[-1]["guidance"], calls[-1]["guidance_interval"]) == guidance
        assert calls[-1]["labels"].tolist() == list(range(10))  # one image per digit
        report = json.loads((tmp_path / "runs" / f"quality_mnist_{name}.json").read_text())
        accuracy = report["requested_digit_accuracy"]
        assert all(a in (0.0, 1.0) for a in accuracy["per_class"])  # one image per digit: read right or not
        assert accuracy["overall"] == pytest.approx(sum(accuracy["per_class"]) / 10)
        assert report["guidance"] == guidance[0] and len(accuracy["real_validation_per_class"]) == 10


def test_resume_refuses_the_raw_weights_of_a_run_that_took_the_ema():
    """--no-ema on resume would change the first teacher: refused like the other options (--guidance is not
    an option of --distill: the dataset's is distilled in)."""
    run = SimpleNamespace(source=str(Path("runs/ddpm_mnist.pt").resolve()), settings=DistillSettings(),
                          batch_size=64, ema_decay=0.999, record=dict(teacher_weights="ema"))
    args = parse_args(["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--resume", "--no-ema"])
    with pytest.raises(UsageError) as refused:
        distill.refuse_changes(args, run, Path("runs/ddpm_mnist.pt"))
    assert str(refused.value) == ("cannot resume the distillation: --no-ema (the run: the teacher's EMA weights); "
                                  "resume with the run's options")
    distill.refuse_changes(parse_args(["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--resume"]), run,
                           Path("runs/ddpm_mnist.pt"))  # the same options: no refusal


def student_at_two_steps(work: Path) -> None:
    assert main.main(distill_args("--quiet")) == 0


@pytest.mark.parametrize("argv, code, message", [
    (["--distill", "--checkpoint", "runs/ddpm_mnist_distilled2.pt", "--distill-steps", "2"], 1,
     "is a 2-step student, already at --distill-steps 2: pass a smaller power of two to halve it further, "
     "e.g. --distill-steps 1"),
    (["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--distill-start", "100"], 2,
     "argument --distill-start: must be a power of two (each round halves the steps), e.g. 64, got 100"),
    (["--sample", "--checkpoint", "runs/ddpm_mnist_distilled2.pt", "--digit", "3"], 1,
     "--digit needs a class-conditional checkpoint; runs/ddpm_mnist_distilled2.pt is the student of an "
     "unconditional teacher (distill a model trained with --class-cond)"),
    (["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--distill-start", "32"], 1,
     "--distill-start 32 is more than the 20 steps of runs/ddpm_mnist.pt: pass at most 16"),
    (["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--distill-start", "8", "--distill-steps", "2"], 1,
     "runs/ddpm_mnist_distilled4.pt exists: continue that distillation with --resume, write into another --out-dir, "
     "or pass --overwrite to replace it"),
    (["--distill", "--checkpoint", "runs/ddpm_mnist.pt", "--distill-start", "16", "--distill-updates", "3,3,3"], 1,
     "--distill-updates takes one value, or one per round (2 rounds: 16 -> 8 -> 4 steps), got 3"),
    (["--distill", "--sample"], 2, "--distill runs alone"),
    (["--sample", "--distill-steps", "4"], 2, "need --distill"),
    (["--distill", "--resume", "--checkpoint", "runs/ddpm_mnist.pt"], 1, "no distillation to resume"),
])
def test_bad_inputs_are_one_line_naming_the_fix(work, monkeypatch, capsys, argv, code, message):
    monkeypatch.chdir(work)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    student_at_two_steps(work)
    capsys.readouterr()
    try:
        returned = main.main([*argv, "--data-root", "data"])
    except SystemExit as exc:  # argparse's refusals
        returned = exc.code
    assert returned == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("main.py: error:") and message in err[0], err


def test_an_eps_teacher_is_refused(work, run_main):
    assert main.main(["--train", "--dataset", "mnist", "--epochs", "1", "--arch", "fixed", "--timesteps", str(T),
                      "--batch-size", "8", "--prediction", "eps", "--data-root", str(work / "data"), "--out-dir",
                      str(work / "eps"), "--quiet"]) == 0
    refused = run_main("--distill", "--checkpoint", "eps/ddpm_mnist.pt", "--data-root", "data", cwd=work)
    assert refused.returncode == 1
    assert "predicts the noise (eps): progressive distillation needs a v-prediction model" in refused.stderr
    assert "train one with --prediction v" in refused.stderr


def test_a_student_distils_on_from_its_own_steps(work, run_main):
    assert run_main(*distill_args("--distill-steps", "4"), cwd=work).returncode == 0
    on = run_main("--distill", "--checkpoint", "runs/ddpm_mnist_distilled4.pt", "--distill-steps", "1",
                  "--distill-updates", "2", "--batch-size", "4", "--data-root", "data", cwd=work)
    assert on.returncode == 0, on.stderr
    _, ckpt = load_checkpoint(work / "runs" / "ddpm_mnist_distilled1.pt")
    record = ckpt["config"]["distillation"]
    assert record["origin"] == "runs/ddpm_mnist.pt" and record["teacher"] == "runs/ddpm_mnist_distilled4.pt"
    assert [r["steps"] for r in record["rounds"]] == [4, 2, 1]
