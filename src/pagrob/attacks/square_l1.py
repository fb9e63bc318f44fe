"""A black-box random search under L1, in the spirit of Square attack's L1 variant (Croce & Hein, ICML 2021;
Croce et al., AAAI 2022, "Sparse-RS").

It never reads a gradient, so a model that only hides its gradients (shattered, saturated, zero) does not stop it:
that is what the black-box guard needs (torchattacks' Square serves L2 and L-inf only). Each query moves the
perturbation's mass in two random square windows (all channels) into the first of them, topped up to the full L1
budget, with one random sign per channel, spread over the window in proportion to the room each pixel has toward
that sign's wall; the proposal is kept when it raises the margin (best other logit minus the true one). Windows
shrink over the queries on Square attack's schedule, so early queries move large blobs and late ones single pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pagrob.attacks.checks import norms, project
from pagrob.attacks.pgd import margin

WINDOW_SHARE = 0.3  # share of the pixels in the first windows
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # Square's schedule, on a 10,000-query scale


def window_side(query: int, queries: int, pixels: int) -> int:
    """The side of the square windows at `query` of `queries`: the share halves at each point of the schedule."""
    at = query * 10_000 / queries
    share = WINDOW_SHARE / 2 ** sum(at > h for h in HALVINGS)
    return max(1, round((share * pixels) ** 0.5))


def window(n: int, height: int, width: int, side: int, generator: torch.Generator) -> Tensor:
    """(n, 1, height, width) masks, each one random side x side square (clipped to the image's shape)."""
    h, w = min(side, height), min(side, width)
    top = torch.randint(0, height - h + 1, (n, 1, 1, 1), generator=generator)
    left = torch.randint(0, width - w + 1, (n, 1, 1, 1), generator=generator)
    rows = torch.arange(height).view(1, 1, -1, 1)
    cols = torch.arange(width).view(1, 1, 1, -1)
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


class SquareL1:
    """Random search for adversarial examples in the L1 ball of radius `eps` and `bounds`, `queries` model
    queries per image (one forward pass per query over the images still standing).

    Images (N, C, H, W), or vectors (N, D) searched as one row of pixels. Returns x_adv in the ball and bounds;
    images it cannot fool come back unchanged. Deterministic given `seed`; the global random state is not touched.
    """

    def __init__(self, model: nn.Module, eps: float, queries: int = 5000,
                 bounds: tuple[float, float] | None = (0.0, 1.0), seed: int = 0):
        if eps < 0 or queries < 1:
            raise ValueError(f"need eps >= 0 and queries >= 1, got {eps} and {queries}")
        self.model, self.eps, self.queries, self.bounds, self.seed = model, eps, queries, bounds, seed

    def _propose(self, x: Tensor, x_adv: Tensor, side: int, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        to, source = (window(n, h, w, side, generator).to(x.device) for _ in range(2))
        kept = (x_adv - x) * ~(to | source)
        mass = (self.eps - norms(kept, "l1")).clamp_min(0)
        signs = (torch.randint(0, 2, (n, c, 1, 1), generator=generator) * 2 - 1).to(x)
        if self.bounds is None:
            room = torch.ones_like(x)
        else:
            room = torch.where(signs > 0, self.bounds[1] - x, x - self.bounds[0])
        room = room * to
        share = room / room.flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return project(x, x + kept + signs * share * mass.view(-1, 1, 1, 1), "l1", self.eps, self.bounds)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0 or len(x) == 0:
            return x.clone()
        generator = torch.Generator().manual_seed(self.seed)
        images = x if x.dim() == 4 else x.reshape(len(x), 1, 1, -1)
        pixels = images.shape[2] * images.shape[3]
        best = self._propose(images, images, window_side(0, self.queries, pixels), generator)
        with torch.no_grad():
            best_margin = margin(self.model(best.view_as(x)), y)
            for query in range(1, self.queries):
                idx = (best_margin <= 0).nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                side = window_side(query, self.queries, pixels)
                candidate = self._propose(images[idx], best[idx], side, generator)
                value = margin(self.model(candidate.view(-1, *x.shape[1:])), y[idx])
                better = value > best_margin[idx]
                best[idx[better]], best_margin[idx[better]] = candidate[better], value[better]
        fooled = (best_margin > 0).view(-1, *([1] * (images.dim() - 1)))
        return torch.where(fooled, best, images).view_as(x)
