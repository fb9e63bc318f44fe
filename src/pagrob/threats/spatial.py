"""Spatial transforms (Engstrom et al. 2019, "Exploring the landscape of spatial robustness"): the exact worst case
over a grid of rotations and translations.

No gradient is involved: every transform of the grid is tried, so there is nothing to mask. An image counts as
robust only if the model classifies it correctly under every one of them. Convention, stated once: rotation about
the image centre, then translation by whole pixels, sampled bilinearly, with the pixels that enter from outside
the frame black (zero padding), as Engstrom et al. do. The grid is ±30° in 5° steps and ±3 px in 1 px steps per
axis for 32-pixel images (13 × 7 × 7 = 637 transforms); the translation range scales with the image's height
(at least 1 px). Images are tried transform by transform and dropped at the first that fools the model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob import console
from pagrob.outcomes import FOOLED, SURVIVED, OutcomeStore, pending

MAX_DEGREES = 30
DEGREE_STEP = 5
MAX_SHIFT_32 = 3  # pixels, for 32-pixel images


@dataclass(frozen=True)
class Grid:
    """Every (degrees, dx, dy) tried; the identity first (a misclassified clean image is not robust)."""

    degrees: tuple[float, ...]
    shifts: tuple[int, ...]

    def transforms(self) -> list[tuple[float, int, int]]:
        rest = [(a, dx, dy) for a in self.degrees for dx in self.shifts for dy in self.shifts if (a, dx, dy) != (0, 0, 0)]
        return [(0.0, 0, 0)] + rest

    def describe(self) -> str:
        return (f"rotations {', '.join(f'{a:g}' for a in self.degrees)}° × translations {min(self.shifts)}.."
                f"{max(self.shifts)} px per axis ({len(self.transforms())} transforms), bilinear, black padding")


def default_grid(height: int) -> Grid:
    shift = max(1, round(MAX_SHIFT_32 * height / 32))
    return Grid(tuple(float(a) for a in range(-MAX_DEGREES, MAX_DEGREES + 1, DEGREE_STEP)),
                tuple(range(-shift, shift + 1)))


def rotate_translate(x: Tensor, degrees: float, dx: int, dy: int) -> Tensor:
    """x (N, C, H, W) rotated by `degrees` (counter-clockwise) about its centre, then moved dx px right and dy px
    down; black where the frame shows what was outside. Whole-pixel moves of an unrotated image are exact."""
    n, _, h, w = x.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # affine_grid maps output coordinates (normalised to [-1, 1], y down) to the input points they sample:
    # p_in = R^-1 (p_out - t), R the on-screen counter-clockwise turn, t the translation in normalised units.
    tx, ty = 2 * dx / w, 2 * dy / h
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype)
    theta[:, 2] = -(theta[:, :2] @ torch.tensor([tx, ty], dtype=x.dtype))
    grid = F.affine_grid(theta.to(x.device).expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def spatial_robust(model: nn.Module, x: Tensor, y: Tensor, grid: Grid, store: OutcomeStore, batch_size: int = 256,
                   progress: bool = True) -> Tensor:
    """Per image: correct under every transform of `grid` (bool, n). Saved per batch of images: resumes."""
    n = len(x)
    key = {"component": "spatial", "grid": grid.describe()}
    outcomes = store.open_named(f"spatial-{len(grid.transforms())}-n{n}", key, n)
    batches = pending(outcomes, None, batch_size)
    transforms = grid.transforms()
    start = time.perf_counter()
    bar = console.bar(total=n, initial=n - sum(len(b) for b in batches), desc="spatial grid", unit="img",
                      leave=False, enabled=progress)
    for batch in batches:
        b = batch.to(x.device)
        xb, yb = x[b], y[b]
        standing = torch.ones(len(b), dtype=torch.bool, device=x.device)
        for degrees, dx, dy in transforms:
            idx = standing.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            with torch.no_grad():
                ok = model(rotate_translate(xb[idx], degrees, dx, dy)).argmax(1) == yb[idx]
            standing[idx[~ok]] = False
        outcomes.update(batch, torch.where(standing.cpu(), SURVIVED, FOOLED), None)
        bar.update(len(batch))
    bar.close()
    robust = torch.tensor(outcomes.codes) == SURVIVED
    console.line(f"spatial: robust {100 * robust.float().mean().item():.1f}% over {len(transforms)} transforms "
                 f"({time.perf_counter() - start:.1f} s)", progress)
    return robust
