"""Train a class-conditional noise-prediction model with label dropout; resumable from its checkpoint.

loss = || eps_hat(alpha_t u + sigma_t eps, t, y') - eps ||^2 with y' = null with probability `label_dropout`,
so one network learns eps(u_t, t, y) and the unconditional eps(u_t, t, null).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pagrob import console
from pagrob.data import Dataset
from pagrob.diffusion.models import META_FILE, EDMScore, ScoreModel, ScoreModelError, ToyScoreMLP, UNetScore
from pagrob.files import write_json

CHECKPOINT = "checkpoint.pt"
TRAIN_CONFIG = "train_config.json"
PROGRESS = "progress.json"
SAVE_SECONDS = 120  # a checkpoint at least this often, so a kill loses at most two minutes
LINE_SECONDS = 60  # off a terminal, a progress line at least this often
BUDGET_KEYS = ("steps", "minutes")  # may change between invocations: more of either trains further


@dataclass
class ScoreTrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 0  # 0: 128 for the toy MLP, 32 for the UNet's first level
    label_dropout: float = 0.2
    ema: float = 0.999
    seed: int = 0
    # Timesteps trained on, inclusive; -1: the schedule's end. SBG queries one timestep, so a band around it
    # concentrates the whole budget where the score is used.
    t_min: int = 0
    t_max: int = -1
    reference: int = 0  # > 0: stable targets over this many reference images per step (less variance)
    # Noise levels (data units, as pag.sigma) of an EDM UNet trained at these only; empty: the DDPM UNet (images)
    # or the toy MLP (points) over the timestep band.
    sigmas: list[float] = field(default_factory=list)
    minutes: float = 0.0  # > 0: stop after this much training time, summed over resumed invocations
    # Recorded, not applied (the caller loads the data): the training images held out (never seen) and the first
    # train_n kept (0: all), so a comparison computes the exact targets from the same training images.
    holdout: int = 0
    train_n: int = 0

    def __post_init__(self) -> None:
        self.sigmas = [float(s) for s in self.sigmas]
        if any(s <= 0 for s in self.sigmas) or min(self.minutes, self.holdout, self.train_n) < 0:
            raise ScoreModelError(f"score-model training needs sigmas > 0 and minutes, holdout, train_n >= 0, got "
                                  f"{self.sigmas}, {self.minutes}, {self.holdout}, {self.train_n}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.width < 0 or self.reference < 0:
            raise ScoreModelError("score-model training needs steps >= 1, batch size >= 1, lr > 0, width >= 0 and "
                                  "reference >= 0")
        if self.t_min < 0 or (self.t_max != -1 and self.t_max < self.t_min):
            raise ScoreModelError(f"the timestep band needs 0 <= t_min <= t_max (or t_max = -1), got "
                                  f"{self.t_min}..{self.t_max}")
        if not 0 <= self.label_dropout < 1 or not 0 <= self.ema < 1:
            raise ScoreModelError(f"label dropout and EMA decay must lie in [0, 1), got {self.label_dropout}, "
                                  f"{self.ema}")


def build_score_model(data: Dataset, width: int = 0, sigmas: list[float] = ()) -> ScoreModel:
    """A toy MLP for points, a UNet for images (our EDM one when trained at given noise levels `sigmas`); data
    scaled to unit spread (points) or [-1, 1] (images)."""
    if sigmas:
        if not data.is_image:
            raise ScoreModelError(f"--sigmas trains an image model; {data.name} is not images (leave --sigmas out)")
        return EDMScore(data.num_classes, data.input_shape, sigmas, width or 32, data.name)
    if data.is_image:
        return UNetScore.create(data.num_classes, data.input_shape, width or 32, data.name)
    offset = float(data.x_train.mean())
    scale = float((data.x_train - offset).std())
    return ToyScoreMLP(data.num_classes, data.input_shape, offset, scale, width or 128, data.name)


def sample_timesteps(model: ScoreModel, n: int, band: tuple[int, int], generator: torch.Generator) -> Tensor:
    """Timesteps in band (inclusive): uniform for DDPM; log-uniform in sigma for the VE toy model, whose sigma is
    proportional to t + 1 and spans three decades."""
    lo, hi = band
    u = torch.rand(n, generator=generator)
    if isinstance(model, ToyScoreMLP):
        t = torch.exp(math.log(lo + 1) + u * (math.log(hi + 1) - math.log(lo + 1))) - 1
    else:
        t = lo + u * (hi - lo + 1)
    return t.long().clamp(lo, hi)


def stable_target(u_t: Tensor, alpha: Tensor, sigma: Tensor, labels: Tensor, null: int, refs: Tensor,
                  ref_labels: Tensor) -> Tensor:
    """Reduced-variance eps target (Stable Target Field, Xu et al. ICLR 2023): (u_t - alpha E[u | u_t]) / sigma with
    E[u | u_t] the posterior mean over reference clean points `refs` (B + R, ...) of the sample's label (all of
    them for null). refs starts with the batch's own clean points, so every sample has its source among them."""
    flat, refs = u_t.flatten(1), refs.flatten(1)
    a, s = alpha.flatten()[:, None], sigma.flatten()[:, None]
    # -|u_t - a r|^2 / 2s^2 without the term shared by a row (|u_t|^2), so no (B, R, D) tensor is formed.
    logits = (2 * a * flat @ refs.T - a ** 2 * refs.pow(2).sum(1)[None]) / (2 * s ** 2)
    allowed = (labels[:, None] == null) | (ref_labels[None] == labels[:, None])
    weights = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
    return ((flat - a * (weights @ refs)) / s).view_as(u_t)


def diffusion_loss(model: ScoreModel, x: Tensor, y: Tensor, label_dropout: float, band: tuple[int, int],
                   generator: torch.Generator, reference: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Mean squared eps error of one batch, with labels dropped to null at rate `label_dropout`.

    With `reference` (clean images and labels), the target is the stable target over the batch plus those
    images instead of the drawn noise itself: the same minimiser, far less variance per step.
    """
    n, dev = len(x), x.device
    t = sample_timesteps(model, n, band, generator).to(dev)
    eps = torch.randn(x.shape, generator=generator).to(dev)
    drop = (torch.rand(n, generator=generator) < label_dropout).to(dev)
    labels = torch.where(drop, torch.full_like(y, model.null_label), y)
    alpha, sigma = (s.view(-1, *[1] * (x.dim() - 1)) for s in model.alpha_sigma(t))
    u = model.to_model_space(x)
    u_t = alpha * u + sigma * eps
    target = eps
    if reference is not None:
        refs = torch.cat([u, model.to_model_space(reference[0])])
        target = stable_target(u_t, alpha, sigma, labels, model.null_label, refs, torch.cat([y, reference[1]]))
    return (model.predict_eps(u_t, t, labels) - target).pow(2).mean()


def _check_resume(out: Path, settings: dict) -> None:
    """Refuse to continue a checkpoint under other settings (a key it predates counts as its default)."""
    saved = {**asdict(ScoreTrainConfig()), **json.loads((out / TRAIN_CONFIG).read_text())}
    differs = {k: (saved.get(k), v) for k, v in settings.items() if k not in BUDGET_KEYS and saved.get(k) != v}
    if differs:
        what = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in differs.items())
        raise ScoreModelError(f"{out} holds a score model trained with other settings ({what}); use another --out "
                              "or the same settings")


@contextmanager
def small_model_threads(model: torch.nn.Module, device: torch.device | str):
    """One CPU thread for a small model: its ops are too small to split, and on a busy 2-core machine two threads
    made score-model training 6x slower in wall time (and 9x in CPU time) than one."""
    small = torch.device(device).type == "cpu" and sum(p.numel() for p in model.parameters()) < 2_000_000
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _budget_left(cfg: ScoreTrainConfig, step: int, seconds: float) -> bool:
    return step < cfg.steps and not (cfg.minutes and seconds >= 60 * cfg.minutes)


def train_score_model(data: Dataset, out: Path, cfg: ScoreTrainConfig = ScoreTrainConfig(),
                      device: torch.device | str = "cpu", progress: bool = True, save_every: int = 500) -> Path:
    """Train (or continue training) the score model of `data` into `out`; returns `out`.

    Stops at `cfg.steps` or after `cfg.minutes` of training in all, whichever comes first. The checkpoint
    (weights, EMA weights, optimiser, step, random state, seconds trained) is written every `save_every` steps
    and every SAVE_SECONDS; rerunning with the same settings continues from it, and with more steps or minutes
    trains further. `progress.json` says how far it got, for a person or a script watching a long run.
    """
    out.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": data.name, **asdict(cfg)}
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on cfg.seed only
        torch.manual_seed(cfg.seed)
        model = build_score_model(data, cfg.width, cfg.sigmas).to(device)
        ema = build_score_model(data, cfg.width, cfg.sigmas).to(device)
    ema.load_state_dict(model.state_dict())
    band = (cfg.t_min, model.num_timesteps - 1 if cfg.t_max == -1 else cfg.t_max)
    model.check_timestep(band[1])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    # Linear warm-up over 200 steps, then linear decay to 5 % of lr at cfg.steps.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200) * max(0.05, 1 - s / cfg.steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    step, seconds, loss_value = 0, 0.0, None
    if (out / CHECKPOINT).is_file():
        _check_resume(out, settings)
        state = torch.load(out / CHECKPOINT, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        generator.set_state(state["rng"])
        step, seconds, loss_value = int(state["step"]), float(state.get("seconds", 0.0)), state.get("loss")
    (out / TRAIN_CONFIG).write_text(json.dumps(settings, indent=2))
    x, y = data.x_train.to(device), data.y_train.to(device)

    def report() -> None:
        write_json(out / PROGRESS, {"step": step, "steps": cfg.steps, "minutes_trained": round(seconds / 60, 2),
                                    "minutes_budget": cfg.minutes, "loss": loss_value,
                                    "done": not _budget_left(cfg, step, seconds)})

    def save() -> None:
        tmp = out / (CHECKPOINT + ".tmp")
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "rng": generator.get_state(), "step": step, "seconds": seconds,
                    "loss": loss_value}, tmp)
        tmp.replace(out / CHECKPOINT)
        ema.save(out)
        report()

    bar = console.bar(total=cfg.steps, initial=min(step, cfg.steps), desc=f"score model {data.name}",
                      enabled=progress)
    every = max(1, cfg.steps // 10)  # off a terminal: a line every tenth of the steps (or every LINE_SECONDS)
    model.train()
    start, last_save, last_line = time.perf_counter() - seconds, time.perf_counter(), time.perf_counter()
    with small_model_threads(model, device):
        while _budget_left(cfg, step, seconds):
            idx = torch.randint(len(x), (cfg.batch_size,), generator=generator).to(device)
            reference = None
            if cfg.reference:
                ref = torch.randint(len(x), (cfg.reference,), generator=generator).to(device)
                reference = (x[ref], y[ref])
            loss = diffusion_loss(model, x[idx], y[idx], cfg.label_dropout, band, generator, reference)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            decay = min(cfg.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.lerp_(p, 1 - decay)
            loss_value = loss.item()
            now = time.perf_counter()
            seconds = now - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if (step % every == 0 or now - last_line >= LINE_SECONDS) and not console.interactive():
                last_line = now
                console.line(f"score model {data.name}: step {step}/{cfg.steps}, {seconds / 60:.1f} min"
                             f"{f' of {cfg.minutes:g}' if cfg.minutes else ''}, loss {loss_value:.4f}", progress)
            if step % save_every == 0 or now - last_save >= SAVE_SECONDS or not _budget_left(cfg, step, seconds):
                last_save = now
                save()
    bar.close()
    if not (out / META_FILE).is_file():  # a finished run whose exported model was deleted
        save()
    return out
