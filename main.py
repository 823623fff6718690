"""Command line of the DDPM tutorial package: data -> training -> samples -> scores and figures.

    python main.py --dataset mnist --train          # train, save runs/ddpm_mnist.pt
    python main.py --sample --gif out.gif            # sample from that checkpoint
    python main.py --dataset persian --figures       # draw the paper's figures

Read top to bottom: ``main`` parses the options (``cli.py``) and maps failures to
one-line errors; ``run`` does what was asked; then one function per action:
``load_data``, ``train``, ``sample_images``, ``score_samples`` (``--evaluate``)
and ``draw_figures``. Users get one-line errors and a non-zero exit code;
tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

import distributed
from checkpoint import (
    CheckpointError,
    TrainState,
    changed_settings,
    checkpoints_in,
    find_checkpoint,
    last_checkpoint_path,
    load_checkpoint,
    RUN_SETTINGS,
    refuse_to_replace,
    rescale_position,
)
from cli import DATA_BATCH_SIZE, DEFAULT_DATASET, DEFAULT_EPOCHS, DEFAULT_GUIDANCE, UsageError, parse_args
from Dataset import IMAGE_SIZES, DatasetError, get_data_loaders
from diffusion_model import DiffusionModel
from ema import EMA
from fastpath import describe, loss_function, make_optimizer, prepare_model, recommended_parts, restore_optimizer
from fastpath import to_tensor_loader
from figures import save_dataset_samples, save_embedding_matrix, save_forward_process
from files import OutputError, RunLock, ensure_writable, remove_orphans, writable_beside_data, write_json
from likelihood import bits_per_dim
from recipe import make_scheduler
from quality import (N_CLASSES, format_table, judge_outputs, load_or_train_judge, per_class_accuracy,
                     requested_digit_accuracy, score)
from unet import DEFAULT_BASE_CHANNELS, DEFAULT_PATCH_SIZE, PAPER_ARCHITECTURES, make_unet
from utils import DEFAULT_CLIP_X0, StopRequest, TrainingDiverged, TrainingInterrupted, sample, sampling_steps
from utils import training_loop

log = logging.getLogger("ddpm")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run them, and turn every user-facing failure into one line and an exit code."""
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
    except (UsageError, CheckpointError, DatasetError, OutputError, TrainingDiverged,
            distributed.MainProcessFailed) as exc:
        print(f"main.py: error: {user_message(exc)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"main.py: {exc}; continue with the same command and --resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        hint = "; a training run keeps its last complete checkpoint: continue with --resume" if args.train else ""
        print(f"main.py: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    return 0


def run(args: argparse.Namespace) -> None:
    """Do what the arguments ask, in the order figures -> train -> sample -> evaluate.

    Under torchrun, every process trains (DistributedDataParallel) and only
    rank 0 writes files, logs and draws figures and samples.
    """
    try:
        device = (distributed.setup(args.device) if distributed.launched_by_torchrun()
                  else distributed.resolve_device(args.device))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    torch.manual_seed(args.seed + distributed.rank())  # different noise on each rank, reproducibly
    out_dir = Path(args.out_dir)
    checkpoint = checkpoint_path(args, out_dir)
    main_process = distributed.is_main_process()
    locks = [RunLock(folder) for folder in dict.fromkeys([out_dir, checkpoint.parent])]

    def prepare() -> None:  # on rank 0 alone, before the other ranks read the data
        ensure_writable(out_dir / "probe")
        if args.train:
            ensure_writable(checkpoint)
            for lock in locks:  # one training run at a time in an output folder
                lock.acquire()
            if not args.resume and not args.overwrite:
                refuse_to_replace(checkpoint)
            for folder in {out_dir, checkpoint.parent}:
                remove_orphans(folder)
            if distributed.is_distributed() and not args.resume:  # (a resumed run's data is there already)
                load_data(args, device)  # downloads missing data once, not once per rank
        if args.figures:
            draw_figures(args, device, out_dir)

    try:
        distributed.main_process_first(prepare)
        if args.train:
            train(args, device, checkpoint, out_dir)
    finally:
        for lock in locks:
            lock.release()
        distributed.cleanup()
    if not main_process:
        return
    if args.sample:
        sample_images(args, device, checkpoint, out_dir)
    if args.evaluate:
        score_samples(args, device, checkpoint, out_dir)


def load_data(args: argparse.Namespace, device: torch.device, dataset: str | None = None, seed: int | None = None):
    """Train and validation loaders of ``dataset`` (default: --dataset) with the CLI's data options."""
    batch_size = args.batch_size or DATA_BATCH_SIZE  # (None: not training, or --resume before the run is read)
    return get_data_loaders(dataset or args.dataset, batch_size, args.data_root,
                            seed=args.seed if seed is None else seed,
                            rank=distributed.rank(), world_size=distributed.world_size(),
                            num_workers=args.num_workers, device=device, persian_zip=args.persian_zip,
                            extract_dir=args.extract_dir, skip_bad_files=args.skip_bad_files)


# --------------------------------------------------------------------------- --train


def train(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Build (or, with --resume, reload) the model and run the training loop of Figure 12."""
    ddpm, saved = resume_point(args, device, checkpoint) if args.resume else (new_model(args, device), None)
    if args.epochs is None:  # --resume without --dataset: the run's dataset is known now
        args.epochs = DEFAULT_EPOCHS[args.dataset]
    if saved is not None and saved["progress"]["epoch"] >= args.epochs:
        log.warning("Nothing to train: the run in %s is complete (%d of %d epochs); pass a larger --epochs "
                    "to train it further", checkpoint.parent, saved["progress"]["epoch"], args.epochs)
        return
    parts = recommended_parts(device) if args.fast else (args.fast_parts or frozenset())
    prepare_model(ddpm, parts)
    train_loader, val_loader = load_data(args, device)
    if "tensor_data" in parts:
        train_loader = to_tensor_loader(train_loader, device)
    model = ddpm
    if distributed.is_distributed():
        model = DistributedDataParallel(ddpm, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False)  # the schedule buffers never change
    optimizer = make_optimizer(ddpm.parameters(), args.lr, parts)
    scheduler, per_step = make_scheduler(optimizer, args.lr_schedule, steps_per_epoch=len(train_loader),
                                         epochs=args.epochs, warmup_steps=args.warmup_steps,
                                         lr_step=args.lr_step, lr_gamma=args.lr_gamma)
    state = TrainState(
        ddpm, optimizer, scheduler, scheduler_per_step=per_step,
        ema=EMA(ddpm.backward_process_model, args.ema_decay) if args.ema_decay > 0 else None,
        model=model, dataset=args.dataset,
        train_args=dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_step=args.lr_step,
                        lr_gamma=args.lr_gamma, lr_schedule=args.lr_schedule, warmup_steps=args.warmup_steps,
                        loss_weighting=args.loss_weighting, snr_gamma=args.snr_gamma,
                        label_drop=args.label_drop, seed=args.seed,
                        ema_decay=args.ema_decay, world_size=distributed.world_size(), fast_parts=sorted(parts)))
    if saved is not None:
        if saved["train_args"].get("world_size") != distributed.world_size():
            log.warning("Resuming a run of %s process(es) with %d: it goes on from the saved state, but no longer "
                        "repeats an uninterrupted run exactly (the global batch and the shard order change)",
                        saved["train_args"].get("world_size"), distributed.world_size())
            saved["progress"] = rescale_position(saved, args.batch_size * distributed.world_size(), len(train_loader))
        if sorted(parts) != saved.get("train_args", {}).get("fast_parts", []):
            log.warning("Resuming with fast-path parts %s; the run was trained with %s: the rest of the run "
                        "will not repeat an uninterrupted one exactly", describe(parts),
                        describe(saved.get("train_args", {}).get("fast_parts", [])))
        state.restore(saved, load_optimizer=restore_optimizer)
        log.info("Resuming %s from epoch %d, batch %d", last_checkpoint_path(checkpoint), state.epoch + 1,
                 state.batch)
    n_params = sum(p.numel() for p in ddpm.parameters() if p.requires_grad)
    log.info("Training %s (%s UNet, %d trainable parameters) on %s (%s) for %d epochs: %d train / %d validation "
             "images, batch %d per process x %d processes = %d", args.dataset, ddpm.backward_process_model.config["arch"],
             n_params, device, describe(parts), args.epochs, len(train_loader.dataset), len(val_loader.dataset),
             args.batch_size, distributed.world_size(), args.batch_size * distributed.world_size())
    curves = out_dir / f"loss_curves_{args.dataset}.png"
    try:
        with StopRequest() as stop:
            training_loop(state, train_loader, val_loader, args.epochs, store_path=checkpoint,
                          loss_curve_path=curves, seed=args.seed, should_stop=stop,
                          loss_fn=loss_function(model, parts, device, args.batch_size,
                                                snr_gamma=None if args.loss_weighting == "none" else args.snr_gamma,
                                                label_drop=args.label_drop,
                                                v_error=args.loss_weighting == "min-snr-v"))
    finally:  # also after an interruption or a divergence: the history of the finished epochs
        if distributed.is_main_process() and state.history["train_loss"]:
            try:
                write_json(out_dir / f"history_{args.dataset}.json", state.history)
            except OutputError as exc:  # never hide the error that ended the run
                log.error("%s", exc)
    log.info("Best checkpoint: %s; loss curves: %s", checkpoint, curves)


def new_model(args: argparse.Namespace, device: torch.device) -> DiffusionModel:
    """A fresh DDPM for --dataset with the CLI's schedule and network options."""
    size = IMAGE_SIZES[args.dataset]
    extra = {} if args.arch in PAPER_ARCHITECTURES else dict(
        base_channels=args.channels or DEFAULT_BASE_CHANNELS[size], dropout=args.dropout or 0.0,
        patch_size=args.patch_size or DEFAULT_PATCH_SIZE[size])
    if args.class_cond:
        extra["num_classes"] = N_CLASSES
    try:
        net = make_unet(n_steps=args.timesteps, time_emb_dim=args.time_emb_dim, image_size=size, arch=args.arch,
                        **extra)
    except ValueError as exc:  # e.g. a --patch-size that does not tile the image
        raise UsageError(f"{args.dataset} ({size}x{size}): {exc}") from None
    ddpm = DiffusionModel(net, args.beta_start, args.beta_end, args.timesteps, device=device,
                          schedule=args.schedule, prediction=args.prediction,
                          schedule_shift=args.schedule_shift)
    alpha_bar_T = ddpm.alpha_bars[-1].item()
    if alpha_bar_T > 0.01:  # x_T keeps sqrt(alpha_bar_T) of the image: sampling from N(0, I) starts elsewhere
        log.warning("alpha_bar_T is %.3g with --timesteps %d and --beta-end %g: the last noised images keep "
                    "much of the image, so samples drawn from pure noise will be poor; raise --beta-end or "
                    "--timesteps until alpha_bar_T is near 0 (the paper's schedule: 4e-05)", alpha_bar_T,
                    args.timesteps, args.beta_end)
    return ddpm


def resume_point(args: argparse.Namespace, device: torch.device,
                 checkpoint: Path) -> tuple[DiffusionModel, dict[str, Any]]:
    """The model and checkpoint dict that --resume continues: the ``_last`` file, else the best one.

    Refused, with every difference listed, when an option that defines the run
    differs from what the run was trained with. Sets ``args.dataset`` to the run's.
    """
    last = last_checkpoint_path(checkpoint)
    if not last.is_file() and checkpoint.is_file():
        log.warning("%s is missing (a save was interrupted?): resuming from the best checkpoint %s, "
                    "the state after its epoch", last, checkpoint)
        last = checkpoint
    ddpm, ckpt = open_checkpoint(last, device)
    if "progress" not in ckpt:
        raise UsageError(f"{last} holds no training state to resume from")
    if args.dataset not in (None, ckpt["config"]["dataset"]):
        raise UsageError(f"cannot resume {last}: it is a {ckpt['config']['dataset']} run, not {args.dataset}")
    args.dataset = ckpt["config"]["dataset"]
    changed = changed_settings(ckpt, vars(args))
    if changed:
        raise UsageError(f"cannot resume {last}: {', '.join(changed)}; resume with the run's settings, or train "
                         "a new run into another --out-dir")
    for key in ("loss_weighting", "batch_size"):  # not given: the run's
        if getattr(args, key) is None:
            setattr(args, key, RUN_SETTINGS[key][1](ckpt))
    return ddpm, ckpt


# --------------------------------------------------------------------------- --sample and --evaluate


def sample_images(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Rebuild the model from its checkpoint and sample: Algorithm 2 (Figure 14), DDIM or DPM-Solver++."""
    ddpm, ckpt = open_checkpoint(checkpoint, device, use_ema=not args.no_ema)
    options = sampler_options(args, ddpm)
    labels, cols = requested_labels(args, ddpm, checkpoint)
    n_samples = args.n_samples if labels is None else len(labels)
    dataset = ckpt["config"]["dataset"]
    guidance, interval = guidance_setting(args, ddpm, dataset)
    grid_path = ensure_writable(out_dir / f"samples_{dataset}.png")
    gif = ensure_writable(Path(args.gif)) if args.gif else None
    log.info("Sampling %d images from %s (%s, T=%d, %s%s) on %s", n_samples, checkpoint, dataset, ddpm.timesteps,
             args.sampler, "" if labels is None else f", {describe_guidance(guidance, interval)}", device)
    start = time.perf_counter()
    sample(ddpm, n_samples, device, frames_per_gif=args.frames_per_gif, gif_name=gif, grid_path=grid_path,
           seed=args.seed, display=args.display, labels=labels, guidance=guidance, guidance_interval=interval,
           grid_cols=cols, **options)
    log.info("Sampled in %.1fs: grid %s%s", time.perf_counter() - start, grid_path,
             f", GIF {gif}" if gif else "")


def score_samples(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """--evaluate: score --n-samples generated images with the offline judge; print the table, save JSON."""
    ddpm, ckpt = open_checkpoint(checkpoint, device, use_ema=not args.no_ema)
    options = sampler_options(args, ddpm)
    dataset = ckpt["config"]["dataset"]
    labels, _ = requested_labels(args, ddpm, checkpoint)  # a conditional model: every digit alike, or --digit's
    n = args.n_samples if labels is None else len(labels)
    steps = len(sampling_steps(ddpm, options["sampler"], options["sample_steps"], options["step_schedule"]))
    guidance, interval = guidance_setting(args, ddpm, dataset) if labels is not None else (None, None)
    report_path = ensure_writable(out_dir / report_name(dataset, options, steps, guidance, interval))
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
    samples = sample(ddpm, n, device, gif_name=None, seed=args.seed, labels=labels,
                     guidance=1.0 if guidance is None else guidance, guidance_interval=interval, **options)
    seconds = time.perf_counter() - start
    rows = {
        f"generated ({args.sampler}, {steps} steps)": score(judge, samples, val_features, device),
        "real training images (floor)": score(judge, real, val_features, device),
    }
    log.info("Quality of %s (%s), %d samples drawn in %.1fs:\n%s", checkpoint, dataset, n, seconds,
             format_table(rows, judge_accuracy))
    if any(sum(row["mostly_white_classes"]) for row in rows.values()):
        log.info("Mostly white images, by the class the judge reads (0-9): %s", "; ".join(
            f"{name}: {' '.join(map(str, row['mostly_white_classes']))}" for name, row in rows.items()))
    accuracy = None if labels is None else requested_digit_accuracy(judge, samples, labels, device)
    if accuracy is not None:
        accuracy["real_validation_per_class"] = per_class_accuracy(judge, val_loader, device)
        log.info("%s: the judge reads the requested digit in %.2f%% of the samples; per digit: %s "
                 "(real validation digits: %s)", describe_guidance(guidance, interval), 100 * accuracy["overall"],
                 *(" ".join("-" if a is None else f"{100 * a:.1f}" for a in accuracy[key])
                   for key in ("per_class", "real_validation_per_class")))
    report = dict(checkpoint=str(checkpoint), dataset=dataset, ema=not args.no_ema and "ema" in ckpt,
                  arch=ckpt["config"]["network"]["arch"],
                  sampler=dict(sampler=args.sampler, sample_steps=options["sample_steps"], eta=args.eta,
                               clip_x0=options["clip_x0"], step_schedule=args.step_schedule,
                               variance=args.reverse_variance),
                  steps=steps, seed=args.seed, sampling_seconds=seconds, judge_accuracy=judge_accuracy, rows=rows)
    if accuracy is not None:
        report.update(guidance=guidance, guidance_interval=interval,
                      requested_digit_accuracy=accuracy)
    if args.bpd_images > 0:
        report["likelihood_bound"] = likelihood_bound(ddpm, val_loader, args.bpd_images, args.seed)
    write_json(report_path, report)
    log.info("Saved %s", report_path)


def likelihood_bound(ddpm: DiffusionModel, val_loader: Any, n_images: int, seed: int) -> dict[str, float]:
    """--bpd-images: the variational bound (Ho et al. Eq. 5) in bits/dim on ``n_images`` validation images."""
    start = time.perf_counter()
    bound = bits_per_dim(ddpm, val_loader, n_images, seed=seed)
    log.info("Variational bound (Ho et al. Eq. 5) on %d validation images: %.4f bits/dim "
             "(L_T %.5f, sum L_t-1 %.4f, L_0 %.4f) in %.1fs", bound["n_images"],
             *(bound[k] for k in ("bits_per_dim", "prior_bpd", "diffusion_bpd", "decoder_bpd")),
             time.perf_counter() - start)
    return bound


# --------------------------------------------------------------------------- --figures


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


# --------------------------------------------------------------------------- helpers of the actions


def checkpoint_path(args: argparse.Namespace, out_dir: Path) -> Path:
    """--checkpoint, else ``OUT_DIR/ddpm_<dataset>.pt``; without --dataset, the one run in --out-dir.

    (A new training without --dataset trains the default dataset.)
    """
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.dataset or (args.train and not args.resume):
        return out_dir / f"ddpm_{args.dataset or DEFAULT_DATASET}.pt"
    return find_checkpoint(out_dir)


def open_checkpoint(checkpoint: Path, device: torch.device,
                    use_ema: bool = False) -> tuple[DiffusionModel, dict[str, Any]]:
    """Load a checkpoint (with its EMA weights when ``use_ema`` and present).

    A missing checkpoint is a usage error that says how to train one.
    """
    try:
        ddpm, ckpt = load_checkpoint(checkpoint, device)
    except CheckpointError as exc:
        if not checkpoint.exists():
            dataset = checkpoint.stem.removeprefix("ddpm_").removesuffix("_last")
            dataset = dataset if dataset in IMAGE_SIZES else DEFAULT_DATASET
            others = ", ".join(p.name for p in checkpoints_in(checkpoint.parent))
            raise UsageError(f"{exc}{f' ({checkpoint.parent} holds {others})' if others else ''}; train one first: "
                             f"python main.py --dataset {dataset} --train (or pass --checkpoint PATH)") from exc
        raise
    if use_ema and "ema" in ckpt:
        ddpm.backward_process_model.load_state_dict(ckpt["ema"]["model"])
        log.info("Using the EMA weights (decay %s) of %s", ckpt["ema"]["decay"], checkpoint)
    return ddpm, ckpt


def sampler_options(args: argparse.Namespace, ddpm: DiffusionModel) -> dict[str, Any]:
    """``sample()``'s sampler arguments, with the few-step samplers' default step count filled in."""
    steps, timesteps = args.sample_steps, ddpm.timesteps
    if steps is not None and not 1 <= steps <= timesteps:
        raise UsageError(f"--sample-steps must lie in 1..{timesteps} (the checkpoint's T), got {steps}")
    if args.sampler == "ddpm" and steps not in (None, timesteps):
        raise UsageError(f"--sample-steps {steps}: the DDPM sampler (Algorithm 2) visits all {timesteps} steps; "
                         "use --sampler ddim or dpm++ to skip")
    if args.sampler != "ddpm":
        steps = len(sampling_steps(ddpm, args.sampler, steps, args.step_schedule))
    clip_x0 = args.clip_x0 or DEFAULT_CLIP_X0[args.sampler]
    return dict(sampler=args.sampler, sample_steps=steps, ddim_eta=args.eta, clip_x0=clip_x0,
                step_schedule=args.step_schedule, variance=args.reverse_variance)


def requested_labels(args: argparse.Namespace, ddpm: DiffusionModel,
                     checkpoint: Path) -> tuple[torch.Tensor | None, int | None]:
    """--sample's labels and images per grid row: --digit's digits repeated to --n-samples, else, for a
    class-conditional checkpoint, one row per class (--n-samples rounded up to fill the rows); None, None
    for an unconditional one. --digit on an unconditional checkpoint is a ``UsageError``."""
    classes = ddpm.num_classes
    if not classes:
        for flag, value in (("--digit", args.digit), ("--guidance-interval", args.guidance_interval)):
            if value is not None:
                raise UsageError(f"{flag} needs a class-conditional checkpoint; {checkpoint} is unconditional "
                                 "(train one with --class-cond)")
        return None, None
    if args.digit is not None:
        return torch.tensor([args.digit[i % len(args.digit)] for i in range(args.n_samples)]), None
    per_class = -(-args.n_samples // classes)
    return torch.arange(classes).repeat_interleave(per_class), per_class


def guidance_setting(args: argparse.Namespace, ddpm: DiffusionModel,
                     dataset: str) -> tuple[float, tuple[int, int] | None]:
    """The guidance weight and interval of a class-conditional checkpoint: --guidance and --guidance-interval,
    and for what is not given the dataset's measured setting (``cli.DEFAULT_GUIDANCE``); a --guidance given
    alone guides every step."""
    weight, share = DEFAULT_GUIDANCE[dataset]
    if args.guidance is not None:
        weight, share = args.guidance, None
    interval = args.guidance_interval
    if interval is None and share is not None:
        interval = (0, int(share * ddpm.timesteps))
    if interval is not None and interval[1] >= ddpm.timesteps:
        raise UsageError(f"--guidance-interval: time steps lie in 0..{ddpm.timesteps - 1} (the checkpoint's T), "
                         f"got {interval[1]}")
    return weight, interval


def describe_guidance(weight: float, interval: tuple[int, int] | None) -> str:
    """``guidance 2.5 at t 0-500`` or ``guidance 1.5``."""
    return f"guidance {weight:g}" + ("" if interval is None else f" at t {interval[0]}-{interval[1]}")


def report_name(dataset: str, options: dict[str, Any], steps: int, guidance: float | None = None,
                guidance_interval: tuple[int, int] | None = None) -> str:
    """``quality_<dataset>_<sampler><steps>[_clip-<mode>][_logsnr][_posterior][_eta<E>][_w<W>[_t<LO>-<HI>]].json``
    for --evaluate (``_w<W>``: the guidance weight of a class-conditional checkpoint, ``_t<LO>-<HI>`` its
    --guidance-interval)."""
    name = f"quality_{dataset}_{options['sampler']}{steps}"
    if options["clip_x0"] != "none":
        name += f"_clip-{options['clip_x0']}"
    if options["step_schedule"] != "uniform":
        name += f"_{options['step_schedule']}"
    if options["variance"] != "beta":
        name += f"_{options['variance']}"
    if options["ddim_eta"] != 0:
        name += f"_eta{options['ddim_eta']:g}"
    if guidance is not None:
        name += f"_w{guidance:g}"
        if guidance_interval is not None:
            name += f"_t{guidance_interval[0]}-{guidance_interval[1]}"
    return name + ".json"


def judge_cache(args: argparse.Namespace, dataset: str, split_seed: int) -> Path:
    """Where the judge classifier is cached: --judge-dir, else beside the data, else ./data/judges.

    The Persian split depends on the seed, so its judges are cached per split seed.
    """
    name = f"judge_{dataset}.pt" if dataset == "mnist" else f"judge_{dataset}_split{split_seed}.pt"
    folder = Path(args.judge_dir) if args.judge_dir else writable_beside_data(args.data_root, "judges")
    return folder / name


def user_message(exc: Exception) -> str:
    """The user-facing message of ``exc``; a DataLoader worker wraps it in a traceback, which is dropped."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in lines[0]:
        return lines[-1].split(": ", 1)[-1]  # "Dataset.DatasetError: <message>"
    return " ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
