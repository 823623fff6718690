"""One source for every setting: the datasets' facts, the model and training settings, the recipes.

* ``DATASETS``: one ``DatasetInfo`` per dataset (image size, the default
  recipe's epochs and batch, the network's width and patch size, the measured
  guidance). A new dataset is one entry here plus its loader in ``Dataset.py``.
* ``ModelSettings`` (network and diffusion schedule) and ``TrainSettings`` (the
  training recipe): frozen dataclasses, one field per setting. Each field holds
  the setting's name (the command line's flag is ``--`` plus the name with
  dashes), its default for new runs and, in ``metadata["legacy"]``, the value a
  checkpoint written before the setting existed was trained with. Their
  ``__post_init__`` checks ranges (``LIMITS``), shared by the command line and
  by checkpoint loading, so a checkpoint cannot ask for more than the CLI accepts.
* ``RECIPES``: named bundles of settings (``--recipe``); ``resolve`` turns the
  options a user gave into settings: the option, else the recipe's value, else
  the dataset's default, else the field's default.
* ``changed_settings``: what ``--resume`` refuses, derived from the same fields.
* ``DistillSettings``: the plan of ``--distill`` (progressive distillation, ``distill.py``).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

ARCHITECTURES = ("paper", "fixed", "resattn")
PAPER_ARCHITECTURES = ("paper", "fixed")  # MyUNet; "resattn" is ResAttnUNet
BETA_SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
LOSS_WEIGHTINGS = ("none", "min-snr", "min-snr-v")
LR_SCHEDULES = ("step", "cosine")
N_CLASSES = 10  # the digits 0-9 of both datasets

# The largest value of each size the command line accepts; a checkpoint's config is held to the same
# bounds before anything is allocated (a forged config cannot ask for a 100 GiB network).
LIMITS: dict[str, int] = dict(timesteps=100_000, time_emb_dim=2048, channels=512, patch_size=16,
                              num_classes=1000, in_channels=4, blocks=4, depth=6, channel_mult=8,
                              n_samples=100_000)


class SettingError(ValueError):
    """A setting outside what the package accepts; the message is one line for users."""


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's facts and the default recipe's choices for it (docs/results.md measures them)."""

    name: str
    image_size: int
    epochs: int  # --epochs of the default recipe
    batch_size: int  # --batch-size of the default recipe
    channels: int  # resattn's channels at full resolution
    patch_size: int  # resattn's patch size
    guidance: float  # classifier-free guidance weight of --sample / --evaluate
    guidance_share: float | None  # W applies at t <= share x T; None: at every step
    in_channels: int = 1


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", image_size=28, epochs=11, batch_size=64, channels=32, patch_size=1,
                         guidance=2.0, guidance_share=0.45),
    "persian": DatasetInfo("persian", image_size=64, epochs=20, batch_size=128, channels=48, patch_size=4,
                           guidance=1.5, guidance_share=None),
}
DEFAULT_DATASET = "mnist"
DATA_BATCH_SIZE = 128  # batches of the data's other uses (--evaluate's judge, --figures)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise SettingError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name]


def setting(default: Any, legacy: Any = MISSING) -> Any:
    """A settings field: its default for new runs and the value older checkpoints (without it) imply."""
    return field(default=default, metadata={"legacy": default if legacy is MISSING else legacy})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingError(f"{_flag(name)} must be one of {', '.join(choices)}, got {value!r}")


def check_size(name: str, value: Any, low: int = 1) -> None:
    """``value`` is an int in ``low..LIMITS[name]``; else a ``SettingError`` naming the flag."""
    high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingError(f"{_flag(name)} must be an integer in {low}..{high}, got {value!r}")


def _check_range(name: str, value: Any, low: float, high: float, *, closed_low: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        low <= value < high if closed_low else low < value < high)
    if not ok:
        raise SettingError(f"{_flag(name)} must lie in {'[' if closed_low else '('}{low:g}, {high:g}), "
                           f"got {value!r}")


@dataclass(frozen=True)
class ModelSettings:
    """The network and the diffusion schedule: what ``checkpoint.model_config`` records and rebuilds.

    ``channels``, ``dropout`` and ``patch_size`` are ``resattn``'s (None for the paper's fixed UNet).
    """

    arch: str = setting("resattn")
    channels: int | None = setting(None)
    dropout: float | None = setting(None)
    patch_size: int | None = setting(None, legacy=1)
    time_emb_dim: int = setting(100)
    class_cond: bool = setting(False)
    timesteps: int = setting(1000)
    beta_start: float = setting(1e-4)
    beta_end: float = setting(0.02)
    schedule: str = setting("linear")
    schedule_shift: float = setting(1.0)
    prediction: str = setting("v", legacy="eps")

    def __post_init__(self) -> None:
        _check_choice("arch", self.arch, ARCHITECTURES)
        _check_choice("schedule", self.schedule, BETA_SCHEDULES)
        _check_choice("prediction", self.prediction, PREDICTIONS)
        check_size("timesteps", self.timesteps)
        check_size("time_emb_dim", self.time_emb_dim)
        _check_range("beta_start", self.beta_start, 0.0, 1.0)
        _check_range("beta_end", self.beta_end, 0.0, 1.0)
        if self.timesteps > 1 and self.beta_end <= self.beta_start:
            raise SettingError(f"--beta-end ({self.beta_end}) must be larger than --beta-start ({self.beta_start})")
        _check_range("schedule_shift", self.schedule_shift, 0.0, math.inf)
        if self.arch in PAPER_ARCHITECTURES:
            if not all(v is None for v in (self.channels, self.dropout, self.patch_size)):
                raise SettingError(f"--channels, --dropout and --patch-size need --arch resattn (the '{self.arch}' "
                                   "UNet is fixed)")
            return
        for name in ("channels", "patch_size"):
            if getattr(self, name) is not None:
                check_size(name, getattr(self, name))
        if self.dropout is not None:
            _check_range("dropout", self.dropout, 0.0, 1.0, closed_low=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelSettings":
        """The settings a ``checkpoint.model_config`` dict was built with (older keys missing: ``legacy``)."""
        net, legacy = config["network"], _legacy(cls)
        resattn = net.get("arch") == "resattn"
        return cls(arch=net.get("arch", "paper"), channels=net.get("base_channels") if resattn else None,
                   dropout=net.get("dropout", 0.0) if resattn else None,
                   patch_size=net.get("patch_size", legacy["patch_size"]) if resattn else None,
                   time_emb_dim=net["time_emb_dim"], class_cond=bool(net.get("num_classes", 0)),
                   timesteps=config["timesteps"], beta_start=config["beta_start"], beta_end=config["beta_end"],
                   **{k: config.get(k, legacy[k]) for k in ("schedule", "schedule_shift", "prediction")})

    def model_config(self, dataset: str) -> dict[str, Any]:
        """The config dict that ``checkpoint.build_model`` builds and checkpoints record (``checkpoint.model_config``)."""
        info = dataset_info(dataset)
        config: dict[str, Any] = dict(dataset=dataset, image_chw=[info.in_channels, info.image_size, info.image_size],
                                      timesteps=self.timesteps, beta_start=self.beta_start, beta_end=self.beta_end,
                                      schedule=self.schedule, network=self.network_config(dataset))
        if self.prediction != "eps":  # recorded only when not the paper's, so older configs stay as they were
            config["prediction"] = self.prediction
        if self.schedule_shift != 1.0:
            config["schedule_shift"] = self.schedule_shift
        return config

    def network_config(self, dataset: str) -> dict[str, Any]:
        """``unet.make_unet``'s arguments for ``dataset``'s images (its channels and patches by default)."""
        info = dataset_info(dataset)
        net: dict[str, Any] = dict(n_steps=self.timesteps, time_emb_dim=self.time_emb_dim,
                                   image_size=info.image_size, in_channels=info.in_channels, arch=self.arch)
        if self.arch not in PAPER_ARCHITECTURES:
            net.update(base_channels=self.channels or info.channels, dropout=self.dropout or 0.0,
                       patch_size=self.patch_size or info.patch_size)
        if self.class_cond:
            net["num_classes"] = N_CLASSES
        return net


@dataclass(frozen=True)
class TrainSettings:
    """The training recipe (Algorithm 1 and Figure 12 with the options beyond them; ``recipe.py``).

    ``epochs`` and ``batch_size`` of None take the dataset's (``DatasetInfo``);
    ``warmup_steps`` of None: 500 with the cosine schedule, none with the step one.
    """

    epochs: int | None = setting(None)
    batch_size: int | None = setting(None)
    lr: float = setting(1e-3)
    lr_schedule: str = setting("cosine", legacy="step")
    lr_step: int = setting(10)
    lr_gamma: float = setting(0.5)
    warmup_steps: int | None = setting(None, legacy=0)
    loss_weighting: str = setting("min-snr-v", legacy="none")
    snr_gamma: float = setting(5.0)
    label_drop: float = setting(0.1)
    ema_decay: float = setting(0.999)
    seed: int = setting(0)

    def __post_init__(self) -> None:
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        _check_range("lr", self.lr, 0.0, math.inf)
        _check_range("snr_gamma", self.snr_gamma, 0.0, math.inf)
        _check_range("lr_gamma", self.lr_gamma, 0.0, math.inf)
        _check_range("ema_decay", self.ema_decay, 0.0, 1.0, closed_low=True)
        _check_range("label_drop", self.label_drop, 0.0, 1.0, closed_low=True)
        if self.warmup_steps and self.lr_schedule != "cosine":
            raise SettingError("--warmup-steps needs --lr-schedule cosine")
        if self.warmup_steps is None:
            object.__setattr__(self, "warmup_steps", 500 if self.lr_schedule == "cosine" else 0)

    @classmethod
    def from_train_args(cls, train_args: Mapping[str, Any]) -> "TrainSettings":
        """The recipe a checkpoint's ``train_args`` record (settings it does not record: ``legacy``)."""
        legacy = _legacy(cls)
        return cls(**{f.name: train_args.get(f.name, legacy[f.name]) for f in fields(cls)})

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _legacy(cls: type) -> dict[str, Any]:
    return {f.name: f.metadata["legacy"] for f in fields(cls)}


# --recipe: named bundles of settings; every option given on the command line still wins.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # The paper's recipe: Figure 11's network predicting the noise (Eq. 8), Adam at 1e-3 with Figure 12's
    # StepLR, batches of 128, no EMA and no loss weighting, 10 epochs.
    "paper": dict(arch="paper", prediction="eps", lr_schedule="step", loss_weighting="none", ema_decay=0.0,
                  epochs=10, batch_size=128),
}

MODEL_FIELDS = tuple(f.name for f in fields(ModelSettings))
TRAIN_FIELDS = tuple(f.name for f in fields(TrainSettings))


def resolve(given: Mapping[str, Any], dataset: str, recipe: str | None = None) -> tuple[ModelSettings, TrainSettings]:
    """The settings of a new run: each option ``given`` (None: not given), else ``recipe``'s (None: 'default'), else the
    dataset's default recipe (epochs, batch size), else the field's default (with ``--prediction eps``, the
    loss weighting's is ``min-snr``). ``SettingError`` when out of range or min-snr-v is asked with eps."""
    recipe = recipe or "default"
    if recipe not in RECIPES:
        raise SettingError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    info = dataset_info(dataset)
    chosen = {"epochs": info.epochs, "batch_size": info.batch_size, **RECIPES[recipe]}
    chosen.update({k: v for k, v in given.items() if v is not None})
    model = ModelSettings(**{k: chosen[k] for k in MODEL_FIELDS if k in chosen})
    if model.prediction == "eps" and chosen.get("loss_weighting", TrainSettings.loss_weighting) == "min-snr-v":
        if given.get("loss_weighting") is not None:  # the error of v an eps model implies is its error / sqrt(abar_t)
            raise SettingError("--loss-weighting min-snr-v weights the error of v: with --prediction eps that is the "
                               "noise error / abar_t, about 10^4 at the noisiest step; use min-snr (or none) with eps")
        chosen["loss_weighting"] = "min-snr"  # the default's Min-SNR weights, on the error an eps model makes
    train = TrainSettings(**{k: chosen[k] for k in TRAIN_FIELDS if k in chosen})
    return model, train


def run_settings(ckpt: Mapping[str, Any]) -> tuple[ModelSettings, TrainSettings]:
    """The settings a training checkpoint was written with."""
    return ModelSettings.from_config(ckpt["config"]), TrainSettings.from_train_args(ckpt.get("train_args", {}))


def changed_settings(ckpt: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """``"--lr 0.0005 (the run: 0.001)"`` for every option given (not None) that differs from the run's.

    ``--epochs`` may grow on resume, so it is not compared.
    """
    model, train = run_settings(ckpt)
    recorded = {**asdict(model), **asdict(train)}
    return [f"{_flag(k)} {v} (the run: {recorded[k]})" for k, v in given.items()
            if k in recorded and k != "epochs" and v is not None and v != recorded[k]]


@dataclass(frozen=True)
class DistillSettings:
    """Progressive distillation (Salimans and Ho 2022, Algorithm 2; ``distill.py``): one round per halving.

    ``start``: the first teacher's DDIM steps; each round's student takes half its teacher's steps, down
    to ``steps``. ``updates`` and ``lr``: each round's optimizer updates and initial Adam learning rate
    (decayed linearly to 0 within the round), one value for every round or one per round. The defaults
    are sized so that distilling the MNIST default fits in about 90 minutes on the project's 2 CPU cores,
    by the cost of an update: about one training step and two teacher passes (not yet measured as a whole).
    """

    steps: int = 4
    start: int = 64
    updates: tuple[int, ...] = (1800,)
    lr: tuple[float, ...] = (1e-4,)

    def __post_init__(self) -> None:
        for name in ("steps", "start"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
                raise SettingError(f"{_flag('distill_' + name)} must be a power of two (each round halves the "
                                   f"steps), e.g. 4 or 64, got {value!r}")
        if self.start <= self.steps:
            raise SettingError(f"the distillation starts at {self.start} steps, which is not more than "
                               f"--distill-steps {self.steps}: pass a smaller --distill-steps")
        rounds = len(self.rounds())
        for name in ("updates", "lr"):
            values = getattr(self, name)
            if len(values) not in (1, rounds):
                raise SettingError(f"{_flag('distill_' + name)} takes one value, or one per round ({rounds} rounds: "
                                   f"{' -> '.join(map(str, [self.start, *self.rounds()]))} steps), got {len(values)}")
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
                raise SettingError(f"{_flag('distill_' + name)} must be positive numbers, got {list(values)}")

    def rounds(self) -> list[int]:
        """Each round's student steps: start / 2, start / 4, ..., steps."""
        return [self.start >> k for k in range(1, (self.start // self.steps).bit_length())]

    def of_round(self, index: int) -> tuple[int, float]:
        """The updates and the initial learning rate of round ``index`` (0-based)."""
        return (self.updates[index if len(self.updates) > 1 else 0], self.lr[index if len(self.lr) > 1 else 0])


def check_network_config(net: Mapping[str, Any]) -> None:
    """Every size in a checkpoint's network config within ``LIMITS``: ``SettingError`` before any allocation."""
    for key, name in (("n_steps", "timesteps"), ("time_emb_dim", "time_emb_dim"), ("base_channels", "channels"),
                      ("patch_size", "patch_size"), ("in_channels", "in_channels"), ("blocks", "blocks")):
        if key in net:
            check_size(name, net[key])
    if "num_classes" in net:
        check_size("num_classes", net["num_classes"], low=0)
    mults = net.get("channel_mults", [1])
    if not isinstance(mults, (list, tuple)) or not 1 <= len(mults) <= LIMITS["depth"]:
        raise SettingError(f"channel_mults must be a list of 1..{LIMITS['depth']} factors, got {mults!r}")
    for mult in mults:
        check_size("channel_mult", mult)
    sizes = sorted({info.image_size for info in DATASETS.values()})
    if net.get("image_size") not in sizes:
        raise SettingError(f"image_size must be one of {sizes}, got {net.get('image_size')!r}")
