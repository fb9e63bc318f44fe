"""`pagrob train --config F --dry-run`: check a recipe offline before spending GPU hours on it.

Validates the config, builds the model and one synthetic batch of the dataset's shape, runs one training
step of the configured objective on it, and says what the full run would do: the files it needs and
whether they are there, epochs and steps, and the cost of a step relative to vanilla training, both
counted (network passes) and measured on the synthetic batch. Needs no dataset files for the built-in
datasets; a user's npz or folder dataset is read, since its shape is only known from its files.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pagrob.attacks.adversaries import ADVERSARIES
from pagrob.config import Config
from pagrob.data import Dataset, load_dataset
from pagrob.data.images import TORCHVISION, open_npz
from pagrob.errors import DatasetError
from pagrob.devices import autocast, resolve_device
from pagrob.parts import assemble, check_against_data, config_source
from pagrob.targets import STORE_PREFIX, TargetSource
from pagrob.train import Step, lam_at, train_step

# Image shape, train and test sizes of the torchvision datasets, so no file is needed to know them.
SHAPES: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "cifar10": ((3, 32, 32), 50_000, 10_000),
    "cifar100": ((3, 32, 32), 50_000, 10_000),
    "stl10": ((3, 96, 96), 5_000, 8_000),
}


@dataclass
class DatasetInfo:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_test: int
    bounds: tuple[float, float] | None
    needs: list[tuple[str, bool]]  # (path or description, present)


class StandInTargets(TargetSource):
    """Random targets of the right shape for a store the dry run does not open: a step costs the same whatever
    the target values are."""

    name = "stand-in"

    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        return torch.randn(*classes.shape, *x.shape[1:], device=x.device, dtype=x.dtype)


def describe_dataset(cfg: Config) -> tuple[DatasetInfo, Dataset | None]:
    """Shape and size of the configured dataset, and what must be on disk; loads only built-in or user data."""
    name = cfg.data.name
    if name == "cifar10" and (cfg.data.data_dir.endswith(".npz") or Path(cfg.data.data_dir).is_file()):
        shape, n_train, n_test = SHAPES[name]
        npz = Path(cfg.data.data_dir)
        if npz.is_file():  # the label arrays are small: the split sizes without reading the images
            with open_npz(npz) as z:
                if not {"y_train", "y_test"} <= set(z.files):
                    raise DatasetError(f"{npz} is not a CIFAR-10 file: it needs x_train, y_train, x_test, y_test")
                n_train, n_test = len(z["y_train"]), len(z["y_test"])
        return DatasetInfo(name, shape, 10, n_train, n_test, (0.0, 1.0), [(f"{npz} (CIFAR-10 npz)", npz.is_file())]), None
    if name in SHAPES:
        shape, n_train, n_test = SHAPES[name]
        folder = Path(cfg.data.data_dir) / TORCHVISION[name][1]
        needs = [(f"{folder}/ (torchvision {TORCHVISION[name][0]} archive, extracted)", folder.is_dir())]
        if cfg.data.download:
            needs[0] = (needs[0][0] + "; data.download=true fetches it", needs[0][1])
        return DatasetInfo(name, shape, TORCHVISION[name][2], n_train, n_test, (0.0, 1.0), needs), None
    data = load_dataset(name, cfg.data.data_dir, cfg.data.download)  # toy2d/digits are built in; npz/folder are read
    needs = [] if name in ("toy2d", "digits") else [(name.split(":", 1)[1], True)]
    info = DatasetInfo(data.name, data.input_shape, data.num_classes, len(data.x_train), len(data.x_test),
                       data.bounds, needs)
    return info, data


def synthetic_dataset(info: DatasetInfo, n: int, generator: torch.Generator) -> Dataset:
    """Uniform noise images (every class at least twice, as the nearest-neighbour source needs) of the real shape."""
    n = max(n, 2 * info.num_classes)
    x = torch.rand(n, *info.input_shape, generator=generator)
    y = torch.arange(n) % info.num_classes
    return Dataset(info.name, x, y, x[: info.num_classes], y[: info.num_classes], info.num_classes, info.bounds)


def passes_per_image(cfg: Config, num_classes: int) -> int:
    """Network passes (one forward or one backward sweep) per training image per step, counted from the objective.

    Vanilla: forward + backward = 2. PAG with k classes: forward, k input-gradient backward passes, and the
    parameter gradient through them (about 2 passes per input-gradient, plus 1) = 3k + 2. An adversary with s
    gradient steps (ADVERSARIES' `steps`: PGD adv.steps, FGSM and N-FGSM 1): 2s for the attack, then forward +
    backward at x'. TRADES adds the clean prediction the attack starts from and trains at both x and x'. The PAG term is always taken at the clean x.
    """
    k = cfg.pag.k or num_classes
    pag = cfg.pag.source != "none" and cfg.pag.lam > 0
    clean = 3 * k + 2 if pag else 2
    a = cfg.adv
    if a.method == "none":
        return clean
    entry = ADVERSARIES[a.method]
    attack = 2 * entry.steps(a) + (1 if entry.trades else 0)
    if not entry.trades and not pag:
        return attack + 2
    return attack + clean + 2


def vanilla_config(cfg: Config) -> Config:
    """The same run without PAG and without adversarial training: the baseline costs are compared with."""
    base = copy.deepcopy(cfg)
    base.pag.source, base.adv.method = "none", "none"
    return base


def _timed_step(model: nn.Module, x: Tensor, y: Tensor, step: Step, opt: torch.optim.Optimizer
                ) -> tuple[float, dict]:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    with autocast(x.device, step.cfg.optim.precision):  # as training runs it
        loss, parts = train_step(model, x, y, torch.arange(len(x), device=x.device), step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sync()
    return time.perf_counter() - start, parts


def auto_batch(input_shape: tuple[int, ...], batch_size: int) -> int:
    """Images in the dry run's batch: as many pixels as two 32x32 images (1 for STL-10's 96x96), so that even
    a PAG step of ResNet-18 is timed in seconds on a CPU; never more than the configured batch."""
    if len(input_shape) != 3:
        return batch_size
    return max(1, min(batch_size, round(2 * 32 * 32 / (input_shape[1] * input_shape[2]))))


def dry_run(cfg: Config, batch: int | None = None, timing: bool = True) -> dict:
    """Check `cfg` end to end on one synthetic batch of `batch` images (default `auto_batch`); returns what
    `format_dry_run` prints.

    With `timing`, the step is repeated and a vanilla step on the same model and batch is timed beside it.
    """
    device = resolve_device(cfg.device)
    info, data = describe_dataset(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    batch = batch or auto_batch(info.input_shape, cfg.optim.batch_size)
    data = data or synthetic_dataset(info, batch, generator)
    check_against_data(cfg, data)
    batch = min(batch, len(data.x_train))
    idx = torch.randperm(len(data.x_train), generator=generator)[:batch]
    x, y = data.x_train[idx].to(device), data.y_train[idx].to(device)

    needs = list(info.needs)
    stand_in = False  # a source whose files are not here: random targets of the right shape cost the same
    if cfg.pag.source.startswith(STORE_PREFIX):
        store = Path(cfg.pag.source[len(STORE_PREFIX):])
        needs.append((f"{store}/ (target store; `pagrob targets build --dataset {info.name} --source SOURCE "
                      f"--out {store}`)",
                      store.exists()))
        stand_in = True
    elif cfg.pag.source == "sbg":
        folder = Path(cfg.pag.score_model)
        needs.append((f"{folder}/ (score model; `pagrob targets train-score-model --dataset {info.name}`)",
                      folder.exists()))
        stand_in = not folder.exists()

    run = assemble(cfg, data, device, generator, (lambda c, d: StandInTargets()) if stand_in else config_source)
    model, arch, opt = run.model.train(), run.arch, run.optimizer
    source = run.source
    step = Step(cfg, source, run.adversary, info.num_classes, generator, run.aug_mode)

    _, parts = _timed_step(model, x, y, step, opt)
    if not all(math.isfinite(v) for v in parts.values()):
        raise FloatingPointError(f"the dry-run step gave a non-finite loss: {parts}")
    report = {
        "name": cfg.name, "method": cfg.method, "dataset": info.name, "input_shape": list(info.input_shape),
        "num_classes": info.num_classes, "n_train": info.n_train, "n_test": info.n_test, "needs": needs,
        "arch": arch, "parameters": sum(p.numel() for p in model.parameters()), "device": str(device),
        "epochs": cfg.optim.epochs, "batch_size": cfg.optim.batch_size,
        "steps_per_epoch": math.ceil(info.n_train / cfg.optim.batch_size),
        "lam_first_epoch": lam_at(cfg.pag, 0, cfg.optim.epochs), "lam_last_epoch": lam_at(cfg.pag, cfg.optim.epochs - 1,
                                                                                        cfg.optim.epochs),
        "dry_batch": batch, "step_parts": parts, "targets": source.name if source is not None else "none",
        "passes_per_image": passes_per_image(cfg, info.num_classes),
        "passes_vanilla": passes_per_image(vanilla_config(cfg), info.num_classes),
        "eval": {"norms": cfg.eval.norms, "eps_l2": cfg.eval.eps_l2, "eps_linf": cfg.eval.eps_linf,
                 "n": cfg.eval.n or info.n_test},
    }
    report["total_steps"] = report["steps_per_epoch"] * cfg.optim.epochs
    if timing:
        seconds, _ = _timed_step(model, x, y, step, opt)
        base = Step(vanilla_config(cfg), None, None, info.num_classes, generator, run.aug_mode)
        vanilla = min(_timed_step(model, x, y, base, opt)[0] for _ in range(3))
        report.update(step_seconds=seconds, vanilla_step_seconds=vanilla, measured_ratio=seconds / vanilla,
                      full_run_hours=seconds * cfg.optim.batch_size / batch * report["total_steps"] / 3600)
    return report


def format_dry_run(r: dict) -> str:
    """The human-readable summary `pagrob train --dry-run` prints."""
    lines = [f"dry run: {r['name']} ({r['method']}) on {r['dataset']} {tuple(r['input_shape'])}, "
             f"{r['num_classes']} classes: config valid, one training step ran, loss {r['step_parts']['loss']:.4g}",
             f"model: {r['arch']}, {r['parameters'] / 1e6:.2f} M parameters, device {r['device']}"]
    if r["needs"]:
        lines.append("files the full run needs:")
        lines += [f"  [{'present' if ok else 'MISSING'}] {what}" for what, ok in r["needs"]]
    else:
        lines.append("files the full run needs: none (built-in dataset)")
    lam = (f", PAG weight {r['lam_first_epoch']:g} -> {r['lam_last_epoch']:g}"
           if r["lam_first_epoch"] != r["lam_last_epoch"] else "")
    lines.append(f"training: {r['epochs']} epochs x {r['steps_per_epoch']} steps of {r['batch_size']} images = "
                 f"{r['total_steps']} steps on {r['n_train']} images{lam}")
    ev = r["eval"]
    eps = [f"L2 {e:g}" for e in ev["eps_l2"] if "l2" in ev["norms"]]
    eps += [f"Linf {e * 255:.3g}/255" for e in ev["eps_linf"] if "linf" in ev["norms"]]
    lines.append(f"evaluation: clean accuracy on {r['n_test']} test images, attacks ({', '.join(eps)}) on {ev['n']}")
    lines.append(f"cost per step, counted: {r['passes_per_image']} network passes per image "
                 f"({r['passes_per_image'] / r['passes_vanilla']:.1f}x vanilla's {r['passes_vanilla']})")
    if "measured_ratio" in r:
        stand_in = " (random stand-in targets: the step excludes making them)" if r["targets"] == "stand-in" else ""
        lines.append(f"cost per step, measured on {r['dry_batch']} synthetic images (batch reduced from "
                     f"{r['batch_size']}): {r['step_seconds']:.3f} s vs vanilla {r['vanilla_step_seconds']:.3f} s = "
                     f"{r['measured_ratio']:.1f}x vanilla{stand_in}")
        lines.append(f"full run at that speed on {r['device']} (linear in batch size; a rough guide): "
                     f"~{r['full_run_hours']:.3g} h of training")
    return "\n".join(lines)
