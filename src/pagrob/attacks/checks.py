"""The eps-ball and valid-range projection, and the check every adversarial example must pass."""

from __future__ import annotations

import torch
from torch import Tensor

from pagrob.errors import PerturbationError

NORMS = ("l1", "l2", "linf")


def norms(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


def movable(grad: Tensor, at: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """`grad` without the coordinates where `at` sits on a wall of the range and `grad` pushes outward: a step
    there is clipped away, so those coordinates should take no share of a step nor count toward its reach."""
    if bounds is None:
        return grad
    return grad.masked_fill(((at <= bounds[0]) & (grad < 0)) | ((at >= bounds[1]) & (grad > 0)), 0)


def project(x: Tensor, x_adv: Tensor, norm: str, eps: float | Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """Nearest point (per norm) of the eps-ball around x, then clipped to the valid range. `eps` is one radius or
    one per image (N,).

    For L1 the result is the exact Euclidean projection onto the ball intersected with the range (`project_l1`):
    clipping after projecting onto the ball alone would give back mass the box then removes, leaving points well
    inside the ball (Croce & Hein, 2021)."""
    if norm == "l1":
        return project_l1(x, x_adv, eps, bounds)
    delta = x_adv - x
    shape = (-1, *([1] * (x.dim() - 1)))
    if isinstance(eps, Tensor):
        eps = eps.to(delta).view(shape)
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / norms(delta, "l2").clamp_min(1e-12).view(shape)).clamp(max=1.0)
    out = x + delta
    return out.clamp(*bounds) if bounds is not None else out


def l1_threshold(size: Tensor, cap: Tensor | None, eps: Tensor) -> Tensor:
    """Per row, the lam >= 0 with sum_i min(max(size_i - lam, 0), cap_i) = eps (0 when lam = 0 already fits).

    The sum g(lam) is piecewise linear and non-increasing, with kinks at size_i (a coordinate starts to count)
    and size_i - cap_i (it stops being capped). Sorting the kinks in decreasing order, g at the k-th kink is a
    running sum, and lam lies on the segment where g first reaches eps, found by linear interpolation: exact,
    batched, no iteration. Rows (N, D) of float64 in, (N,) out.
    """
    points = size if cap is None else torch.cat([size, size - cap], 1)
    signs = torch.ones_like(size) if cap is None else torch.cat([torch.ones_like(size), -torch.ones_like(cap)], 1)
    kinks, order = points.sort(1, descending=True)
    signs = signs.gather(1, order)
    slope = signs.cumsum(1)  # -dg/dlam just below each kink: counted minus capped coordinates
    mass = (signs * kinks).cumsum(1)
    at_kinks = mass - kinks * slope  # g(kinks), non-decreasing along the row
    first = (at_kinks < eps[:, None]).sum(1)  # first kink where g >= eps; g(largest kink) = 0
    seg = (first - 1).clamp(0, points.shape[1] - 1)[:, None]
    lam = (mass.gather(1, seg) - eps[:, None]) / slope.gather(1, seg).clamp_min(1)
    fits = (size if cap is None else torch.minimum(size, cap)).sum(1) <= eps
    return torch.where(fits, torch.zeros_like(eps), lam.squeeze(1).clamp_min(0))


def project_l1(x: Tensor, x_adv: Tensor, eps: float | Tensor, bounds: tuple[float, float] | None) -> Tensor:
    """The Euclidean projection of x_adv onto {z : ||z - x||_1 <= eps, z in bounds}, exactly (float64 inside).

    By the KKT conditions the answer soft-thresholds the change by one lam per image and clips it to the box:
    delta_i = sign(w_i) min(max(|w_i| - lam, 0), cap_i) with cap_i the room toward the box wall on w_i's side
    (Croce & Hein, 2021, "Mind the box"); without bounds it is the plain L1-ball projection (Duchi et al., 2008).
    """
    flat = (x_adv - x).flatten(1).double()
    size = flat.abs()
    cap = None
    if bounds is not None:
        lo, hi = bounds
        base = x.flatten(1).double()
        cap = torch.where(flat > 0, hi - base, base - lo).clamp_min(0)
    radius = (eps.to(flat) if isinstance(eps, Tensor) else torch.full((len(flat),), float(eps), dtype=flat.dtype,
                                                                        device=flat.device))
    lam = l1_threshold(size, cap, radius)
    kept = (size - lam[:, None]).clamp_min(0)
    if cap is not None:
        kept = torch.minimum(kept, cap)
    out = x + (flat.sign() * kept).view_as(x).to(x.dtype)
    return out.clamp(*bounds) if bounds is not None else out


def check_perturbation(x: Tensor, x_adv: Tensor, norm: str, eps: float, bounds: tuple[float, float] | None,
                       tol: float = 1e-4) -> None:
    """Raise PerturbationError unless every x_adv is finite, within eps (plus float slack) of x, and in bounds."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got '{norm}'")
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
