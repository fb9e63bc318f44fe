"""The PAG objective: cosine misalignment between the model's class-conditional input-gradients and targets.

`pag_loss` is the public contract; `pag_objective` computes it for a training step (one forward pass shared
with the cross-entropy, cheaper second derivatives: `pagrob._second_order`), `pag_terms` by plain double
backward (twice differentiable). The k input-gradients are vector-Jacobian products over one forward pass of
the B images. (When c classes share a backward pass, the model sees c copies of the batch, but convolutions
and batch norm compute on B rows; the other layers, cheap for a ResNet, run on all copies. A model without
convolutions, such as the ViT, gains nothing from that and should use step="serial".)

Batch norm in training mode: each image's k input-gradients are those of one forward pass over the B images,
whose batch statistics depend on every image (grad_x of sum_b log p(t_b | x_b), one class column at a time).
The authors' code repeats each image k times instead, so its statistics are over B*k rows and its k gradients
of an image are coupled through them; with batch norm on running statistics the two agree.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pagrob._second_order import _PagGradient, _Pass, math_attention, routed_forward

STEPS = ("auto", "serial", "batched")
AUTO_ROWS = {"cpu": 80, "cuda": 2048}  # at most this many rows per backward pass for "auto", by device type
Step = Literal["auto", "serial", "batched"]


def pag_loss(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor, step: Step = "auto"
             ) -> Tensor:
    """Mean over (b, j) of 1 - cos(grad_x log softmax(model(x))[b, t_bj], target_grads[b, j]).

    x: (B, ...); target_classes: LongTensor (B, k); target_grads: (B, k, ...). Differentiable once in the
    model's parameters (`pag_terms` gives a twice-differentiable form). `step`: see `pag_objective`.
    """
    return pag_objective(model, x, target_grads, target_classes, step).loss


class PagTerms(NamedTuple):
    logits: Tensor  # (B, C), differentiable: the cross-entropy takes it from the same forward pass
    loss: Tensor  # scalar, mean of 1 - cos; differentiable once, by one backward pass
    cos: Tensor  # (B, k) cosines, detached, for logging


def pag_objective(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor, step: Step = "auto"
                  ) -> PagTerms:
    """The PAG term for a training step: `pag_loss`'s value, with gradients by one backward pass of the caller.

    One forward pass; the input-gradients are VJPs over its graph with create_graph. Where the classes take
    several backward passes, each pass's cosines are differentiated at once and its graph freed; the part of
    that second backward that would walk the forward graph is stashed at its nodes and sent down it once, with
    the cross-entropy, by the caller's `loss.backward()` (plain autograd from there: DDP, `autograd.grad` and
    gradient accumulation work as usual). Where one pass takes all k (k = 1, or the batched step), the caller's
    backward takes the whole graph.
    step="serial": one class at a time (memory: the forward graph, one class's backward graph and the stash,
    for any k); "batched": the k classes as one backward pass over B*k rows (faster where more rows keep more
    cores busy; k classes' backward graph); "auto": c classes per pass, see `classes_per_pass`.
    """
    _check_shapes(x, target_grads, target_classes)
    b, k = target_classes.shape
    copies = classes_per_pass(step, x, k)
    x = x.detach().repeat(copies, *([1] * (x.dim() - 1))).requires_grad_(True)
    out, state, leaves = routed_forward(model, x, copies, stash=copies < k)
    if copies == k:  # one pass: nothing to share between passes, the caller's backward takes the whole graph
        cos = _cosines(out, x, target_classes, target_grads, state)
        return PagTerms(out[:b], (1 - cos).mean(), cos.detach())
    totals: list[Tensor | None] = [None] * len(leaves)
    scale = 1.0 / target_classes.numel()
    cosines = []
    for j in range(0, k, copies):
        cos, grads = _class_block(out, x, target_classes[:, j:j + copies], target_grads[:, j:j + copies], leaves,
                                  scale, state)
        cosines.append(cos)
        totals = [t if g is None else g if t is None else t + g for t, g in zip(totals, grads)]
    cos = torch.cat(cosines, dim=1)
    loss = _PagGradient.apply((1 - cos).mean(), state, tuple(totals), out, *leaves)
    return PagTerms(out[:b], loss, cos)


def classes_per_pass(step: Step, x: Tensor, k: int) -> int:
    """How many of the k classes one backward pass takes: 1 for the serial step, k for the batched one.

    "auto": as many classes as keep a pass within AUTO_ROWS rows (B * c), shared out evenly over the passes;
    the rows bound the backward graph's memory as well. Measured at B = 16, k = 10 on the CPU (busy machine,
    one thread, CPU s per step): 5 classes per pass 0.93, serial 1.03, all 10 in one pass 1.15; memory 0.42 of
    repeating the batch for 5 per pass, 0.18 serial, 0.69 all in one. The CUDA figure is a guess that no GPU has
    checked yet (benchmarks/gpu_check.py measures the value to set). Under autocast: serial (the routed layers
    stand aside there).
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)}, got {step!r}")
    autocast = torch.is_autocast_enabled(x.device.type)
    if step == "batched" and autocast:
        raise ValueError("the batched PAG step does not run under autocast (batch norm would not be routed and "
                         "would see B*k rows); use step='serial' or 'auto'")
    if step != "auto":
        return 1 if step == "serial" else k
    if autocast:
        return 1
    return auto_classes(AUTO_ROWS.get(x.device.type, 0), x.shape[0], k)


def auto_classes(rows: int, batch: int, k: int) -> int:
    """Classes per pass for "auto" with at most `rows` rows per pass: as many as fit (at least 1), shared out
    evenly over the passes that takes (k = 10 within 4 per pass: 3 passes of 4, 3, 3, so 4)."""
    most = max(1, min(k, rows // batch))
    return -(-k // -(-k // most))  # as many passes as `most` per pass needs, the classes shared out evenly


def _cosines(out: Tensor, x: Tensor, classes: Tensor, targets: Tensor, state: _Pass) -> Tensor:
    """Cosines (B, c) for c target classes per image (`out` and `x` hold state.copies >= c copies of the batch),
    differentiable: the c input-gradients are one backward pass with create_graph over B * state.copies rows."""
    b, c = classes.shape
    cotangents = log_softmax_cotangents(out[:b], classes)  # block j: class column j
    if c < state.copies:  # the last pass of fewer classes than copies: the other blocks get no cotangent
        cotangents = torch.cat([cotangents, cotangents.new_zeros(state.copies - c, *cotangents.shape[1:])])
    try:
        state.phase = "first"
        (grads,) = torch.autograd.grad(out, x, cotangents.flatten(0, 1), create_graph=True, retain_graph=True)
    finally:
        state.phase = "off"
    return cosine_per_target(grads.view(-1, b, *grads.shape[1:])[:c].transpose(0, 1), targets)


def _class_block(out: Tensor, x: Tensor, classes: Tensor, targets: Tensor, leaves: list[Tensor], scale: float,
                 state: _Pass) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """`_cosines`, detached, and d(scale * sum(1 - cos)) / d(leaves) along their backward graph (what reaches
    the forward graph is stashed). A function of its own so that graph is freed on return."""
    cos = _cosines(out, x, classes, targets, state)
    try:
        state.phase = "collect"
        leaf_grads = torch.autograd.grad((1 - cos).sum() * scale, leaves, retain_graph=True, allow_unused=True)
    finally:
        state.phase = "off"
    return cos.detach(), leaf_grads


def pag_terms(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor
              ) -> tuple[Tensor, Tensor]:
    """One forward pass -> (logits, cosines (B, k)); both differentiable in the model's parameters."""
    _check_shapes(x, target_grads, target_classes)
    x = x.detach().requires_grad_(True)
    with math_attention():
        logits = model(x)
    grads = class_input_gradients(logits, x, target_classes)
    return logits, cosine_per_target(grads, target_grads)


def log_softmax_cotangents(logits: Tensor, target_classes: Tensor) -> Tensor:
    """(k, B, C) vectors w with J_logits^T w = grad_x log p(t | x) / (1 - p_t): e_t - softmax over c != t.

    grad_x log p(t | x) = J^T (e_t - softmax(z)), and every entry of e_t - softmax(z) is at most 1 - p_t in size.
    Dividing by 1 - p_t (> 0) changes no direction, and everything here is scale-invariant (cosines, gradient
    maps shown at their own scale), while the plain form loses the direction in float32: 1 - p_t rounds to 0
    once p_t > 1 - 6e-8, turning grad log p(y | x) into -sum_c p_c grad z_c, and at a logit gap above ~100
    every entry underflows, so the gradient is exactly 0 (and the cosine's derivative NaN).
    """
    one_hot = F.one_hot(target_classes.t(), logits.shape[1]).bool()  # (k, B, C)
    others = torch.softmax(logits.unsqueeze(0).masked_fill(one_hot, float("-inf")), dim=2)  # 0 at t
    return one_hot.to(logits.dtype) - others


def class_input_gradients(logits: Tensor, x: Tensor, target_classes: Tensor, create_graph: bool = True) -> Tensor:
    """(B, k, ...) directions of grad_x log softmax(logits)[b, t_bj] for `logits` computed from `x`: each is
    that gradient divided by 1 - p_t (see `log_softmax_cotangents`), so it keeps its direction in float32.

    The k vector-Jacobian products share one forward graph. Images do not mix as long as the model
    has no batch-coupling layers (batch norm in training mode couples them, as in the authors' code).
    """
    cotangents = log_softmax_cotangents(logits, target_classes)
    if target_classes.shape[1] == 1:
        (grads,) = torch.autograd.grad(logits, x, cotangents[0], create_graph=create_graph)
        return grads.unsqueeze(1)
    (grads,) = torch.autograd.grad(logits, x, cotangents, create_graph=create_graph, is_grads_batched=True)
    return grads.transpose(0, 1)


def _unit_scale(v: Tensor, floor: float = 0.0) -> Tensor:
    """v divided by its largest |entry| (a constant, detached): cosine is scale-invariant, and this keeps tiny
    vectors from underflowing in the norms. A vector whose largest entry is <= `floor` counts as 0."""
    top = v.abs().amax(dim=-1, keepdim=True).detach()
    keep = top > floor
    return torch.where(keep, v, torch.zeros_like(v)) / torch.where(keep, top, torch.ones_like(top))


def cosine_per_target(grads: Tensor, target_grads: Tensor) -> Tensor:
    """(B, k) cosine between each model gradient and its target, flattened over the input dimensions.

    A zero vector has cosine 0 with anything, with finite derivatives (a plain norm's are NaN at 0). So does a
    model gradient below sqrt(smallest normal float) (~1e-19 in float32, from saturated units, not the
    softmax): dividing by its size would multiply the backward pass by up to 1e38 and overflow to inf/NaN.
    """
    g = _unit_scale(grads.flatten(2), torch.finfo(grads.dtype).tiny ** 0.5)
    t = _unit_scale(target_grads.flatten(2).to(grads.dtype))
    squares = (g * g).sum(-1) * (t * t).sum(-1)  # >= 1 unless a vector is 0, after the unit scaling
    return (g * t).sum(-1) / torch.where(squares > 0, squares, torch.ones_like(squares)).sqrt()


def _check_shapes(x: Tensor, target_grads: Tensor, target_classes: Tensor) -> None:
    b = x.shape[0]
    if target_classes.dim() != 2 or target_classes.shape[0] != b:
        raise ValueError(f"target_classes must be (B, k) = ({b}, k), got {tuple(target_classes.shape)}")
    want = (b, target_classes.shape[1], *x.shape[1:])
    if tuple(target_grads.shape) != want:
        raise ValueError(f"target_grads must be (B, k, *x.shape[1:]) = {want}, got {tuple(target_grads.shape)}")
    if target_classes.dtype != torch.long:
        raise ValueError(f"target_classes must be a LongTensor, got {target_classes.dtype}")


def sample_target_classes(batch: int, num_classes: int, k: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> Tensor:
    """(B, k) distinct random classes per image; k = 0 or k = num_classes gives every class in order."""
    if k in (0, num_classes):
        return torch.arange(num_classes, device=device).expand(batch, -1).contiguous()
    scores = torch.rand(batch, num_classes, generator=generator)
    return scores.argsort(dim=1)[:, :k].to(device)
