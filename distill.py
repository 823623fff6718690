"""Progressive distillation (Salimans and Ho 2022, Algorithm 2): students that take half their teacher's steps.

    python main.py --distill --checkpoint runs/ddpm_mnist.pt     # 64 -> 32 -> 16 -> 8 -> 4 steps

Each round, a student initialised from the teacher learns to go in one deterministic DDIM step (Song et
al. 2021, Eq. 12 with eta = 0) from z_t to where two DDIM steps of the teacher go, t -> t' -> t'' on the
grid of ``samplers.distillation_grid``; then the student becomes the teacher and the steps halve again.
The student keeps the teacher's network and its v-prediction; ``samplers.DistilledSampler`` samples it
on the same grid.

* The loss is Salimans and Ho's truncated-SNR weighting, max(SNR_t, 1) |x~ - x^|^2, written on v: with
  x^ = alpha_t z_t - sigma_t v^, |x~ - x^|^2 = sigma_t^2 |v~ - v^|^2, so each image's error of v is
  weighted by max(alpha_t^2, sigma_t^2).
* Only a v-prediction teacher: from a noise prediction, x^ = (z_t - sigma_t eps^) / alpha_t multiplies the
  network's error by 1 / alpha_t, which is huge at the noisiest step where a few-step student starts
  (Salimans and Ho, section 4).
* The first teacher is the checkpoint's EMA weights (its raw ones without an EMA). Within a round the student
  has a fresh Adam whose learning rate decays linearly to 0, and an EMA of its weights (ema.py); the EMA
  weights are what the student's checkpoint samples with and what the next round starts from.
* A class-conditional teacher is distilled with its guidance (the dataset's default, ``sampling_setup.guidance_of``):
  round 1's target is the guided teacher's (Meng et al. 2023), so the student samples with one network pass a step
  and the guidance built in; later rounds learn the previous student unguided (guided again, W would compound).
* ``DistillRun`` holds what a run carries between updates; its ``save`` and ``restore`` make --resume
  continue exactly, mid-round included.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

import distributed
from checkpoint import load_checkpoint, load_for_sampling, save_checkpoint
from cli import UsageError, seed_of
from config import DistillSettings, SettingError, dataset_info, run_settings
from diffusion_model import DiffusionModel
from distributed import progress_bar
from ema import EMA
from fastpath import stack_dataset
from files import RunLock, remove_orphans, signals_deferred
from progress import duration
from samplers import describe_guidance, distillation_grid
from sampling_setup import guidance_of, load_data
from utils import StopRequest, TrainingDiverged, TrainingInterrupted, rng_state, set_rng_state

log = logging.getLogger("ddpm")

SAVE_EVERY = 200  # updates between two saves of the run's state (for --resume)
ESTIMATE_AFTER = 20  # updates timed before the log estimates the time the run takes


class DistillationDiverged(TrainingDiverged):
    """The distillation loss stopped being a finite number; the students of the finished rounds stay."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)  # the message is the distillation's, not TrainingDiverged's epoch line


class DistillationInterrupted(TrainingInterrupted):
    """A distillation stopped on request (SIGTERM, Ctrl-C); its state was saved to ``path``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.args = (f"distillation interrupted; its state was saved to {path}",)


# --------------------------------------------------------------------------- Algorithm 2's target and loss


def alpha_sigma(ddpm: DiffusionModel, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) of Eq. 4 per image, float64, shaped (N, 1, 1, 1).

    ``t`` holds 0-based steps; ``t = -1`` is the clean image (alpha 1, sigma 0).
    """
    alpha = torch.cat([ddpm.sqrt_alpha_bars.new_ones(1), ddpm.sqrt_alpha_bars])[t + 1]
    sigma = torch.cat([ddpm.sqrt_one_minus_alpha_bars.new_zeros(1), ddpm.sqrt_one_minus_alpha_bars])[t + 1]
    return alpha.double().reshape(-1, 1, 1, 1), sigma.double().reshape(-1, 1, 1, 1)


def ddim_jump(ddpm: DiffusionModel, z: torch.Tensor, t: torch.Tensor, t_to: torch.Tensor,
              eps: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step per image (Song et al. 2021, Eq. 12 with eta = 0) from ``t`` to ``t_to < t``.

    x^ = (z - sigma_t eps) / alpha_t (Eq. 4 solved for x_0), then z_to = alpha_to x^ + sigma_to eps; what
    ``DiffusionModel.ddim_step(ddim_eta=0)`` does for one step shared by the batch. ``t_to = -1``: x^ itself.
    """
    alpha, sigma = alpha_sigma(ddpm, t)
    alpha_to, sigma_to = alpha_sigma(ddpm, t_to)
    x_hat = (z - sigma * eps) / alpha
    return alpha_to * x_hat + sigma_to * eps


def teacher_eps(teacher: DiffusionModel, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                guidance: tuple[float, Any] | None) -> torch.Tensor:
    """The teacher's noise prediction at (z_t, t) in float64, guided by ``(W, interval)`` where t lies in the
    interval (every t when it is None) and plain conditional (W = 1) elsewhere, as ``utils.sample`` guides."""
    weight: torch.Tensor | float = 1.0
    if guidance is not None and y is not None:
        w, interval = guidance
        inside = torch.ones_like(t, dtype=torch.bool) if interval is None else (interval[0] <= t) & (t <= interval[1])
        weight = torch.where(inside, w, 1.0)
    with torch.no_grad():
        return teacher.guided_backward(z.float(), t, y, weight).double()


def distillation_target(teacher: DiffusionModel, z: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
                        t_end: torch.Tensor, y: torch.Tensor | None = None,
                        guidance: tuple[float, Any] | None = None) -> torch.Tensor:
    """Algorithm 2, lines 6-9: the v that takes z_t in one DDIM step to the teacher's two (float32, like ``z``).

    z_t' and z_t'' are the teacher's DDIM steps t -> t' -> t''; x~ = (z_t'' - (sigma_t''/sigma_t) z_t) /
    (alpha_t'' - (sigma_t''/sigma_t) alpha_t) is the x^ with which one step from t lands on z_t''; the
    target is v~ = alpha_t eps~ - sigma_t x~ with eps~ = (z_t - alpha_t x~) / sigma_t. At the end of the
    chain (t'' = -1: alpha 1, sigma 0) x~ is z_t'' itself. Computed in float64.
    """
    z64 = z.double()
    z_mid = ddim_jump(teacher, z64, t, t_mid, teacher_eps(teacher, z64, t, y, guidance))  # line 6: z_t'
    z_end = ddim_jump(teacher, z_mid, t_mid, t_end, teacher_eps(teacher, z_mid, t_mid, y, guidance))  # line 7
    alpha, sigma = alpha_sigma(teacher, t)
    alpha_end, sigma_end = alpha_sigma(teacher, t_end)
    ratio = sigma_end / sigma
    x_tilde = (z_end - ratio * z64) / (alpha_end - ratio * alpha)  # line 8: x~
    eps_tilde = (z64 - alpha * x_tilde) / sigma
    return (alpha * eps_tilde - sigma * x_tilde).to(z.dtype)  # v~ (Salimans and Ho, section 4)


def distillation_loss(teacher: DiffusionModel, student: DiffusionModel, x0: torch.Tensor, y: torch.Tensor | None,
                      n_steps: int, guidance: tuple[float, Any] | None = None, *, k: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """One batch of Algorithm 2 for an ``n_steps`` student: the truncated-SNR loss against the teacher's two steps.

    Per image: a boundary k ~ U{0..n-1} of the student's grid (t = s_k, t'' = s_{k+1}, t' the midpoint on
    the teacher's 2n-step grid), eps ~ N(0, I) and z_t = alpha_t x + sigma_t eps (line 5, Eq. 4); the
    student's raw v output against ``distillation_target``, each image's mean squared error weighted by
    max(alpha_t^2, sigma_t^2) (max(SNR, 1) on x, line 10). ``k`` and ``noise`` replace the draws (tests).
    """
    grid = torch.tensor(distillation_grid(student.timesteps, n_steps), device=x0.device)
    fine = torch.tensor(distillation_grid(student.timesteps, 2 * n_steps), device=x0.device)
    if k is None:
        k = torch.randint(0, n_steps, (x0.shape[0],), device=x0.device)
    t, t_mid, t_end = grid[k], fine[2 * k + 1], grid[k + 1]
    z, _ = student.add_noise(x0, t, torch.randn_like(x0) if noise is None else noise)
    target = distillation_target(teacher, z, t, t_mid, t_end, y, guidance)
    net = student.backward_process_model
    v_hat = net(z, t) if y is None else net(z, t, y)
    alpha, sigma = alpha_sigma(student, t)
    per_image = ((v_hat.float() - target) ** 2).flatten(1).mean(dim=1)
    assert per_image.shape == (x0.shape[0],)
    return (torch.maximum(alpha, sigma).square().flatten().float() * per_image).mean()


# --------------------------------------------------------------------------- the state of a distillation


@dataclass
class DistillRun:
    """Everything a distillation carries from one update to the next, with its update, save and restore.

    ``teacher`` and ``student`` are ``DiffusionModel``s of the same network; ``settings`` the plan;
    ``record`` what the students' ``config["distillation"]`` says (origin, teacher, guidance, finished
    rounds); ``guidance`` the teacher's (W, interval), None when unguided. ``round`` indexes
    ``settings.rounds()``; ``update`` counts its finished updates, ``seconds`` its time, ``recent`` its
    last losses (the round's final loss is their mean).
    """

    teacher: DiffusionModel
    student: DiffusionModel
    settings: DistillSettings
    record: dict[str, Any]
    config: dict[str, Any]
    train_args: dict[str, Any]
    batch_size: int
    ema_decay: float
    source: str
    guidance: tuple[float, Any] | None = None
    round: int = 0
    update: int = 0
    seconds: float = 0.0
    recent: list[float] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: LambdaLR | None = None
    ema: EMA | None = None

    @property
    def steps(self) -> int:
        """The sampling steps of this round's student."""
        return self.settings.rounds()[self.round]

    @property
    def round_guidance(self) -> tuple[float, Any] | None:
        """This round's guidance: ``guidance`` in round 1 (the trained teacher's), None after (built in)."""
        return self.guidance if self.round == 0 else None

    def start_round(self) -> None:
        """Algorithm 2, line 3: the student starts as the teacher, with a fresh Adam, its decay and EMA."""
        self.student.load_state_dict(self.teacher.state_dict())
        self.update, self.seconds, self.recent = 0, 0.0, []
        self._new_optimizer()

    def _new_optimizer(self) -> None:
        updates, lr = self.settings.of_round(self.round)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=lr)
        self.scheduler = LambdaLR(self.optimizer, lambda u: 1.0 - u / updates)  # linear decay to 0 in the round
        self.ema = EMA(self.student.backward_process_model, self.ema_decay) if self.ema_decay > 0 else None

    def step(self, x0: torch.Tensor, y: torch.Tensor | None) -> float:
        """One update (Algorithm 2, lines 4-11): the loss, and unless it is not finite, Adam and the EMA."""
        self.student.train()
        loss = distillation_loss(self.teacher, self.student, x0, y, self.steps, self.round_guidance)
        value = loss.item()
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.student.backward_process_model)
        self.update += 1
        self.recent = (self.recent + [value])[-max(1, self.settings.of_round(self.round)[0] // 10):]
        return value

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        """The student network's weights to sample with and to teach the next round: the EMA's, else its own."""
        return (self.ema.shadow if self.ema is not None else self.student.backward_process_model).state_dict()

    def student_config(self, rounds: list[dict[str, Any]]) -> dict[str, Any]:
        """The teacher's model config with this round's student record (``config["distillation"]``)."""
        return dict(self.config, distillation=dict(self.record, steps=self.steps, rounds=rounds))

    def save(self, path: Path) -> None:
        """Write the whole state to ``path`` (atomically; a Ctrl-C waits for it): what --resume continues."""
        state = dict(settings=asdict(self.settings), record=self.record, source=self.source,
                     batch_size=self.batch_size, ema_decay=self.ema_decay, guidance=self.guidance,
                     round=self.round, update=self.update, seconds=self.seconds, recent=self.recent,
                     teacher=self.teacher.backward_process_model.state_dict(), rng=rng_state(self.student.device),
                     optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        extra = dict(ema=self.ema.state_dict()) if self.ema is not None else {}
        with signals_deferred():
            save_checkpoint(path, self.student, self.student_config(self.record["rounds"]),
                            train_args=self.train_args, distill_state=state, **extra)

    @classmethod
    def restore(cls, path: Path, device: torch.device) -> "DistillRun":
        """The run ``save`` wrote to ``path``, its random state restored: it goes on as if never stopped."""
        student, ckpt = load_checkpoint(path, device)
        state = ckpt["distill_state"]
        teacher = copy.deepcopy(student).eval().requires_grad_(False)
        teacher.backward_process_model.load_state_dict(state["teacher"])
        config = {k: v for k, v in ckpt["config"].items() if k != "distillation"}
        run = cls(teacher, student, DistillSettings(**state["settings"]), state["record"], config,
                  ckpt.get("train_args", {}), state["batch_size"], state["ema_decay"], state["source"],
                  state["guidance"], state["round"], state["update"], state["seconds"], state["recent"])
        run._new_optimizer()
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        if run.ema is not None:
            run.ema.load_state_dict(ckpt["ema"])
        set_rng_state(state["rng"], device)
        return run

    def finish_round(self, path: Path) -> dict[str, Any]:
        """Save this round's student to ``path`` and make it the teacher (Algorithm 2, line 13); its record."""
        updates, lr = self.settings.of_round(self.round)
        done = dict(teacher_steps=2 * self.steps, steps=self.steps, updates=updates, lr=lr,
                    batch_size=self.batch_size, final_loss=sum(self.recent) / len(self.recent),
                    minutes=round(self.seconds / 60, 2))
        self.record = dict(self.record, rounds=self.record["rounds"] + [done])
        extra = dict(ema=self.ema.state_dict()) if self.ema is not None else {}
        save_checkpoint(path, self.student, self.student_config(self.record["rounds"]),
                        train_args=self.train_args, **extra)
        self.teacher.backward_process_model.load_state_dict(self.sampling_weights())
        self.round += 1
        return done


# --------------------------------------------------------------------------- --distill


def distill_run(args: argparse.Namespace, device: torch.device, checkpoint: Path, out_dir: Path) -> None:
    """--distill: every round from the plan's start down to --distill-steps, one student checkpoint per round.

    Holds --out-dir's ``RunLock``. The state is saved every ``SAVE_EVERY`` updates, at the end of each round
    and on SIGTERM / Ctrl-C (``DistillationInterrupted``) to ``OUT_DIR/distill_<name>_last.pt``, which
    --resume continues and the last round removes. A loss that is not finite ends the run with
    ``DistillationDiverged``; the students of the finished rounds stay.
    """
    if distributed.is_distributed():
        raise UsageError("--distill runs in one process: start it without torchrun")
    teacher, ckpt, used = load_for_sampling(checkpoint, device, use_ema=not args.no_ema)
    previous = ckpt["config"].get("distillation")
    stem = Path(previous["origin"]).stem if previous else used.stem
    state_path = out_dir / f"distill_{stem}_last.pt"
    with RunLock(out_dir):
        remove_orphans(out_dir)
        if args.resume:
            if not state_path.is_file():
                raise UsageError(f"no distillation to resume: {state_path} does not exist; start one without --resume")
            run = DistillRun.restore(state_path, device)
            refuse_changes(args, run, used)
            log.info("Resuming the distillation of %s from round %d, update %d", used, run.round + 1, run.update)
        else:
            run = new_run(args, teacher, ckpt, used, out_dir, stem, state_path)
        distill_rounds(args, run, device, out_dir, stem, state_path)
    state_path.unlink(missing_ok=True)


def new_run(args: argparse.Namespace, teacher: DiffusionModel, ckpt: dict[str, Any], used: Path, out_dir: Path,
            stem: str, state_path: Path) -> DistillRun:
    """The first round of a distillation of ``teacher`` (the checkpoint ``used``), its plan checked."""
    if teacher.prediction != "v":
        raise UsageError(f"{used} predicts the noise (eps): progressive distillation needs a v-prediction model, "
                         "since x_0 from eps divides the network's error by alpha_t, near 0 at the noisiest step "
                         "(Salimans and Ho 2022, section 4); train one with --prediction v (the default recipe)")
    previous = ckpt["config"].get("distillation")
    settings = plan(args, previous, teacher.timesteps, used)
    outputs = [out_dir / f"{stem}_distilled{n}.pt" for n in settings.rounds()] + [state_path]
    if not args.overwrite and any(p.exists() for p in outputs):
        raise UsageError(f"{next(p for p in outputs if p.exists())} exists: continue that distillation with "
                         "--resume, write into another --out-dir, or pass --overwrite to replace it")
    train_settings = run_settings(ckpt)[1]
    dataset = ckpt["config"]["dataset"]
    guidance = guidance_of(args, teacher, dataset) if teacher.num_classes and not previous else None
    record = dict(origin=previous["origin"] if previous else str(used), teacher=str(used),
                  teacher_weights="ema" if "ema" in ckpt and not args.no_ema else "raw",
                  guidance=guidance[0] if guidance else (previous or {}).get("guidance"),
                  guidance_interval=list(guidance[1]) if guidance and guidance[1] else
                  (previous or {}).get("guidance_interval"), rounds=(previous or {}).get("rounds", []))
    config = {k: v for k, v in ckpt["config"].items() if k != "distillation"}
    ema_decay = train_settings.ema_decay if args.ema_decay is None else args.ema_decay
    batch = args.batch_size or train_settings.batch_size or dataset_info(dataset).batch_size
    run = DistillRun(copy.deepcopy(teacher).eval().requires_grad_(False), teacher, settings, record, config,
                     ckpt.get("train_args", {}), batch, ema_decay, str(used.resolve()), guidance)
    run.start_round()
    return run


def plan(args: argparse.Namespace, previous: dict[str, Any] | None, timesteps: int, used: Path) -> DistillSettings:
    """The rounds asked for: from --distill-start (a student: its own steps) down to --distill-steps."""
    default = DistillSettings()
    steps = args.distill_steps or default.steps
    start = args.distill_start or default.start
    if previous:
        if args.distill_start not in (None, previous["steps"]):
            raise UsageError(f"{used} is a {previous['steps']}-step student: its distillation starts at its own "
                             "steps; drop --distill-start")
        start = previous["steps"]
        if steps >= start:
            fix = ("it cannot be halved further" if start == 1 else
                   f"pass a smaller power of two to halve it further, e.g. --distill-steps {start // 2}")
            raise UsageError(f"{used} is a {start}-step student, {'already at' if steps == start else 'below'} "
                             f"--distill-steps {steps}: {fix}")
    elif start > timesteps:
        raise UsageError(f"--distill-start {start} is more than the {timesteps} steps of {used}: pass at most "
                         f"{1 << (timesteps.bit_length() - 1)}")
    try:
        return DistillSettings(steps=steps, start=start, updates=args.distill_updates or default.updates,
                               lr=args.distill_lr or default.lr)
    except SettingError as exc:
        raise UsageError(str(exc)) from None


def refuse_changes(args: argparse.Namespace, run: DistillRun, used: Path) -> None:
    """--resume goes on with the run's plan: a different teacher or option is refused, every difference listed."""
    if run.source != str(used.resolve()):
        raise UsageError(f"the distillation to resume is of {run.source}, not of {used}: pass --checkpoint "
                         f"{run.source}, or start again without --resume and with --overwrite")
    recorded = asdict(run.settings)
    given = dict(steps=args.distill_steps, start=args.distill_start, updates=args.distill_updates,
                 lr=args.distill_lr)
    shown = lambda value: ",".join(map(str, value)) if isinstance(value, tuple) else value  # noqa: E731
    changed = [f"--distill-{k} {shown(value)} (the run: {shown(recorded[k])})" for k, value in given.items()
               if value is not None and value != recorded[k]]
    changed += [f"{flag} {value} (the run: {kept})" for flag, value, kept in
                (("--batch-size", args.batch_size, run.batch_size), ("--ema-decay", args.ema_decay, run.ema_decay))
                if value is not None and value != kept]
    if args.no_ema and run.record["teacher_weights"] == "ema":
        changed.append("--no-ema (the run: the teacher's EMA weights)")
    if changed:
        raise UsageError(f"cannot resume the distillation: {', '.join(changed)}; resume with the run's options")


def distill_rounds(args: argparse.Namespace, run: DistillRun, device: torch.device, out_dir: Path, stem: str,
                   state_path: Path) -> None:
    """The rounds left in ``run``: the updates of each (a progress bar), then its student saved and logged."""
    rounds = run.settings.rounds()
    train_loader, _ = load_data(args, device, run.config["dataset"],
                                seed=run.train_args.get("seed", seed_of(args)))  # the teacher's training split
    images, labels = (tensor.to(device) for tensor in stack_dataset(train_loader.dataset))
    updates = [run.settings.of_round(i)[0] for i in range(len(rounds))]
    log.info("Distilling %s (%s weights%s) on %s, %d training images: %d round(s), %s steps, %s updates at "
             "batch %d, Adam from %s decaying linearly to 0 in each round, EMA %g; each update: a student step "
             "and two teacher passes%s", run.record["teacher"], run.record["teacher_weights"],
             "" if run.guidance is None else f", {describe_guidance(*run.guidance)}", device, len(images),
             len(rounds), " -> ".join(map(str, [run.settings.start, *rounds])), "/".join(map(str, updates)),
             run.batch_size, "/".join(f"{lr:g}" for lr in run.settings.lr), run.ema_decay,
             "" if run.guidance is None else " (guided in round 1: two passes each)")
    timer = dict(start=time.perf_counter(), updates=0)
    with StopRequest() as stop:
        while run.round < len(rounds):
            n, total = run.steps, updates[run.round]
            for _ in progress_bar(range(run.update, total), desc=f"Round {run.round + 1}/{len(rounds)}: {2 * n} -> "
                                  f"{n} steps", initial=run.update, total=total, leave=False):
                one_update(run, images, labels, state_path, out_dir, stem)
                timer["updates"] += 1
                if timer["updates"] == ESTIMATE_AFTER:
                    left = total - run.update + sum(updates[run.round + 1:])
                    per_update = (time.perf_counter() - timer["start"]) / ESTIMATE_AFTER
                    log.info("%d updates in %.1fs: the %d updates left take about %s", ESTIMATE_AFTER,
                             per_update * ESTIMATE_AFTER, left, duration(per_update * left))
                if stop():
                    run.save(state_path)
                    raise DistillationInterrupted(state_path)
                if run.update % SAVE_EVERY == 0 and run.update < total:
                    run.save(state_path)
            path = out_dir / f"{stem}_distilled{n}.pt"
            done = run.finish_round(path)
            log.info("Round %d/%d: %d -> %d steps, %d updates, loss %.5f (mean of the last %d), %.1f minutes; "
                     "saved %s", run.round, len(rounds), 2 * n, n, done["updates"], done["final_loss"],
                     len(run.recent), run.seconds / 60, path)
            if run.round < len(rounds):
                run.start_round()
                run.save(state_path)


def one_update(run: DistillRun, images: torch.Tensor, labels: torch.Tensor, state_path: Path, out_dir: Path,
               stem: str) -> None:
    """One update on a batch drawn from the training images; a loss that is not finite ends the run."""
    start = time.perf_counter()
    index = torch.randint(0, len(images), (run.batch_size,), device=images.device)
    loss = run.step(images[index], labels[index] if run.student.num_classes else None)
    run.seconds += time.perf_counter() - start
    if math.isfinite(loss):
        return
    state_path.unlink(missing_ok=True)  # --resume would only repeat it
    kept = out_dir / f"{stem}_distilled{2 * run.steps}.pt"
    what = (f"the {2 * run.steps}-step student {kept} stays: distill it further" if kept.is_file() and run.round > 0
            else f"the teacher {run.record['teacher']} is untouched: distill it again")
    raise DistillationDiverged(f"distillation diverged: the loss is {loss} at update {run.update + 1} of round "
                               f"{run.round + 1} ({2 * run.steps} -> {run.steps} steps); {what} with a smaller "
                               f"--distill-lr (this round: {run.settings.of_round(run.round)[1]:g})")
