"""The one list of training-time adversaries (`adv.method`): config validation, the run labels, the CLI's help,
the cost estimate and the training step's dispatch all read `ADVERSARIES`.

A new adversary is one more entry: how to build it from the run's `adv` section, the label its runs get in
tables (`<label>-<norm>`, e.g. at-l2, fgsm-linf), whether it is single-step (then the `collapse` guard checks
its runs for catastrophic overfitting), the objective it is trained with, and its gradient steps per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from pagrob.attacks.fast import fgsm, nfgsm
from pagrob.attacks.pgd import PGD
from pagrob.attacks.trades import TradesAdversary

if TYPE_CHECKING:
    from pagrob.config import AdvConfig

Adversary = Callable[[Tensor, Tensor], Tensor]
Bounds = tuple[float, float] | None
NONE = "none"  # adv.method of a run without adversarial training


@dataclass(frozen=True)
class AdversaryEntry:
    help: str
    label: str  # a run's label is <label>-<norm>, e.g. at-l2
    make: Callable[[nn.Module, "AdvConfig", Bounds, torch.Generator | None], Adversary]
    steps: Callable[["AdvConfig"], int]  # gradient steps per batch (for cost estimates)
    single_step: bool = False  # one gradient step: its runs are checked for catastrophic overfitting
    trades: bool = False  # objective CE(f(x)) + beta KL(f(x) || f(x')) instead of CE(f(x'))


ADVERSARIES: dict[str, AdversaryEntry] = {
    "pgd": AdversaryEntry(
        "Madry et al. 2018: PGD of adv.steps steps (adv.step_size, adv.random_start), cross-entropy at x'", "at",
        lambda m, a, b, g: PGD(m, a.norm, a.eps, a.steps, a.step_size, a.random_start, bounds=b, generator=g),
        lambda a: a.steps),
    "trades": AdversaryEntry(
        "Zhang et al. 2019: adv.steps KL steps; CE at x + adv.trades_beta x KL(p(x) || p(x'))", "trades",
        lambda m, a, b, g: TradesAdversary(m, a.norm, a.eps, a.steps, a.step_size, bounds=b, generator=g),
        lambda a: a.steps, trades=True),
    "fgsm": AdversaryEntry(
        "Wong et al. 2020: FGSM from a random start in the eps-ball, one 1.25 eps step, projected", "fgsm",
        lambda m, a, b, g: fgsm(m, a.norm, a.eps, bounds=b, generator=g), lambda a: 1, single_step=True),
    "n-fgsm": AdversaryEntry(
        "de Jorge et al. 2022: noise of radius 2 eps, one eps step, not projected back to the eps-ball", "n-fgsm",
        lambda m, a, b, g: nfgsm(m, a.norm, a.eps, bounds=b, generator=g), lambda a: 1, single_step=True),
}


def adversary_names() -> str:
    """'none, pgd, trades, fgsm or n-fgsm': for messages and help."""
    names = [NONE, *ADVERSARIES]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def known_adversary(name: str) -> bool:
    return name == NONE or name in ADVERSARIES
