"""`build_model(arch, ...)`: the architecture registry (names and routes), the dispatch and the normalising wrapper."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pagrob.errors import ConfigError
from pagrob.models import library, user
from pagrob.models.nets import MLP, SmallCNN, resnet18, vit


class Normalize(nn.Module):
    """(x - mean) / std per channel (or per coordinate), as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class Classifier(nn.Module):
    """Normalisation followed by a network: raw inputs in, logits out."""

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def default_arch(input_shape: Sequence[int]) -> str:
    """mlp for vectors, cnn for small images (<= 16 px), resnet18 otherwise."""
    if len(input_shape) == 1:
        return "mlp"
    return "cnn" if input_shape[-1] <= 16 else "resnet18"


@dataclass(frozen=True)
class ArchEntry:
    summary: str  # one line for the CLI's help
    images: bool  # takes (C, H, W) images; otherwise flat vectors
    build: Callable[[Sequence[int], int, int], nn.Module]  # (input_shape, num_classes, width)


# The one list of architectures: config validation, the CLI and `build_model` read it; a new network is one entry.
ARCHS: dict[str, ArchEntry] = {
    "mlp": ArchEntry("a ReLU MLP for flat vectors (toy2d)", False, lambda s, c, w: MLP(s[0], c, w)),
    "cnn": ArchEntry("a small CNN for small images", True, lambda s, c, w: SmallCNN(s[0], c, w, s[1], s[2])),
    "resnet18": ArchEntry("ResNet-18 with a CIFAR stem", True, lambda s, c, w: resnet18(s[0], c, w)),
    "vit": ArchEntry("a small vision transformer", True, lambda s, c, w: vit(s[0], c, s[1], w)),
}


@dataclass(frozen=True)
class ArchRoute:
    """A `prefix:SPEC` form of model.arch that builds a network the user describes (see `ARCH_ROUTES`)."""

    form: str  # how it is written, e.g. file:PATH.py:FACTORY
    summary: str  # one line for the CLI's help
    # (SPEC, model.args, input shape without batch, number of classes) -> the network, before normalisation
    build: Callable[[str, dict[str, Any], tuple[int, ...], int], nn.Module]
    absolute: Callable[[str], str]  # SPEC as the run folder records it (paths made absolute); ConfigError if invalid
    identity: Callable[[str], dict]  # what a run records of SPEC's source (a file's sha256, a library's version)
    check_unchanged: Callable[[str, dict, Any], None]  # (SPEC, recorded identity, run folder): raise if it changed


# Architectures a user brings: each is one entry here, read by config validation, the CLI and `build_model`.
ARCH_ROUTES: dict[str, ArchRoute] = {
    user.PREFIX: ArchRoute(user.FORM, "FACTORY(**model.args) from your own Python file", user.build,
                           user.absolute, user.identity, user.check_unchanged),
    # torchvision:NAME, timm:NAME: a model library's network (one `library.Library` each)
    **{lib.prefix: ArchRoute(lib.form, lib.summary, lib.build, lib.absolute, lib.identity, lib.check_unchanged)
       for lib in library.LIBRARIES},
}


def arch_route(arch: str) -> tuple[ArchRoute, str] | None:
    """(route, SPEC) when `arch` is a `prefix:SPEC` route form, else None."""
    prefix, sep, spec = arch.partition(":")
    return (ARCH_ROUTES[prefix], spec) if sep and prefix in ARCH_ROUTES and spec else None


def known_arch(arch: str) -> bool:
    return arch == "auto" or arch in ARCHS or arch_route(arch) is not None


def arch_choices() -> str:
    """'auto, mlp, cnn, ... or file:PATH.py:FACTORY', for messages and help."""
    names = ["auto", *ARCHS, *(r.form for r in ARCH_ROUTES.values())]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def build_model(arch: str, input_shape: Sequence[int], num_classes: int, width: int = 64,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                args: dict[str, Any] | None = None) -> Classifier:
    """Build a classifier for inputs of `input_shape` (without batch). mean/std default to 0.5/0.5 per channel.

    `args` are the keyword arguments of a route's network (`file:PATH.py:FACTORY`, `torchvision:NAME`,
    `timm:NAME`); our own archs take `width`.
    """
    arch = default_arch(input_shape) if arch == "auto" else arch
    channels = input_shape[0]
    mean = list(mean) if mean is not None else [0.5] * channels
    std = list(std) if std is not None else [0.5] * channels
    route = arch_route(arch)
    if route is not None:
        net = route[0].build(route[1], dict(args or {}), tuple(input_shape), num_classes)
        return Classifier(Normalize(mean, std), net)
    if arch not in ARCHS:
        raise ConfigError(f"unknown model arch '{arch}': use {arch_choices()}")
    entry = ARCHS[arch]
    if entry.images and len(input_shape) != 3:
        fits = [a for a, e in ARCHS.items() if not e.images]
        raise ConfigError(f"{arch} takes images (C, H, W); inputs have shape {tuple(input_shape)} "
                          f"(use model.arch={' or '.join(fits)})")
    if not entry.images and len(input_shape) != 1:
        fits = [a for a, e in ARCHS.items() if e.images]
        raise ConfigError(f"{arch} takes flat vectors; inputs have shape {tuple(input_shape)} "
                          f"(use model.arch={', '.join(fits)})")
    return Classifier(Normalize(mean, std), entry.build(input_shape, num_classes, width))
