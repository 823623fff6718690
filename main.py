"""Command line of the DDPM tutorial package: data -> training -> samples and figures.

    python main.py --dataset mnist --train          # train, save runs/ddpm_model.pt
    python main.py --sample --gif out.gif            # sample from that checkpoint
    python main.py --dataset persian --figures       # draw the paper's figures

Users get one-line errors and a non-zero exit code; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import StepLR
from tqdm.contrib.logging import logging_redirect_tqdm

import distributed
from checkpoint import CheckpointError, load_checkpoint, model_config, save_checkpoint
from Dataset import DATASETS, IMAGE_SIZES, DatasetError, get_data_loaders, is_writable_dir, save_dataset_samples
from diffusion_model import DiffusionModel
from ema import EMA
from fastpath import (
    PARTS,
    RECOMMENDED,
    describe,
    loss_function,
    make_optimizer,
    parse_parts,
    prepare_model,
    recommended_parts,
    restore_optimizer,
    to_tensor_loader,
)
from likelihood import bits_per_dim
from quality import format_table, judge_outputs, load_or_train_judge, score
from unet import ARCHITECTURES, MyUNet
from utils import (
    DISPLAY_MODES,
    SAMPLERS,
    TrainingInterrupted,
    last_checkpoint_path,
    resolve_device,
    sample,
    sampling_steps,
    save_embedding_matrix,
    save_forward_process,
    training_loop,
)

log = logging.getLogger("ddpm")


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
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def open_unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = p.add_argument_group("what to do (combine freely; at least one)")
    what.add_argument("--train", action="store_true", help="train a model and save checkpoints in --out-dir")
    what.add_argument("--sample", action="store_true", help="generate --n-samples images from --checkpoint")
    what.add_argument("--evaluate", action="store_true",
                      help="score --n-samples generated images from --checkpoint with the offline judge "
                           "(Frechet distance, classifier score, class histogram, saturation); saves JSON")
    what.add_argument("--figures", action="store_true",
                      help="draw the paper's figures: dataset samples (Fig. 2/5), forward process (Fig. 7/8), "
                           "positional-encoding matrix (Fig. 9)")

    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="mnist", help="which of the paper's datasets")
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

    model = p.add_argument_group("model and diffusion schedule (training; sampling reads them from the checkpoint)")
    model.add_argument("--timesteps", type=positive_int, default=1000, help="number of diffusion steps T")
    model.add_argument("--beta-start", type=open_unit_interval, default=1e-4, help="beta_1 of the linear schedule")
    model.add_argument("--beta-end", type=open_unit_interval, default=0.02, help="beta_T of the linear schedule")
    model.add_argument("--time-emb-dim", type=positive_int, default=100, help="width of the sinusoidal time embedding")
    model.add_argument("--arch", choices=ARCHITECTURES, default="fixed",
                       help="UNet variant: 'fixed' (the default, better samples as measured in the README) has no "
                            "LayerNorm on the raw input; 'paper' is Figure 11, blind to brightness and contrast")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    train.add_argument("--batch-size", type=positive_int, default=128,
                       help="images per batch and per process (under torchrun the global batch is "
                            "this times the number of processes)")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    train.add_argument("--lr-step", type=positive_int, default=10, help="StepLR: epochs between learning-rate cuts")
    train.add_argument("--resume", action="store_true",
                       help="continue training from the last checkpoint (CHECKPOINT with _last) up to --epochs "
                            "in total: weights, EMA, optimizer, scheduler, epoch, history and random state")
    train.add_argument("--ema-decay", type=non_negative_float, default=0.999,
                       help="decay of the exponential moving average of the weights (with warm-up); 0 turns it off")
    train.add_argument("--lr-gamma", type=positive_float, default=0.5, help="StepLR: factor of each cut")
    train.add_argument("--fast", action="store_true",
                       help="train with the fast-path parts chosen for this device type (CPU, measured by "
                            f"bench/bench_speed.py: {describe(RECOMMENDED['cpu'])}; CUDA, not measured "
                            f"here: {describe(RECOMMENDED['cuda'])}); validation and sampling stay fp32 eager")
    train.add_argument("--fast-parts", type=fast_parts, default=None, metavar="PART[,PART...]",
                       help=f"train with exactly these fast-path parts, from: {', '.join(PARTS)} "
                            "('none' is the paper's fp32 eager path, the default)")

    samp = p.add_argument_group("sampling")
    samp.add_argument("--checkpoint", default=None,
                      help="checkpoint to write (--train) and read (--sample); default: OUT_DIR/ddpm_model.pt")
    samp.add_argument("--n-samples", type=positive_int, default=16, help="images to generate")
    samp.add_argument("--gif", default=None, help="also write the reverse process as a GIF to this path")
    samp.add_argument("--frames-per-gif", type=positive_int, default=100, help="frames of the GIF before the hold")
    samp.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                      help="'ddpm' is Algorithm 2 (every step); 'ddim' is Song et al. (2021), fewer steps")
    samp.add_argument("--sample-steps", type=positive_int, default=None,
                      help="DDIM: number of evenly spaced steps (default 50); DDPM always uses all T")
    samp.add_argument("--eta", type=non_negative_float, default=0.0,
                      help="DDIM noise scale: 0 is deterministic, 1 is DDPM-like")
    samp.add_argument("--bpd-images", type=non_negative_int, default=0,
                      help="--evaluate: also bound the likelihood (bits/dim) on this many validation images "
                           "(T network passes per image)")
    samp.add_argument("--no-ema", action="store_true",
                      help="sample with the raw weights even when the checkpoint has EMA weights")
    samp.add_argument("--judge-dir", default=None,
                      help="where the judge classifier of --evaluate is cached "
                           "(default: DATA_ROOT/judges, or ./data/judges when DATA_ROOT is read-only)")
    samp.add_argument("--display", choices=DISPLAY_MODES, default="clamp",
                      help="how images are drawn: 'clamp' shows the real output in [-1, 1]; "
                           "'minmax' stretches each image to its own range as the paper does")

    run = p.add_argument_group("run")
    run.add_argument("--out-dir", default="runs", help="folder for checkpoints, figures and sample grids")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="'auto' uses CUDA when available")
    run.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same run on CPU")
    run.add_argument("--quiet", action="store_true", help="log warnings and errors only, no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.train or args.sample or args.figures or args.evaluate):
        parser.error("nothing to do: give --train, --sample, --evaluate and/or --figures")
    if args.timesteps > 1 and args.beta_end <= args.beta_start:
        parser.error(f"--beta-end ({args.beta_end}) must be larger than --beta-start ({args.beta_start})")
    if not 0.0 <= args.ema_decay < 1.0:
        parser.error(f"--ema-decay must lie in [0, 1), got {args.ema_decay}")
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
    if (args.bpd_images or args.judge_dir) and not args.evaluate:
        parser.error("--bpd-images and --judge-dir need --evaluate")
    return args


def ensure_writable(path: Path) -> Path:
    """Create ``path``'s folder and check a file can be written there; UsageError otherwise."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if path.is_dir():
        raise UsageError(f"cannot write {path}: it is a folder")
    return path


def new_model(args: argparse.Namespace, device: torch.device) -> DiffusionModel:
    """A fresh DDPM for --dataset with the CLI's schedule and network options."""
    size = IMAGE_SIZES[args.dataset]
    net = MyUNet(n_steps=args.timesteps, time_emb_dim=args.time_emb_dim, image_size=size, arch=args.arch)
    return DiffusionModel(net, args.beta_start, args.beta_end, args.timesteps, device=device)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global random state (CPU, and CUDA when training there)."""
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class StopRequest:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the training loop checks after each batch."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal stops at once
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("Received signal %d: saving the training state after this batch", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Build (or, with --resume, reload) the model and run the training loop of Figure 12."""
    resume: dict[str, Any] | None = None
    if args.resume:
        last = last_checkpoint_path(checkpoint)
        ddpm, ckpt = open_checkpoint(last, device)
        if "progress" not in ckpt:
            raise UsageError(f"{last} holds no training state to resume from")
        if ckpt["config"]["dataset"] != args.dataset:
            log.warning("Resuming a %s run (ignoring --dataset %s)", ckpt["config"]["dataset"], args.dataset)
        args.dataset = ckpt["config"]["dataset"]
        saved = ckpt.get("train_args", {})
        for key, now in (("batch_size", args.batch_size), ("seed", args.seed),
                         ("world_size", distributed.world_size())):
            if saved.get(key) != now:  # the replayed epoch order would differ
                raise UsageError(f"cannot resume {last} exactly: it was trained with {key} {saved.get(key)}, "
                                 f"this run has {now}; resume with the same settings")
        resume = dict(ckpt["progress"], history=ckpt["history"])
    else:
        ddpm = new_model(args, device)
    config = model_config(args.dataset, ddpm)
    parts = recommended_parts(device) if args.fast else (args.fast_parts or frozenset())
    prepare_model(ddpm, parts)
    train_loader, val_loader = load_data(args, device)
    if "tensor_data" in parts:
        train_loader = to_tensor_loader(train_loader, device)
    model = ddpm
    if distributed.is_distributed():
        model = DistributedDataParallel(ddpm, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False)  # the schedule buffers never change
    optim = make_optimizer(ddpm.parameters(), args.lr, parts)
    scheduler = StepLR(optim, step_size=args.lr_step, gamma=args.lr_gamma)
    ema = EMA(ddpm.backward_process_model, args.ema_decay) if args.ema_decay > 0 else None
    if resume is not None:
        restore_optimizer(optim, ckpt["optimizer"])
        if sorted(parts) != ckpt.get("train_args", {}).get("fast_parts", []):
            log.warning("Resuming with fast-path parts %s; the run was trained with %s: the rest of the run "
                        "will not repeat an uninterrupted one exactly", describe(parts),
                        describe(ckpt.get("train_args", {}).get("fast_parts", [])))
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"][distributed.rank()], device)
        log.info("Resuming %s from epoch %d, batch %d", last_checkpoint_path(checkpoint),
                 resume["epoch"] + 1, resume["batch"])
    n_params = sum(p.numel() for p in ddpm.parameters() if p.requires_grad)
    log.info("Training %s (%s UNet, %d trainable parameters) on %s (%s) for %d epochs: %d train / %d validation "
             "images, batch %d per process x %d processes = %d", args.dataset, config["network"]["arch"],
             n_params, device, describe(parts), args.epochs, len(train_loader.dataset), len(val_loader.dataset),
             args.batch_size, distributed.world_size(), args.batch_size * distributed.world_size())
    train_args = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_step=args.lr_step,
                      lr_gamma=args.lr_gamma, seed=args.seed, ema_decay=args.ema_decay,
                      world_size=distributed.world_size(), fast_parts=sorted(parts))

    def save(path: Path, state: dict[str, Any]) -> None:
        rngs = distributed.gather_objects(rng_state(device))  # a collective: every rank calls save
        if not distributed.is_main_process():
            return
        extra = dict(ema=ema.state_dict()) if ema is not None else {}
        save_checkpoint(path, ddpm, config, history=state["history"], progress=state["progress"],
                        train_args=train_args, optimizer=optim.state_dict(), scheduler=scheduler.state_dict(),
                        rng=rngs, **extra)

    curves = out_dir / f"loss_curves_{args.dataset}.png"
    with StopRequest() as stop:
        history = training_loop(ddpm, train_loader, val_loader, args.epochs, optim, device,
                                scheduler=scheduler, store_path=checkpoint, save_fn=save, loss_curve_path=curves,
                                seed=args.seed, model=model, ema=ema, resume=resume, should_stop=stop,
                                loss_fn=loss_function(model, parts, device, args.batch_size) if parts else None)
    if distributed.is_main_process():
        (out_dir / f"history_{args.dataset}.json").write_text(json.dumps(history, indent=2))
    log.info("Best checkpoint: %s; loss curves: %s", checkpoint, curves)


def load_data(args: argparse.Namespace, device: torch.device, dataset: str | None = None, seed: int | None = None):
    """Train and validation loaders of ``dataset`` (default: --dataset) with the CLI's data options."""
    return get_data_loaders(dataset or args.dataset, args.batch_size, args.data_root,
                            seed=args.seed if seed is None else seed,
                            rank=distributed.rank(), world_size=distributed.world_size(),
                            num_workers=args.num_workers, device=device, persian_zip=args.persian_zip,
                            extract_dir=args.extract_dir, skip_bad_files=args.skip_bad_files)


def open_checkpoint(checkpoint: Path, device: torch.device,
                    use_ema: bool = False) -> tuple[DiffusionModel, dict[str, Any]]:
    """Load a checkpoint (with its EMA weights when ``use_ema`` and present).

    A missing checkpoint is a usage error that says how to train one.
    """
    try:
        ddpm, ckpt = load_checkpoint(checkpoint, device)
    except CheckpointError as exc:
        if not checkpoint.exists():
            raise UsageError(f"{exc}; train one first: python main.py --dataset mnist --train "
                             f"(or pass --checkpoint PATH)") from exc
        raise
    if use_ema and "ema" in ckpt:
        ddpm.backward_process_model.load_state_dict(ckpt["ema"]["model"])
        log.info("Using the EMA weights (decay %s) of %s", ckpt["ema"]["decay"], checkpoint)
    return ddpm, ckpt


def sampler_options(args: argparse.Namespace, ddpm: DiffusionModel) -> dict[str, Any]:
    """``sample()``'s sampler arguments; DDIM defaults to 50 steps (or T, when smaller)."""
    steps = args.sample_steps
    if steps is None and args.sampler == "ddim":
        steps = min(50, ddpm.timesteps)
    try:
        sampling_steps(ddpm.timesteps, args.sampler, steps)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return dict(sampler=args.sampler, sample_steps=steps, eta=args.eta)


def sample_images(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Rebuild the model from its checkpoint and sample: Algorithm 2 (Figure 14) or DDIM."""
    ddpm, ckpt = open_checkpoint(checkpoint, device, use_ema=not args.no_ema)
    options = sampler_options(args, ddpm)
    dataset = ckpt["config"]["dataset"]
    grid_path = ensure_writable(out_dir / f"samples_{dataset}.png")
    gif = ensure_writable(Path(args.gif)) if args.gif else None
    log.info("Sampling %d images from %s (%s, T=%d, %s) on %s", args.n_samples, checkpoint, dataset,
             ddpm.timesteps, args.sampler, device)
    start = time.perf_counter()
    sample(ddpm, args.n_samples, device, frames_per_gif=args.frames_per_gif, gif_name=gif,
           grid_path=grid_path, seed=args.seed, display=args.display, **options)
    log.info("Sampled in %.1fs: grid %s%s", time.perf_counter() - start, grid_path,
             f", GIF {gif}" if gif else "")


def judge_cache(args: argparse.Namespace, dataset: str, split_seed: int) -> Path:
    """Where the judge classifier is cached: --judge-dir, else beside the data, else ./data/judges.

    The Persian split depends on the seed, so its judges are cached per split seed.
    """
    name = f"judge_{dataset}.pt" if dataset == "mnist" else f"judge_{dataset}_split{split_seed}.pt"
    if args.judge_dir:
        return Path(args.judge_dir) / name
    beside_data = Path(args.data_root) / "judges"
    folder = beside_data if is_writable_dir(beside_data) else Path("data") / "judges"
    return folder / name


def evaluate_quality(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Score --n-samples generated images with the offline judge; print the table, save it as JSON."""
    ddpm, ckpt = open_checkpoint(checkpoint, device, use_ema=not args.no_ema)
    options = sampler_options(args, ddpm)
    dataset = ckpt["config"]["dataset"]
    steps = len(sampling_steps(ddpm.timesteps, options["sampler"], options["sample_steps"]))
    report_path = ensure_writable(out_dir / f"quality_{dataset}_{args.sampler}{steps}.json")
    n = args.n_samples
    if n < 2:
        raise UsageError("--evaluate needs --n-samples >= 2 (the Frechet distance fits a covariance)")
    if n <= 128:
        log.warning("--n-samples %d is not above the judge's 128 features: the Frechet distance is unreliable", n)
    # The validation set must be the one the model did not train on: the split seed of the training run.
    split_seed = ckpt.get("train_args", {}).get("seed", args.seed)
    train_loader, val_loader = load_data(args, device, dataset, seed=split_seed)
    if n > len(train_loader.dataset):
        raise UsageError(f"--n-samples {n} is more than the {len(train_loader.dataset)} training images")
    judge, judge_accuracy = load_or_train_judge(judge_cache(args, dataset, split_seed), train_loader, val_loader,
                                                device)
    val_features, _ = judge_outputs(judge, val_loader, device)
    real = torch.stack([train_loader.dataset[i][0] for i in range(n)])
    start = time.perf_counter()
    samples = sample(ddpm, n, device, gif_name=None, seed=args.seed, **options)
    seconds = time.perf_counter() - start
    rows = {
        f"generated ({args.sampler}, {steps} steps)": score(judge, samples, val_features, device),
        "real training images (floor)": score(judge, real, val_features, device),
    }
    log.info("Quality of %s (%s), %d samples drawn in %.1fs:\n%s", checkpoint, dataset, n, seconds,
             format_table(rows, judge_accuracy))
    report = dict(checkpoint=str(checkpoint), dataset=dataset, ema=not args.no_ema and "ema" in ckpt,
                  arch=ckpt["config"]["network"]["arch"],
                  sampler=options, steps=steps, seed=args.seed, sampling_seconds=seconds,
                  judge_accuracy=judge_accuracy, rows=rows)
    if args.bpd_images > 0:
        start = time.perf_counter()
        report["likelihood_bound"] = bits_per_dim(ddpm, val_loader, args.bpd_images, seed=args.seed)
        log.info("Variational bound (Ho et al. Eq. 5) on %d validation images: %.4f bits/dim "
                 "(L_T %.5f, sum L_t-1 %.4f, L_0 %.4f) in %.1fs", report["likelihood_bound"]["n_images"],
                 *(report["likelihood_bound"][k] for k in ("bits_per_dim", "prior_bpd", "diffusion_bpd",
                                                           "decoder_bpd")), time.perf_counter() - start)
    report_path.write_text(json.dumps(report, indent=2))
    log.info("Saved %s", report_path)


def draw_figures(args: argparse.Namespace, device: torch.device, out_dir: Path) -> None:
    """The paper's data and forward-process figures (Figures 2/5, 7/8 and 9)."""
    train_loader, val_loader = load_data(args, device)
    samples_path = out_dir / f"dataset_samples_{args.dataset}.png"
    save_dataset_samples(train_loader, val_loader, samples_path)
    ddpm = DiffusionModel(torch.nn.Identity(), args.beta_start, args.beta_end, args.timesteps, device=device,
                          image_chw=(1, IMAGE_SIZES[args.dataset], IMAGE_SIZES[args.dataset]))
    images = torch.stack([train_loader.dataset[i][0] for i in range(4)])
    forward_path = out_dir / f"forward_process_{args.dataset}.png"
    save_forward_process(ddpm, images, forward_path, seed=args.seed)
    embedding_path = out_dir / "positional_encoding_64.png"
    save_embedding_matrix(embedding_path, n=64, d=args.time_emb_dim)
    log.info("Figures: %s, %s, %s", samples_path, forward_path, embedding_path)


def run(args: argparse.Namespace) -> None:
    """Do what the arguments ask, in the order figures -> train -> sample -> evaluate.

    Under torchrun, every process trains (DistributedDataParallel) and only
    rank 0 writes files, logs and draws figures and samples.
    """
    try:
        device = distributed.setup(args.device) if distributed.launched_by_torchrun() else resolve_device(args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    torch.manual_seed(args.seed + distributed.rank())  # different noise on each rank, reproducibly
    out_dir = Path(args.out_dir)
    checkpoint = Path(args.checkpoint) if args.checkpoint else out_dir / "ddpm_model.pt"
    main_process = distributed.is_main_process()

    def prepare() -> None:  # on rank 0 alone, before the other ranks read the data
        ensure_writable(out_dir / "probe")
        if args.train:
            ensure_writable(checkpoint)
            if distributed.is_distributed() and not args.resume:  # (a resumed run's data is there already)
                load_data(args, device)  # downloads missing data once, not once per rank
        if args.figures:
            draw_figures(args, device, out_dir)

    try:
        distributed.main_process_first(prepare)
        if args.train:
            train(args, device, checkpoint, out_dir)
    finally:
        distributed.cleanup()
    if not main_process:
        return
    if args.sample:
        sample_images(args, device, checkpoint, out_dir)
    if args.evaluate:
        evaluate_quality(args, device, checkpoint, out_dir)


def one_line(exc: Exception) -> str:
    """The user-facing message of ``exc``; a DataLoader worker wraps it in a traceback, which is dropped."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in lines[0]:
        return lines[-1].split(": ", 1)[-1]  # "Dataset.DatasetError: <message>"
    return " ".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = args.quiet or int(os.environ.get("RANK", "0")) != 0  # under torchrun, rank 0 logs
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    previous = os.environ.get("TQDM_DISABLE")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # read by distributed.progress_bar; restored below
    try:
        with logging_redirect_tqdm():
            run(args)
    except (UsageError, CheckpointError, DatasetError, distributed.MainProcessFailed) as exc:
        print(f"main.py: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"main.py: {exc}; continue with the same command and --resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("main.py: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())
