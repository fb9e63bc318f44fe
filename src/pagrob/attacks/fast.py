"""Single-step adversaries for cheap adversarial training: one gradient step from a random start.

`FGSM` with random start (Wong, Rice & Kolter 2020, "Fast is better than free"): start uniformly in the eps-ball,
one step of 1.25 eps, projected back to the ball and the valid range. Cheap, but prone to catastrophic
overfitting: the model learns to defeat this one step while a multi-step attack fools it (see the `collapse`
guard in `pagrob.guards`).

`NFGSM` (de Jorge et al. 2022, "Make some noise"): stronger noise, uniform of radius 2 eps, one step of eps, and
no projection back to the eps-ball (only the valid range): the perturbation may reach 3 eps, which the authors
found avoids catastrophic overfitting without extra cost.

Steps are signs under L-inf and normalised gradients under L2; the gradient is the cross-entropy's, scaled as in
our PGD so a confident model's gradient does not round to zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pagrob.attacks.checks import project
from pagrob.attacks.pgd import ascent_direction, steepest, uniform_ball


class SingleStep:
    """`attack(x, y) -> x'`: uniform noise of radius `noise` x eps, one step of `step` x eps; with `projected`,
    back into the eps-ball. Always clipped to `bounds`. Draws its noise from `generator`."""

    def __init__(self, model: nn.Module, norm: str, eps: float, noise: float, step: float, projected: bool,
                 bounds: tuple[float, float] | None = (0.0, 1.0), generator: torch.Generator | None = None):
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be l2 or linf, got '{norm}'")
        self.model, self.norm, self.eps, self.noise, self.step = model, norm, eps, noise, step
        self.projected, self.bounds, self.generator = projected, bounds, generator

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        start = x + uniform_ball(x.shape, self.norm, self.noise * self.eps, self.generator).to(x.device, x.dtype)
        if self.bounds is not None:
            start = start.clamp(*self.bounds)
        x_adv = start + self.step * self.eps * steepest(ascent_direction(self.model, start, y), self.norm)
        if self.projected:
            return project(x, x_adv, self.norm, self.eps, self.bounds).detach()
        return (x_adv.clamp(*self.bounds) if self.bounds is not None else x_adv).detach()


def fgsm(model: nn.Module, norm: str, eps: float, bounds: tuple[float, float] | None = (0.0, 1.0),
         generator: torch.Generator | None = None) -> SingleStep:
    """FGSM with random start (Wong et al. 2020): noise in the eps-ball, a 1.25 eps step, projected."""
    return SingleStep(model, norm, eps, noise=1.0, step=1.25, projected=True, bounds=bounds, generator=generator)


def nfgsm(model: nn.Module, norm: str, eps: float, bounds: tuple[float, float] | None = (0.0, 1.0),
          generator: torch.Generator | None = None) -> SingleStep:
    """N-FGSM (de Jorge et al. 2022): noise of radius 2 eps, an eps step, not projected back to the eps-ball."""
    return SingleStep(model, norm, eps, noise=2.0, step=1.0, projected=False, bounds=bounds, generator=generator)
