"""The one list of learning-rate schedules (`optim.schedule`): each maps an optimizer step to a factor of optim.lr.

Schedules count optimizer steps, not epochs, so a run whose length is set in minutes (`optim.minutes`) or pinned in
steps (`optim.steps`) anneals over exactly the steps it takes. `optim.warmup` (a fraction of the steps) ramps any
schedule up linearly first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """How long a run trains: `total` optimizer steps of `per_epoch` batches each epoch."""

    total: int
    per_epoch: int
    milestones: tuple[float, ...] = ()  # fractions of the epochs where `step` divides the rate by 10
    warmup: float = 0.0  # fraction of the steps ramped up linearly


def _step(step: int, plan: Plan) -> float:
    """x0.1 at each milestone, on an epoch boundary (the rounding of the epoch-counted schedule it replaced)."""
    epochs = plan.total / plan.per_epoch
    bounds = {max(1, round(m * epochs)) * plan.per_epoch for m in plan.milestones}
    return 0.1 ** sum(step >= b for b in bounds)


def _onecycle(step: int, plan: Plan) -> float:
    """After the warm-up, linear decay to 0 at the last step (airbench's one-cycle)."""
    start = round(plan.warmup * plan.total)
    return max(0.0, (plan.total - step) / max(1, plan.total - start)) if step >= start else 1.0


SCHEDULES: dict[str, Callable[[int, Plan], float]] = {"step": _step, "onecycle": _onecycle}


def lr_factor(name: str, step: int, plan: Plan) -> float:
    """The factor of optim.lr at optimizer step `step` (0-based): warm-up times the named schedule."""
    ramp = round(plan.warmup * plan.total)
    warm = min(1.0, (step + 1) / ramp) if ramp else 1.0
    return warm * SCHEDULES[name](step, plan)
