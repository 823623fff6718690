"""Tests of the shareable export: model.safetensors and config.json (export.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoint import CheckpointError, build_model, model_config
from diffusion_model import DiffusionModel
from export import export_model, load_exported
from unet import make_unet
from utils import sample


def tiny(arch: str = "resattn", seed: int = 0) -> DiffusionModel:
    """A small network, a cosine schedule of 8 steps, v-prediction; seeded weights, every one moved off its
    initial value as training would (resattn starts with a zero output layer: the same samples at any seed)."""
    torch.manual_seed(seed)
    width = dict(base_channels=8) if arch == "resattn" else {}
    net = make_unet(arch=arch, n_steps=8, time_emb_dim=16, image_size=28, **width)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return DiffusionModel(net, timesteps=8, schedule="cosine", prediction="v")


@pytest.mark.parametrize("arch", ["resattn", "fixed"])
def test_export_round_trips_bit_for_bit(tmp_path, arch):
    ddpm = tiny(arch)
    config = model_config("mnist", ddpm)
    train_args = dict(lr=1e-3, epochs=11, ema_decay=0.999)
    assert export_model(ddpm, config, tmp_path / "shared", extra=dict(train_args=train_args)) == tmp_path / "shared"
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["config.json", "model.safetensors"]
    loaded, loaded_config = load_exported(tmp_path / "shared", "cpu")
    assert loaded_config == dict(format="ddpm-tutorial-export", version=1, **config, train_args=train_args)
    expected, found = ddpm.state_dict(), loaded.state_dict()
    assert list(found) == list(expected)
    assert all(found[k].dtype == expected[k].dtype and torch.equal(found[k], expected[k]) for k in expected)
    assert (loaded.schedule, loaded.prediction, loaded.timesteps) == ("cosine", "v", 8)
    options = dict(seed=3, sampler="ddpm")
    assert torch.equal(sample(loaded, 3, "cpu", **options).images, sample(ddpm, 3, "cpu", **options).images)
    assert not torch.equal(sample(tiny(arch, seed=1), 3, "cpu", **options).images,
                           sample(ddpm, 3, "cpu", **options).images)


def test_the_export_reads_without_this_package(tmp_path):
    """Plain safetensors and json: the state dict's tensors, and a config from which build_model rebuilds."""
    ddpm = tiny()
    export_model(ddpm, model_config("mnist", ddpm), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors.keys() == ddpm.state_dict().keys() and "alpha_bars" in tensors  # the schedule too
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["network"]["arch"] == "resattn" and config["image_chw"] == [1, 28, 28]
    rebuilt = build_model(config)
    rebuilt.load_state_dict(tensors)
    assert torch.equal(rebuilt.alpha_bars, ddpm.alpha_bars)


def one_line_error(folder, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as caught:
        load_exported(folder)
    assert "\n" not in str(caught.value)


def test_broken_exports_are_one_line_errors(tmp_path):
    ddpm = tiny("fixed")
    config = model_config("mnist", ddpm)
    good = export_model(ddpm, config, tmp_path / "good")
    one_line_error(tmp_path / "none", "no exported model at .*none: an exported model is a folder with")
    for name in ("config.json", "model.safetensors"):
        folder = export_model(ddpm, config, tmp_path / f"without_{name}")
        (folder / name).unlink()
        one_line_error(folder, f"without_{name} is a directory, not a checkpoint file, and it has no {name}")
    broken = tmp_path / "without_config.json"  # its weights are there: each config below is the fault
    (broken / "config.json").write_text('{"dataset": "mnist",')
    one_line_error(broken, r"config.json is not valid JSON \(JSONDecodeError: Expecting")
    (broken / "config.json").write_text("[1, 2]")
    one_line_error(broken, "holds a JSON list, not the object of a model config")
    (broken / "config.json").write_text(json.dumps(dict(config, format="ddpm-tutorial-export", version=2)))
    one_line_error(broken, "is marked 'ddpm-tutorial-export' version 2; this package reads 'ddpm-tutorial-export' "
                           "version 1")
    (broken / "config.json").write_text('{"dataset": "mnist"}')
    one_line_error(broken, "does not describe a model of this package .SettingError: its config is not a dict")
    (good / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:1000])
    one_line_error(good, "model.safetensors is not a readable safetensors file")


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    ddpm = tiny("fixed")
    config = model_config("mnist", ddpm)
    folder = export_model(ddpm, dict(config, network=dict(config["network"], time_emb_dim=32)), tmp_path)
    one_line_error(folder, r"model.safetensors does not match config.json: another shape: "
                           r"backward_process_model\.time_embed\.weight \(8, 16\) for \(8, 32\)")
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "betas"} | {"extra.weight": torch.zeros(1)},
              folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    one_line_error(folder, "does not match config.json: missing: betas; unexpected: extra.weight$")


def test_extra_may_not_replace_the_model_config(tmp_path):
    ddpm = tiny("fixed")
    with pytest.raises(ValueError, match=r"extra entries \['timesteps'\] would replace"):
        export_model(ddpm, model_config("mnist", ddpm), tmp_path, extra=dict(timesteps=3))
    assert not any(tmp_path.iterdir())


def test_export_from_the_command_line_samples_as_the_checkpoint(tmp_path, run_main):
    """``--export DIR`` writes the EMA weights (the raw ones with --no-ema); ``--checkpoint DIR`` draws the same
    images as the checkpoint does."""
    from datagen import make_mnist
    make_mnist(tmp_path / "data", n_train=16, n_test=4)
    common = ("--data-root", "data", "--quiet")
    assert run_main("--dataset", "mnist", "--train", "--epochs", "1", "--timesteps", "10", "--channels", "8",
                    "--batch-size", "8", *common, cwd=tmp_path).returncode == 0
    for folder, extra in (("shared", ()), ("shared_raw", ("--no-ema",))):
        done = run_main("--export", folder, *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "shared" / "config.json").read_text())
    assert config["weights"] == "ema" and config["network"]["arch"] == "resattn" and config["prediction"] == "v"
    assert config["train_args"]["loss_weighting"] == "min-snr-v" and config["source"] == "runs/ddpm_mnist.pt"
    assert json.loads((tmp_path / "shared_raw" / "config.json").read_text())["weights"] == "raw"
    grids = {}
    for name, args in (("ckpt", ("--checkpoint", "runs/ddpm_mnist.pt")), ("export", ("--checkpoint", "shared")),
                       ("raw", ("--checkpoint", "shared_raw"))):
        done = run_main("--sample", *args, "--n-samples", "4", "--sampler", "ddim", "--sample-steps", "3",
                        "--out-dir", name, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        grids[name] = (tmp_path / name / "samples_mnist.png").read_bytes()
    assert grids["export"] == grids["ckpt"]
    ema, raw = (load_file(tmp_path / folder / "model.safetensors") for folder in ("shared", "shared_raw"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
