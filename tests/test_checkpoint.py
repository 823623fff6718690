"""Tests of checkpoint writing and loading (checkpoint.py)."""

import pytest
import torch

from checkpoint import VERSION, CheckpointError, build_model, load_checkpoint, model_config, save_checkpoint
from diffusion_model import DiffusionModel
from unet import MyUNet


def make(arch: str = "fixed") -> DiffusionModel:
    torch.manual_seed(0)
    net = MyUNet(n_steps=20, time_emb_dim=16, image_size=64, arch=arch)
    return DiffusionModel(net, beta_start=2e-4, beta_end=0.05, timesteps=20)


def test_round_trip_rebuilds_the_same_model(tmp_path):
    ddpm = make()
    config = model_config("persian", ddpm)
    assert config == dict(dataset="persian", image_chw=[1, 64, 64], timesteps=20, beta_start=2e-4, beta_end=0.05,
                          schedule="linear",
                          network=dict(n_steps=20, time_emb_dim=16, image_size=64, in_channels=1, arch="fixed"))
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, ddpm, config, history=dict(train_loss=[1.0]), epoch=1)
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["history"] == dict(train_loss=[1.0]) and ckpt["epoch"] == 1
    assert loaded.backward_process_model.config["arch"] == "fixed"
    assert torch.equal(loaded.alpha_bars, ddpm.alpha_bars) and loaded.beta_end == 0.05
    x, t = torch.randn(2, 1, 64, 64), torch.tensor([3, 19])
    with torch.no_grad():
        assert torch.equal(loaded.backward(x, t), ddpm.backward(x, t))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_build_model_from_config():
    ddpm = build_model(model_config("mnist", DiffusionModel(MyUNet(n_steps=5), timesteps=5)))
    assert ddpm.image_chw == (1, 28, 28) and ddpm.timesteps == 5


def test_missing_corrupt_foreign_and_old_files(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a checkpoint of this package .not a file written by torch"):
        load_checkpoint(bad)
    ddpm = make()
    good = tmp_path / "good.pt"
    save_checkpoint(good, ddpm, model_config("persian", ddpm))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="is not a readable checkpoint: it is truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(ddpm.state_dict(), foreign)  # a bare state_dict, as the paper saves
    with pytest.raises(CheckpointError, match="not a checkpoint of this package"):
        load_checkpoint(foreign)
    old = tmp_path / "old.pt"
    torch.save(dict(format="ddpm-tutorial-checkpoint", version=VERSION + 1), old)
    with pytest.raises(CheckpointError, match=f"version {VERSION + 1}"):
        load_checkpoint(old)


def test_code_in_a_checkpoint_is_refused(tmp_path):
    """weights_only=True: a pickle that would run code is rejected, not executed."""
    evil = tmp_path / "evil.pt"
    torch.save(dict(format="ddpm-tutorial-checkpoint", version=VERSION, config=object()), evil)
    with pytest.raises(CheckpointError, match="refused: it holds Python objects that could run code"):
        load_checkpoint(evil)


def test_config_mismatch_is_reported(tmp_path):
    ddpm = make()
    config = model_config("persian", ddpm)
    config["network"]["time_emb_dim"] = 32  # weights no longer fit
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, ddpm, config)
    with pytest.raises(CheckpointError, match="does not match its own config"):
        load_checkpoint(path)
