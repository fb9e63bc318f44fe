"""Typed run configuration: dataclasses, YAML load/save, `--set key=value` overrides, validation.

Every error a user can cause here is a `ConfigError` with one message that names the fix, raised
before any long work starts. The names it accepts come from the registries (`pagrob.data.DATASETS`,
`pagrob.targets.SOURCES`, `pagrob.models.ARCHS`, `pagrob.attacks.adversaries.ADVERSARIES`), never from a list of
its own.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from pagrob.attacks.adversaries import ADVERSARIES, NONE, adversary_names, known_adversary
from pagrob.attacks.library import VERSIONS
from pagrob.data import dataset_names, known_dataset
from pagrob.errors import ConfigError
from pagrob.models import arch_choices, arch_route, known_arch
from pagrob.schedules import SCHEDULES
from pagrob.targets import SOURCES, STORE_PREFIX, source_names


@dataclass
class DataConfig:
    name: str = "toy2d"  # a name in pagrob.data.DATASETS, or npz:PATH | folder:PATH (pagrob.data.ROUTES)
    data_dir: str = "data"  # torchvision's folder; for cifar10 also an .npz file of CIFAR-10 (see README)
    holdout: int = 0  # > 0: train on the rest, evaluate on this many held-out training images ("validation")
    train_n: int = 0  # > 0: train on the first train_n training images (after the holdout) only; 0: all
    download: bool = False  # let torchvision download CIFAR/STL (needs internet)
    augment: str = "auto"  # auto | none | crop | crop_flip  (auto: crop_flip for photos, crop for digits)


def _arch(key: str, value: Any) -> str:
    """A route form's paths made absolute (file:nets.py:f -> file:/abs/nets.py:f): a run folder outlives the cwd."""
    if not isinstance(value, str):
        raise ConfigError(f"config key '{key}' expects an architecture name, got {value!r}")
    route = arch_route(value)
    return f"{value.split(':', 1)[0]}:{route[0].absolute(route[1])}" if route else value


def _normalization(key: str, value: Any) -> str | list[list[float]]:
    """data | none | [[mean...], [std...]] (YAML) | "m1,m2,m3/s1,s2,s3" (the command line's --normalize)."""
    if value in ("data", "none"):
        return value
    if isinstance(value, str) and value.count("/") == 1:
        value = [part.split(",") for part in value.split("/")]
    try:
        mean, std = ([float(v) for v in part] for part in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be data, none, [[MEAN...], [STD...]] or MEAN,.../STD,... (one number per "
                          f"channel, e.g. 0.4914,0.4822,0.4465/0.2470,0.2435,0.2616), got {value!r}") from None
    if len(mean) != len(std) or not mean or min(std) <= 0:
        raise ConfigError(f"{key}: mean and std need one number per channel each and std > 0, got {value!r}")
    return [mean, std]


def _mapping(key: str, value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"config key '{key}' expects a mapping of keyword arguments, e.g. {{depth: 28, widen: 10}}"
                          f", got {value!r}")
    return dict(value)


@dataclass
class ModelConfig:
    # auto (by input shape), a name in pagrob.models.ARCHS, or a route: file:PATH.py:FACTORY (your own network)
    arch: str = field(default="auto", metadata={"coerce": _arch})
    width: int = 64  # hidden width (mlp), base channels (cnn, resnet18), embedding width (vit)
    args: dict = field(default_factory=dict, metadata={"coerce": _mapping})  # a route's: FACTORY(**args) of file:, the library's keyword arguments
    # data: first layer standardises with training-set statistics | none: raw [0, 1] inputs |
    # [[MEAN...], [STD...]]: a fixed per-channel normalisation (the one your network was trained with)
    normalize: str | list = field(default="data", metadata={"coerce": _normalization})


@dataclass
class PagConfig:
    source: str = "none"  # none, a name in pagrob.targets.SOURCES, or store:PATH
    lam: float = 1.0  # weight of the PAG term
    k: int = 0  # target classes sampled per image; 0 means all classes
    sigma: float = 5.0  # noise level of the `exact` toy2d source and of the `smooth` (smoothed training set) source
    # std of Gaussian noise added to the images where the PAG term is taken (the model's gradient and the target
    # at the same noisy point, so the gradient field is shaped around the data, not only on it); 0: at the images
    noise: float = 0.0
    nn_sample: int = 200  # images per class searched by the `nn` source
    seed: int = 0  # chooses the OI images and the NN sample
    score_model: str = ""  # sbg: score-model folder (pagrob targets train-score-model)
    sbg_t: int = 300  # sbg: diffusion timestep of the score query (toy2d score models: noise level (t + 1) / 10)
    # sbg: > 0: the score query's noise level in pixel units (as pag.sigma), one the score model was trained at
    # (train-score-model --sigmas); it replaces pag.sbg_t
    sbg_sigma: float = 0.0
    sbg_draws: int = 1  # sbg: noise draws averaged per image; 0 queries the noise-free point
    # lam x lam_warmup_scale for the first lam_warmup_fraction of the epochs (the authors' ViT: 2/3 for the first half)
    lam_warmup_fraction: float = 0.0
    lam_warmup_scale: float = 1.0
    step: str = "auto"  # auto | serial (one class per backward pass) | batched (all k in one); see pag_objective


@dataclass
class AdvConfig:
    method: str = "none"  # none, or a name in pagrob.attacks.adversaries.ADVERSARIES: pgd | trades | fgsm | n-fgsm
    norm: str = "l2"  # l2 | linf
    eps: float = 0.5
    steps: int = 7
    step_size: float = 0.0  # 0 means 2.5 * eps / steps
    random_start: bool = True
    trades_beta: float = 6.0  # TRADES: weight of KL(p(x) || p(x')) beside the clean cross-entropy


PRECISIONS = ("fp32", "bf16")  # optim.precision
MEMORY_FORMATS = ("contiguous", "channels_last")  # optim.memory_format


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd (with momentum) | adam (momentum unused)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs, lr x0.1 (step)
    nesterov: bool = False  # sgd: Nesterov momentum
    schedule: str = "step"  # a name in pagrob.schedules.SCHEDULES: step (milestones) | onecycle (decay to 0)
    warmup: float = 0.0  # fraction of the steps the learning rate ramps up linearly first
    # > 0: train for as many steps as M minutes allow at the step time measured on a few steps first (equal minutes);
    # epochs is then ignored
    minutes: float = 0.0
    steps: int = 0  # > 0: exactly this many optimizer steps (e.g. a minutes run's planned_steps, to repeat it)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: after each epoch only); see --resume
    # fp32 | bf16: bfloat16 autocast over each training step (the PAG double backward included); evaluation and
    # its attacks always run in float32, so robust accuracy never depends on it
    precision: str = "fp32"
    memory_format: str = "contiguous"  # contiguous | channels_last: layout of the model and batches in training


@dataclass
class EvalConfig:
    norms: list[str] = field(default_factory=lambda: ["l2"])
    eps_l2: list[float] = field(default_factory=lambda: [0.5])
    eps_linf: list[float] = field(default_factory=lambda: [8 / 255])
    # The evaluation PGD (not the cheap one inside adversarial training): each restart runs every loss.
    pgd_steps: int = 100
    pgd_restarts: int = 3
    pgd_losses: list[str] = field(default_factory=lambda: ["ce", "margin"])
    n: int = 0  # test images evaluated under attack, the first n in order; 0 means all
    batch_size: int = 256
    # the AutoAttack version whose Square budget the black-box guard uses (pagrob.attacks.library.VERSIONS):
    # custom-fast (1,000 queries); apgd-fast (300) where many runs share a CPU
    version: str = "custom-fast"


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    init: str = ""  # a run folder whose weights training starts from (pagrob train --init RUN_DIR): fine-tuning
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pag: PagConfig = field(default_factory=PagConfig)
    adv: AdvConfig = field(default_factory=AdvConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def method(self) -> str:
        """Short label for tables: vanilla, pag-<source>, <adversary>-<norm> (at-l2, trades-linf, fgsm-l2, n-fgsm-linf:
        the adversary's label in ADVERSARIES), and both joined, e.g. at-l2+pag-cm.

        A precomputed store (`store:PATH`) is named by its folder, e.g. pag-smooth-sigma2, since its source is
        what a reader compares."""
        source = self.pag.source
        name = Path(source.removeprefix(STORE_PREFIX)).name if source.startswith(STORE_PREFIX) else source.split(":")[0]
        pag = "" if source == "none" else f"pag-{name}"
        method = self.adv.method
        at = "" if method == NONE else f"{ADVERSARIES[method].label}-{self.adv.norm}"
        return "+".join(p for p in (at, pag) if p) or "vanilla"


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Dotted names of every settable leaf, e.g. `pag.lam`."""
    keys = []
    for f in fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if sub is not None and is_dataclass(sub):
            keys += valid_keys(sub, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key(key: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} Valid keys: {', '.join(keys)}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str) and isinstance(value, str):
        return value
    elif isinstance(default, list) and isinstance(value, (list, int, float, str)):
        items = value if isinstance(value, list) else [value]
        kind = type(default[0]) if default else type(items[0])
        try:
            return [kind(v) for v in items]
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"config key '{key}' expects {type(default).__name__}, got {value!r}")


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set one dotted key, coercing the value to the field's type (or by the field's own `coerce`)."""
    *path, leaf = key.split(".")
    node: Any = cfg
    for part in path:
        if not is_dataclass(node) or part not in {f.name for f in fields(node)}:
            raise _unknown_key(key)
        node = getattr(node, part)
    found = {f.name: f for f in fields(node)} if is_dataclass(node) else {}
    if leaf not in found or is_dataclass(getattr(node, leaf)):
        raise _unknown_key(key)
    coerce = found[leaf].metadata.get("coerce")
    setattr(node, leaf, coerce(key, value) if coerce else _coerce(key, value, getattr(node, leaf)))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"pag": {"lam": 1}} -> {"pag.lam": 1}: the dotted keys of a nested config mapping. A key whose value is
    itself a mapping (model.args) stays one leaf."""
    leaves = set(valid_keys())
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and f"{prefix}{k}" not in leaves:
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def from_dict(tree: dict) -> Config:
    cfg = Config()
    for key, value in flatten(tree).items():
        set_key(cfg, key, value)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = (), start: dict | None = None) -> Config:
    """Read a YAML file (or start from defaults) and apply `key=value` overrides, then validate.

    `start`: dotted keys that stand in for the defaults, where the file and the overrides leave them out (a
    fine-tuning run takes its model and data from the run it starts from)."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(tree).__name__}")
    cfg = from_dict({**(start or {}), **flatten(tree)})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. pag.lam=0.5")
        key, raw = item.split("=", 1)
        set_key(cfg, key.strip(), yaml.safe_load(raw))
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Range and choice checks that need no data; dataset-dependent checks live where the data is known."""
    _check(cfg.pag.lam >= 0, f"pag.lam must be >= 0, got {cfg.pag.lam}")
    _check(cfg.pag.k >= 0, f"pag.k must be >= 0 (0 = all classes), got {cfg.pag.k}")
    _check(cfg.pag.sigma > 0, f"pag.sigma must be > 0, got {cfg.pag.sigma}")
    _check(cfg.pag.noise >= 0, f"pag.noise must be >= 0, got {cfg.pag.noise}")
    _check(cfg.pag.noise == 0 or not cfg.pag.source.startswith("store:"),
           "pag.noise needs targets computed at the noisy points; a store: source holds one fixed target per "
           "training image (use the source the store was built from, or pag.noise=0)")
    _check(cfg.pag.step in ("auto", "serial", "batched"),
           f"pag.step must be auto, serial or batched, got '{cfg.pag.step}'")
    _check(cfg.pag.nn_sample >= 1, f"pag.nn_sample must be >= 1, got {cfg.pag.nn_sample}")
    src = cfg.pag.source
    _check(src == "none" or src in SOURCES or src.startswith(STORE_PREFIX),
           f"pag.source must be none, {source_names().replace(' or ', ', ')} or {STORE_PREFIX}PATH, got '{src}'")
    _check(src != "exact" or cfg.data.name == "toy2d",
           f"pag.source=exact is known in closed form only for toy2d, not {cfg.data.name}; "
           f"use one of {', '.join(n for n in SOURCES if n != 'exact')}")
    _check(known_dataset(cfg.data.name), f"data.name must be {dataset_names()}, got '{cfg.data.name}'")
    _check(src != "sbg" or bool(cfg.pag.score_model),
           "pag.source=sbg needs pag.score_model=DIR (train one with: pagrob targets train-score-model)")
    _check(cfg.pag.sbg_t >= 0 and cfg.pag.sbg_draws >= 0 and cfg.pag.sbg_sigma >= 0,
           "pag.sbg_t, pag.sbg_sigma and pag.sbg_draws must be >= 0")
    _check(0 <= cfg.pag.lam_warmup_fraction <= 1,
           f"pag.lam_warmup_fraction must be in [0, 1], got {cfg.pag.lam_warmup_fraction}")
    _check(cfg.pag.lam_warmup_scale >= 0, f"pag.lam_warmup_scale must be >= 0, got {cfg.pag.lam_warmup_scale}")
    _check(known_adversary(cfg.adv.method), f"adv.method must be {adversary_names()}, got '{cfg.adv.method}'")
    _check(cfg.adv.trades_beta >= 0, f"adv.trades_beta must be >= 0, got {cfg.adv.trades_beta}")
    _check(cfg.adv.norm in ("l2", "linf"), f"adv.norm must be l2 or linf, got '{cfg.adv.norm}'")
    _check(cfg.adv.eps >= 0, f"adv.eps must be >= 0, got {cfg.adv.eps}")
    _check(cfg.adv.steps >= 1, f"adv.steps must be >= 1, got {cfg.adv.steps}")
    _check(cfg.adv.step_size >= 0, f"adv.step_size must be >= 0, got {cfg.adv.step_size}")
    _check(cfg.optim.epochs >= 1, f"optim.epochs must be >= 1, got {cfg.optim.epochs}")
    _check(cfg.optim.batch_size >= 1, f"optim.batch_size must be >= 1, got {cfg.optim.batch_size}")
    _check(cfg.optim.lr > 0, f"optim.lr must be > 0, got {cfg.optim.lr}")
    _check(cfg.optim.momentum >= 0, f"optim.momentum must be >= 0, got {cfg.optim.momentum}")
    _check(cfg.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {cfg.optim.weight_decay}")
    _check(cfg.optim.precision in PRECISIONS,
           f"optim.precision must be {' or '.join(PRECISIONS)}, got '{cfg.optim.precision}'")
    _check(cfg.optim.memory_format in MEMORY_FORMATS,
           f"optim.memory_format must be {' or '.join(MEMORY_FORMATS)}, got '{cfg.optim.memory_format}'")
    _check(cfg.optim.precision == "fp32" or cfg.pag.step != "batched",
           "pag.step=batched does not run under bf16 autocast; use pag.step=auto or serial (or optim.precision=fp32)")
    _check(cfg.optim.checkpoint_every >= 0,
           f"optim.checkpoint_every must be >= 0 (0 = after each epoch only), got {cfg.optim.checkpoint_every}")
    _check(all(0 < m <= 1 for m in cfg.optim.milestones), "optim.milestones are fractions of the epochs in (0, 1]")
    _check(cfg.optim.schedule in SCHEDULES,
           f"optim.schedule must be {' or '.join(SCHEDULES)}, got '{cfg.optim.schedule}'")
    _check(0 <= cfg.optim.warmup < 1, f"optim.warmup is a fraction of the steps in [0, 1), got {cfg.optim.warmup}")
    _check(cfg.optim.minutes >= 0, f"optim.minutes must be >= 0 (0: optim.epochs decides), got {cfg.optim.minutes}")
    _check(cfg.optim.steps >= 0, f"optim.steps must be >= 0 (0: optim.epochs or optim.minutes decides), got "
                                 f"{cfg.optim.steps}")
    _check(not cfg.optim.nesterov or (cfg.optim.name == "sgd" and cfg.optim.momentum > 0),
           "optim.nesterov needs optim.name=sgd and optim.momentum > 0")
    _check(all(n in ("l2", "linf") for n in cfg.eval.norms), f"eval.norms must be l2 and/or linf, got {cfg.eval.norms}")
    _check(all(e >= 0 for e in cfg.eval.eps_l2 + cfg.eval.eps_linf), "eval eps values must be >= 0")
    _check(cfg.eval.pgd_steps >= 1 and cfg.eval.pgd_restarts >= 1, "eval.pgd_steps and eval.pgd_restarts must be >= 1")
    _check(bool(cfg.eval.pgd_losses) and set(cfg.eval.pgd_losses) <= {"ce", "margin"},
           f"eval.pgd_losses must be a non-empty list of ce and/or margin, got {cfg.eval.pgd_losses}")
    _check(cfg.data.train_n >= 0, f"data.train_n must be >= 0 (0 = all training images), got {cfg.data.train_n}")
    _check(cfg.data.holdout >= 0, f"data.holdout must be >= 0 (0 = evaluate on the test split), got {cfg.data.holdout}")
    _check(cfg.eval.n >= 0, f"eval.n must be >= 0 (0 = all), got {cfg.eval.n}")
    _check(cfg.eval.version in VERSIONS, f"eval.version must be one of {', '.join(VERSIONS)} (the AutoAttack version "
                                         f"whose Square budget the guard uses), got {cfg.eval.version!r}")
    _check(cfg.data.augment in ("auto", "none", "crop", "crop_flip"),
           f"data.augment must be auto, none, crop or crop_flip, got '{cfg.data.augment}'")
    _check(known_arch(cfg.model.arch), f"model.arch must be {arch_choices()}, got '{cfg.model.arch}'")
    _check(not cfg.model.args or arch_route(cfg.model.arch) is not None,
           f"model.args is passed to a route's network (file:PATH.py:FACTORY, torchvision:NAME, timm:NAME); "
           f"{cfg.model.arch} takes model.width instead")
    _check(cfg.model.width >= 1, f"model.width must be >= 1, got {cfg.model.width}")
    _check(cfg.optim.name in ("sgd", "adam"), f"optim.name must be sgd or adam, got '{cfg.optim.name}'")
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
           f"device must be auto, cpu, cuda or cuda:N, got '{cfg.device}'")
