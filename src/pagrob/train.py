"""One training loop for vanilla, PAG, adversarial training (AT) and AT + PAG.

loss = CE(f(x'), y) + lam * mean_j (1 - cos(grad_x log p(t_j | x), g(x, t_j)))
where x' is x (vanilla, PAG) or its PGD adversary (AT), and the PAG term is always taken at the clean x.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from pagrob.attacks import PGD
from pagrob.config import Config, ConfigError, save_config
from pagrob.data import Dataset, load_dataset
from pagrob.data.augment import augment, resolve_mode
from pagrob.evaluate import alignment_score, clean_accuracy, pgd_results
from pagrob.losses import pag_terms, sample_target_classes
from pagrob.models import build_model, default_arch
from pagrob.runs import save_model, write_json
from pagrob.targets import TargetSource, build_source, reference_source_name

ALIGNMENT_IMAGES = 256  # held-out images used to score alignment each epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but no GPU is visible to PyTorch; use --set device=cpu "
                          "(or device=auto)")
    return torch.device(name)


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of training images; for points, per-coordinate mean and one shared std.

    A shared std keeps angles in the plane: per-coordinate scaling would tilt what "perpendicular to the
    data" means to the network.
    """
    if x.dim() == 4:
        return x.mean([0, 2, 3]).tolist(), x.std([0, 2, 3]).clamp_min(1e-6).tolist()
    spread = float((x - x.mean(0)).std().clamp_min(1e-6))
    return x.mean(0).tolist(), [spread] * x.shape[1]


def make_source(cfg: Config, data: Dataset) -> TargetSource | None:
    if cfg.pag.source == "none":
        return None
    if cfg.pag.source.startswith("store:"):
        from pagrob.targets.store import open_store  # the sharded on-disk store

        return open_store(Path(cfg.pag.source[6:]), data)
    return build_source(cfg.pag.source, cfg.pag, data)


def check_against_data(cfg: Config, data: Dataset) -> None:
    """Config checks that need the dataset, before any long work."""
    if cfg.pag.k > data.num_classes:
        raise ConfigError(f"pag.k = {cfg.pag.k} is larger than the number of classes of {data.name} "
                          f"({data.num_classes}); use 0 for all classes")


def _adversary(cfg: Config, model: nn.Module, bounds) -> PGD | None:
    a = cfg.adv
    if a.method == "none":
        return None
    return PGD(model, a.norm, a.eps, a.steps, a.step_size, a.random_start, bounds=bounds)


def train_step(model: nn.Module, x: Tensor, y: Tensor, cfg: Config, source: TargetSource | None,
               adversary: PGD | None, index: Tensor, num_classes: int, generator: torch.Generator,
               aug_mode: str) -> tuple[Tensor, dict[str, float]]:
    """The loss of one batch and its parts for logging."""
    targets = classes = None
    if source is not None and cfg.pag.lam > 0:
        classes = sample_target_classes(len(x), num_classes, cfg.pag.k, generator, x.device)
        targets = source(x, classes, index)
    x, targets = augment(x, aug_mode, generator, targets)
    x_train = x
    if adversary is not None:
        model.eval()
        x_train = adversary(x, y)
        model.train()
    parts: dict[str, float] = {}
    if targets is not None:
        logits_clean, cos = pag_terms(model, x, targets, classes)
        logits = logits_clean if adversary is None else model(x_train)
        pag = (1 - cos).mean()
        parts["pag"], parts["cos"] = pag.item(), cos.mean().item()
    else:
        logits = model(x_train)
        pag = torch.zeros((), device=x.device)
    ce = F.cross_entropy(logits, y)
    loss = ce + cfg.pag.lam * pag
    parts.update(loss=loss.item(), ce=ce.item(), acc=(logits.argmax(1) == y).float().mean().item())
    return loss, parts


def train(cfg: Config, out: Path, progress: bool = True, data: Dataset | None = None) -> Path:
    """Train, evaluate and write the run folder `out`. Returns `out`."""
    device = resolve_device(cfg.device)
    data = data or load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
    check_against_data(cfg, data)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    mean, std = channel_stats(data.x_train)
    arch = default_arch(data.input_shape) if cfg.model.arch == "auto" else cfg.model.arch
    model = build_model(arch, data.input_shape, data.num_classes, cfg.model.width, mean, std).to(device)
    source = make_source(cfg, data)
    source = source.to(device) if source is not None else None
    align_source = source or build_source(reference_source_name(data.name), cfg.pag, data).to(device)
    data = data.to(device)
    aug_mode = resolve_mode(cfg.data.augment, data.name, data.is_image)
    adversary = _adversary(cfg, model, data.bounds)

    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    milestones = sorted({max(1, round(m * cfg.optim.epochs)) for m in cfg.optim.milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    generator = torch.Generator().manual_seed(cfg.seed)
    writer = _summary_writer(out)
    n, bs = len(data.x_train), cfg.optim.batch_size
    metrics_file = open(out / "metrics.jsonl", "w")
    start = time.perf_counter()
    for epoch in range(cfg.optim.epochs):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        sums: dict[str, float] = {}
        steps = range(0, n, bs)
        bar = tqdm(steps, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.optim.epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i:i + bs]
            loss, parts = train_step(model, data.x_train[idx], data.y_train[idx], cfg, source, adversary, idx,
                                     data.num_classes, generator, aug_mode)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
        sched.step()
        model.eval()
        row = {"epoch": epoch + 1, **{f"train_{k}": v / len(steps) for k, v in sums.items()},
               "test_accuracy": clean_accuracy(model, data.x_test, data.y_test),
               "test_alignment": alignment_score(model, data.x_test[:ALIGNMENT_IMAGES], align_source,
                                                 data.num_classes),
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start}
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        for k, v in row.items():
            if k != "epoch" and writer is not None:
                writer.add_scalar(k, v, epoch + 1)
        if progress:
            tqdm.write(f"{cfg.name} epoch {epoch + 1}: loss {row['train_loss']:.3f} "
                       f"test acc {row['test_accuracy']:.3f} alignment {row['test_alignment']:.3f}")
    metrics_file.close()
    if writer is not None:
        writer.close()
    save_model(model, out, arch, data.input_shape, data.num_classes, cfg.model.width)
    evaluate_and_write(model.eval(), data, cfg, out, align_source, time.perf_counter() - start, progress)
    return out


def evaluate_and_write(model: nn.Module, data: Dataset, cfg: Config, out: Path, align_source: TargetSource,
                       train_seconds: float, progress: bool = True) -> dict:
    """Clean accuracy on the whole test split, PGD on the first eval.n test images, alignment; results.json."""
    n = cfg.eval.n or len(data.x_test)
    x, y = data.x_test[:n], data.y_test[:n]
    results = {
        "dataset": data.name,
        "method": cfg.method,
        "name": cfg.name,
        "clean_accuracy": clean_accuracy(model, data.x_test, data.y_test),
        "n_test": len(data.x_test),
        "robust_accuracy": pgd_results(model, x, y, cfg.eval, data.bounds, progress),
        "alignment": {"source": align_source.name,
                      "cosine": alignment_score(model, x[:ALIGNMENT_IMAGES], align_source, data.num_classes)},
        "train_seconds": train_seconds,
    }
    write_json(out / "results.json", results)
    return results


def _summary_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
        return None
    return SummaryWriter(str(out))
