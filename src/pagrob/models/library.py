"""Networks from a model library: `model.arch=torchvision:NAME` and `model.arch=timm:NAME`.

`torchvision:resnet18` builds `torchvision.models.get_model("resnet18", weights=None, num_classes=C, **model.args)`;
`timm:vit_tiny_patch16_224` builds `timm.create_model(NAME, pretrained=False, num_classes=C, in_chans=channels,
**model.args)` (e.g. `model.args={img_size: 32, patch_size: 4}` for 32x32 images). Weights are never downloaded:
a network starts from its library's initialisation, or takes weights through `pagrob import-checkpoint`.

A name is checked against the library's own list when the config is read, so a typo is one error naming the
close matches before any data is loaded. A run records the library and its version; a later verb with another
version installed warns (`LibraryVersionWarning`) and loads the weights into the network that version builds,
which refuses them if they no longer fit (a renamed or reshaped layer), rather than refusing every upgrade.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from pagrob.errors import ConfigError, RunError

# Keyword arguments pagrob fills in itself; model.args naming one is refused with the reason.
RESERVED = {"num_classes": "the number of classes comes from the dataset",
            "in_chans": "the number of input channels comes from the dataset",
            "pretrained": "pagrob never downloads weights: bring yours with pagrob import-checkpoint",
            "weights": "pagrob never downloads weights: bring yours with pagrob import-checkpoint"}


class LibraryVersionWarning(UserWarning):
    """A run folder was written with another version of the library that builds its network."""


@dataclass(frozen=True)
class Library:
    """One model library as an architecture route: `prefix:NAME` (see `pagrob.models.ARCH_ROUTES`)."""

    prefix: str  # what model.arch starts with, and the module imported
    summary: str  # one line for the CLI's help
    pip: str  # what to install when it is missing
    call: str  # the library call, for messages: "timm.create_model"
    listing: str  # the call that lists its names, for messages
    names: Callable[[ModuleType], list[str]]  # the library's classifier names
    has: Callable[[ModuleType, str], bool]  # whether NAME builds a classifier
    make: Callable[[ModuleType, str, Sequence[int], int, dict[str, Any]], nn.Module]  # (lib, NAME, shape, C, args)
    rgb_only: bool  # builds 3-channel networks only (no in_chans)
    other: Callable[[ModuleType, str], str | None] = lambda lib, name: None  # why a known non-classifier is refused

    @property
    def form(self) -> str:
        return f"{self.prefix}:NAME"

    def module(self) -> ModuleType:
        """The library, or one ConfigError naming the install when it is missing."""
        try:
            return importlib.import_module(self.prefix)
        except ImportError:
            raise ConfigError(f"model.arch={self.form} needs {self.prefix}, which is not installed: "
                              f"pip install {self.pip}") from None

    def check_name(self, name: str) -> ModuleType:
        """The library, once NAME is known to build one of its classifiers; else one error with the close matches."""
        lib = self.module()
        if self.has(lib, name):
            return lib
        why = self.other(lib, name)
        if why:
            raise ConfigError(f"model.arch={self.prefix}:{name}: {why}")
        close = difflib.get_close_matches(name, self.names(lib), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"{self.listing} lists them"
        raise ConfigError(f"model.arch={self.prefix}:{name}: {self.prefix} {_version(lib)} has no classifier "
                          f"'{name}' ({hint})")

    # The four functions of an ArchRoute.

    def build(self, name: str, args: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
        """The library's network for images of `input_shape` (C, H, W) and `num_classes` classes, untrained."""
        lib = self.check_name(name)
        if len(input_shape) != 3:
            raise ConfigError(f"model.arch={self.prefix}:{name} takes images (C, H, W); inputs have shape "
                              f"{tuple(input_shape)} (use model.arch=mlp)")
        if self.rgb_only and input_shape[0] != 3:
            raise ConfigError(f"model.arch={self.prefix}:{name} takes 3-channel images; these have "
                              f"{input_shape[0]} (use timm:{name} if timm has it, whose in_chans fits the first "
                              "layer, or a file: route)")
        for key in args:
            if key in RESERVED:
                raise ConfigError(f"model.args must not set {key} for model.arch={self.prefix}:{name}: "
                                  f"{RESERVED[key]}")
        try:
            net = self.make(lib, name, tuple(input_shape), num_classes, args)
        except Exception as err:  # the library's own refusal of these arguments, said in one line
            raise ConfigError(f"{self.call}('{name}', ...) with model.args {args} raised {type(err).__name__}: "
                              f"{_first_line(err)} (model.args are passed to it as keyword arguments)") from None
        if not isinstance(net, nn.Module):
            raise ConfigError(f"{self.call}('{name}') returned a {type(net).__name__}, not a torch.nn.Module")
        return net

    def absolute(self, name: str) -> str:
        """NAME as a run folder records it (a library name has no path): checked here, when the config is read."""
        self.check_name(name)
        return name

    def identity(self, name: str) -> dict[str, str]:
        """What a run records of its network's source: the library, its version and the name."""
        return {"library": self.prefix, "version": _version(self.module()), "name": name}

    def check_unchanged(self, name: str, recorded: dict[str, str], run_dir: Path) -> None:
        """Refuse when the library is gone; warn when another version of it is installed (see the module's note)."""
        then = recorded.get("version", "?")
        try:
            lib = importlib.import_module(self.prefix)
        except ImportError:
            raise RunError(f"{run_dir} was built by {self.prefix} {then}, which is not installed: "
                           f"pip install {self.pip}=={_public(then)}") from None
        now = _version(lib)
        if _public(now) != _public(then):
            warnings.warn(f"{run_dir} was built by {self.prefix} {then}; {self.prefix} {now} is installed. Its "
                          f"weights are loaded into the {self.prefix}:{name} this version builds (refused if they no "
                          f"longer fit); pip install {self.pip}=={_public(then)} gives the original network",
                          LibraryVersionWarning, stacklevel=2)


def _version(lib: ModuleType) -> str:
    return str(getattr(lib, "__version__", "unknown"))


def _public(version: str) -> str:
    """A version without its local build tag: torchvision 0.29.1+cu130 builds what 0.29.1+cpu builds."""
    return version.split("+", 1)[0]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _torchvision_names(tv: ModuleType) -> list[str]:
    return tv.models.list_models(module=tv.models)  # the image classifiers (not detection, segmentation, video)


def _torchvision_other(tv: ModuleType, name: str) -> str | None:
    if name in tv.models.list_models():
        return ("a torchvision model but not an image classifier (detection, segmentation, video or optical flow); "
                f"{TORCHVISION.listing} lists the classifiers")
    return None


def _torchvision(tv: ModuleType, name: str, shape: Sequence[int], classes: int, args: dict) -> nn.Module:
    return tv.models.get_model(name, weights=None, num_classes=classes, **args)


def _timm(timm: ModuleType, name: str, shape: Sequence[int], classes: int, args: dict) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=classes, in_chans=shape[0], **args)


TORCHVISION = Library(
    "torchvision", "torchvision.models.get_model(NAME, weights=None, num_classes=C, **model.args)",
    pip="torchvision", call="torchvision.models.get_model",
    listing="torchvision.models.list_models(module=torchvision.models)", names=_torchvision_names,
    has=lambda tv, name: name in _torchvision_names(tv), make=_torchvision, rgb_only=True, other=_torchvision_other)
TIMM = Library(
    "timm", "timm.create_model(NAME, pretrained=False, num_classes=C, in_chans=channels, **model.args)",
    pip="timm", call="timm.create_model", listing="timm.list_models()", names=lambda timm: timm.list_models(),
    has=lambda timm, name: timm.is_model(name), make=_timm, rgb_only=False)
LIBRARIES = (TORCHVISION, TIMM)  # each is one entry of pagrob.models.ARCH_ROUTES
