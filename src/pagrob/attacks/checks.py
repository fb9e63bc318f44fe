"""The eps-ball and valid-range projection, and the check every adversarial example must pass."""

from __future__ import annotations

import torch
from torch import Tensor

from pagrob.errors import PerturbationError


def norms(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def project(x: Tensor, x_adv: Tensor, norm: str, eps: float, bounds: tuple[float, float] | None) -> Tensor:
    """Nearest point (per norm) of the eps-ball around x, then clipped to the valid range."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        scale = (eps / norms(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale.view(-1, *([1] * (x.dim() - 1)))
    out = x + delta
    return out.clamp(*bounds) if bounds is not None else out


def check_perturbation(x: Tensor, x_adv: Tensor, norm: str, eps: float, bounds: tuple[float, float] | None,
                       tol: float = 1e-4) -> None:
    """Raise PerturbationError unless every x_adv is finite, within eps (plus float slack) of x, and in bounds."""
    if x_adv.shape != x.shape:
        raise PerturbationError(f"adversarial batch has shape {tuple(x_adv.shape)}, inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise PerturbationError("adversarial examples contain NaN or Inf")
    size = norms((x_adv - x).double(), norm)
    slack = tol * max(eps, 1e-3) + 1e-6
    over = size > eps + slack
    if over.any():
        raise PerturbationError(f"{int(over.sum())} of {len(x)} adversarial examples leave the {norm} ball of "
                                f"radius {eps:g} (largest {float(size.max()):.6g})")
    if bounds is not None:
        lo, hi = bounds
        outside = (x_adv < lo - 1e-6) | (x_adv > hi + 1e-6)
        if outside.any():
            raise PerturbationError(f"{int(outside.flatten(1).any(1).sum())} adversarial examples leave the valid "
                                    f"range [{lo}, {hi}] (min {float(x_adv.min()):.4g}, max {float(x_adv.max()):.4g})")
