"""One training loop for vanilla, PAG, adversarial training (AT) and AT + PAG.

loss = CE(f(x'), y) + lam * mean_j (1 - cos(grad_x log p(t_j | x), g(x, t_j)))
where x' is x (vanilla, PAG) or its PGD adversary (AT), and the PAG term is always taken at the clean x.
TRADES replaces the CE at x' by CE(f(x), y) + beta * KL(f(x) || f(x')).

Runs on one process or, under torchrun, on several with DDP (`pagrob.distributed`), and checkpoints into
<run>/checkpoints (`pagrob.checkpoint`) so that a killed run resumed with `resume=True` ends bit-for-bit
where an uninterrupted one would on CPU.

`optim.precision=bf16` runs each step (forward, PAG double backward, adversary) under bfloat16 autocast and
`optim.memory_format=channels_last` lays out the model and batches for a GPU's fastest convolutions; the model
handed on to evaluation is float32 and contiguous either way.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob import checkpoint, console, distributed
from pagrob.accuracy import clean_accuracy
from pagrob.alignment import ALIGNMENT_IMAGES, alignment_score
from pagrob.attacks.adversaries import ADVERSARIES
from pagrob.attacks.pgd import PGD
from pagrob.config import Config, ConfigError, PagConfig, flatten, from_dict, save_config, to_dict
from pagrob.data import Dataset, load_dataset
from pagrob.data.augment import augment
from pagrob.devices import autocast, memory_format, resolve_device
from pagrob.errors import RunError
from pagrob.losses import pag_objective, sample_target_classes
from pagrob.parts import Adversary, assemble, check_against_data
from pagrob.runs import load_weights, model_spec, save_model, starting_point
from pagrob.schedules import Plan, lr_factor
from pagrob.targets import TargetSource, build_source, reference_source_name

CHECKPOINTS = "checkpoints"  # subfolder of a run with its crash-safe checkpoints
PGD_CHECK_IMAGES = 200  # the per-epoch PGD check: this many evaluation images, ...
PGD_CHECK_STEPS = 10  # ... this many steps at the run's training norm and eps
# optim.minutes: steps taken to measure the step time, the first ones not counted; the median of the rest (3 steps
# averaged planned 79 and 101 steps for two identical 1-minute runs on a shared 2-core CPU)
UNTIMED_STEPS, TIMED_STEPS = 2, 7


def lam_at(pag: PagConfig, epoch: int, epochs: int) -> float:
    """The PAG weight in 0-based `epoch`: lam x lam_warmup_scale during the warm-up fraction (authors' ViT: 2/3
    for the first half, which they found stabilises training), lam after."""
    return pag.lam * (pag.lam_warmup_scale if epoch < pag.lam_warmup_fraction * epochs else 1.0)


@dataclass
class Step:
    """What every training step of a run shares besides the model and the batch."""

    cfg: Config
    source: TargetSource | None
    adversary: Adversary | None
    num_classes: int
    generator: torch.Generator  # this rank's stream for per-image draws: target classes, noise, augmentation
    aug_mode: str


def train_step(model: nn.Module, x: Tensor, y: Tensor, index: Tensor, step: Step, lam: float | None = None
               ) -> tuple[Tensor, dict[str, float]]:
    """The loss of one batch (training-set positions `index`) and its parts for logging. `lam` (default
    cfg.pag.lam) is this epoch's PAG weight.

    PGD-AT: CE at the adversary. TRADES: CE at x + beta * KL(p(x) || p(x')). The PAG term is taken at x, or
    at x + N(0, pag.noise^2 I) with the targets queried there too (the noise is cropped and flipped with x).
    """
    cfg, source, adversary, generator, aug_mode = step.cfg, step.source, step.adversary, step.generator, step.aug_mode
    num_classes = step.num_classes
    lam = cfg.pag.lam if lam is None else lam
    targets = classes = noise = None
    if source is not None and lam > 0:
        classes = sample_target_classes(len(x), num_classes, cfg.pag.k, generator, x.device)
        if cfg.pag.noise > 0:
            noise = cfg.pag.noise * torch.randn(x.shape, generator=generator).to(x.device)
        targets = source(x if noise is None else x + noise, classes, index)
    if noise is None:
        x, targets = augment(x, aug_mode, generator, targets)
    else:
        x, both = augment(x, aug_mode, generator, torch.cat([targets, noise[:, None]], 1))
        targets, noise = both[:, :-1], both[:, -1]
    x = x.contiguous(memory_format=memory_format(cfg.optim.memory_format))
    x_adv = None
    if adversary is not None:
        model.eval()
        x_adv = adversary(x, y)
        model.train()
    trades = adversary is not None and ADVERSARIES[cfg.adv.method].trades
    parts: dict[str, float] = {}
    logits_clean = None
    if targets is not None:
        at = x if noise is None else x + noise
        logits_at, pag, cos = pag_objective(model, at, targets, classes, cfg.pag.step)
        logits_clean = logits_at if noise is None else None  # the cross-entropy is taken at the clean images
        parts["pag"], parts["cos"] = pag.item(), cos.mean().item()
    else:
        pag = torch.zeros((), device=x.device)
    if logits_clean is None and (x_adv is None or trades):
        logits_clean = model(x)
    logits_adv = model(x_adv) if x_adv is not None else None
    robust = torch.zeros((), device=x.device)
    if trades:
        robust = F.kl_div(F.log_softmax(logits_adv, 1), F.log_softmax(logits_clean, 1), reduction="batchmean",
                          log_target=True)
        parts["kl"] = robust.item()
    logits = logits_clean if trades or logits_adv is None else logits_adv
    ce = F.cross_entropy(logits, y)
    loss = ce + cfg.adv.trades_beta * robust + lam * pag
    parts.update(loss=loss.item(), ce=ce.item(), acc=(logits.argmax(1) == y).float().mean().item())
    return loss, parts


@dataclass
class Progress:
    """Where training stands, beyond the model, optimizer and scheduler: what a resume needs to carry on exactly."""

    epoch: int = 0  # epochs finished
    batch: int = 0  # position in this epoch's permutation where the next global batch starts
    step: int = 0  # optimizer steps taken
    order: Tensor | None = None  # this epoch's permutation, once drawn
    sums: dict[str, float] = field(default_factory=dict)  # this rank's logged parts, summed over the epoch
    rows: list[dict] = field(default_factory=list)  # metrics of the finished epochs
    seconds: float = 0.0  # training time spent before this process started (checks included)
    check_seconds: float = 0.0  # of which in the per-epoch checks (not training steps)


@dataclass
class Trained:
    model: nn.Module  # unwrapped, eval mode
    arch: str
    align_source: TargetSource
    seconds: float  # in training steps (and checkpoints): the per-epoch checks are in check_seconds
    data: Dataset | None = None  # the dataset on the run's device (set by `train`)
    init: dict | None = None  # the run it was fine-tuned from (folder, weights' sha256), when it was
    plan: dict = field(default_factory=dict)  # planned_steps, step_seconds_estimate (measured for optim.minutes)
    check_seconds: float = 0.0

    def facts(self) -> dict:
        """What results.json records of the training beside the evaluation: train_minutes counts the training
        steps only, so runs with more epochs (more per-epoch checks) are not charged for their diagnostics."""
        return {**({"init": self.init} if self.init else {}), **self.plan, "train_minutes": self.seconds / 60,
                "check_minutes": self.check_seconds / 60}


def _stream_seed(seed: int, rank: int, stream: int) -> int:
    """Seeds of this rank's random streams: distinct per rank and per stream, fixed by the run's seed."""
    return seed * 1_000_003 + 1_000 * rank + stream


def _batch_starts(n: int, batch_size: int, world: int) -> list[int]:
    """Start of every global batch of an epoch; a last batch smaller than the number of processes is dropped."""
    return [i for i in range(0, n, batch_size) if min(batch_size, n - i) >= world]


def _note(message: str) -> None:
    console.line(f"pagrob: {message}")


def _config_differences(saved: dict, cfg: Config) -> list[str]:
    """'key: saved -> now' for every key (device aside: a run may move machines) that differs from the checkpoint's.
    Keys an older checkpoint lacks count as their defaults."""
    old, new = (flatten(json.loads(json.dumps(to_dict(c)))) for c in (from_dict(saved), cfg))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k != "device" and old.get(k) != new.get(k)]


@dataclass
class _Saved:
    """What a checkpoint holds besides the progress: weights, optimizer, schedule and random streams, and where
    it goes."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    order_gen: torch.Generator
    draw_gen: torch.Generator
    cfg: Config
    ctx: distributed.Context
    folder: Path
    plan: dict  # planned steps and the step-time estimate: a resumed run keeps them


def _save_checkpoint(s: _Saved, prog: Progress, seconds: float) -> None:
    """Every rank calls this (it gathers their random states and sums); rank 0 writes the checkpoint.

    Weights that are no longer finite are never checkpointed: the last good checkpoint stays the newest.
    """
    model, opt, sched, order_gen, draw_gen, cfg, ctx, folder = (s.model, s.opt, s.sched, s.order_gen, s.draw_gen,
                                                                 s.cfg, s.ctx, s.folder)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise _nonfinite("the weights became NaN or Inf", prog.step, prog.epoch + (1 if prog.batch else 0), folder)
    rng = {"rng.draw": distributed.gather(draw_gen.get_state(), ctx),
           "rng.torch": distributed.gather(torch.get_rng_state(), ctx)}
    if ctx.device.type == "cuda":
        rng["rng.cuda"] = distributed.gather(torch.cuda.get_rng_state(ctx.device), ctx)
    keys = list(prog.sums)  # the same order on every rank: the same code inserted them
    sums = distributed.gather(torch.tensor([prog.sums[k] for k in keys], dtype=torch.float64), ctx) if keys else []
    if not ctx.main:
        return
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(rng)
    tensors["rng.order"] = order_gen.get_state()
    if prog.order is not None:
        tensors["order"] = prog.order
    state = {"epoch": prog.epoch, "batch": prog.batch, "step": prog.step, "world": ctx.world,
             "sums": [dict(zip(keys, row)) for row in sums.tolist()] if keys else [{}] * ctx.world,
             "rows": prog.rows, "seconds": seconds, "check_seconds": prog.check_seconds, "config": to_dict(cfg),
             "plan": s.plan,
             "optimizer": checkpoint.encode(opt.state_dict(), tensors, "optimizer"),
             "scheduler": checkpoint.encode(sched.state_dict(), tensors, "scheduler")}
    checkpoint.save(folder, prog.step, tensors, state)


def _restore(found: tuple[dict[str, Tensor], dict], s: _Saved) -> Progress:
    """Load a checkpoint into the fresh model, optimizer, scheduler and random streams; return its progress."""
    tensors, state = found
    model, opt, sched, order_gen, draw_gen, cfg, ctx, folder = (s.model, s.opt, s.sched, s.order_gen, s.draw_gen,
                                                                 s.cfg, s.ctx, s.folder)
    if state["world"] != ctx.world:
        raise RunError(f"the checkpoint in {folder} was written by {state['world']} processes, this run has "
                       f"{ctx.world}; resume with --nproc {state['world']}")
    changed = _config_differences(state["config"], cfg)
    if changed:
        raise ConfigError(f"the run in {folder.parent} was trained with another config ({'; '.join(changed)}); "
                          "resume with its own config (--resume alone reads config.yaml) or train into a new --out")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt.load_state_dict(checkpoint.decode(state["optimizer"], tensors))
    if "plan" in state:
        sched.load_state_dict(checkpoint.decode(state["scheduler"], tensors))
    else:  # written before schedules counted steps (an epoch-counting MultiStepLR): the step count is the state
        sched.last_epoch = state["step"]
    # clone(): set_state misreads a row view (storage offset) of the stacked per-rank states, and crashes
    order_gen.set_state(tensors["rng.order"].clone())
    draw_gen.set_state(tensors["rng.draw"][ctx.rank].clone())
    torch.set_rng_state(tensors["rng.torch"][ctx.rank].clone())
    if "rng.cuda" in tensors and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"][ctx.rank].clone(), ctx.device)
    return Progress(state["epoch"], state["batch"], state["step"], tensors.get("order"), state["sums"][ctx.rank],
                    state["rows"], state["seconds"], state.get("check_seconds", 0.0))


def _start_folder(out: Path, cfg: Config, prog: Progress, resumed: bool) -> None:
    """A fresh run writes its config and forgets old results; either way metrics.jsonl holds exactly `prog.rows`."""
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        save_config(cfg, out / "config.yaml")
        (out / "results.json").unlink(missing_ok=True)
    checkpoint.atomic_write(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in prog.rows).encode())


def _nonfinite(what: str, step: int, epoch: int, folder: Path) -> RunError:
    last = checkpoint.records(folder)
    kept = f"the last good checkpoint, {last[0].name}, is kept in {folder}" if last else "no checkpoint was written yet"
    return RunError(f"{what} at step {step} (epoch {epoch}): training stopped and {kept}. "
                    "Lower optim.lr (or pag.lam), check the data, and train again into a new --out")


def pgd_check(model: nn.Module, data: Dataset, cfg: Config) -> float:
    """Accuracy under 10-step PGD at the training norm and eps (adv.norm, adv.eps) on the first 200 evaluation
    images, the same start noise every epoch. A single-step run's catastrophic overfitting shows here, within an
    epoch, as this falling toward 0 while its accuracy under its own training attack rises."""
    x, y = data.x_test[:PGD_CHECK_IMAGES], data.y_test[:PGD_CHECK_IMAGES]
    attack = PGD(model, cfg.adv.norm, cfg.adv.eps, PGD_CHECK_STEPS, bounds=data.bounds,
                 generator=torch.Generator().manual_seed(cfg.seed))
    return clean_accuracy(model, attack(x, y), y)


def _epoch_row(model: nn.Module, data: Dataset, align_source: TargetSource, epoch: int, means: dict[str, float],
               lr: float, seconds: float, cfg: Config) -> dict:
    """One line of metrics.jsonl: the epoch's mean training parts, test accuracy, accuracy under the PGD check
    and alignment, lr, time."""
    model.eval()
    return {"epoch": epoch, **{f"train_{k}": v for k, v in means.items()},
            "test_accuracy": clean_accuracy(model, data.x_test, data.y_test),
            "test_pgd_accuracy": pgd_check(model, data, cfg),
            "test_alignment": alignment_score(model, data.x_test[:ALIGNMENT_IMAGES], align_source, data.num_classes),
            "lr": lr, "seconds": seconds}


def _time_steps(model: nn.Module, opt: torch.optim.Optimizer, data: Dataset, step: Step, ctx: distributed.Context
                ) -> float:
    """Seconds per optimizer step on this process's share of the first batch: the median of TIMED_STEPS steps after
    UNTIMED_STEPS (allocations, kernel choice), averaged over the processes. The weights, optimizer and random
    streams are put back afterwards: the timing changes nothing the run then does."""
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    streams = step.generator.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda" else None
    sync = (lambda: torch.cuda.synchronize(ctx.device)) if cuda is not None else (lambda: None)
    first = torch.arange(min(step.cfg.optim.batch_size, len(data.x_train)), device=ctx.device)
    local = distributed.local_slice(first, ctx)
    model.train()
    times = []
    for _ in range(UNTIMED_STEPS + TIMED_STEPS):
        sync()
        start = time.perf_counter()
        with autocast(ctx.device, step.cfg.optim.precision):  # timed as training runs it
            loss, _ = train_step(model, data.x_train[local], data.y_train[local], local, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[UNTIMED_STEPS:])
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    step.generator.set_state(streams[0])
    torch.set_rng_state(streams[1])
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, ctx.device)
    return distributed.mean_over_ranks({"seconds": seconds}, ctx)["seconds"]


def plan_steps(cfg: Config, per_epoch: int, saved: dict | None, measure: Callable[[], float]) -> dict:
    """{"planned_steps", "step_seconds_estimate"}: a checkpoint's plan when resuming; else optim.steps, or as many
    steps as optim.minutes allow at the step time `measure()` returns, or optim.epochs full epochs. A minutes plan
    also records `timing_seconds`, the wall time the measurement took (not part of train_minutes)."""
    if saved:
        return saved
    if cfg.optim.steps:
        return {"planned_steps": cfg.optim.steps, "step_seconds_estimate": None}
    if cfg.optim.minutes:
        start = time.perf_counter()
        seconds = measure()
        return {"planned_steps": max(1, int(cfg.optim.minutes * 60 / seconds)), "step_seconds_estimate": seconds,
                "timing_seconds": time.perf_counter() - start}
    return {"planned_steps": cfg.optim.epochs * per_epoch, "step_seconds_estimate": None}


def fit(cfg: Config, data: Dataset, out: Path, ctx: distributed.Context | None = None, progress: bool = True,
        resume: bool = False) -> Trained:
    """The training loop alone, on this process's share of each global batch.

    Checkpoints go to out/checkpoints every optim.checkpoint_every steps and after every epoch; with `resume`
    the newest good one is loaded first, so a killed run carries on exactly where that checkpoint left it.
    """
    ctx = ctx or distributed.Context(resolve_device(cfg.device))
    if cfg.optim.batch_size < ctx.world:
        raise ConfigError(f"optim.batch_size = {cfg.optim.batch_size} is the global batch and must be at least the "
                          f"number of processes ({ctx.world})")
    torch.manual_seed(cfg.seed)
    # One permutation stream shared by all ranks; per-rank streams for per-image draws (target classes,
    # augmentation, attack starts) and for the global generator (dropout).
    order_gen = torch.Generator().manual_seed(cfg.seed)
    draw_gen = torch.Generator().manual_seed(_stream_seed(cfg.seed, ctx.rank, 1))
    built = assemble(cfg, data, ctx.device, draw_gen)
    model, opt, source = built.model, built.optimizer, built.source
    init = None
    if cfg.init:  # fine-tuning: the weights (normalisation layer included) of the run it starts from
        state, init = starting_point(cfg.init)
        load_weights(model, state, f"the weights of --init {cfg.init}")
    model.to(memory_format=memory_format(cfg.optim.memory_format))
    align_source = source or build_source(reference_source_name(data.name), cfg.pag, data).to(ctx.device)
    data = data.to(ctx.device)
    step = Step(cfg, source, built.adversary, data.num_classes, draw_gen, built.aug_mode)
    n = len(data.x_train)
    starts = _batch_starts(n, cfg.optim.batch_size, ctx.world)
    folder = out / CHECKPOINTS
    found = checkpoint.latest(folder) if resume else None
    planned = plan_steps(cfg, len(starts), found[1].get("plan") if found else None,
                         lambda: _time_steps(model, opt, data, step, ctx))
    plan = Plan(planned["planned_steps"], len(starts), tuple(cfg.optim.milestones), cfg.optim.warmup)
    epochs = math.ceil(plan.total / plan.per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.optim.schedule, s, plan))
    torch.manual_seed(_stream_seed(cfg.seed, ctx.rank, 2))

    saved = _Saved(model, opt, sched, order_gen, draw_gen, cfg, ctx, folder, planned)
    prog = Progress()
    if found is not None:
        prog = _restore(found[:2], saved)
        if ctx.main:
            _note(f"resuming {cfg.name} at step {prog.step} of {plan.total} from {folder}")
            for warning in found[2]:
                _note(warning)
            checkpoint.discard_after(folder, prog.step)
    elif resume and ctx.main:
        _note(f"no checkpoint in {folder}: training {cfg.name} from the start")
    if ctx.main:
        _start_folder(out, cfg, prog, found is not None)

    ddp = distributed.wrap(model, ctx)
    every = cfg.optim.checkpoint_every
    start = time.perf_counter() - prog.seconds
    writer = _summary_writer(out, prog.epoch + 1) if ctx.main else None
    metrics_file = open(out / "metrics.jsonl", "a") if ctx.main else None
    try:
        while prog.epoch < epochs:
            epoch = prog.epoch
            model.train()
            if prog.order is None:
                prog.order = torch.randperm(n, generator=order_gen)
            order = prog.order.to(ctx.device)
            lam = lam_at(cfg.pag, epoch, epochs)
            todo = [i for i in starts if i >= prog.batch][:plan.total - prog.step]
            bar = console.bar(todo, enabled=progress and ctx.main, total=len(starts), initial=len(starts) - len(todo),
                              desc=f"{cfg.name} epoch {epoch + 1}/{epochs}", leave=False)
            for i in bar:
                idx = order[i:i + cfg.optim.batch_size]
                local = distributed.local_slice(idx, ctx)
                with autocast(ctx.device, cfg.optim.precision):
                    loss, parts = train_step(ddp, data.x_train[local], data.y_train[local], local, step, lam=lam)
                if distributed.any_rank(not math.isfinite(parts["loss"]), ctx):
                    value = parts["loss"] if not math.isfinite(parts["loss"]) else "NaN or Inf in another process"
                    raise _nonfinite(f"the training loss became {value}", prog.step + 1, epoch + 1, folder)
                opt.zero_grad(set_to_none=True)
                # DDP averages the ranks' gradients; weighting by the rank's share makes that the global-batch mean.
                (loss * (len(local) * ctx.world / len(idx))).backward()
                opt.step()
                sched.step()
                for k, v in parts.items():
                    prog.sums[k] = prog.sums.get(k, 0.0) + v
                prog.step, prog.batch = prog.step + 1, i + cfg.optim.batch_size
                bar.set_postfix(loss=f"{parts['loss']:.3f}")
                if every and prog.step % every == 0 and i != starts[-1]:
                    _save_checkpoint(saved, prog, time.perf_counter() - start)
            done = sum(i < prog.batch for i in starts)  # every batch, except in a last epoch the plan cuts short
            means = distributed.mean_over_ranks({k: v / done for k, v in prog.sums.items()}, ctx)
            checking = time.perf_counter()
            if ctx.main:
                row = _epoch_row(model, data, align_source, epoch + 1, means, opt.param_groups[0]["lr"],
                                 time.perf_counter() - start, cfg)
                prog.rows.append(row)
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                for k, v in row.items():
                    if k != "epoch" and writer is not None:
                        writer.add_scalar(k, v, epoch + 1)
                console.line(f"{cfg.name} epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.3f} "
                             f"test acc {row['test_accuracy']:.3f} pgd-{PGD_CHECK_STEPS} acc "
                             f"{row['test_pgd_accuracy']:.3f} alignment {row['test_alignment']:.3f}", progress)
            prog.epoch, prog.batch, prog.order, prog.sums = epoch + 1, 0, None, {}
            prog.check_seconds += time.perf_counter() - checking  # recorded by the checkpoint
            _save_checkpoint(saved, prog, time.perf_counter() - start)
    finally:
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
    # evaluation sees the same float32, contiguous model whatever the training's precision and layout
    model.to(memory_format=torch.contiguous_format)
    total = time.perf_counter() - start
    return Trained(model.eval(), built.arch, align_source, total - prog.check_seconds, init=init, plan=planned,
                   check_seconds=prog.check_seconds)


def finished(out: Path) -> bool:
    """A run folder whose training and evaluation completed: results.json written, checkpoints cleared."""
    return (out / "results.json").is_file() and not checkpoint.records(out / CHECKPOINTS)


def train(cfg: Config, out: Path, progress: bool = True, data: Dataset | None = None, resume: bool = False
          ) -> Trained | None:
    """Train and save the weights into the run folder `out`; evaluation is `pagrob.evaluate`'s (see
    `pagrob.pipeline`). Returns the trained model on the process that writes, None on the others.

    Under torchrun (any WORLD_SIZE, 1 included) each process trains its slice of every global batch with DDP and rank 0
    alone writes. `resume` continues from the newest good checkpoint in `out`. The checkpoints stay until the
    run's evaluation is written, so a run killed while being evaluated resumes too.
    """
    device = resolve_device(cfg.device)
    if not resume and checkpoint.records(out / CHECKPOINTS):
        raise RunError(f"{out} holds an unfinished run (checkpoints in {out / CHECKPOINTS}); continue it with "
                       "--resume, or train into another --out")
    data = data or load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download, cfg.data.holdout,
                                cfg.data.train_n)
    check_against_data(cfg, data)
    ctx = distributed.start(device)
    try:
        trained = fit(cfg, data, out, ctx, progress, resume)
        spread = distributed.parameter_spread(trained.model, ctx)
    except BaseException:
        distributed.stop(ctx, failed=True)
        raise
    distributed.stop(ctx)
    if spread > 0:
        raise RunError(f"the {ctx.world} processes ended with different weights (largest difference {spread:g}); "
                       "this is a bug in distributed training")
    if not ctx.main:
        return None
    trained.data = data.to(ctx.device)
    save_model(trained.model, out, model_spec(trained.arch, data.input_shape, data.num_classes, cfg.model.width,
                                              cfg.model.args))
    return trained


def _summary_writer(out: Path, first_epoch: int):
    """TensorBoard events from `first_epoch` on; a resumed run drops the events it is about to write again."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
        return None
    return SummaryWriter(str(out), purge_step=first_epoch if first_epoch > 1 else None)
