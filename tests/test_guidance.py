"""Tests of class-conditional training and classifier-free guidance (issue 13)."""

from __future__ import annotations

import argparse
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import main
from conftest import read_gif
from datagen import make_mnist
from diffusion_model import DiffusionModel
from recipe import diffusion_loss
from unet import add_label, label_embedding, make_unet
from samplers import make_sampler
from utils import sample


def _conditional(arch: str) -> nn.Module:
    extra = dict(base_channels=8) if arch == "resattn" else {}
    net = make_unet(arch=arch, n_steps=20, image_size=28, num_classes=10, **extra)
    torch.manual_seed(1)
    with torch.no_grad():  # move every weight off its initial value (the label table starts at zero)
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("arch", ["paper", "fixed", "resattn"])
def test_the_label_changes_the_output_and_no_label_is_one_token(arch):
    net = _conditional(arch)
    assert net.config["num_classes"] == 10
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 5])
    with torch.no_grad():
        three, seven = net(x, t, torch.tensor([3, 3])), net(x, t, torch.tensor([7, 7]))
        assert (three - seven).abs().max() > 1e-3  # kept: the output depends on the label
        # dropped: "no label" (index 10) is what y=None means, whatever label the image had
        assert torch.equal(net(x, t, torch.tensor([10, 10])), net(x, t))


def test_unconditional_networks_are_unchanged_and_refuse_labels():
    net = make_unet(arch="fixed", n_steps=20)
    assert "num_classes" not in net.config and not any("label" in k for k in net.state_dict())
    with pytest.raises(ValueError, match="not class-conditional"):
        net(torch.randn(1, 1, 28, 28), torch.tensor([1]), torch.tensor([3]))
    cond = label_embedding(10, 4)
    with pytest.raises(ValueError, match="labels must lie in 0..10"):
        add_label(torch.zeros(1, 4), cond, torch.tensor([11]))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        add_label(torch.zeros(2, 4), cond, torch.tensor([1]))


class SpyNet(nn.Module):
    """Records the labels it was given; predicts zero noise."""

    def __init__(self) -> None:
        super().__init__()
        self.config = dict(num_classes=10, in_channels=1, image_size=2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append(y.clone())
        return torch.zeros_like(x)


def test_the_label_drop_rate_is_honoured():
    net = SpyNet()
    ddpm = DiffusionModel(net, timesteps=10)
    labels = torch.arange(20000) % 10
    torch.manual_seed(0)
    diffusion_loss(ddpm, torch.zeros(20000, 1, 2, 2), y=labels, label_drop=0.25)
    seen = net.seen[-1]
    dropped = seen == 10
    assert abs(dropped.double().mean().item() - 0.25) < 0.01
    assert torch.equal(seen[~dropped], labels[~dropped])  # the others keep their own label
    diffusion_loss(ddpm, torch.zeros(100, 1, 2, 2), y=labels[:100], label_drop=0.0)
    assert torch.equal(net.seen[-1], labels[:100])


class TwoWayNet(nn.Module):
    """A stand-in conditional predictor: 1 for the "no label" token, 3 for any real label."""

    def __init__(self) -> None:
        super().__init__()
        self.config = dict(num_classes=10, in_channels=1, image_size=2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        value = torch.where(y == 10, 1.0, 3.0) if y is not None else torch.ones(len(x))
        return value.reshape(-1, 1, 1, 1).expand_as(x).clone()


@pytest.mark.parametrize("w, expected", [(0.0, 1.0), (1.0, 3.0), (2.0, 1.0 + 2.0 * (3.0 - 1.0)), (0.5, 2.0)])
def test_guidance_arithmetic(w, expected):
    ddpm = DiffusionModel(TwoWayNet(), timesteps=10)
    x, t, y = torch.zeros(4, 1, 2, 2), torch.full((4,), 3), torch.tensor([0, 3, 7, 9])
    assert torch.equal(ddpm.guided_backward(x, t, y, w), torch.full_like(x, expected))
    assert torch.equal(ddpm.guided_backward(x, t, None, w), torch.ones_like(x))  # no labels: unconditional


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_every_sampler_takes_labels_and_guidance(sampler):
    torch.manual_seed(0)
    ddpm = DiffusionModel(_conditional("fixed"), timesteps=20)
    steps = None if sampler == "ddpm" else 5
    a = sample(ddpm, 3, "cpu", seed=0, sampler=make_sampler(sampler, ddpm, steps),
               labels=torch.tensor([1, 2, 3]), guidance=2.0).images
    b = sample(ddpm, 3, "cpu", seed=0, sampler=make_sampler(sampler, ddpm, steps),
               labels=torch.tensor([4, 5, 6]), guidance=2.0).images
    assert a.shape == (3, 1, 28, 28) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="one label per sample"):
        sample(ddpm, 3, "cpu", labels=torch.tensor([1, 2]))


def test_guidance_interval_guides_only_its_steps(monkeypatch):
    ddpm = DiffusionModel(_conditional("fixed"), timesteps=20)
    seen: list[tuple[int, float]] = []
    guided = ddpm.guided_backward

    def spy(x, t, y, w):
        seen.append((int(t[0]), w))
        return guided(x, t, y, w)

    monkeypatch.setattr(ddpm, "guided_backward", spy)
    labels = torch.tensor([1, 2, 3])
    windowed = sample(ddpm, 3, "cpu", seed=0, labels=labels, guidance=2.0, guidance_interval=(5, 8)).images
    assert seen == [(t, 2.0 if 5 <= t <= 8 else 1.0) for t in range(19, -1, -1)]  # DDPM: every step, W = 1 outside
    plain = sample(ddpm, 3, "cpu", seed=0, labels=labels, guidance=2.0).images
    whole = sample(ddpm, 3, "cpu", seed=0, labels=labels, guidance=2.0, guidance_interval=(0, 19)).images
    conditional = sample(ddpm, 3, "cpu", seed=0, labels=labels, guidance=1.0).images
    assert torch.equal(whole, plain)  # the whole range is plain guidance
    assert not torch.equal(windowed, plain) and not torch.equal(windowed, conditional)
    for bad in [(3, 2), (-1, 4), (0, 20)]:
        with pytest.raises(ValueError, match="guidance_interval must be"):
            sample(ddpm, 3, "cpu", labels=labels, guidance=2.0, guidance_interval=bad)


def test_class_conditional_run_end_to_end(tmp_path, run_main):
    make_mnist(tmp_path / "data", n_train=40, n_test=10)
    common = ("--data-root", "data", "--quiet")
    done = run_main("--dataset", "mnist", "--train", "--class-cond", "--epochs", "1", "--channels", "8",
                 "--batch-size", "20", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_main("--sample", "--digit", "3", "--gif", "three.gif", "--n-samples", "4", "--sampler", "dpm++",
                 "--sample-steps", "4", "--frames-per-gif", "3", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    frames, _ = read_gif(tmp_path / "three.gif")
    assert frames[0].shape == (56, 56)  # 4 samples, 2x2
    done = run_main("--sample", "--n-samples", "20", "--sampler", "ddim", "--sample-steps", "3", *common,
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    grid = np.array(Image.open(tmp_path / "runs" / "samples_mnist.png"))
    assert grid.shape == (10 * 28, 2 * 28)  # one row per digit, 2 per row


def test_sample_passes_guidance_and_its_interval_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    make_mnist(tmp_path / "data", n_train=12, n_test=4)
    assert main.main(["--dataset", "mnist", "--train", "--class-cond", "--epochs", "1", "--arch", "fixed",
                      "--timesteps", "10", "--data-root", "data", "--quiet"]) == 0
    calls: list[dict] = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return sample(*args, **kwargs)

    monkeypatch.setattr(main, "sample", spy)
    assert main.main(["--sample", "--digit", "3", "--n-samples", "2", "--guidance", "4", "--quiet"]) == 0
    assert main.main(["--sample", "--n-samples", "10", "--guidance-interval", "2,6", "--quiet"]) == 0
    assert main.main(["--sample", "--n-samples", "10", "--quiet"]) == 0  # MNIST's measured default: 2, t <= 0.45 T
    assert main.main(["--sample", "--n-samples", "10", "--guidance", "0", "--quiet"]) == 0
    assert [(c["guidance"], c["guidance_interval"]) for c in calls] == [(4.0, None), (2.0, (2, 6)), (2.0, (0, 4)),
                                                                         (0.0, None)]
    assert calls[0]["labels"].tolist() == [3, 3]


def test_guidance_defaults_by_dataset():
    ddpm = SimpleNamespace(timesteps=1000)

    def given(weight=None, interval=None):
        return argparse.Namespace(guidance=weight, guidance_interval=interval)

    assert main.guidance_of(given(), ddpm, "mnist") == (2.0, (0, 450))  # as measured: t <= 0.45 T
    assert main.guidance_of(given(), ddpm, "persian") == (1.5, None)  # every step
    assert main.guidance_of(given(2.0), ddpm, "mnist") == (2.0, None)  # a W given alone guides every step
    assert main.guidance_of(given(None, (100, 200)), ddpm, "persian") == (1.5, (100, 200))
    assert main.guidance_of(given(None, (100, 200)), ddpm, "mnist") == (2.0, (100, 200))
    assert main.guidance_of(given(3.0, (0, 999)), ddpm, "mnist") == (3.0, (0, 999))
    with pytest.raises(main.UsageError, match=r"time steps lie in 0\.\.999 \(the checkpoint's T\), got 1000"):
        main.guidance_of(given(None, (0, 1000)), ddpm, "mnist")


@pytest.mark.parametrize("argv, code, message", [
    (["--sample", "--digit", "3"], 1, "--digit needs a class-conditional checkpoint"),
    (["--sample", "--digit", "10"], 2, "argument --digit: must be digits 0-9"),
    (["--sample", "--digit", "3,x"], 2, "argument --digit: must be digits 0-9"),
    (["--sample", "--guidance", "-1"], 2, "argument --guidance: must be a finite number >= 0"),
    (["--sample", "--guidance", "inf"], 2, "argument --guidance: must be a finite number >= 0"),
    (["--train", "--class-cond", "--label-drop", "1"], 2, "argument --label-drop: must lie in \\[0, 1\\)"),
    (["--train", "--class-cond", "--label-drop", "-0.1"], 2, "argument --label-drop: must lie in \\[0, 1\\)"),
    (["--sample", "--class-cond"], 2, "--class-cond and --label-drop need --train"),
    (["--sample", "--guidance-interval", "500,100"], 2, "argument --guidance-interval: must be two time steps"),
    (["--sample", "--guidance-interval", "100"], 2, "argument --guidance-interval: must be two time steps"),
    (["--train", "--guidance-interval", "1,2"], 2, "--guidance-interval need --sample or --evaluate"),
    (["--sample", "--guidance-interval", "1,2"], 1, "--guidance-interval needs a class-conditional checkpoint"),
    (["--sample", "--guidance", "2"], 1, "--guidance needs a class-conditional checkpoint"),
    (["--evaluate", "--guidance", "2"], 1, "--guidance needs a class-conditional checkpoint"),
])
def test_bad_guidance_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, code, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    if code == 1:  # an unconditional checkpoint to refuse
        make_mnist(tmp_path / "data", n_train=12, n_test=4)
        assert main.main(["--dataset", "mnist", "--train", "--epochs", "1", "--arch", "fixed", "--timesteps", "10",
                          "--data-root", "data", "--quiet"]) == 0
        capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
    try:
        returned = main.main(argv)
    except SystemExit as exc:  # argparse refuses before anything runs
        returned = exc.code
    assert returned == code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("main.py: error:")
    assert re.search(message, last)
    after = sorted(p.name for p in (tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
    assert after == before
