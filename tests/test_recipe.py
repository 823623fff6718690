"""Tests of the modern network (ResAttnUNet) and the recipe options: Min-SNR, the cosine schedules, the warm-up."""

from __future__ import annotations

import math
import re

import pytest
import torch

from checkpoint import TrainState, build_model, load_checkpoint, model_config, save_checkpoint
from cli import parse_args
from diffusion_model import DiffusionModel, diffusion_loss
from recipe import make_scheduler, min_snr_weight, warmup_cosine
from unet import MyUNet, ResAttnUNet, make_unet
from utils import sample


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("batch", [1, 7])
def test_resattn_output_shape_equals_input_shape(size, batch):
    net = ResAttnUNet(n_steps=50, image_size=size, base_channels=8)
    x = torch.randn(batch, 1, size, size)
    with torch.no_grad():
        assert net(x, torch.randint(0, 50, (batch,))).shape == x.shape
        assert net(x, torch.randint(0, 50, (batch, 1))).shape == x.shape  # the paper's (N, 1) time steps


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """The network with every weight moved off its initial value (the zero-initialised output conv included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return net


def test_resattn_sees_brightness_and_contrast():
    """Unlike the paper's network (test_unet), the output changes under x -> a*x + b."""
    net = _perturbed(ResAttnUNet(n_steps=20, image_size=28, base_channels=8)).eval()
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 7, 19])
    with torch.no_grad():
        out, moved = net(x, t), net(2.0 * x + 0.5, t)
    assert (out - moved).abs().max() > 1e-2
    assert (out - moved).abs().mean() > 1e-3


def test_resattn_starts_as_zero_prediction_and_depends_on_time():
    net = ResAttnUNet(n_steps=20, image_size=28, base_channels=8)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor([3, 4])), torch.zeros_like(x))  # zero-initialised output conv
        net = _perturbed(net)
        assert not torch.allclose(net(x, torch.tensor([3, 3])), net(x, torch.tensor([15, 15])))


def test_resattn_training_lowers_the_loss():
    torch.manual_seed(0)
    x0 = torch.rand(16, 1, 28, 28) * 2 - 1
    ddpm = DiffusionModel(ResAttnUNet(n_steps=50, image_size=28, base_channels=8), timesteps=50)
    optim = torch.optim.Adam(ddpm.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)

    def held_out_loss() -> float:  # the same time steps and noise every time
        gen.manual_seed(0)
        with torch.no_grad():
            _, noise, pred = ddpm(x0, generator=gen)
        return torch.mean((noise - pred) ** 2).item()

    before = held_out_loss()
    for _ in range(40):
        loss = diffusion_loss(ddpm, x0)
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert held_out_loss() < 0.7 * before


def test_make_unet_rebuilds_each_architecture_and_refuses_bad_ones():
    assert type(make_unet(arch="paper", n_steps=10)) is MyUNet
    assert type(make_unet(arch="fixed", n_steps=10)) is MyUNet
    net = make_unet(arch="resattn", n_steps=10, image_size=64, base_channels=8, dropout=0.1)
    assert type(net) is ResAttnUNet and net.config["channel_mults"] == [1, 2, 2, 2]
    assert type(make_unet(**net.config)) is ResAttnUNet
    with pytest.raises(ValueError, match="image sizes"):
        ResAttnUNet(image_size=32)
    with pytest.raises(ValueError, match="dropout"):
        ResAttnUNet(dropout=1.0)
    with pytest.raises(ValueError, match="halvings"):
        ResAttnUNet(image_size=28, channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="arch must be one of"):
        MyUNet(arch="resattn")


@pytest.mark.parametrize("arch", ["paper", "fixed"])
def test_old_checkpoints_load_and_sample_identically(tmp_path, arch):
    """A checkpoint as the package wrote it before this change (no 'schedule' in its config) samples the same."""
    torch.manual_seed(0)
    ddpm = DiffusionModel(MyUNet(n_steps=10, time_emb_dim=16, image_size=28, arch=arch), timesteps=10)
    before = sample(ddpm, 3, "cpu", seed=4, gif_name=None)
    config = model_config("mnist", ddpm)
    del config["schedule"]
    path = tmp_path / "old.pt"
    save_checkpoint(path, ddpm, config)
    loaded, _ = load_checkpoint(path)
    assert loaded.schedule == "linear"
    assert torch.equal(sample(loaded, 3, "cpu", seed=4, gif_name=None), before)


def test_resattn_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    ddpm = DiffusionModel(_perturbed(ResAttnUNet(n_steps=10, image_size=28, base_channels=8)), timesteps=10,
                          schedule="cosine")
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, ddpm, model_config("mnist", ddpm))
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["config"]["schedule"] == "cosine" and ckpt["config"]["network"]["base_channels"] == 8
    assert torch.equal(loaded.alpha_bars, ddpm.alpha_bars)
    assert torch.equal(sample(loaded, 2, "cpu", seed=1, gif_name=None, sampler="dpm++", sample_steps=4),
                       sample(ddpm, 2, "cpu", seed=1, gif_name=None, sampler="dpm++", sample_steps=4))


# --------------------------------------------------------------------------- Min-SNR-gamma


def test_min_snr_weights_by_hand():
    ddpm = DiffusionModel(torch.nn.Identity(), timesteps=1000, image_chw=(1, 2, 2))
    weights = min_snr_weight(torch.exp(2 * ddpm.lambdas), 5.0)
    for t in (0, 100, 999):
        abar = 1.0
        for i in range(t + 1):  # beta_i = 1e-4 + i * (0.02 - 1e-4) / 999
            abar *= 1 - (1e-4 + i * (0.02 - 1e-4) / 999)
        snr = abar / (1 - abar)
        assert weights[t].item() == pytest.approx(min(snr, 5.0) / snr, rel=1e-9)
    # t = 0 (SNR about 1e4): gamma / SNR; t = 999 (SNR about 4e-5 < gamma): 1
    assert weights[0].item() == pytest.approx(5.0 * (1 - 0.9999) / 0.9999, rel=1e-9)
    assert weights[999].item() == 1.0
    with pytest.raises(ValueError, match="gamma must be positive"):
        min_snr_weight(torch.exp(2 * ddpm.lambdas), 0.0)


def test_min_snr_loss_weights_each_image_with_the_same_draws():
    torch.manual_seed(0)
    ddpm = DiffusionModel(ConvNet(), timesteps=100, image_chw=(1, 8, 8))
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    torch.manual_seed(3)
    loss = diffusion_loss(ddpm, x0, snr_gamma=2.0)
    torch.manual_seed(3)
    t = torch.randint(0, 100, (6,))  # what the weighted loss drew, in the same order
    _, noise, pred = ddpm(x0, t=t)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)[t]
    snr = abar / (1 - abar)
    by_hand = ((snr.clamp(max=2.0) / snr).float() * ((noise - pred) ** 2).mean(dim=(1, 2, 3))).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    torch.manual_seed(3)
    plain = diffusion_loss(ddpm, x0)
    torch.manual_seed(3)
    assert diffusion_loss(ddpm, x0, snr_gamma=1e9).item() == pytest.approx(plain.item(), rel=1e-6)  # weights 1


# --------------------------------------------------------------------------- the cosine noise schedule


def test_cosine_schedule_by_hand():
    ddpm = DiffusionModel(torch.nn.Identity(), timesteps=1000, image_chw=(1, 2, 2), schedule="cosine")

    def f(t: float) -> float:
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (1, 500, 900):  # the paper's t; the 0-based index is t - 1
        assert ddpm.alpha_bars[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-5)
    assert ddpm.alpha_bars[499].item() == pytest.approx(0.493844, abs=1e-6)
    assert ddpm.alpha_bars[-1].item() < 1e-6  # x_T is pure noise
    assert ddpm.betas.max().item() == pytest.approx(0.999)  # the cap
    assert torch.all(ddpm.betas > 0)
    with pytest.raises(ValueError, match="beta schedule must be one of"):
        DiffusionModel(torch.nn.Identity(), image_chw=(1, 2, 2), schedule="quadratic")


# --------------------------------------------------------------------------- the learning-rate schedule


def test_warmup_cosine_factors_by_hand():
    factor = warmup_cosine(warmup_steps=4, total_steps=14)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0
    assert factor(9) == pytest.approx(0.5)  # half-way through the 10 cosine steps
    assert factor(14) == pytest.approx(0.0, abs=1e-12)
    assert factor(20) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 10)(0) == 1.0
    with pytest.raises(ValueError):
        warmup_cosine(-1, 10)


def test_per_step_scheduler_steps_with_the_optimizer():
    ddpm = DiffusionModel(ZeroParamNet(), timesteps=10, image_chw=(1, 2, 2))
    optim = torch.optim.Adam(ddpm.parameters(), lr=0.1)
    scheduler, per_step = make_scheduler(optim, "cosine", steps_per_epoch=5, epochs=2, warmup_steps=2)
    assert per_step
    state = TrainState(ddpm, optim, scheduler, scheduler_per_step=True)
    lrs = [state.optimizer.param_groups[0]["lr"]]
    for _ in range(3):
        state.step(torch.zeros(2, 1, 2, 2), lambda x: diffusion_loss(ddpm, x))
        lrs.append(state.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 8))])
    step_scheduler, per_step = make_scheduler(optim, "step", steps_per_epoch=5, epochs=2)
    assert not per_step and step_scheduler.step_size == 10 and step_scheduler.gamma == 0.5
    with pytest.raises(ValueError, match="warm-up needs the cosine"):
        make_scheduler(optim, "step", steps_per_epoch=5, epochs=2, warmup_steps=3)


class ConvNet(torch.nn.Module):
    """A one-convolution noise predictor that ignores the time step."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ZeroParamNet(torch.nn.Module):
    """A one-parameter noise predictor, so that Adam has something to step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.w * x


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, message", [
    (["--train", "--arch", "fixed", "--channels", "16"], "--channels and --dropout need --arch resattn"),
    (["--train", "--arch", "paper", "--dropout", "0.1"], "--channels and --dropout need --arch resattn"),
    (["--train", "--dropout", "1.5"], "must lie in \\[0, 1\\)"),
    (["--train", "--lr-schedule", "step", "--warmup-steps", "10"], "--warmup-steps needs --lr-schedule cosine"),
    (["--train", "--snr-gamma", "0"], "must be a finite positive number"),
    (["--train", "--schedule", "quadratic"], "invalid choice"),
])
def test_recipe_options_refuse_bad_input(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_build_model_reads_the_recipe_from_the_config():
    ddpm = DiffusionModel(ResAttnUNet(n_steps=10, image_size=28, base_channels=8), timesteps=10,
                          schedule="cosine")
    rebuilt = build_model(model_config("mnist", ddpm))
    assert rebuilt.schedule == "cosine" and type(rebuilt.backward_process_model) is ResAttnUNet
    assert torch.equal(rebuilt.betas, ddpm.betas)
