"""The parts of a run, built from its config: classifier, target source, adversary, optimiser, augmentation.

One home for the set-up that training (`pagrob.train.fit`), the dry run, evaluation and the sweep share, so
they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pagrob.attacks.adversaries import ADVERSARIES, NONE, Adversary
from pagrob.config import Config
from pagrob.data import Dataset
from pagrob.data.augment import resolve_mode
from pagrob.errors import ConfigError
from pagrob.models import arch_route, build_model, default_arch
from pagrob.models.user import check_output
from pagrob.targets import TargetSource, make_source


def channel_stats(x: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of training images; for points, per-coordinate mean and one shared std.

    A shared std keeps angles in the plane: per-coordinate scaling would tilt what "perpendicular to the
    data" means to the network.
    """
    if x.dim() == 4:
        return x.mean([0, 2, 3]).tolist(), x.std([0, 2, 3]).clamp_min(1e-6).tolist()
    spread = float((x - x.mean(0)).std().clamp_min(1e-6))
    return x.mean(0).tolist(), [spread] * x.shape[1]


def normalization(cfg: Config, data: Dataset) -> tuple[list[float], list[float]]:
    """The first layer's (mean, std): training-set statistics (data), none (0, 1), or the user's fixed numbers."""
    channels = data.input_shape[0]
    norm = cfg.model.normalize
    if norm == "data":
        return channel_stats(data.x_train)
    if norm == "none":
        return [0.0] * channels, [1.0] * channels
    mean, std = norm
    if len(mean) != channels:
        raise ConfigError(f"model.normalize gives {len(mean)} numbers per channel, {data.name} images have "
                          f"{channels} channel(s)")
    return mean, std


def build_classifier(cfg: Config, data: Dataset) -> tuple[nn.Module, str]:
    """The configured network for this dataset, its first layer standardising inputs (or not). A user's network
    (a file: route) must answer a batch of training images with one logit per class."""
    arch = default_arch(data.input_shape) if cfg.model.arch == "auto" else cfg.model.arch
    mean, std = normalization(cfg, data)
    model = build_model(arch, data.input_shape, data.num_classes, cfg.model.width, mean, std, cfg.model.args)
    if arch_route(arch) is not None:
        check_output(model, data.x_train[:2], data.num_classes, "training images")
    return model, arch


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov)


def make_adversary(cfg: Config, model: nn.Module, bounds: tuple[float, float] | None,
                   generator: torch.Generator) -> Adversary | None:
    """The training-time attack adv.method names in ADVERSARIES (None for none), its random starts drawn from
    `generator`."""
    if cfg.adv.method == NONE:
        return None
    return ADVERSARIES[cfg.adv.method].make(model, cfg.adv, bounds, generator)


def config_source(cfg: Config, data: Dataset) -> TargetSource | None:
    """The target source a config's pag.source names, made from `data`."""
    return make_source(cfg.pag.source, cfg.pag, data)


def check_against_data(cfg: Config, data: Dataset) -> None:
    """Config checks that need the dataset, before any long work."""
    if cfg.pag.k > data.num_classes:
        raise ConfigError(f"pag.k = {cfg.pag.k} is larger than the number of classes of {data.name} "
                          f"({data.num_classes}); use 0 for all classes")
    if cfg.optim.memory_format == "channels_last" and not data.is_image:
        raise ConfigError(f"optim.memory_format=channels_last lays out images (N, C, H, W); {data.name} has inputs "
                          f"of shape {data.input_shape}: use optim.memory_format=contiguous")


@dataclass
class Parts:
    """What one training step needs besides the batch, all on the run's device."""

    model: nn.Module
    arch: str
    source: TargetSource | None
    adversary: Adversary | None
    optimizer: torch.optim.Optimizer
    aug_mode: str


def assemble(cfg: Config, data: Dataset, device: torch.device, generator: torch.Generator,
             targets: Callable[[Config, Dataset], TargetSource | None] = config_source) -> Parts:
    """The classifier (initialised from the global RNG, so seed it first), then the source `targets` makes,
    the adversary drawing from `generator`, the optimiser and the augmentation mode."""
    model, arch = build_classifier(cfg, data)
    model = model.to(device)
    source = targets(cfg, data)
    source = source.to(device) if source is not None else None
    return Parts(model, arch, source, make_adversary(cfg, model, data.bounds, generator), make_optimizer(cfg, model),
                 resolve_mode(cfg.data.augment, data.name, data.is_image))
