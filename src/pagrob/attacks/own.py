"""Norms the library attacks do not cover, each with the components pagrob implements for it (`OWN_NORMS`).

torchattacks' APGD, FAB and Square attack L2 and L-inf only. Under L1, AutoAttack's components are ours: APGD-CE
and APGD-T in their L1 form (Croce & Hein 2021, `pagrob.attacks.apgd_l1`), at the budget of the AutoAttack
version asked for (steps, targets), and Square's L1 form (random search moving mass between square windows,
`pagrob.attacks.square_l1`) at its query budget, as AutoAttack's L1 version runs it. The evaluator builds an attack through this registry whenever the norm is
one of its keys; a component a norm lacks is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from pagrob.attacks.apgd_l1 import APGDL1
from pagrob.attacks.library import Version
from pagrob.attacks.square_l1 import SquareL1

Attack = Callable[[Tensor, Tensor], Tensor]
Bounds = tuple[float, float] | None


@dataclass(frozen=True)
class OwnNorm:
    components: tuple[str, ...]
    make: Callable[[str, nn.Module, float, int, Bounds, Version, int], Attack]  # (name, model, eps, C, bounds, ...)


def _l1(name: str, model: nn.Module, eps: float, num_classes: int, bounds: Bounds, version: Version,
        seed: int) -> Attack:
    if name == "square":
        return SquareL1(model, eps, version.queries, bounds, seed)
    return APGDL1(model, eps, name, version.steps, min(version.targets, num_classes - 1), bounds, seed)


OWN_NORMS: dict[str, OwnNorm] = {
    "l1": OwnNorm(("apgd-ce", "apgd-t", "square"), _l1),
}
