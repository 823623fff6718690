"""Tests of the modern network (ResAttnUNet) and the recipe options: Min-SNR, the cosine schedules, the warm-up."""

from __future__ import annotations

import math
import re

import pytest
import torch

from checkpoint import build_model, load_checkpoint, model_config, save_checkpoint
from utils import TrainState
from cli import dataset_of, parse_args, settings_given
from config import resolve
from diffusion_model import DiffusionModel
from recipe import diffusion_loss
from recipe import make_scheduler, min_snr_weight, warmup_cosine
from unet import MyUNet, ResAttnUNet, make_unet
from samplers import make_sampler
from utils import sample


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("size, patch", [(28, 1), (64, 1), (64, 2), (64, 4)])
@pytest.mark.parametrize("batch", [1, 7])
def test_resattn_output_shape_equals_input_shape(size, patch, batch):
    net = ResAttnUNet(n_steps=50, image_size=size, base_channels=8, patch_size=patch)
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


@pytest.mark.parametrize("size, patch", [(28, 1), (64, 4)])
def test_resattn_sees_brightness_and_contrast(size, patch):
    """Unlike the paper's network (test_unet), the output changes under x -> a*x + b."""
    net = _perturbed(ResAttnUNet(n_steps=20, image_size=size, base_channels=8, patch_size=patch)).eval()
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, size, size), torch.tensor([0, 7, 19])
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


@pytest.mark.parametrize("size, patch, channels", [(28, 1, 8), (64, 4, 16)])
def test_resattn_training_lowers_the_loss(size, patch, channels):
    """40 Adam steps on 16 smooth images (as digits are) lower the held-out loss by 30%. The 4x4-patch network
    needs at least as many channels as a patch has pixels (16), as its default (48) has."""
    torch.manual_seed(0)
    x0 = torch.nn.functional.interpolate(torch.rand(16, 1, size // 4, size // 4) * 2 - 1, size=size,
                                         mode="bilinear")
    ddpm = DiffusionModel(ResAttnUNet(n_steps=50, image_size=size, base_channels=channels, patch_size=patch),
                          timesteps=50)
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
    with pytest.raises(ValueError, match="patch_size must be a positive divisor of image size 64, got 3"):
        ResAttnUNet(image_size=64, patch_size=3)
    with pytest.raises(ValueError, match="2 halvings do not divide the 14x14 grid of 28x28 images in 2x2 patches"):
        ResAttnUNet(image_size=28, patch_size=2)


def test_patches_are_pixel_blocks_and_only_recorded_when_used():
    """Patch size 4: the grid is 16x16 (64 / 4), each cell's 16 pixels are its input channels, in
    ``pixel_unshuffle``'s order, and the output goes back through ``pixel_shuffle`` to the same pixels."""
    net = ResAttnUNet(n_steps=10, image_size=64, base_channels=8, patch_size=4)
    assert net.config["patch_size"] == 4 and net.config["channel_mults"] == [1, 2, 2]  # 16 -> 8 -> 4
    assert net.stem.in_channels == 16 and net.out[-1].out_channels == 16
    assert "patch_size" not in ResAttnUNet(n_steps=10, image_size=28, base_channels=8).config
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 4 * 2 + 1, 4 * 5 + 3] = 1.0  # the pixel at row 1, column 3 of the patch in grid cell (2, 5)
    cells = torch.nn.functional.pixel_unshuffle(x, 4)
    assert cells.shape == (1, 16, 16, 16) and cells[0, 1 * 4 + 3, 2, 5] == 1.0 and cells.sum() == 1.0
    seen = {}

    def keep_input(module, inputs, output) -> None:
        seen["in"] = inputs[0]

    net.stem.register_forward_hook(keep_input)
    with torch.no_grad():
        net.out[-1].bias.copy_(torch.arange(16.0))  # output channel k is the constant k
        out = net(x, torch.tensor([3]))
    assert torch.equal(seen["in"], cells)
    assert out[0, 0, 4 * 2 + 1, 4 * 5 + 3] == 1 * 4 + 3 and out[0, 0, 0, 0] == 0 and out[0, 0, 63, 63] == 15


@pytest.mark.parametrize("arch", ["paper", "fixed"])
def test_old_checkpoints_load_and_sample_identically(tmp_path, arch):
    """A checkpoint as the package wrote it before this change (no 'schedule' in its config) samples the same."""
    torch.manual_seed(0)
    ddpm = DiffusionModel(MyUNet(n_steps=10, time_emb_dim=16, image_size=28, arch=arch), timesteps=10)
    before = sample(ddpm, 3, "cpu", seed=4).images
    config = model_config("mnist", ddpm)
    del config["schedule"]
    path = tmp_path / "old.pt"
    save_checkpoint(path, ddpm, config)
    loaded, _ = load_checkpoint(path)
    assert loaded.schedule == "linear"
    assert torch.equal(sample(loaded, 3, "cpu", seed=4).images, before)


def test_resattn_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    ddpm = DiffusionModel(_perturbed(ResAttnUNet(n_steps=10, image_size=28, base_channels=8)), timesteps=10,
                          schedule="cosine")
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, ddpm, model_config("mnist", ddpm))
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["config"]["schedule"] == "cosine" and ckpt["config"]["network"]["base_channels"] == 8
    assert torch.equal(loaded.alpha_bars, ddpm.alpha_bars)
    assert torch.equal(sample(loaded, 2, "cpu", seed=1, sampler=make_sampler("dpm++", loaded, 4)).images,
                       sample(ddpm, 2, "cpu", seed=1, sampler=make_sampler("dpm++", ddpm, 4)).images)


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


# --------------------------------------------------------------------------- the shifted schedule


@pytest.mark.parametrize("shift", [2.0, 64 / 28])
def test_shifted_schedule_by_hand(shift):
    """SNR'_t = SNR_t / shift^2 at three steps (Hoogeboom et al. 2023), abar'_T near 0, and betas that rebuild it."""
    ddpm = DiffusionModel(torch.nn.Identity(), timesteps=1000, image_chw=(1, 2, 2), schedule_shift=shift)
    for t in (0, 500, 999):
        abar = 1.0
        for i in range(t + 1):  # beta_i = 1e-4 + i * (0.02 - 1e-4) / 999
            abar *= 1 - (1e-4 + i * (0.02 - 1e-4) / 999)
        snr = abar / (1 - abar) / shift ** 2
        assert ddpm.alpha_bars[t].item() == pytest.approx(snr / (1 + snr), rel=1e-5)
    # t = 500 (the paper's schedule: abar 0.07780, SNR 0.08436): with shift 2, SNR 0.02109 and abar 0.02065
    if shift == 2.0:
        assert ddpm.alpha_bars[500].item() == pytest.approx(0.020654, rel=1e-4)
    assert ddpm.alpha_bars[-1].item() < 4.04e-5 / shift ** 2  # the paper's abar_T is 4.04e-5
    assert bool(((ddpm.betas > 0) & (ddpm.betas < 1)).all())
    assert torch.allclose(torch.cumprod(1 - ddpm.betas.double(), 0).float(), ddpm.alpha_bars)


def test_schedule_shift_of_one_is_the_schedule_and_bad_shifts_are_refused():
    plain = DiffusionModel(torch.nn.Identity(), timesteps=1000, image_chw=(1, 2, 2))
    same = DiffusionModel(torch.nn.Identity(), timesteps=1000, image_chw=(1, 2, 2), schedule_shift=1.0)
    assert torch.equal(plain.betas, same.betas) and torch.equal(plain.alpha_bars, same.alpha_bars)
    assert "schedule_shift" not in model_config("mnist", DiffusionModel(
        ResAttnUNet(n_steps=10, image_size=28, base_channels=8), timesteps=10))
    for bad in (0.0, -2.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="schedule_shift must be a finite positive number"):
            DiffusionModel(torch.nn.Identity(), timesteps=10, image_chw=(1, 2, 2), schedule_shift=bad)


def test_shifted_schedule_is_recorded_and_round_trips(tmp_path):
    ddpm = DiffusionModel(_perturbed(ResAttnUNet(n_steps=10, image_size=28, base_channels=8)), timesteps=10,
                          schedule_shift=2.0, prediction="v")
    path = tmp_path / "shifted.pt"
    save_checkpoint(path, ddpm, model_config("mnist", ddpm))
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["config"]["schedule_shift"] == 2.0 and torch.equal(loaded.alpha_bars, ddpm.alpha_bars)
    assert torch.equal(sample(loaded, 2, "cpu", seed=1, sampler=make_sampler("dpm++", loaded, 4)).images,
                       sample(ddpm, 2, "cpu", seed=1, sampler=make_sampler("dpm++", ddpm, 4)).images)


# --------------------------------------------------------------------------- v-prediction


class Oracle(torch.nn.Module):
    """A stand-in network that outputs a fixed tensor, whatever it is given."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out


def test_v_prediction_turns_v_into_the_noise_by_hand():
    """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans and Ho 2022): the true v gives back the true noise,
    and an output of 0 gives eps = sqrt(1 - abar) x_t, which is x_t itself at t = T - 1."""
    torch.manual_seed(0)
    x0, eps = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 300, 700, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    ddpm = DiffusionModel(Oracle(v), timesteps=1000, image_chw=(1, 8, 8), prediction="v")
    x_t, _ = ddpm.add_noise(x0, t, eps)
    assert torch.allclose(ddpm.backward(x_t, t), eps, atol=1e-5)
    ddpm.backward_process_model = Oracle(torch.zeros_like(x0))
    assert torch.allclose(ddpm.backward(x_t, t), (1 - abar).sqrt() * x_t, atol=1e-6)
    assert (ddpm.backward(x_t, t)[3] - x_t[3]).abs().max() < 1e-4  # abar_T = 4e-5
    assert torch.equal(DiffusionModel(Oracle(v), timesteps=1000, image_chw=(1, 8, 8)).backward(x_t, t), v)  # eps
    with pytest.raises(ValueError, match="prediction must be one of"):
        DiffusionModel(Oracle(v), timesteps=10, image_chw=(1, 8, 8), prediction="x0")


def test_v_prediction_loss_is_min_snr_in_v_terms():
    """Eq. 8 on the eps that v implies, Min-SNR weighted, equals Hang et al.'s v weighting by hand:
    min(SNR, gamma) / (SNR + 1) times the squared error of v, with the same draws."""
    torch.manual_seed(0)
    x0, out = torch.rand(6, 1, 8, 8) * 2 - 1, torch.randn(6, 1, 8, 8)
    ddpm = DiffusionModel(Oracle(out), timesteps=100, image_chw=(1, 8, 8), prediction="v")
    torch.manual_seed(3)
    loss = diffusion_loss(ddpm, x0, snr_gamma=2.0)
    torch.manual_seed(3)
    t = torch.randint(0, 100, (6,))
    eps = torch.randn_like(x0)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)[t]
    snr = abar / (1 - abar)
    a, s = abar.sqrt().float().view(-1, 1, 1, 1), (1 - abar).sqrt().float().view(-1, 1, 1, 1)
    v_error = ((a * eps - s * x0 - out) ** 2).mean(dim=(1, 2, 3))
    by_hand = ((snr.clamp(max=2.0) / (snr + 1)).float() * v_error).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_v_prediction_is_recorded_only_when_chosen_and_round_trips(tmp_path):
    torch.manual_seed(0)
    eps_model = DiffusionModel(ResAttnUNet(n_steps=10, image_size=28, base_channels=8), timesteps=10)
    assert "prediction" not in model_config("mnist", eps_model)  # eps checkpoints are written as before
    ddpm = DiffusionModel(_perturbed(ResAttnUNet(n_steps=10, image_size=28, base_channels=8)), timesteps=10,
                          prediction="v")
    path = tmp_path / "v.pt"
    save_checkpoint(path, ddpm, model_config("mnist", ddpm))
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["config"]["prediction"] == "v" and loaded.prediction == "v"
    assert torch.equal(sample(loaded, 2, "cpu", seed=1, sampler=make_sampler("dpm++", loaded, 4)).images,
                       sample(ddpm, 2, "cpu", seed=1, sampler=make_sampler("dpm++", ddpm, 4)).images)
    loaded.prediction = "eps"  # the same weights read as eps draw other images: the flag is used
    assert not torch.equal(sample(loaded, 2, "cpu", seed=1, sampler=make_sampler("dpm++", loaded, 4)).images,
                           sample(ddpm, 2, "cpu", seed=1, sampler=make_sampler("dpm++", ddpm, 4)).images)


def test_min_snr_v_weights_the_error_of_v_by_hand():
    """``min-snr-v``: Min-SNR's weights on the error of v, i.e. on Eq. 8's error divided by abar_t; the fast
    path's loss function passes the choice on unchanged."""
    from fastpath import loss_function

    torch.manual_seed(0)
    ddpm = DiffusionModel(ConvNet(), timesteps=100, image_chw=(1, 8, 8), prediction="v")
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    torch.manual_seed(3)
    loss = diffusion_loss(ddpm, x0, snr_gamma=2.0, v_error=True)
    torch.manual_seed(3)
    t = torch.randint(0, 100, (6,))
    _, noise, pred = ddpm(x0, t=t)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=torch.float64), 0)[t]
    snr = abar / (1 - abar)
    by_hand = ((snr.clamp(max=2.0) / snr / abar).float() * ((noise - pred) ** 2).mean(dim=(1, 2, 3))).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    torch.manual_seed(3)
    assert loss_function(ddpm, frozenset(), "cpu", snr_gamma=2.0, v_error=True)(x0).item() == loss.item()
    with pytest.raises(ValueError, match="v_error weights the Min-SNR loss"):
        diffusion_loss(ddpm, x0, v_error=True)


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
    (["--train", "--arch", "fixed", "--channels", "16"], "--channels, --dropout and --patch-size need --arch resattn"),
    (["--train", "--arch", "paper", "--dropout", "0.1"], "--channels, --dropout and --patch-size need --arch resattn"),
    (["--train", "--arch", "paper", "--patch-size", "2"], "--channels, --dropout and --patch-size need --arch"),
    (["--train", "--patch-size", "0"], "argument --patch-size"),
    (["--train", "--dropout", "1.5"], "must lie in \\[0, 1\\)"),
    (["--train", "--lr-schedule", "step", "--warmup-steps", "10"], "--warmup-steps needs --lr-schedule cosine"),
    (["--train", "--snr-gamma", "0"], "must be a finite positive number"),
    (["--train", "--schedule", "quadratic"], "invalid choice"),
    (["--train", "--prediction", "x0"], "argument --prediction: invalid choice: 'x0'"),
    (["--train", "--schedule-shift", "0"], "argument --schedule-shift"),
    (["--train", "--schedule-shift", "inf"], "argument --schedule-shift"),
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


# --------------------------------------------------------------------------- the 64x64 default (issue 16)


def settings_of(argv: list[str]):
    """The model and training settings a new run of ``argv`` gets (``config.resolve`` of the parsed options)."""
    args = parse_args(argv)
    return resolve(settings_given(args), dataset_of(args), args.recipe)


def test_the_cli_builds_each_datasets_default_network():
    import main

    def network(argv):
        return main.new_model(settings_of(argv)[0], parse_args(argv).dataset or "mnist", torch.device("cpu"))

    persian = network(["--dataset", "persian", "--train", "--device", "cpu"])
    config = persian.backward_process_model.config
    assert (config["image_size"], config["patch_size"], config["base_channels"], config["channel_mults"]) == \
        (64, 4, 48, [1, 2, 2])
    mnist = network(["--dataset", "mnist", "--train", "--device", "cpu"])
    config = mnist.backward_process_model.config
    assert "patch_size" not in config and (config["base_channels"], config["channel_mults"]) == (32, [1, 2, 2])
    chosen = network(["--dataset", "persian", "--train", "--patch-size", "2", "--channels", "8"])
    assert chosen.backward_process_model.config["patch_size"] == 2
    # the recipe of the noisiest steps (docs/results.md: "Persian digits: the noisiest steps"), on both datasets
    assert (persian.prediction, mnist.prediction) == ("v", "v")
    assert [settings_of(["--dataset", d, "--train"])[1].loss_weighting for d in ("persian", "mnist")] == \
        ["min-snr-v", "min-snr-v"]
    assert settings_of(["--train", "--prediction", "eps", "--loss-weighting", "min-snr"])[0].prediction == "eps"


def test_the_training_batch_size_by_dataset():
    """MNIST trains in batches of 64 (docs/results.md: "MNIST, the default recipe"), the Persian digits in the
    paper's 128; a given --batch-size wins; parsing alone fills in nothing."""
    assert [settings_of(["--dataset", d, "--train"])[1].batch_size for d in ("mnist", "persian")] == [64, 128]
    assert settings_of(["--train"])[1].batch_size == 64  # the default dataset, MNIST
    assert settings_of(["--dataset", "persian", "--train", "--batch-size", "32"])[1].batch_size == 32
    assert parse_args(["--train"]).batch_size is None and parse_args(["--train", "--resume"]).batch_size is None


def test_the_paper_recipe_is_one_flag_and_each_part_stays_overridable():
    model, train = settings_of(["--train", "--recipe", "paper"])
    assert (model.arch, model.prediction, model.channels, model.patch_size) == ("paper", "eps", None, None)
    assert (train.lr_schedule, train.loss_weighting, train.ema_decay, train.epochs, train.batch_size,
            train.warmup_steps, train.lr) == ("step", "none", 0.0, 10, 128, 0, 1e-3)
    model, train = settings_of(["--train", "--recipe", "paper", "--epochs", "3", "--ema-decay", "0.99",
                                "--arch", "fixed"])
    assert (model.arch, model.prediction, train.epochs, train.ema_decay) == ("fixed", "eps", 3, 0.99)
    default_model, default_train = settings_of(["--train"])
    assert (default_model.arch, default_model.prediction, default_train.lr_schedule) == ("resattn", "v", "cosine")


def test_a_tiny_persian_run_with_the_default_network_trains_and_samples(tmp_path, monkeypatch, capsys):
    """The default 64x64 network end to end: train on a tiny zip, then ``--sample`` with no other flag."""
    import main
    from datagen import persian_members, write_zip

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    (tmp_path / "data").mkdir()
    write_zip(tmp_path / "data" / "persian_digits.zip", persian_members(40))
    assert main.main(["--dataset", "persian", "--train", "--epochs", "2", "--batch-size", "10", "--timesteps", "20",
                      "--data-root", "data", "--quiet"]) == 0
    ckpt = load_checkpoint(tmp_path / "runs" / "ddpm_persian.pt")[1]
    assert ckpt["config"]["network"]["patch_size"] == 4 and len(ckpt["history"]["train_loss"]) == 2
    assert ckpt["config"]["prediction"] == "v" and ckpt["train_args"]["loss_weighting"] == "min-snr-v"
    assert main.main(["--sample", "--data-root", "data", "--quiet"]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "runs" / "samples_persian.png").size == (4 * 64, 4 * 64)  # 16 samples, 4x4
    assert main.main(["--dataset", "persian", "--train", "--patch-size", "3", "--out-dir", "other",
                      "--data-root", "data", "--quiet"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "main.py: error: persian (64x64): patch_size must be a positive divisor of image size 64, got 3"
    written = [p.name for p in (tmp_path / "other").iterdir()]
    assert written == [".train.lock"]  # (the folder is made writable and locked before the network is built)
