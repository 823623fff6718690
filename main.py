"""Command line of the DDPM tutorial package: data -> training -> samples -> scores and figures.

    python main.py --dataset mnist --train          # train, save runs/ddpm_mnist.pt
    python main.py --sample --gif out.gif            # sample from that checkpoint
    python main.py --dataset persian --figures       # draw the paper's figures

Read top to bottom: ``main`` parses the options (``cli.py``) and maps failures to
one-line errors; ``run`` does what was asked; then one function per action:
``train``, ``sample_images``, ``score_samples`` (``--evaluate``) and
``draw_figures``; ``--distill`` is ``distill.distill_run``. Settings come from ``config.py`` (one source for each),
samplers from ``samplers.py``, the training loop and ``sample`` from ``utils.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.contrib.logging import logging_redirect_tqdm

import distributed
from checkpoint import CheckpointError, build_model, find_checkpoint, load_for_sampling, refuse_to_replace
from cli import UsageError, dataset_of, parse_args, seed_of, settings_given
from config import DEFAULT_DATASET, ModelSettings, SettingError, dataset_info, resolve, run_settings
from Dataset import DatasetError
from diffusion_model import DiffusionModel
from distill import distill_run
from ema import EMA
from export import export_model
from fastpath import describe, loss_function, make_optimizer, prepare_model, recommended_parts, to_tensor_loader
from figures import save_dataset_samples, save_embedding_matrix, save_forward_process, save_grid, save_sampling_gif
from files import OutputError, RunLock, ensure_writable, remove_orphans, write_json
from likelihood import bits_per_dim
from quality import (format_table, judge_cache, judge_outputs, load_or_train_judge, per_class_accuracy, report_name,
                     requested_digit_accuracy, score)
from recipe import make_scheduler
from resume import ResumeRefused, continue_run, resume_point
from samplers import SamplingOutOfMemory, describe_guidance
from sampling_setup import guidance_of, load_data, open_model, requested_labels
from utils import StopRequest, TrainingDiverged, TrainingInterrupted, TrainState, sample, training_loop

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
    except (UsageError, CheckpointError, DatasetError, OutputError, TrainingDiverged, SamplingOutOfMemory,
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
    torch.manual_seed(seed_of(args) + distributed.rank())  # different noise on each rank, reproducibly
    out_dir = Path(args.out_dir)
    checkpoint = checkpoint_path(args, out_dir)
    if args.distill:  # progressive distillation of the checkpoint (distill.py), alone
        return distill_run(args, device, checkpoint, out_dir)
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
                load_data(args, device, dataset_of(args))  # downloads missing data once, not once per rank
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
    if args.export:
        ddpm, ckpt, used = load_for_sampling(checkpoint, device, use_ema=not args.no_ema)
        weights = "ema" if "ema" in ckpt and not args.no_ema else "raw"
        folder = export_model(ddpm, ckpt["config"], ensure_writable(Path(args.export) / "probe").parent,
                              extra=dict(weights=weights, train_args=ckpt.get("train_args", {}), source=str(used)))
        log.info("Exported the %s weights of %s to %s (model.safetensors, config.json)", weights, used, folder)


# --------------------------------------------------------------------------- --train


def train(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Build (or, with --resume, reload) the model and run the training loop of Figure 12."""
    if args.resume:
        try:
            ddpm, saved, used = resume_point(checkpoint, device, args.dataset, settings_given(args), args.recipe)
        except ResumeRefused as exc:
            raise UsageError(str(exc)) from None
        dataset, (_, settings) = saved["config"]["dataset"], run_settings(saved)
    else:
        dataset, saved = dataset_of(args), None
        model_settings, settings = resolve(settings_given(args), dataset, args.recipe)
        ddpm = new_model(model_settings, dataset, device)
    epochs = args.epochs or settings.epochs
    if saved is not None and saved["progress"]["epoch"] >= epochs:
        log.warning("Nothing to train: the run in %s is complete (%d of %d epochs); pass a larger --epochs "
                    "to train it further", checkpoint.parent, saved["progress"]["epoch"], epochs)
        return
    batch = settings.batch_size
    train_loader, val_loader = load_data(args, device, dataset, batch, settings.seed)
    parts = recommended_parts(device, ddpm) if args.fast else (args.fast_parts or frozenset())
    model = prepare_model(ddpm, parts)
    if distributed.is_distributed():
        model = DistributedDataParallel(ddpm, device_ids=[device.index] if device.type == "cuda" else None,
                                        forward_sync_buffers=False)  # the schedule buffers never change
    if "tensor_data" in parts:
        train_loader = to_tensor_loader(train_loader, device)
    optimizer = make_optimizer(ddpm.parameters(), settings.lr, parts)
    weighting = settings.loss_weighting
    loss_fn = loss_function(model, parts, device, batch, snr_gamma=None if weighting == "none" else settings.snr_gamma,
                            label_drop=settings.label_drop, v_error=weighting == "min-snr-v")
    scheduler, per_step = make_scheduler(optimizer, settings.lr_schedule, steps_per_epoch=len(train_loader),
                                         epochs=epochs, warmup_steps=settings.warmup_steps,
                                         lr_step=settings.lr_step, lr_gamma=settings.lr_gamma)
    train_args = dict(settings.record(), epochs=epochs, world_size=distributed.world_size(), fast_parts=sorted(parts),
                      recipe=saved["train_args"].get("recipe", "default") if saved else args.recipe or "default")
    state = TrainState(ddpm, optimizer, scheduler, scheduler_per_step=per_step, model=model, dataset=dataset,
                       ema=EMA(ddpm.backward_process_model, settings.ema_decay) if settings.ema_decay > 0 else None,
                       train_args=train_args)
    if saved is not None:
        continue_run(state, saved, parts, len(train_loader), used)
    n_params = sum(p.numel() for p in ddpm.parameters() if p.requires_grad)
    log.info("Training %s (%s UNet, %d trainable parameters) on %s (%s) for %d epochs: %d train / %d validation "
             "images, batch %d per process x %d processes = %d", dataset, ddpm.backward_process_model.config["arch"],
             n_params, device, describe(parts), epochs, len(train_loader.dataset), len(val_loader.dataset),
             batch, distributed.world_size(), batch * distributed.world_size())
    curves = out_dir / f"loss_curves_{dataset}.png"
    try:
        with StopRequest() as stop:
            training_loop(state, train_loader, val_loader, epochs, store_path=checkpoint, loss_curve_path=curves,
                          seed=settings.seed, should_stop=stop, loss_fn=loss_fn)
    finally:  # also after an interruption or a divergence: the history of the finished epochs
        if distributed.is_main_process() and state.history["train_loss"]:
            try:
                write_json(out_dir / f"history_{dataset}.json", state.history)
            except OutputError as exc:  # never hide the error that ended the run
                log.error("%s", exc)
    log.info("Best checkpoint: %s; loss curves: %s", checkpoint, curves)


def new_model(settings: ModelSettings, dataset: str, device: torch.device) -> DiffusionModel:
    """A fresh DDPM for ``dataset`` with the run's schedule and network settings."""
    try:
        ddpm = build_model(settings.model_config(dataset), device)
    except ValueError as exc:  # e.g. a --patch-size that does not tile the image
        size = dataset_info(dataset).image_size
        raise UsageError(f"{dataset} ({size}x{size}): {exc}") from None
    if ddpm.alpha_bars[-1].item() > 0.01:  # x_T keeps sqrt(alpha_bar_T) of the image: not pure noise
        log.warning("alpha_bar_T is %.3g with --timesteps %d and --beta-end %g: the last noised images keep much of "
                    "the image, so samples drawn from pure noise will be poor; raise --beta-end or --timesteps until "
                    "alpha_bar_T is near 0 (the paper's schedule: 4e-05)", ddpm.alpha_bars[-1].item(),
                    settings.timesteps, settings.beta_end)
    return ddpm


# --------------------------------------------------------------------------- --sample and --evaluate


def sample_images(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """Rebuild the model from its checkpoint and sample: Algorithm 2 (Figure 14), DDIM or DPM-Solver++."""
    ddpm, ckpt, sampler, used = open_model(args, device, checkpoint)
    dataset = ckpt["config"]["dataset"]
    labels, cols = requested_labels(args, ddpm, used)
    n_samples = args.n_samples if labels is None else len(labels)
    guidance, interval = guidance_of(args, ddpm, dataset, ckpt)
    grid_path = ensure_writable(out_dir / f"samples_{dataset}.png")
    gif = ensure_writable(Path(args.gif)) if args.gif else None  # a .gif (cli.py), never the grid's .png
    log.info("Sampling %d images from %s (%s, T=%d, %s%s) on %s", n_samples, used, dataset, ddpm.timesteps,
             sampler.name, "" if labels is None else f", {describe_guidance(guidance, interval)}", device)
    start = time.perf_counter()
    drawn = sample(ddpm, n_samples, device, sampler=sampler, seed=seed_of(args), labels=labels,
                   guidance=guidance, guidance_interval=interval, frames_per_gif=args.frames_per_gif if gif else 0,
                   batch_size=args.sample_batch)
    seconds = time.perf_counter() - start  # the drawing alone, not the writing of the figures
    if gif is not None:
        save_sampling_gif(drawn.frames, gif, args.display, cols)
    save_grid(drawn.raw, grid_path, args.display, cols)
    log.info("Sampled in %.2fs: grid %s%s", seconds, grid_path, f", GIF {gif}" if gif else "")


def score_samples(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """--evaluate: score --n-samples generated images with the offline judge; print the table, save JSON."""
    ddpm, ckpt, sampler, used = open_model(args, device, checkpoint)
    dataset, seed = ckpt["config"]["dataset"], seed_of(args)
    labels, _ = requested_labels(args, ddpm, used)  # a conditional model: every digit alike, or --digit's
    n = args.n_samples if labels is None else len(labels)
    guidance, interval = guidance_of(args, ddpm, dataset, ckpt) if labels is not None else (None, None)
    report_path = ensure_writable(out_dir / report_name(dataset, sampler.settings(), guidance, interval))
    if n < 2:
        raise UsageError("--evaluate needs --n-samples >= 2 (the Frechet distance fits a covariance)")
    if n <= 128:
        log.warning("--n-samples %d is not above the judge's 128 features: the Frechet distance is unreliable", n)
    # The validation set must be the one the model did not train on: the split seed of the training run.
    split_seed = ckpt.get("train_args", {}).get("seed", seed)
    train_loader, val_loader = load_data(args, device, dataset, seed=split_seed)
    if n > len(train_loader.dataset):
        raise UsageError(f"--n-samples {n} is more than the {len(train_loader.dataset)} training images")
    judge, judge_accuracy = load_or_train_judge(judge_cache(args.judge_dir, args.data_root, dataset, split_seed),
                                                train_loader, val_loader, device)
    val_features, _ = judge_outputs(judge, val_loader, device)
    real = torch.stack([train_loader.dataset[i][0] for i in range(n)])
    start = time.perf_counter()
    samples = sample(ddpm, n, device, sampler=sampler, seed=seed, labels=labels, batch_size=args.sample_batch,
                     guidance=1.0 if guidance is None else guidance, guidance_interval=interval).images
    seconds = time.perf_counter() - start
    steps = len(sampler.timesteps())
    rows = {f"generated ({sampler.name}, {steps} steps)": score(judge, samples, val_features, device),
            "real training images (floor)": score(judge, real, val_features, device)}
    log.info("Quality of %s (%s), %d samples drawn in %.1fs:\n%s", used, dataset, n, seconds,
             format_table(rows, judge_accuracy))
    if any(sum(row["mostly_white_classes"]) for row in rows.values()):
        log.info("Mostly white images, by the class the judge reads (0-9): %s", "; ".join(
            f"{name}: {' '.join(map(str, row['mostly_white_classes']))}" for name, row in rows.items()))
    report = dict(checkpoint=str(used), dataset=dataset, ema=not args.no_ema and "ema" in ckpt,
                  arch=ddpm.backward_process_model.config["arch"], sampler=sampler.settings(),
                  steps=steps, seed=seed, sampling_seconds=seconds,
                  judge_accuracy=judge_accuracy, rows=rows)
    if labels is not None:
        accuracy = requested_digit_accuracy(judge, samples, labels, device)
        accuracy["real_validation_per_class"] = per_class_accuracy(judge, val_loader, device)
        log.info("%s: the judge reads the requested digit in %.2f%% of the samples; per digit: %s "
                 "(real validation digits: %s)", describe_guidance(guidance, interval), 100 * accuracy["overall"],
                 *(" ".join("-" if a is None else f"{100 * a:.1f}" for a in accuracy[key])
                   for key in ("per_class", "real_validation_per_class")))
        report.update(guidance=guidance, guidance_interval=interval, requested_digit_accuracy=accuracy)
    if args.bpd_images > 0:
        report["likelihood_bound"] = bits_per_dim(ddpm, val_loader, args.bpd_images, seed=seed)
        log.info("Variational bound (Ho et al. Eq. 5) on %d validation images: %.4f bits/dim", args.bpd_images,
                 report["likelihood_bound"]["bits_per_dim"])
    write_json(report_path, report)
    log.info("Saved %s", report_path)


# --------------------------------------------------------------------------- --figures


def draw_figures(args: argparse.Namespace, device: torch.device, out_dir: Path) -> None:
    """The paper's data and forward-process figures (Figures 2/5, 7/8 and 9)."""
    dataset = dataset_of(args)
    try:
        model = ModelSettings(**{k: v for k, v in settings_given(args).items()
                                 if k in ("timesteps", "beta_start", "beta_end", "time_emb_dim") and v is not None})
    except SettingError as exc:
        raise UsageError(str(exc)) from None
    train_loader, val_loader = load_data(args, device, dataset)
    samples_path = out_dir / f"dataset_samples_{dataset}.png"
    save_dataset_samples(train_loader, val_loader, samples_path)
    size = dataset_info(dataset).image_size
    ddpm = DiffusionModel(torch.nn.Identity(), model.beta_start, model.beta_end, model.timesteps, device=device,
                          image_chw=(1, size, size))
    images = torch.stack([train_loader.dataset[i][0] for i in range(4)])
    forward_path = out_dir / f"forward_process_{dataset}.png"
    save_forward_process(ddpm, images, forward_path, seed=seed_of(args))
    embedding_path = out_dir / "positional_encoding_64.png"
    save_embedding_matrix(embedding_path, n=64, d=model.time_emb_dim)
    log.info("Figures: %s, %s, %s", samples_path, forward_path, embedding_path)


# --------------------------------------------------------------------------- helpers of the actions


def checkpoint_path(args: argparse.Namespace, out_dir: Path) -> Path:
    """--checkpoint, else ``OUT_DIR/ddpm_<dataset>.pt``; without --dataset, the one run in --out-dir.

    (A new training, or --figures alone, without --dataset: the default dataset.)
    """
    if args.checkpoint:
        return Path(args.checkpoint)
    figures_only = not (args.train or args.sample or args.evaluate or args.export or args.distill)
    if args.dataset or (args.train and not args.resume) or figures_only:
        return out_dir / f"ddpm_{args.dataset or DEFAULT_DATASET}.pt"
    return find_checkpoint(out_dir)


def user_message(exc: Exception) -> str:
    """The user-facing message of ``exc``; a DataLoader worker wraps it in a traceback, which is dropped."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in lines[0]:
        return lines[-1].split(": ", 1)[-1]  # "Dataset.DatasetError: <message>"
    return " ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
