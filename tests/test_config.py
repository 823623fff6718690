"""The one source of settings (config.py): resolution order, the recipes, bounds, old checkpoints' defaults."""

import pytest

import config
from config import ModelSettings, SettingError, TrainSettings, changed_settings, resolve, run_settings


def test_resolution_order_given_then_recipe_then_dataset_then_field():
    model, train = resolve({}, "persian")
    assert (train.epochs, train.batch_size) == (20, 128)  # the dataset's default recipe
    assert (model.arch, model.prediction, train.lr_schedule, train.warmup_steps) == ("resattn", "v", "cosine", 500)
    model, train = resolve({"batch_size": 32, "lr": None}, "persian", "paper")
    assert (train.batch_size, train.epochs, train.lr) == (32, 10, 1e-3)  # given > recipe > field
    assert (model.arch, train.lr_schedule, train.warmup_steps, train.ema_decay) == ("paper", "step", 0, 0.0)
    net = model.network_config("persian")
    assert net == dict(n_steps=1000, time_emb_dim=100, image_size=64, in_channels=1, arch="paper")


def test_an_eps_model_takes_min_snr_and_refuses_min_snr_v():
    """min-snr-v (the default, for v) weights an eps model's error by 1 / abar_t on top: refused when asked for,
    and an eps run that does not name its weighting gets Min-SNR on its own error."""
    assert resolve({"prediction": "eps"}, "mnist")[1].loss_weighting == "min-snr"
    assert resolve({"prediction": "eps", "loss_weighting": "none"}, "mnist")[1].loss_weighting == "none"
    assert resolve({}, "mnist")[1].loss_weighting == "min-snr-v"  # v-prediction: unchanged
    assert resolve({}, "mnist", "paper")[1].loss_weighting == "none"
    with pytest.raises(SettingError, match="with --prediction eps that is the noise error / abar_t"):
        resolve({"prediction": "eps", "loss_weighting": "min-snr-v"}, "mnist")


def test_resattn_takes_the_datasets_width_and_patches_unless_given():
    assert ModelSettings().network_config("persian")["base_channels"] == 48
    assert ModelSettings().network_config("persian")["patch_size"] == 4
    assert ModelSettings(channels=8, patch_size=2).network_config("persian")["base_channels"] == 8
    assert ModelSettings(class_cond=True).network_config("mnist")["num_classes"] == 10
    full = ModelSettings(prediction="eps", schedule_shift=2.0).model_config("mnist")
    assert full["image_chw"] == [1, 28, 28] and "prediction" not in full and full["schedule_shift"] == 2.0


@pytest.mark.parametrize("settings, message", [
    (dict(timesteps=0), "--timesteps must be an integer in 1..100000, got 0"),
    (dict(timesteps=10**9), "--timesteps must be an integer in 1..100000"),
    (dict(channels=6000), "--channels must be an integer in 1..512, got 6000"),
    (dict(arch="paper", channels=8), "--channels, --dropout and --patch-size need --arch resattn"),
    (dict(beta_start=0.02, beta_end=0.01), "--beta-end (0.01) must be larger than --beta-start (0.02)"),
    (dict(prediction="x0"), "--prediction must be one of eps, v, got 'x0'"),
    (dict(dropout=1.0), r"--dropout must lie in [0, 1), got 1.0"),
])
def test_model_settings_refuse_what_the_cli_refuses(settings, message):
    with pytest.raises(SettingError) as caught:
        ModelSettings(**settings)
    assert message in str(caught.value)


def test_train_settings_checks():
    with pytest.raises(SettingError, match="--warmup-steps needs --lr-schedule cosine"):
        TrainSettings(lr_schedule="step", warmup_steps=10)
    with pytest.raises(SettingError, match=r"--ema-decay must lie in \[0, 1\)"):
        TrainSettings(ema_decay=1.0)
    with pytest.raises(SettingError, match="--recipe must be one of default, paper"):
        resolve({}, "mnist", "fast")
    with pytest.raises(SettingError, match="unknown dataset 'cifar'"):
        resolve({}, "cifar")


def old_checkpoint() -> dict:
    """A run as the package wrote it before the schedule, prediction and recipe options existed."""
    return dict(config=dict(dataset="mnist", image_chw=[1, 28, 28], timesteps=1000, beta_start=1e-4, beta_end=0.02,
                            network=dict(n_steps=1000, time_emb_dim=100, image_size=28, in_channels=1,
                                         arch="fixed")),
                train_args=dict(epochs=10, batch_size=128, lr=1e-3, lr_step=10, lr_gamma=0.5, ema_decay=0.999,
                                seed=0))


def test_old_checkpoints_read_as_the_paper_values_they_were_trained_with():
    model, train = run_settings(old_checkpoint())
    assert (model.prediction, model.schedule, model.schedule_shift, model.arch) == ("eps", "linear", 1.0, "fixed")
    assert (train.lr_schedule, train.loss_weighting, train.warmup_steps, train.batch_size) == ("step", "none", 0, 128)
    legacy = {f: ModelSettings.__dataclass_fields__[f].metadata["legacy"] for f in config.MODEL_FIELDS}
    assert legacy["prediction"] == "eps" and legacy["arch"] == "resattn"  # arch has always been recorded


def test_changed_settings_compares_only_what_was_given():
    ckpt = old_checkpoint()
    assert changed_settings(ckpt, dict(lr=None, arch=None, epochs=30)) == []  # not given, and epochs may grow
    assert changed_settings(ckpt, dict(lr=5e-4, arch="fixed", prediction="eps", loss_weighting="min-snr-v")) == [
        "--lr 0.0005 (the run: 0.001)", "--loss-weighting min-snr-v (the run: none)"]
