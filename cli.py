"""The command line's options: the parser, its value checks and the checks between options.

``main.py`` holds the flow (data -> training -> samples -> scores -> figures);
this module holds what a user may ask for and the one-line refusals of
nonsense, so that every default and every check of an option sits beside it (the
types that parse one option's text are ``option_types.py``).
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn, Sequence

from config import (ARCHITECTURES, BETA_SCHEDULES, DATASETS, DEFAULT_DATASET, LOSS_WEIGHTINGS,
                    LR_SCHEDULES, MODEL_FIELDS, PREDICTIONS, RECIPES, TRAIN_FIELDS, DistillSettings, ModelSettings,
                    SettingError, TrainSettings, resolve)
from diffusion_model import CLIP_MODES, VARIANCES
from fastpath import PARTS, RECOMMENDED, describe
from figures import DISPLAY_MODES
from option_types import (bounded_int, digit_list, fast_parts, non_negative_float, non_negative_int,
                          open_unit_interval, per_round, positive_float, positive_int, power_of_two, seed_value,
                          step_interval, unit_interval)
from persian_files import ZIP_MAX_BYTES, ZIP_MAX_RATIO
from samplers import DEFAULT_SAMPLE_BATCH, SAMPLERS, STEP_SCHEDULES

GIF_MAX_IMAGES = 1024  # --gif keeps every frame of every image in memory: a 32 x 32 grid at most

# The sampler options of the command line, as the sampler classes name them (``Sampler.options``).
SAMPLER_FLAGS = {"variance": "--reverse-variance", "step_schedule": "--step-schedule", "eta": "--eta"}


def _default(cls: type, name: str) -> Any:
    return cls.__dataclass_fields__[name].default


def per_dataset(attribute: str) -> str:
    """``mnist 11, persian 20``: a dataset fact for every dataset, for help texts."""
    return ", ".join(f"{name} {getattr(info, attribute)}" for name, info in DATASETS.items())


class DefaultsOnceFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help, except for switches, for options without a default, and
    where the help text already tells its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "default" in text or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose refusals are one line (the usage is one ``--help`` away), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(Exception):
    """A problem with the user's request; its message is printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="main.py",
        description="Denoising Diffusion Probabilistic Models, as in the tutorial paper: "
        "train on MNIST or Persian digits, sample images and GIFs, draw the paper's figures.",
        formatter_class=DefaultsOnceFormatter,
    )
    _add_actions(p)
    _add_data_options(p)
    _add_model_options(p)
    _add_training_options(p)
    _add_sampling_options(p)
    _add_distill_options(p)
    _add_run_options(p)
    return p


def _add_actions(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to do (combine freely; at least one)")
    what.add_argument("--train", action="store_true", help="train a model and save checkpoints in --out-dir")
    what.add_argument("--sample", action="store_true", help="generate --n-samples images from --checkpoint")
    what.add_argument("--evaluate", action="store_true",
                      help="score --n-samples generated images from --checkpoint with the offline judge "
                           "(Frechet distance, classifier score, class histogram, saturation); saves JSON")
    what.add_argument("--distill", action="store_true",
                      help="distill --checkpoint into students of half the steps, round by round, down to "
                           "--distill-steps; each saved as OUT_DIR/<checkpoint name>_distilled<steps>.pt (runs alone)")
    what.add_argument("--export", default=None, metavar="DIR",
                      help="write --checkpoint's EMA weights (raw with --no-ema) as DIR/model.safetensors and its "
                           "config as DIR/config.json, the Hugging Face layout; --checkpoint DIR samples from it")
    what.add_argument("--figures", action="store_true",
                      help="draw the paper's figures: dataset samples (Fig. 2/5), forward process (Fig. 7/8), "
                           "positional-encoding matrix (Fig. 9)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default=None,
                      help=f"which of the paper's datasets (default: {DEFAULT_DATASET}; to --sample or --evaluate, "
                           "the one checkpoint in --out-dir)")
    data.add_argument("--data-root", default="./data",
                      help="folder with the data (MNIST/raw/..., persian_digits.zip or its extracted folder); "
                           "missing data is downloaded there")
    data.add_argument("--persian-zip", default=None, help="a local copy of the Persian digits zip to use")
    data.add_argument("--extract-dir", default=None,
                      help="where to extract the Persian digits zip (default: DATA_ROOT/persian_digits, "
                           "or ./data/persian_digits when DATA_ROOT is read-only)")
    data.add_argument("--num-workers", type=non_negative_int, default=None,
                      help="DataLoader worker processes (default: chosen for the device)")
    data.add_argument("--skip-bad-files", action="store_true",
                      help="skip unreadable Persian images instead of stopping with an error")
    data.add_argument("--zip-max-bytes", type=positive_int, default=ZIP_MAX_BYTES,
                      help="the most the Persian zip's images may unpack to, in bytes (checked before anything is "
                           "written, and again while writing)")
    data.add_argument("--zip-max-ratio", type=positive_float, default=ZIP_MAX_RATIO,
                      help="the largest size / compressed size of one image in the Persian zip")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model and diffusion schedule (training; sampling reads them from the checkpoint; "
                                 "every default is config.ModelSettings')")
    m = lambda name: _default(ModelSettings, name)  # noqa: E731
    model.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                       help="'default' (when not given): the package's measured recipe; 'paper': the paper's own (Figure "
                            "11's network, noise prediction, Figure 12's StepLR, batches of 128, no EMA, no loss "
                            "weighting, 10 epochs); any option below still overrides its part; --resume: the run's")
    model.add_argument("--timesteps", type=bounded_int("timesteps"), default=None,
                       help=f"number of diffusion steps T (default: {m('timesteps')})")
    model.add_argument("--beta-start", type=open_unit_interval, default=None,
                       help=f"beta_1 of the linear schedule (default: {m('beta_start')})")
    model.add_argument("--beta-end", type=open_unit_interval, default=None,
                       help=f"beta_T of the linear schedule (default: {m('beta_end')})")
    model.add_argument("--time-emb-dim", type=bounded_int("time_emb_dim"), default=None,
                       help=f"width of the sinusoidal time embedding (default: {m('time_emb_dim')})")
    model.add_argument("--arch", choices=ARCHITECTURES, default=None,
                       help="network: 'paper' is Figure 11 (blind to brightness and contrast); 'fixed' is Figure 11 "
                            "without LayerNorm on the raw input; 'resattn' is a small modern UNet (residual "
                            "blocks, GroupNorm, scale-shift time modulation, self-attention at the lowest "
                            f"resolution) (default: {m('arch')}, as measured in docs/results.md)")
    model.add_argument("--channels", type=bounded_int("channels"), default=None,
                       help="'resattn': channels at full resolution, doubled at lower resolutions (default: "
                            f"{per_dataset('channels')})")
    model.add_argument("--patch-size", type=bounded_int("patch_size"), default=None,
                       help="'resattn': the network works on a grid of P x P pixel patches (default: "
                            f"{per_dataset('patch_size')}, as measured in docs/results.md)")
    model.add_argument("--dropout", type=unit_interval, default=None,
                       help="'resattn': dropout in each residual block (default 0)")
    model.add_argument("--schedule", choices=BETA_SCHEDULES, default=None,
                       help="noise schedule: 'linear' in beta (the paper, with --beta-start/--beta-end) or "
                            f"'cosine' in alpha_bar (Nichol and Dhariwal 2021) (default: {m('schedule')})")
    model.add_argument("--schedule-shift", type=positive_float, default=None,
                       help="divide the schedule's signal-to-noise ratio at every step by S^2 (Hoogeboom et al. "
                            "2023), as if the images were S times smaller (default: 1, the schedule unchanged)")
    model.add_argument("--prediction", choices=PREDICTIONS, default=None,
                       help="what the network predicts: 'eps', the noise (the paper), or 'v' (Salimans and Ho "
                            "2022), turned into the noise so that every sampler works unchanged (default: "
                            f"{m('prediction')})")
    model.add_argument("--class-cond", action="store_true", default=None,
                       help="train a class-conditional model (a label embedding added to the time embedding) "
                            "for classifier-free guidance; sampling then takes --digit and --guidance")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    train = p.add_argument_group("training (every default is config.TrainSettings')")
    d = lambda name: _default(TrainSettings, name)  # noqa: E731
    train.add_argument("--epochs", type=positive_int, default=None,
                       help=f"training epochs (default: {per_dataset('epochs')}; the README says how long they take)")
    train.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per batch and per process (under torchrun the global batch is this times "
                            f"the number of processes; default: {per_dataset('batch_size')})")
    train.add_argument("--lr", type=positive_float, default=None, help=f"Adam learning rate (default: {d('lr')})")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                       help="'step' is Figure 12's StepLR (--lr-step, --lr-gamma); 'cosine' decays to 0 over the "
                            f"run, per step, after --warmup-steps (default: {d('lr_schedule')})")
    train.add_argument("--lr-step", type=positive_int, default=None,
                       help=f"--lr-schedule step: epochs between learning-rate cuts (default: {d('lr_step')})")
    train.add_argument("--lr-gamma", type=positive_float, default=None,
                       help=f"--lr-schedule step: factor of each cut (default: {d('lr_gamma')})")
    train.add_argument("--warmup-steps", type=non_negative_int, default=None,
                       help="'cosine': optimizer steps of linear learning-rate warm-up (default 500)")
    train.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=None,
                       help="'none' is Eq. 8 (every time step alike); 'min-snr' weights each image's error by "
                            "min(SNR, gamma)/SNR (Hang et al. 2023); 'min-snr-v' puts these weights on the "
                            "error of v, Eq. 8's error / abar_t (more weight on the noisiest steps; v-prediction only) "
                            f"(default: {d('loss_weighting')}; min-snr with --prediction eps)")
    train.add_argument("--snr-gamma", type=positive_float, default=None,
                       help=f"'min-snr', 'min-snr-v': the cap gamma (default: {d('snr_gamma')})")
    train.add_argument("--label-drop", type=unit_interval, default=None,
                       help="--class-cond: probability that a training label is replaced by 'no label' "
                            f"(default: {d('label_drop')})")
    train.add_argument("--ema-decay", type=unit_interval, default=None,
                       help="decay of the exponential moving average of the weights (with warm-up); 0 turns it "
                            f"off (default: {d('ema_decay')})")
    train.add_argument("--resume", action="store_true",
                       help="continue training from the last checkpoint (CHECKPOINT with _last) up to --epochs "
                            "in total: weights, EMA, optimizer, scheduler, epoch, history and random state; with "
                            "--distill, the distillation from its saved state (OUT_DIR/distill_<name>_last.pt)")
    train.add_argument("--overwrite", action="store_true",
                       help="let a new training replace the run already in --out-dir for this dataset, or "
                            "--distill replace the students already there (without it, that is refused)")
    train.add_argument("--fast", action="store_true",
                       help="train with the fast-path parts chosen for this device type (CPU, measured by "
                            f"bench/bench_speed.py: {describe(RECOMMENDED['cpu'])}, without channels_last for "
                            f"networks with GroupNorm such as resattn; CUDA, not measured "
                            f"here: {describe(RECOMMENDED['cuda'])}); validation and sampling stay fp32 eager")
    train.add_argument("--fast-parts", type=fast_parts, default=None, metavar="PART[,PART...]",
                       help=f"train with exactly these fast-path parts, from: {', '.join(PARTS)} "
                            "('none' is the paper's fp32 eager path, the default)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    samp = p.add_argument_group("sampling")
    samp.add_argument("--checkpoint", default=None,
                      help="checkpoint to write (--train) and read (--sample); default: OUT_DIR/ddpm_DATASET.pt; "
                           "to sample, the one checkpoint in --out-dir")
    samp.add_argument("--n-samples", type=bounded_int("n_samples"), default=16, help="images to generate")
    samp.add_argument("--gif", default=None, help="also write the reverse process as a GIF to this path "
                                                  f"(a name ending in .gif; at most {GIF_MAX_IMAGES} images)")
    samp.add_argument("--frames-per-gif", type=positive_int, default=100, help="frames of the GIF before the hold")
    samp.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                      help="'ddpm' is Algorithm 2 (every step, the default); 'ddim' is Song et al. (2021) and "
                           "'dpm++' is DPM-Solver++(2M) (Lu et al. 2022), both with fewer steps; 'distilled' is "
                           "deterministic DDIM on the grid of --distill, what a distilled checkpoint samples with "
                           "at its own steps; 'distilled-stochastic' is Meng et al.'s (2023) stochastic sampler on "
                           "that grid")
    samp.add_argument("--sample-steps", type=positive_int, default=None,
                      help="network evaluations of the few-step samplers (default: " + ", ".join(
                          f"{name} {cls.default_steps}" for name, cls in SAMPLERS.items() if cls.default_steps)
                           + "; distilled: the checkpoint's own); DDPM always uses all T")
    samp.add_argument("--step-schedule", choices=STEP_SCHEDULES, default=None,
                      help="DDIM and DPM-Solver++: steps evenly spaced in t ('uniform', the default) or in log-SNR "
                           "('logsnr')")
    samp.add_argument("--eta", type=non_negative_float, default=None,
                      help="DDIM noise scale: 0 is deterministic (the default), 1 is DDPM-like")
    samp.add_argument("--clip-x0", choices=CLIP_MODES, default=None,
                      help="every sampler: keep the predicted x0 in [-1, 1] before each update: 'none' is "
                           "Algorithm 2 as the paper writes it, 'clip' clamps, 'dynamic' is dynamic thresholding "
                           "(default, as measured: " + ", ".join(f"{name} {cls.default_clip}"
                                                                 for name, cls in SAMPLERS.items()) + ")")
    samp.add_argument("--reverse-variance", dest="variance", choices=VARIANCES, default=None,
                      help="DDPM: sigma_t^2 of each reverse step, 'beta' (beta_t, the paper, the default) or "
                           "'posterior' (beta-tilde_t, the forward posterior's variance)")
    samp.add_argument("--sample-batch", type=positive_int, default=DEFAULT_SAMPLE_BATCH,
                      help="--sample and --evaluate draw the images in batches of this many, so memory stays flat "
                           "in --n-samples; the images do not depend on it")
    samp.add_argument("--bpd-images", type=non_negative_int, default=0,
                      help="--evaluate: also bound the likelihood (bits/dim) on this many validation images "
                           "(T network passes per image)")
    samp.add_argument("--digit", type=digit_list, default=None, metavar="D[,D...]",
                      help="class-conditional checkpoints: draw these digits (repeated to --n-samples); without "
                           "it, one row per digit")
    samp.add_argument("--guidance", type=non_negative_float, default=None,
                      help="class-conditional checkpoints: classifier-free guidance weight W, "
                           "eps_uncond + W (eps_cond - eps_uncond): 0 unconditional, 1 conditional (default, as "
                           "measured: " + ", ".join(
                               f"{name} {info.guidance:g}" + (" at every step" if info.guidance_share is None
                                                              else f" at the steps t <= {info.guidance_share:g} T")
                               for name, info in DATASETS.items()) + ")")
    samp.add_argument("--guidance-interval", type=step_interval, default=None, metavar="LO,HI",
                      help="class-conditional checkpoints: guide with W only at the time steps LO <= t <= HI and "
                           "draw plain conditional (W = 1) at the others (Kynkaanniemi et al. 2024); default: "
                           "every step when --guidance is given, else the dataset's measured setting")
    samp.add_argument("--no-ema", action="store_true",
                      help="sample with the raw weights even when the checkpoint has EMA weights")
    samp.add_argument("--judge-dir", default=None,
                      help="where the judge classifier of --evaluate is cached "
                           "(default: DATA_ROOT/judges, or ./data/judges when DATA_ROOT is read-only)")
    samp.add_argument("--display", choices=DISPLAY_MODES, default="clamp",
                      help="how images are drawn: 'clamp' shows the real output in [-1, 1]; "
                           "'minmax' stretches each image to its own range as the paper does")


def _add_distill_options(p: argparse.ArgumentParser) -> None:
    dist = p.add_argument_group("progressive distillation (Salimans and Ho 2022; every default is "
                                "config.DistillSettings'; --batch-size, --ema-decay and --resume apply too)")
    d = lambda name: _default(DistillSettings, name)  # noqa: E731
    dist.add_argument("--distill-steps", type=power_of_two, default=None,
                      help=f"the sampling steps of the last student (default: {d('steps')})")
    dist.add_argument("--distill-start", type=power_of_two, default=None,
                      help=f"the DDIM steps of the first teacher, at most T; the first student takes half as many "
                           f"(default: {d('start')}; distilling a student: its own steps)")
    dist.add_argument("--distill-updates", type=per_round(positive_int), default=None, metavar="N[,N...]",
                      help="optimizer updates of each round: one number for every round, or one per round "
                           f"(default: {d('updates')[0]})")
    dist.add_argument("--distill-lr", type=per_round(positive_float), default=None, metavar="LR[,LR...]",
                      help="Adam learning rate at the start of each round, decayed linearly to 0 within the round: "
                           f"one for every round, or one per round (default: {d('lr')[0]:g})")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run")
    run.add_argument("--out-dir", default="runs", help="folder for checkpoints, figures and sample grids")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="'auto' uses CUDA when available")
    run.add_argument("--seed", type=seed_value, default=None,
                     help="random seed (default 0; --resume: the run's): the same seed gives the same run on CPU")
    run.add_argument("--quiet", action="store_true", help="log warnings and errors only, no progress bars")


def settings_given(args: argparse.Namespace) -> dict[str, Any]:
    """The model and training settings on the command line (None: not given)."""
    return {name: getattr(args, name) for name in MODEL_FIELDS + TRAIN_FIELDS}


def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options on the command line (None: not given), as ``samplers.make_sampler`` takes them."""
    return dict(clip_x0=args.clip_x0, **{name: getattr(args, name) for name in SAMPLER_FLAGS})


def seed_of(args: argparse.Namespace) -> int:
    """--seed, else ``TrainSettings``' default (a resumed training keeps its run's: ``config.changed_settings``
    compares a given one)."""
    return _default(TrainSettings, "seed") if args.seed is None else args.seed


def dataset_of(args: argparse.Namespace) -> str | None:
    """--dataset; for a new training or --figures without it, the default dataset; else None (the checkpoint's)."""
    if args.dataset is None and ((args.train and not args.resume) or args.figures):
        return DEFAULT_DATASET
    return args.dataset


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed options, checked alone and against each other; nothing is filled in or changed afterwards."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.train or args.sample or args.figures or args.evaluate or args.export or args.distill):
        parser.error("nothing to do: give --train, --sample, --evaluate, --export, --figures and/or --distill")
    if args.distill and (args.train or args.sample or args.figures or args.evaluate or args.export):
        parser.error("--distill runs alone: distill first, then --sample or --evaluate a student with --checkpoint")
    if not args.distill and any(getattr(args, f"distill_{k}") is not None for k in ("steps", "start", "updates", "lr")):
        parser.error("--distill-steps, --distill-start, --distill-updates and --distill-lr need --distill")
    if args.figures and args.resume and args.dataset is None:
        parser.error("--figures with --resume needs --dataset (the figures are drawn before the run is read)")
    if args.overwrite and (not (args.train or args.distill) or args.resume):
        parser.error("--overwrite needs --train or --distill, without --resume")
    if args.train and not args.resume:
        try:
            resolve(settings_given(args), dataset_of(args), args.recipe)
        except SettingError as exc:
            parser.error(str(exc))
    elif args.beta_start is not None and args.beta_end is not None and args.beta_end <= args.beta_start:
        parser.error(f"--beta-end ({args.beta_end}) must be larger than --beta-start ({args.beta_start})")
    if (args.class_cond or args.label_drop is not None) and not args.train:
        parser.error("--class-cond and --label-drop need --train")
    if args.recipe is not None and not args.train:
        parser.error("--recipe needs --train")
    if (args.digit is not None or args.guidance is not None or args.guidance_interval is not None) \
            and not (args.sample or args.evaluate):
        parser.error("--digit, --guidance and --guidance-interval need --sample or --evaluate")
    if args.gif is not None and not args.sample:
        parser.error("--gif needs --sample")
    if args.gif is not None and not args.gif.lower().endswith(".gif"):
        parser.error(f"--gif writes a GIF: give a file name ending in .gif, got {args.gif!r}")
    if args.gif is not None and args.n_samples > GIF_MAX_IMAGES:  # every frame holds every image (float32)
        parser.error(f"--gif tiles every image into each frame: give --n-samples <= {GIF_MAX_IMAGES} with it, "
                     f"got {args.n_samples}")
    if args.resume and not (args.train or args.distill):
        parser.error("--resume needs --train or --distill")
    if (args.fast or args.fast_parts is not None) and not args.train:
        parser.error("--fast and --fast-parts need --train")
    if args.fast and args.fast_parts is not None:
        parser.error("give --fast or --fast-parts, not both")
    takes = SAMPLERS[args.sampler or "ddpm"].options
    for name, flag in SAMPLER_FLAGS.items():
        if getattr(args, name) is not None and name not in takes:
            users = " or ".join(n for n, cls in SAMPLERS.items() if name in cls.options)
            parser.error(f"{flag} needs --sampler {users}")
    if (args.bpd_images or args.judge_dir) and not args.evaluate:
        parser.error("--bpd-images and --judge-dir need --evaluate")
    return args
