"""The TRADES inner maximisation (Zhang et al., 2019, "Theoretically Principled Trade-off between Robustness
and Accuracy"): projected steps that push the prediction at x' away from the prediction at x.

It maximises KL(p(x) || p(x')) instead of the cross-entropy with the label, so it needs no label and
attacks what TRADES penalises: the change of the output distribution inside the eps-ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob.attacks.checks import norms, project

START_SCALE = 1e-3  # the KL's gradient is zero at x' = x, so steps start from a tiny Gaussian perturbation


def _direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / norms(grad, "l2").clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))


class TradesAdversary:
    """`adversary(x, y) -> x'` within the eps-ball and bounds; `y` is ignored. `step_size` 0 means 2.5 * eps / steps."""

    def __init__(self, model: nn.Module, norm: str = "linf", eps: float = 8 / 255, steps: int = 10,
                 step_size: float = 0.0, bounds: tuple[float, float] | None = (0.0, 1.0),
                 generator: torch.Generator | None = None):
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be l2 or linf, got '{norm}'")
        self.model, self.norm, self.eps, self.steps = model, norm, eps, steps
        self.step_size = step_size or 2.5 * eps / steps
        self.bounds, self.generator = bounds, generator

    def __call__(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            log_p_clean = F.log_softmax(self.model(x), dim=1)
        noise = torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)
        x_adv = project(x, x + START_SCALE * noise, self.norm, self.eps, self.bounds)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            kl = F.kl_div(F.log_softmax(self.model(x_adv), dim=1), log_p_clean, reduction="sum", log_target=True)
            (grad,) = torch.autograd.grad(kl, x_adv)
            x_adv = project(x, x_adv.detach() + self.step_size * _direction(grad, self.norm), self.norm, self.eps,
                            self.bounds)
        return x_adv.detach()
