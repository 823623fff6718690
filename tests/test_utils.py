"""Tests of the training loop, evaluation, sampling and figures (utils.py)."""

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from conftest import ZeroNet, read_gif, tiny_ddpm
from torch.utils.data import DataLoader, TensorDataset

import figures
import utils
import samplers
from samplers import make_sampler
from utils import TrainState
from diffusion_model import DiffusionModel
from ema import EMA
from unet import make_unet


def tiny_loader(n: int = 12, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=g) * 2 - 1
    return DataLoader(TensorDataset(images, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def test_evaluate_is_seeded_whatever_the_global_rng():
    ddpm = tiny_ddpm()
    loader = tiny_loader()
    torch.manual_seed(123)
    first = utils.evaluate(ddpm, loader, seed=5)
    torch.manual_seed(456)
    assert utils.evaluate(ddpm, loader, seed=5) == first
    assert utils.evaluate(ddpm, loader, seed=6) != first
    assert ddpm.training  # mode restored


def test_evaluate_matches_hand_computed_mse():
    """With a network that predicts zero noise, the loss is the mean of noise^2 over the draws."""

    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 28, 28), timesteps=10)
    loader = tiny_loader(n=8, batch_size=8)
    gen = torch.Generator().manual_seed(3)
    torch.randint(0, 10, (8,), generator=gen)
    noise = torch.randn(8, 1, 28, 28, generator=gen)
    assert utils.evaluate(ddpm, loader, seed=3) == pytest.approx(noise.pow(2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="empty loader"):
        utils.evaluate(ddpm, DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28)), batch_size=2))


def test_training_loop_learns_and_keeps_best_by_validation(tmp_path, monkeypatch):
    ddpm = tiny_ddpm()
    state = TrainState(ddpm, torch.optim.Adam(ddpm.parameters(), lr=1e-3))
    val_losses = iter([0.5, 0.3, 0.4])
    monkeypatch.setattr(utils, "evaluate", lambda *a, **k: next(val_losses))
    saves = []
    monkeypatch.setattr(state, "save", lambda path: saves.append((Path(path).name, len(state.history["train_loss"]))))
    history = utils.training_loop(state, tiny_loader(), tiny_loader(), 3, store_path=tmp_path / "best.pt",
                                  loss_curve_path=tmp_path / "loss.png")
    assert history["val_loss"] == [0.5, 0.3, 0.4]
    assert len(history["train_loss"]) == 3 and all(np.isfinite(history["train_loss"]))
    assert history["lr"] == [1e-3, 1e-3, 1e-3]
    # best after epochs 1 and 2 (validation loss fell), not after 3; the last one every epoch
    assert saves == [("best.pt", 1), ("best_last.pt", 1), ("best.pt", 2), ("best_last.pt", 2), ("best_last.pt", 3)]
    assert state.epoch == 3 and state.batch == 0
    assert imageio.imread(tmp_path / "loss.png").ndim == 3


def test_training_loop_gives_a_class_conditional_model_its_labels_by_default(tmp_path, monkeypatch):
    """The default loss takes the loader's labels as labels (not as the Min-SNR gamma, its next parameter)."""
    torch.manual_seed(0)
    ddpm = DiffusionModel(make_unet(arch="fixed", n_steps=10, image_size=28, num_classes=10), timesteps=10)
    seen: list[torch.Tensor] = []
    forward = ddpm.forward
    monkeypatch.setattr(ddpm, "forward", lambda x_0, *a, y=None, **k: seen.append(y) or forward(x_0, *a, y=y, **k))
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 28, 28) * 2 - 1, torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])),
                        batch_size=4)
    state = TrainState(ddpm, torch.optim.Adam(ddpm.parameters(), lr=1e-3))
    history = utils.training_loop(state, loader, loader, 1)
    assert np.isfinite(history["train_loss"][0])
    assert [y.tolist() for y in seen[:2]] == [[3, 1, 4, 1], [5, 9, 2, 6]]  # the two training batches


def test_training_loop_reduces_the_loss_and_steps_the_scheduler():
    """On one fixed image the noise is learnable: 20 epochs bring the loss from ~1.0 to ~0.77."""
    ddpm = tiny_ddpm()
    square = -torch.ones(16, 1, 28, 28)
    square[:, :, 8:20, 8:20] = 1
    loader = DataLoader(TensorDataset(square, torch.zeros(16)), batch_size=16)
    before = utils.evaluate(ddpm, loader)
    optim = torch.optim.Adam(ddpm.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=10, gamma=0.5)
    history = utils.training_loop(TrainState(ddpm, optim, sched), loader, loader, 20)
    assert history["lr"] == [5e-3] * 10 + [2.5e-3] * 10
    assert history["val_loss"][-1] < 0.85 * before
    assert history["val_loss"][-1] == utils.evaluate(ddpm, loader)  # the same seeded evaluation
    with pytest.raises(ValueError, match="n_epochs must be >= 1"):
        utils.training_loop(TrainState(ddpm, optim), loader, loader, 0)


def test_train_state_step_is_one_optimizer_step_and_one_ema_update():
    ddpm = tiny_ddpm()
    ema = EMA(ddpm.backward_process_model, 0.9)
    state = TrainState(ddpm, torch.optim.SGD(ddpm.parameters(), lr=0.1), ema=ema)
    weight = ddpm.backward_process_model.conv_out.weight
    start = weight.detach().clone()
    loss = state.step(torch.zeros(2, 1, 28, 28), lambda x0: weight.sum())  # d loss / d weight = 1 everywhere
    assert loss.item() == pytest.approx(start.sum().item())
    torch.testing.assert_close(weight.detach(), start - 0.1)  # one SGD step of rate 0.1
    # the first EMA update has decay min(0.9, 1/10) = 0.1: 0.1 * start + 0.9 * (start - 0.1)
    torch.testing.assert_close(ema.shadow.conv_out.weight, start - 0.09)
    assert ema.num_updates == 1


def test_gif_frame_steps():
    steps = samplers.gif_frame_steps(1000, 100)
    assert len(steps) == 100 and min(steps) == 0 and max(steps) == 999
    assert samplers.gif_frame_steps(10, 100) == set(range(10))
    with pytest.raises(ValueError):
        samplers.gif_frame_steps(10, 0)


def test_sample_gif_grid_and_determinism(tmp_path):
    ddpm = tiny_ddpm(timesteps=12)
    gif, grid = tmp_path / "s.gif", tmp_path / "s.png"
    drawn = utils.sample(ddpm, 5, frames_per_gif=6, seed=1)
    figures.save_sampling_gif(drawn.frames, gif)
    figures.save_grid(drawn.raw, grid)
    out = drawn.images
    assert out.shape == (5, 1, 28, 28) and out.min() >= -1 and out.max() <= 1
    frames, durations = read_gif(gif)
    assert len(frames) == 6 and frames[0].shape == (2 * 28, 3 * 28)
    # The last frame is held for 6 // 3 extra frame times (Pillow merges the
    # repeated frames into one longer frame).
    assert durations[:-1] == [50] * 5 and durations[-1] == 50 * (1 + 6 // 3)
    assert np.array_equal(frames[-1], figures.tile(out)[:, :, 0])
    png = imageio.imread(grid)
    assert png.shape == (56, 84)
    assert np.array_equal(png, figures.tile(out)[:, :, 0])  # the grid is the returned samples
    again = utils.sample(ddpm, 5, seed=1)
    assert torch.equal(out, again.images) and again.frames == []  # frames only when asked for
    assert not torch.equal(out, utils.sample(ddpm, 5, seed=2).images)


def test_sample_runs_algorithm_2_with_the_reverse_step(monkeypatch):
    """sample() calls ddpm.step once per time step, from T-1 down to 0."""
    ddpm = tiny_ddpm(timesteps=7)
    calls = []
    real_step = ddpm.step

    def spy(x, t, **kw):
        calls.append((t, kw["z"] is None))
        return real_step(x, t, **kw)

    monkeypatch.setattr(ddpm, "step", spy)
    utils.sample(ddpm, 2, seed=0)
    assert calls == [(6, False), (5, False), (4, False), (3, False), (2, False), (1, False), (0, True)]
    with pytest.raises(ValueError, match="n_samples and batch_size must be >= 1"):
        utils.sample(ddpm, 0)


def test_sampler_timesteps():
    ddpm = DiffusionModel(ZeroNet(), image_chw=(1, 2, 2))
    assert make_sampler("ddpm", tiny_ddpm(timesteps=5)).timesteps() == [4, 3, 2, 1, 0]
    ddim = make_sampler("ddim", ddpm, 50).timesteps()
    assert len(ddim) == len(set(ddim)) == 50 and ddim[0] == 999 and ddim[-1] == 0
    assert ddim == sorted(ddim, reverse=True)
    assert make_sampler("ddim", ddpm).timesteps() == ddim  # DDIM's default: 50 steps
    assert make_sampler("ddim", ddpm, 1).timesteps() == [999]
    assert len(make_sampler("dpm++", ddpm).timesteps()) == 20  # DPM-Solver++'s default
    assert make_sampler("dpm++", ddpm, 10, step_schedule="logsnr").timesteps() == [999, 886, 757, 603, 410, 202, 73,
                                                                                    22, 5, 0]
    with pytest.raises(ValueError, match="use the DDIM or DPM-Solver.. sampler to skip"):
        make_sampler("ddpm", ddpm, 50)
    with pytest.raises(ValueError, match=r"sample_steps must lie in 1..1000"):
        make_sampler("ddim", ddpm, 1001)
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler("euler", ddpm, 10)
    with pytest.raises(ValueError, match="the dpm.. sampler takes no eta"):
        make_sampler("dpm++", ddpm, 10, eta=0.5)


def test_sample_with_ddim(tmp_path, monkeypatch):
    ddpm = tiny_ddpm(timesteps=20)
    calls = []
    real = ddpm.ddim_step

    def spy(x, t, t_prev, **kw):
        calls.append((t, t_prev, kw["z"] is None))
        return real(x, t, t_prev, **kw)

    monkeypatch.setattr(ddpm, "ddim_step", spy)
    gif = tmp_path / "ddim.gif"
    drawn = utils.sample(ddpm, 3, frames_per_gif=100, seed=0, sampler=make_sampler("ddim", ddpm, 4, eta=0.0))
    figures.save_sampling_gif(drawn.frames, gif)
    out = drawn.images
    assert calls == [(19, 13, True), (13, 6, True), (6, 0, True), (0, -1, True)]
    frames, durations = read_gif(gif)
    assert len(frames) == 4 and durations[-1] == durations[0] * (1 + 4 // 3)  # as many frames as steps
    calls.clear()
    noisy = utils.sample(ddpm, 3, seed=0, sampler=make_sampler("ddim", ddpm, 4, eta=1.0)).images
    assert [c[2] for c in calls] == [False, False, False, True]  # noise except into x_0
    assert not torch.equal(out, noisy)
