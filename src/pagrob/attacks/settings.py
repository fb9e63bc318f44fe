"""The one list of evaluation attacks and the one value that carries an attack's settings.

`ATTACKS` is read by config validation, the CLI's choices and help, and the evaluator's dispatch alike.
`AttackSettings` travels down every layer (evaluate -> guards -> the attack) as one frozen value, is
validated once when it is made, and is written whole into results.json so a number says how it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pagrob.attacks.checks import NORMS
from pagrob.attacks.library import COMPONENTS, VERSIONS, budget_label, get_version
from pagrob.attacks.pgd import LOSSES

ATTACKS: dict[str, str] = {
    "autoattack": "AutoAttack: APGD-CE, APGD-T, FAB-T, Square in sequence (torchattacks), at the --version budget",
    "pgd": "pagrob's evaluation PGD: eval.pgd_steps steps, eval.pgd_restarts restarts, each with cross-entropy "
           "and the margin loss",
    "apgd-ce": "AutoAttack's APGD with cross-entropy, alone",
    "apgd-t": "AutoAttack's targeted APGD (DLR loss), alone",
    "fab-t": "AutoAttack's targeted FAB, alone",
    "square": "AutoAttack's black-box Square, alone",
    "apgd-dlr": "APGD with the DLR loss, alone",
}
assert set(COMPONENTS) <= set(ATTACKS), "every library component is an attack name"


@dataclass(frozen=True)
class AttackSettings:
    """Everything that decides what an attack does, except the model and the images."""

    attack: str = "autoattack"
    norm: str = "l2"
    eps: float = 0.5
    version: str = "standard"  # AutoAttack budget; also the Square budget of the black-box guard
    pgd_steps: int = 100
    pgd_restarts: int = 3
    pgd_losses: tuple[str, ...] = LOSSES
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack '{self.attack}': use {', '.join(ATTACKS)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got '{self.norm}'")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps} (eps 0 is the clean accuracy)")
        get_version(self.version)
        if self.pgd_steps < 1 or self.pgd_restarts < 1:
            raise ValueError("PGD steps and restarts must be >= 1")
        if not self.pgd_losses or any(loss not in LOSSES for loss in self.pgd_losses):
            raise ValueError(f"PGD losses must be among {', '.join(LOSSES)}, got {list(self.pgd_losses)}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")

    def with_(self, **changes) -> AttackSettings:
        return dataclasses.replace(self, **changes)

    def budget(self, component: str) -> str:
        """What sets a component's strength, for file names and labels: PGD's steps/restarts/losses, else the version."""
        if component == "pgd":
            return f"{self.pgd_steps}x{self.pgd_restarts}-{'+'.join(self.pgd_losses)}"
        return budget_label(self.version, component)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pgd_losses"] = list(self.pgd_losses)
        if self.attack != "pgd":  # only what the attack read
            for k in ("pgd_steps", "pgd_restarts", "pgd_losses"):
                d.pop(k)
        return d


__all__ = ["ATTACKS", "AttackSettings", "NORMS", "VERSIONS"]
