"""The one list of target sources. Config validation, the CLI's choices and help, target stores and training
all read `SOURCES`; adding a source is one entry here (a builder, a one-line summary, the settings it depends on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pagrob.data import Dataset
from pagrob.errors import ConfigError
from pagrob.targets.base import TargetSource
from pagrob.targets.exact import ExactToy
from pagrob.targets.heuristic import ClassMean, NearestNeighbor, OneImage
from pagrob.targets.score_based import open_score_source, score_model_settings
from pagrob.targets.smoothed import SmoothedTrainingSet
from pagrob.targets.store import open_store

if TYPE_CHECKING:  # config.py reads this registry to validate names, so it is imported for types only
    from pagrob.config import PagConfig

STORE_PREFIX = "store:"  # pag.source=store:PATH reads a store that `pagrob targets build` wrote


@dataclass(frozen=True)
class SourceEntry:
    summary: str  # one line for the CLI's help
    build: Callable[[PagConfig, Dataset], TargetSource]  # from the `pag` settings and the dataset's training split
    settings: Callable[[PagConfig], dict]  # every setting that changes its targets: a store records them


def _exact(pag: PagConfig, data: Dataset) -> ExactToy:
    if data.name != "toy2d":
        raise ConfigError(f"pag.source=exact is known in closed form only for toy2d, not {data.name}; "
                          f"use one of {', '.join(n for n in SOURCES if n != 'exact')}")
    return ExactToy(pag.sigma)


SOURCES: dict[str, SourceEntry] = {
    "oi": SourceEntry("one fixed training image per class", lambda pag, d: OneImage(
        d.x_train, d.y_train, d.num_classes, pag.seed), lambda pag: {"seed": pag.seed}),
    "cm": SourceEntry("the class mean (rescaled to the mean image norm)", lambda pag, d: ClassMean(
        d.x_train, d.y_train, d.num_classes), lambda pag: {}),
    "nn": SourceEntry("the nearest training image of the class in a fixed sample", lambda pag, d: NearestNeighbor(
        d.x_train, d.y_train, d.num_classes, pag.nn_sample, pag.seed),
        lambda pag: {"nn_sample": pag.nn_sample, "seed": pag.seed}),
    "exact": SourceEntry("the closed-form score of the noisy toy2d mixture", _exact, lambda pag: {"sigma": pag.sigma}),
    "sbg": SourceEntry("score-based gradients of a class-conditional diffusion model (pag.score_model)",
                       open_score_source, score_model_settings),
    "smooth": SourceEntry("the exact score of the Gaussian-smoothed training set (pag.sigma)", lambda pag, d:
                          SmoothedTrainingSet(d.x_train, d.y_train, d.num_classes, pag.sigma),
                          lambda pag: {"sigma": pag.sigma}),
}


def source_names() -> str:
    """'oi, cm, nn, exact, sbg or smooth', for messages."""
    names = list(SOURCES)
    return f"{', '.join(names[:-1])} or {names[-1]}"


def build_source(name: str, pag: PagConfig, data: Dataset) -> TargetSource:
    """The named source, made from the dataset's training split."""
    if name not in SOURCES:
        raise ConfigError(f"unknown target source '{name}': use {source_names()}")
    return SOURCES[name].build(pag, data)


def make_source(name: str, pag: PagConfig, data: Dataset) -> TargetSource | None:
    """What a config's pag.source names: nothing (`none`), a store on disk (`store:PATH`) or a registered source."""
    if name == "none":
        return None
    if name.startswith(STORE_PREFIX):
        return open_store(Path(name[len(STORE_PREFIX):]), data)
    return build_source(name, pag, data)


def source_spec(name: str, pag: PagConfig) -> dict:
    """What a store records about its source: the name and every setting that changes its targets."""
    return {"name": name, "params": SOURCES[name].settings(pag)}


def reference_source_name(dataset_name: str) -> str:
    """The source used to score alignment when a run trained with none: exact on toy2d, class mean elsewhere."""
    return "exact" if dataset_name == "toy2d" else "cm"
