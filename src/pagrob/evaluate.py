"""Clean and robust accuracy, alignment scores; every adversarial example is checked before it counts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pagrob.attacks import PGD, check_perturbation
from pagrob.config import EvalConfig
from pagrob.losses import class_input_gradients, cosine_per_target, sample_target_classes
from pagrob.targets import TargetSource

Attack = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    return (predict(model, x, batch_size) == y).float().mean().item()


def attack_correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, norm: str, eps: float,
                   bounds: tuple[float, float] | None, batch_size: int = 256, desc: str = "attack",
                   progress: bool = True) -> Tensor:
    """Boolean per image: still classified correctly after the attack. Each batch is checked against its ball."""
    correct = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = attack(xb, yb)
        check_perturbation(xb, x_adv, norm, eps, bounds)
        with torch.no_grad():
            correct.append(model(x_adv).argmax(1) == yb)
    return torch.cat(correct)


def pgd_results(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, bounds: tuple[float, float] | None,
                progress: bool = True) -> list[dict]:
    """Robust accuracy under our PGD for every norm and eps in the eval config."""
    rows = []
    for norm in cfg.norms:
        for eps in (cfg.eps_l2 if norm == "l2" else cfg.eps_linf):
            attack = PGD(model, norm, eps, cfg.pgd_steps, restarts=cfg.pgd_restarts, bounds=bounds,
                         generator=torch.Generator().manual_seed(0))
            ok = attack_correct(model, x, y, attack, norm, eps, bounds, cfg.batch_size, f"pgd {norm} eps={eps:g}",
                                progress)
            rows.append({"attack": "pgd", "norm": norm, "eps": eps, "n_examples": len(x),
                         "accuracy": ok.float().mean().item(), "steps": cfg.pgd_steps, "restarts": cfg.pgd_restarts})
    return rows


def alignment_score(model: nn.Module, x: Tensor, source: TargetSource, num_classes: int, batch_size: int = 128
                    ) -> float:
    """Mean cosine between grad_x log p(t | x) and the source's targets, over the images and all classes."""
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].detach().requires_grad_(True)
        classes = sample_target_classes(len(xb), num_classes, 0, device=x.device)
        grads = class_input_gradients(model(xb), xb, classes, create_graph=False)
        cos = cosine_per_target(grads, source(xb.detach(), classes))
        total += cos.sum().item()
        count += cos.numel()
    return total / count
