"""The command line's options: the parser, its value checks and the checks between options.

``main.py`` holds the flow (data -> training -> samples -> scores -> figures);
this module holds what a user may ask for and the one-line refusals of
nonsense, so that every default and every check of an option sits beside it.
"""

from __future__ import annotations

import argparse
import math
from typing import Sequence

from Dataset import DATASETS
from diffusion_model import BETA_SCHEDULES, CLIP_MODES, PREDICTIONS, STEP_SCHEDULES, VARIANCES
from fastpath import PARTS, RECOMMENDED, describe, parse_parts
from figures import DISPLAY_MODES
from recipe import LOSS_WEIGHTINGS, LR_SCHEDULES
from unet import ARCHITECTURES, PAPER_ARCHITECTURES
from utils import DEFAULT_CLIP_X0, DEFAULT_SAMPLE_STEPS, SAMPLERS


DEFAULT_DATASET = "mnist"
# --epochs by dataset: what trains in about an hour on this project's 2-core CPU with --fast and the
# default network (README, "Results of real runs").
DEFAULT_EPOCHS = {"mnist": 11, "persian": 20}
# --batch-size of --train by dataset: on MNIST 64 beat the paper's 128 at equal epochs (twice the updates for
# about 4% more time; README, "MNIST, the default recipe"); the Persian digits keep 128 (not measured there).
# A run to --resume keeps its own; the other uses of the data (--evaluate's judge, --figures) batch by
# DATA_BATCH_SIZE unless --batch-size is given.
DEFAULT_BATCH_SIZE = {"mnist": 64, "persian": 128}
DATA_BATCH_SIZE = 128
# The recipe of the noisiest steps, on both datasets as measured (README: "MNIST, the default recipe" and
# "Persian digits: the noisiest steps"). A run to --resume keeps its own.
DEFAULT_PREDICTION = "v"
DEFAULT_LOSS_WEIGHTING = "min-snr-v"
# Classifier-free guidance of --sample and --evaluate by the checkpoint's dataset, as measured (README: "MNIST,
# class-conditional" and "Persian digits, the noisiest steps"): (W, the share of T up to which W applies, the
# steps 0 <= t <= share x T; None: every step). MNIST: W = 3 at t <= 0.45 T (guidance at the middle steps is
# what costs Frechet distance; measured on an eps-prediction run); Persian: 1.5 at every step.
DEFAULT_GUIDANCE: dict[str, tuple[float, float | None]] = {"mnist": (3.0, 0.45), "persian": (1.5, None)}


class DefaultsOnceFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help, except for switches, for options without a default, and
    where the help text already tells its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS \
                or "default" in text or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class UsageError(Exception):
    """A problem with the user's request; its message is printed as one line."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def open_unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def digit_list(text: str) -> list[int]:
    """argparse type of --digit: ``"3"`` or ``"3,3,7"``, each a digit 0-9."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and 0 <= int(p) <= 9 for p in parts):
        raise argparse.ArgumentTypeError(f"must be digits 0-9 separated by commas, got {text!r}")
    return [int(p) for p in parts]


def step_interval(text: str) -> tuple[int, int]:
    """argparse type of --guidance-interval: ``"LO,HI"``, two time steps with 0 <= LO <= HI."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) > int(parts[1]):
        raise argparse.ArgumentTypeError(f"must be two time steps LO,HI with 0 <= LO <= HI, got {text!r}")
    return int(parts[0]), int(parts[1])


def fast_parts(text: str) -> frozenset[str]:
    """argparse type of --fast-parts: a comma-separated list of ``fastpath.PARTS``."""
    try:
        return parse_parts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    _add_run_options(p)
    return p


def _add_actions(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("what to do (combine freely; at least one)")
    what.add_argument("--train", action="store_true", help="train a model and save checkpoints in --out-dir")
    what.add_argument("--sample", action="store_true", help="generate --n-samples images from --checkpoint")
    what.add_argument("--evaluate", action="store_true",
                      help="score --n-samples generated images from --checkpoint with the offline judge "
                           "(Frechet distance, classifier score, class histogram, saturation); saves JSON")
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


def _add_model_options(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model and diffusion schedule (training; sampling reads them from the checkpoint)")
    model.add_argument("--timesteps", type=positive_int, default=1000, help="number of diffusion steps T")
    model.add_argument("--beta-start", type=open_unit_interval, default=1e-4, help="beta_1 of the linear schedule")
    model.add_argument("--beta-end", type=open_unit_interval, default=0.02, help="beta_T of the linear schedule")
    model.add_argument("--time-emb-dim", type=positive_int, default=100, help="width of the sinusoidal time embedding")
    model.add_argument("--arch", choices=ARCHITECTURES, default="resattn",
                       help="network: 'paper' is Figure 11 (blind to brightness and contrast); 'fixed' is Figure 11 "
                            "without LayerNorm on the raw input; 'resattn' is a small modern UNet (residual "
                            "blocks, GroupNorm, scale-shift time modulation, self-attention at the lowest "
                            "resolution; the default, as measured in the README)")
    model.add_argument("--channels", type=positive_int, default=None,
                       help="'resattn': channels at full resolution (default: 32 at 28x28, 48 at 64x64; "
                            "doubled at lower resolutions)")
    model.add_argument("--patch-size", type=positive_int, default=None,
                       help="'resattn': the network works on a grid of P x P pixel patches (default: 1 at 28x28, "
                            "4 at 64x64, as measured in the README)")
    model.add_argument("--dropout", type=unit_interval, default=None, help="'resattn': dropout in each residual "
                       "block (default 0)")
    model.add_argument("--schedule", choices=BETA_SCHEDULES, default="linear",
                       help="noise schedule: 'linear' in beta (the paper, with --beta-start/--beta-end) or "
                            "'cosine' in alpha_bar (Nichol and Dhariwal 2021)")
    model.add_argument("--schedule-shift", type=positive_float, default=None,
                       help="divide the schedule's signal-to-noise ratio at every step by S^2 (Hoogeboom et al. "
                            "2023), as if the images were S times smaller (default: 1, the schedule unchanged)")
    model.add_argument("--prediction", choices=PREDICTIONS, default=None,
                       help="what the network predicts: 'eps', the noise (the paper), or 'v' (Salimans and Ho "
                            "2022), turned into the noise so that every sampler works unchanged (default: "
                            f"{DEFAULT_PREDICTION})")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=None,
                       help="training epochs (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
                            + "; about 56 and 41 minutes on 2 CPU cores with --fast)")
    train.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per batch and per process (under torchrun the global batch is this times "
                            "the number of processes; default: "
                            + ", ".join(f"{k} {v}" for k, v in DEFAULT_BATCH_SIZE.items()) + ")")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    train.add_argument("--lr-step", type=positive_int, default=10,
                       help="--lr-schedule step: epochs between learning-rate cuts")
    train.add_argument("--resume", action="store_true",
                       help="continue training from the last checkpoint (CHECKPOINT with _last) up to --epochs "
                            "in total: weights, EMA, optimizer, scheduler, epoch, history and random state")
    train.add_argument("--overwrite", action="store_true",
                       help="let a new training replace the run already in --out-dir for this dataset "
                            "(without it, that is refused)")
    train.add_argument("--ema-decay", type=non_negative_float, default=0.999,
                       help="decay of the exponential moving average of the weights (with warm-up); 0 turns it off")
    train.add_argument("--lr-gamma", type=positive_float, default=0.5, help="--lr-schedule step: factor of each cut")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine",
                       help="'step' is Figure 12's StepLR (--lr-step, --lr-gamma); 'cosine' decays to 0 over the "
                            "run, per step, after --warmup-steps")
    train.add_argument("--warmup-steps", type=non_negative_int, default=None,
                       help="'cosine': optimizer steps of linear learning-rate warm-up (default 500)")
    train.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=None,
                       help="'none' is Eq. 8 (every time step alike); 'min-snr' weights each image's error by "
                            "min(SNR, gamma)/SNR (Hang et al. 2023); 'min-snr-v' puts these weights on the "
                            "error of v, Eq. 8's error / abar_t (more weight on the noisiest steps) (default: "
                            f"{DEFAULT_LOSS_WEIGHTING})")
    train.add_argument("--snr-gamma", type=positive_float, default=5.0, help="'min-snr', 'min-snr-v': the cap gamma")
    train.add_argument("--class-cond", action="store_true",
                       help="train a class-conditional model (a label embedding added to the time embedding) "
                            "for classifier-free guidance; sampling then takes --digit and --guidance")
    train.add_argument("--label-drop", type=unit_interval, default=0.1,
                       help="--class-cond: probability that a training label is replaced by 'no label'")
    train.add_argument("--fast", action="store_true",
                       help="train with the fast-path parts chosen for this device type (CPU, measured by "
                            f"bench/bench_speed.py: {describe(RECOMMENDED['cpu'])}; CUDA, not measured "
                            f"here: {describe(RECOMMENDED['cuda'])}); validation and sampling stay fp32 eager")
    train.add_argument("--fast-parts", type=fast_parts, default=None, metavar="PART[,PART...]",
                       help=f"train with exactly these fast-path parts, from: {', '.join(PARTS)} "
                            "('none' is the paper's fp32 eager path, the default)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    samp = p.add_argument_group("sampling")
    samp.add_argument("--checkpoint", default=None,
                      help="checkpoint to write (--train) and read (--sample); default: OUT_DIR/ddpm_DATASET.pt; to sample, the one checkpoint in --out-dir")
    samp.add_argument("--n-samples", type=positive_int, default=16, help="images to generate")
    samp.add_argument("--gif", default=None, help="also write the reverse process as a GIF to this path")
    samp.add_argument("--frames-per-gif", type=positive_int, default=100, help="frames of the GIF before the hold")
    samp.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                      help="'ddpm' is Algorithm 2 (every step); 'ddim' is Song et al. (2021) and 'dpm++' is "
                           "DPM-Solver++(2M) (Lu et al. 2022), both with fewer steps")
    samp.add_argument("--sample-steps", type=positive_int, default=None,
                      help="DDIM and DPM-Solver++: network evaluations (default: DDIM "
                           f"{DEFAULT_SAMPLE_STEPS['ddim']}, DPM-Solver++ {DEFAULT_SAMPLE_STEPS['dpm++']}); "
                           "DDPM always uses all T")
    samp.add_argument("--step-schedule", choices=STEP_SCHEDULES, default="uniform",
                      help="DDIM and DPM-Solver++: steps evenly spaced in t ('uniform') or in log-SNR ('logsnr')")
    samp.add_argument("--clip-x0", choices=CLIP_MODES, default=None,
                      help="every sampler: keep the predicted x0 in [-1, 1] before each update: 'none' is "
                           "Algorithm 2 as the paper writes it, 'clip' clamps, 'dynamic' is dynamic thresholding "
                           "(default, as measured: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_CLIP_X0.items()) + ")")
    samp.add_argument("--reverse-variance", choices=VARIANCES, default="beta",
                      help="DDPM: sigma_t^2 of each reverse step, 'beta' (beta_t, the paper) or "
                           "'posterior' (beta-tilde_t, the forward posterior's variance)")
    samp.add_argument("--eta", type=non_negative_float, default=0.0,
                      help="DDIM noise scale: 0 is deterministic, 1 is DDPM-like")
    samp.add_argument("--bpd-images", type=non_negative_int, default=0,
                      help="--evaluate: also bound the likelihood (bits/dim) on this many validation images "
                           "(T network passes per image)")
    samp.add_argument("--digit", type=digit_list, default=None, metavar="D[,D...]",
                      help="class-conditional checkpoints: draw these digits (repeated to --n-samples); without "
                           "it, one row per digit")
    samp.add_argument("--guidance", type=non_negative_float, default=None,
                      help="class-conditional checkpoints: classifier-free guidance weight W, "
                           "eps_uncond + W (eps_cond - eps_uncond): 0 unconditional, 1 conditional (default, as "
                           "measured: MNIST 3 at the steps t <= 0.45 T, Persian 1.5 at every step)")
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run")
    run.add_argument("--out-dir", default="runs", help="folder for checkpoints, figures and sample grids")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="'auto' uses CUDA when available")
    run.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same run on CPU")
    run.add_argument("--quiet", action="store_true", help="log warnings and errors only, no progress bars")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.train or args.sample or args.figures or args.evaluate):
        parser.error("nothing to do: give --train, --sample, --evaluate and/or --figures")
    if args.figures and args.resume and args.dataset is None:
        parser.error("--figures with --resume needs --dataset (the figures are drawn before the run is read)")
    if args.overwrite and (not args.train or args.resume):
        parser.error("--overwrite needs --train without --resume")
    if args.dataset is None and ((args.train and not args.resume) or args.figures):
        args.dataset = DEFAULT_DATASET  # (--resume takes the run's; --sample the checkpoint's)
    if args.timesteps > 1 and args.beta_end <= args.beta_start:
        parser.error(f"--beta-end ({args.beta_end}) must be larger than --beta-start ({args.beta_start})")
    if not 0.0 <= args.ema_decay < 1.0:
        parser.error(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
    if args.arch in PAPER_ARCHITECTURES and not all(v is None for v in (args.channels, args.dropout,
                                                                         args.patch_size)):
        parser.error(f"--channels, --dropout and --patch-size need --arch resattn (the '{args.arch}' UNet is fixed)")
    if args.warmup_steps and args.lr_schedule != "cosine":
        parser.error("--warmup-steps needs --lr-schedule cosine")
    if args.warmup_steps is None:
        args.warmup_steps = 500 if args.lr_schedule == "cosine" else 0
    if args.epochs is None and args.dataset is not None:  # (--resume without --dataset: set from the run)
        args.epochs = DEFAULT_EPOCHS[args.dataset]
    if args.dataset is not None and not args.resume:  # (--resume: the run's, set when it is read)
        if args.prediction is None:
            args.prediction = DEFAULT_PREDICTION
        if args.loss_weighting is None:
            args.loss_weighting = DEFAULT_LOSS_WEIGHTING
        if args.batch_size is None and args.train:
            args.batch_size = DEFAULT_BATCH_SIZE[args.dataset]
    if args.schedule_shift is None and not args.resume:
        args.schedule_shift = 1.0
    if (args.class_cond or args.label_drop != 0.1) and not args.train:
        parser.error("--class-cond and --label-drop need --train")
    if (args.digit is not None or args.guidance is not None or args.guidance_interval is not None) \
            and not (args.sample or args.evaluate):
        parser.error("--digit, --guidance and --guidance-interval need --sample or --evaluate")
    if args.gif is not None and not args.sample:
        parser.error("--gif needs --sample")
    if args.resume and not args.train:
        parser.error("--resume needs --train")
    if (args.fast or args.fast_parts is not None) and not args.train:
        parser.error("--fast and --fast-parts need --train")
    if args.fast and args.fast_parts is not None:
        parser.error("give --fast or --fast-parts, not both")
    if args.eta != 0 and args.sampler != "ddim":
        parser.error("--eta needs --sampler ddim")
    if args.reverse_variance != "beta" and args.sampler != "ddpm":
        parser.error("--reverse-variance needs --sampler ddpm (the few-step samplers fix their own variance)")
    if args.step_schedule != "uniform" and args.sampler == "ddpm":
        parser.error("--step-schedule needs --sampler ddim or dpm++ (DDPM visits every step)")
    if (args.bpd_images or args.judge_dir) and not args.evaluate:
        parser.error("--bpd-images and --judge-dir need --evaluate")
    return args
