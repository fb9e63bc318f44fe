"""Attacks with one interface, `attack(x, y) -> x_adv`, inputs in pixel space.

Our PGD is used inside training and for quick checks; standard evaluation attacks come from a
maintained library through adapters (see `pagrob.attacks.library`).
"""

from pagrob.attacks.checks import PerturbationError, check_perturbation, project
from pagrob.attacks.pgd import PGD

__all__ = ["PGD", "PerturbationError", "check_perturbation", "project"]
