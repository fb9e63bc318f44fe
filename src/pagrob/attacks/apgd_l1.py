"""APGD under L1 (Croce & Hein, ICML 2021, "Mind the box: l1-APGD for sparse adversarial attacks").

The L1 ball's steepest-ascent step moves one coordinate, and a dense step (normalised gradient, then projection)
spends its budget spread thin: both are weak. l1-APGD moves the k coordinates with the largest gradient that can
still move (a pixel at a wall of [0, 1] pushed outward cannot), each by the same amount, and projects exactly onto
the L1 ball intersected with the box (`project_l1`). k follows the sparsity of the best point found so far; the
step size shrinks at checkpoints, or resets to eps when the best point grew sparser (which also restarts from it).
APGD's momentum is left out, as in the authors' released code: on digits models it fooled 2-3 % fewer images.

Two losses, under AutoAttack's component names: "apgd-ce" (cross-entropy) and "apgd-t" (the targeted DLR loss,
once per target among the `targets` classes the model ranks highest after the true one).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob.attacks.checks import movable, project

COMPONENTS = ("apgd-ce", "apgd-t")
INITIAL_FRACTION = 0.05  # share of coordinates the first steps move
CHECKPOINT_FRACTION = 0.04  # a checkpoint every 4 % of the steps
STEP_SHRINK = 1.5  # step size divided by this at a checkpoint ...
MIN_STEP = 0.1  # ... down to this fraction of eps
SPARSER = 0.95  # the best point "grew sparser" when it moves fewer than this share of the coordinates it moved
SPARSITY_MARGIN = 1.5  # k = nonzero coordinates of the best perturbation / this


def sparse_step(grad: Tensor, k: Tensor, at: Tensor | None = None, bounds: tuple[float, float] | None = None
                ) -> Tensor:
    """Unit-L1 ascent direction: the signs of the k (per image, (N,)) largest gradient entries, split evenly.

    With `at` and `bounds`, coordinates at a wall whose gradient points out of the box are left out: their share
    of the step would be clipped away (Croce & Hein, 2021). Ties at the k-th size are all taken."""
    g = (grad if at is None else movable(grad, at, bounds)).flatten(1)
    size = g.abs()
    kth = size.sort(1, descending=True).values.gather(1, (k.clamp(1, g.shape[1]) - 1).long()[:, None])
    step = g.sign() * ((size >= kth) & (size > 0))
    return (step / step.abs().sum(1, keepdim=True).clamp_min(1)).view_as(grad)


def ce_score(logits: Tensor, y: Tensor) -> Tensor:
    """log-sum-exp of the other logits minus the true one: cross-entropy is softplus of this, so the two rise and
    fall together, but this neither saturates nor loses its gradient where softmax rounds to one-hot."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.logsumexp(1) - logits.gather(1, y[:, None]).squeeze(1)


def targeted_dlr(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Croce & Hein's targeted DLR loss: (z_t - z_y) / (z_1 - (z_3 + z_4) / 2), invariant to logit scale."""
    top = logits.sort(1, descending=True).values
    gap = logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])
    return gap.squeeze(1) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


class APGDL1:
    """l1-APGD: `name` "apgd-ce" or "apgd-t" (needs 4 classes), `steps` iterations per run, one run for
    "apgd-ce" and one per target class for "apgd-t", on the images no earlier run fooled.

    Returns x_adv inside the L1 ball of radius `eps` around x and within `bounds`; images it cannot fool (and
    those already misclassified) come back unchanged. Deterministic given `seed`; the global random state is
    not touched (the random starts come from a generator of their own).
    """

    def __init__(self, model: nn.Module, eps: float, name: str = "apgd-ce", steps: int = 100, targets: int = 9,
                 bounds: tuple[float, float] | None = (0.0, 1.0), seed: int = 0):
        if name not in COMPONENTS:
            raise ValueError(f"unknown L1 APGD component '{name}': use {', '.join(COMPONENTS)}")
        if eps < 0 or steps < 1 or targets < 1:
            raise ValueError(f"need eps >= 0, steps >= 1 and targets >= 1, got {eps}, {steps}, {targets}")
        self.model, self.eps, self.name, self.steps, self.targets = model, eps, name, steps, targets
        self.bounds, self.seed = bounds, seed

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x_adv = x.clone()
        if self.eps == 0 or len(x) == 0:
            return x_adv
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            logits = self.model(x)
        standing = logits.argmax(1) == y
        if self.name == "apgd-t" and logits.shape[1] < 4:
            raise ValueError(f"apgd-t needs at least 4 classes, the model has {logits.shape[1]}: use apgd-ce")
        ranked = logits.argsort(1, descending=True)  # apgd-t's targets: the classes ranked next after the first
        targets = [None] if self.name == "apgd-ce" else range(1, min(self.targets, logits.shape[1] - 1) + 1)
        for rank in targets:
            idx = standing.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            loss = (partial(ce_score, y=y[idx]) if rank is None else
                    partial(targeted_dlr, y=y[idx], target=ranked[idx, rank]))
            found, fooled = self._run(x[idx], y[idx], loss, generator)
            x_adv[idx[fooled]] = found[fooled]
            standing[idx[fooled]] = False
        return x_adv

    def _loss_and_grad(self, x_adv: Tensor, loss: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x_adv = x_adv.detach().requires_grad_(True)
        logits = self.model(x_adv)
        value = loss(logits)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        return value.detach(), grad, logits.detach()

    def _run(self, x: Tensor, y: Tensor, loss: Callable[[Tensor], Tensor], generator: torch.Generator
             ) -> tuple[Tensor, Tensor]:
        """One l1-APGD run: (an adversarial iterate per image, or x; which images were fooled)."""
        n, d = len(x), x[0].numel()
        view = (-1, *([1] * (x.dim() - 1)))
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x_adv = project(x, x + noise, "l1", self.eps, self.bounds)
        value, grad, logits = self._loss_and_grad(x_adv, loss)
        fooled = logits.argmax(1) != y
        adv = torch.where(fooled.view(view), x_adv, x)
        best, best_value, best_grad = x_adv.clone(), value.clone(), grad.clone()
        step = torch.full((n,), self.eps, dtype=x.dtype, device=x.device)
        fraction = torch.full((n,), INITIAL_FRACTION, device=x.device)
        moved_before = torch.full((n,), float(d), device=x.device)
        period = max(1, round(CHECKPOINT_FRACTION * self.steps))
        for i in range(self.steps):
            k = (fraction * d).ceil().long()
            x_adv = project(x, x_adv + step.view(view) * sparse_step(grad, k, x_adv, self.bounds), "l1", self.eps,
                            self.bounds)
            value, grad, logits = self._loss_and_grad(x_adv, loss)
            now = logits.argmax(1) != y
            adv[now] = x_adv[now]
            fooled |= now
            better = value > best_value
            best[better], best_value[better], best_grad[better] = x_adv[better], value[better], grad[better]
            if (i + 1) % period == 0:
                moved = (best != x).flatten(1).sum(1).float()
                sparser = moved < SPARSER * moved_before
                fraction = moved / d / SPARSITY_MARGIN
                step = torch.where(sparser, torch.full_like(step, self.eps), step / STEP_SHRINK).clamp(
                    MIN_STEP * self.eps, self.eps)
                moved_before = moved
                x_adv[sparser], grad[sparser] = best[sparser], best_grad[sparser]
        return adv, fooled
