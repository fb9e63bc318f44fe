"""Projected gradient descent (Madry et al., 2018) under L2 or L-infinity, with random start and restarts.

Maximises cross-entropy by default (`loss="margin"`: the best other logit minus the true one, which does not
saturate); `targeted=True` instead moves toward the given labels (used for the large-eps pictures that show
perceptually aligned gradients). `EvalPGD` is the evaluation attack: restarts, both losses, and per image the
first iterate that fooled the model; the plain `PGD` inside adversarial training stays one cheap run.

Each step moves along the cross-entropy's input-gradient divided by 1 - p_y (`log_softmax_cotangents`): the
same step (L2 steps are normalised, L-inf steps are signs), but it does not vanish in float32 where a
confident model's softmax rounds to one-hot, which would stall the attack: gradient masking by rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob.attacks.checks import norms, project
from pagrob.losses import log_softmax_cotangents


LOSSES = ("ce", "margin")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Best other logit minus the true one (CW / DLR-style): positive exactly when the model is fooled."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return others - logits.gather(1, y[:, None]).squeeze(1)


def uniform_ball(shape: torch.Size, norm: str, radius: float, generator: torch.Generator | None) -> Tensor:
    """Noise drawn uniformly from the norm ball of `radius` (on the CPU, so a seeded generator draws the same
    numbers on every device)."""
    if norm == "linf":
        return (torch.rand(shape, generator=generator) * 2 - 1) * radius
    direction = torch.randn(shape, generator=generator)
    direction = direction / norms(direction, "l2").view(-1, *([1] * (len(shape) - 1)))
    d = math.prod(shape[1:])
    size = radius * torch.rand(shape[0], generator=generator) ** (1.0 / d)
    return direction * size.view(-1, *([1] * (len(shape) - 1)))


def steepest(grad: Tensor, norm: str) -> Tensor:
    """The unit step of steepest ascent under the norm: signs for L-inf, the normalised gradient for L2."""
    if norm == "linf":
        return grad.sign()
    size = norms(grad, "l2").view(-1, *([1] * (grad.dim() - 1)))
    return grad / torch.where(size > 0, size, torch.ones_like(size))


def ascent_direction(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The input-gradient of the cross-entropy at x, scaled by 1 / (1 - p_y) so it does not round to zero."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits, x, log_softmax_cotangents(logits, y[:, None])[0])
    return -grad


class PGD:
    """PGD attack. `step_size` 0 means 2.5 * eps / steps. Keeps, per image, the first restart that fools the model;
    with `first_success`, also the first iterate within a run that does (no later step can undo it)."""

    def __init__(self, model: nn.Module, norm: str = "l2", eps: float = 0.5, steps: int = 20, step_size: float = 0.0,
                 random_start: bool = True, restarts: int = 1, bounds: tuple[float, float] | None = (0.0, 1.0),
                 targeted: bool = False, generator: torch.Generator | None = None, loss: str = "ce",
                 first_success: bool = False):
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be l2 or linf, got '{norm}'")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if loss not in LOSSES:
            raise ValueError(f"PGD loss must be one of {', '.join(LOSSES)}, got '{loss}'")
        self.model, self.norm, self.eps, self.steps = model, norm, eps, steps
        self.step_size = step_size or 2.5 * eps / steps
        self.random_start, self.restarts, self.bounds = random_start, restarts, bounds
        self.targeted, self.generator, self.loss, self.first_success = targeted, generator, loss, first_success

    def _random_start(self, x: Tensor) -> Tensor:
        noise = uniform_ball(x.shape, self.norm, self.eps, self.generator)
        return project(x, x + noise.to(x.device, x.dtype), self.norm, self.eps, self.bounds)

    def _step(self, grad: Tensor) -> Tensor:
        return steepest(grad, self.norm)

    def _run(self, x: Tensor, y: Tensor) -> Tensor:
        x_adv = self._random_start(x) if self.random_start and self.eps > 0 else x.clone()
        sign = 1.0 if self.targeted else -1.0  # along grad log p(y | x) toward a target, against it otherwise
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device) if self.first_success else None
        kept = x_adv.clone() if self.first_success else None
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            logits = self.model(x_adv)
            if found is not None:  # the forward pass is already paid for: keep what fooled the model
                new = self._reached(logits, y) & ~found
                kept[new], found = x_adv.detach()[new], found | new
            if self.loss == "ce":
                (grad,) = torch.autograd.grad(logits, x_adv, log_softmax_cotangents(logits, y[:, None])[0])
            else:  # the true logit's lead over the best other one, the margin's opposite: same sign as log p(y|x)
                (grad,) = torch.autograd.grad(-margin(logits, y).sum(), x_adv)
            x_adv = project(x, x_adv.detach() + sign * self.step_size * self._step(grad), self.norm, self.eps,
                            self.bounds)
        x_adv = x_adv.detach()
        return x_adv if found is None else torch.where(found.view(-1, *([1] * (x.dim() - 1))), kept, x_adv)

    def _reached(self, logits: Tensor, y: Tensor) -> Tensor:
        return (logits.argmax(1) == y) if self.targeted else (logits.argmax(1) != y)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        best = self._run(x, y)
        for _ in range(self.restarts - 1):
            with torch.no_grad():
                done = self._reached(self.model(best), y)
            if done.all():
                break
            candidate = self._run(x, y)
            best = torch.where(done.view(-1, *([1] * (x.dim() - 1))), best, candidate)
        return best


class EvalPGD:
    """The evaluation PGD: `restarts` rounds, each running every loss in `losses` (cross-entropy and the margin by
    default) from a fresh random start on the images no earlier run fooled, keeping each run's first fooling iterate.

    Cross-entropy and the margin fail on different images (saturated softmax, flat margins), and restarts escape
    bad starting points: a robust number from this attack is much harder to beat than from one CE run.
    Deterministic given `generator`.
    """

    def __init__(self, model: nn.Module, norm: str, eps: float, steps: int = 100, restarts: int = 3,
                 losses: tuple[str, ...] = LOSSES, bounds: tuple[float, float] | None = (0.0, 1.0),
                 generator: torch.Generator | None = None):
        self.runs = [PGD(model, norm, eps, steps, bounds=bounds, generator=generator, loss=loss, first_success=True)
                     for _ in range(restarts) for loss in losses]
        self.model = model

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        best = x.clone()
        standing = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for attack in self.runs:
            idx = standing.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            x_adv = attack(x[idx], y[idx])
            with torch.no_grad():
                fooled = self.model(x_adv).argmax(1) != y[idx]
            best[idx[fooled]] = x_adv[fooled]
            standing[idx[fooled]] = False
        return best
