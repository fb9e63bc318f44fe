"""How well a model's input-gradients align with a target source: the metric training logs and evaluation reports."""

from __future__ import annotations

from torch import Tensor, nn

from pagrob.losses import class_input_gradients, cosine_per_target, sample_target_classes
from pagrob.targets import TargetSource

ALIGNMENT_IMAGES = 256  # held-out images used to score alignment (each epoch and at evaluation)


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


def alignment_scores(model: nn.Module, x: Tensor, sources: dict[str, TargetSource], num_classes: int
                     ) -> dict[str, dict]:
    """{source name: {cosine, n_images}} on held-out images, one entry per target source."""
    return {name: {"cosine": alignment_score(model, x, source, num_classes), "n_images": len(x)}
            for name, source in sources.items()}
