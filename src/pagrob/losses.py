"""The PAG objective: cosine misalignment between the model's class-conditional input-gradients and targets.

`pag_loss` is the public contract. `pag_terms` shares one forward pass between the cross-entropy and
the PAG term: the k input-gradients are vector-Jacobian products over the same graph, never a forward
pass on k copies of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def log_softmax_cotangents(logits: Tensor, target_classes: Tensor) -> Tensor:
    """(k, B, C) vectors w with grad_x log p(t | x) = J_logits^T w, i.e. w = e_t - softmax(z), computed stably.

    The naive 1 - p_t rounds to 0 in float32 once p_t > 1 - 6e-8 (any confidently classified image),
    which silently turns grad log p(y | x) into -sum_c p_c grad z_c, a wrong direction. We take
    1 - p_t = sum_{c != t} p_c = exp(logsumexp_{c != t} z_c - logsumexp z) instead.
    """
    probs = torch.softmax(logits, dim=1)  # (B, C)
    one_hot = F.one_hot(target_classes.t(), logits.shape[1]).bool()  # (k, B, C)
    others = logits.unsqueeze(0).masked_fill(one_hot, float("-inf")).logsumexp(dim=2)  # (k, B)
    rest = torch.exp(others - logits.logsumexp(dim=1).unsqueeze(0))  # 1 - p_t, (k, B)
    return torch.where(one_hot, rest.unsqueeze(2), -probs.unsqueeze(0))


def class_input_gradients(logits: Tensor, x: Tensor, target_classes: Tensor, create_graph: bool = True) -> Tensor:
    """(B, k, ...) gradients of log softmax(logits)[b, t_bj] w.r.t. x_b, for `logits` computed from `x`.

    The k vector-Jacobian products share one forward graph. Images do not mix as long as the model
    has no batch-coupling layers (batch norm in training mode couples them, as in the authors' code).
    """
    cotangents = log_softmax_cotangents(logits, target_classes)
    if target_classes.shape[1] == 1:
        (grads,) = torch.autograd.grad(logits, x, cotangents[0], create_graph=create_graph)
        return grads.unsqueeze(1)
    (grads,) = torch.autograd.grad(logits, x, cotangents, create_graph=create_graph, is_grads_batched=True)
    return grads.transpose(0, 1)


def _unit_scale(v: Tensor) -> Tensor:
    """v divided by its largest |entry| (a constant, detached): cosine is scale-invariant, and this keeps
    tiny gradients (|g| ~ 1e-20 for confident predictions) from underflowing in the norms."""
    return v / v.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny).detach()


def cosine_per_target(grads: Tensor, target_grads: Tensor) -> Tensor:
    """(B, k) cosine between each model gradient and its target, flattened over the input dimensions.

    A zero vector has cosine 0 with anything.
    """
    g = _unit_scale(grads.flatten(2))
    t = _unit_scale(target_grads.flatten(2).to(grads.dtype))
    return (g * t).sum(-1) / (g.norm(dim=-1) * t.norm(dim=-1)).clamp_min(1e-12)


def _check_shapes(x: Tensor, target_grads: Tensor, target_classes: Tensor) -> None:
    b = x.shape[0]
    if target_classes.dim() != 2 or target_classes.shape[0] != b:
        raise ValueError(f"target_classes must be (B, k) = ({b}, k), got {tuple(target_classes.shape)}")
    want = (b, target_classes.shape[1], *x.shape[1:])
    if tuple(target_grads.shape) != want:
        raise ValueError(f"target_grads must be (B, k, *x.shape[1:]) = {want}, got {tuple(target_grads.shape)}")
    if target_classes.dtype != torch.long:
        raise ValueError(f"target_classes must be a LongTensor, got {target_classes.dtype}")


def pag_terms(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor
              ) -> tuple[Tensor, Tensor]:
    """One forward pass -> (logits, cosines (B, k)); both differentiable in the model's parameters."""
    _check_shapes(x, target_grads, target_classes)
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grads = class_input_gradients(logits, x, target_classes)
    return logits, cosine_per_target(grads, target_grads)


def pag_loss(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor) -> Tensor:
    """Mean over (b, j) of 1 - cos(grad_x log softmax(model(x))[b, t_bj], target_grads[b, j]).

    x: (B, ...); target_classes: LongTensor (B, k); target_grads: (B, k, ...). Differentiable in the
    model's parameters (double backward).
    """
    _, cos = pag_terms(model, x, target_grads, target_classes)
    return (1 - cos).mean()


def sample_target_classes(batch: int, num_classes: int, k: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> Tensor:
    """(B, k) distinct random classes per image; k = 0 or k = num_classes gives every class in order."""
    if k in (0, num_classes):
        return torch.arange(num_classes, device=device).expand(batch, -1).contiguous()
    scores = torch.rand(batch, num_classes, generator=generator)
    return scores.argsort(dim=1)[:, :k].to(device)
