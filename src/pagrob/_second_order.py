"""The PAG objective: cosine misalignment between the model's class-conditional input-gradients and targets.

`pag_loss` is the public contract. Both implementations share one forward pass between the cross-entropy
and the PAG term: the k input-gradients are vector-Jacobian products over the same graph, never a forward
pass on k copies of the batch.

- `pag_terms`: plain double backward, cosines differentiable; holds the k backward graphs at once.
- `pag_objective` (training, and `pag_loss`): the same value and gradients, computed one class at a time
  with each class's double-backward graph freed before the next (see `pag_objective` for how).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


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


def pag_terms(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor
              ) -> tuple[Tensor, Tensor]:
    """One forward pass -> (logits, cosines (B, k)); both differentiable in the model's parameters."""
    _check_shapes(x, target_grads, target_classes)
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grads = class_input_gradients(logits, x, target_classes)
    return logits, cosine_per_target(grads, target_grads)


class _Pass:
    """Which backward pass over pag_objective's forward graph is running, and the gradient it stashes.

    "first": a class's input-gradient (only d/dx is asked for; the layers below skip weight gradients).
    "collect": that class's cosine differentiated. Each forward-graph node has a pre-hook that keeps the
      gradient arriving there and passes nothing on, so the forward graph is not walked once per class.
    "inject": the caller's backward (switched on by `_PagGradient`): each node adds its kept gradient,
      scaled, to what arrives from the cross-entropy, so the forward graph is walked once.
    """

    def __init__(self) -> None:
        self.phase = "off"
        self.scale: Tensor | None = None
        self.used = False

    def hook(self):
        kept: list[Tensor | None] = []

        def pre_hook(grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...] | None:
            if self.phase == "collect":
                if not kept:
                    kept.extend([None] * len(grads))
                for i, g in enumerate(grads):
                    if g is not None:  # out of place: autograd may hand the same tensor to several nodes
                        kept[i] = g if kept[i] is None else kept[i] + g
                return (None,) * len(grads)
            if self.phase == "inject" and kept:
                out = tuple(g if k is None else k * self.scale if g is None else g + k * self.scale
                            for g, k in zip(grads, kept))
                kept.clear()
                return out
            return None

        return pre_hook

    def _off(self) -> None:
        self.phase = "off"

    def inject(self, scale: Tensor) -> None:
        """Switch the hooks to injecting for the rest of the caller's backward pass."""
        if self.used:
            raise RuntimeError("pag_objective's loss can be differentiated once; use pag_terms to differentiate "
                               "the PAG term several times")
        self.used, self.phase, self.scale = True, "inject", scale
        torch.autograd.Variable._execution_engine.queue_callback(self._off)


# Layers with cheap second derivatives for pag_objective's forward pass. Autograd's own double backward
# of convolution computes the weight gradient as a convolution whose kernel is the whole feature map
# (~2-3x slower on the CPU than the backward-weights kernel), that of batch norm runs ~30 passes over
# the activations where ~13 do, and that of ReLU sends a tensor of zeros to its input. Same values,
# same gradients; the tests compare them with autograd's, in float64.

def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def _add(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


class _ConvBackward(torch.autograd.Function):
    """(dx, dweight, dbias) of conv2d for gO; its backward is the convolution's second derivative."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, weight: Tensor, geometry: tuple, mask: tuple[bool, bool, bool]):
        ctx.set_materialize_grads(False)
        stride, padding, dilation, groups = ctx.geometry = geometry
        ctx.save_for_backward(grad_out, x, weight)
        return torch.ops.aten.convolution_backward(grad_out, x, weight, [weight.shape[0]] if mask[2] else None,
                                                   stride, padding, dilation, False, [0, 0], groups, list(mask))

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor | None, u_weight: Tensor | None, u_bias: Tensor | None):
        grad_out, x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        g_out = g_x = g_weight = None
        if u is not None:  # dx = conv_transpose(gO, W): linear in gO (adjoint: conv) and in W
            g_out = F.conv2d(u, weight, None, stride, padding, dilation, groups)
            g_weight = torch.ops.aten.convolution_backward(grad_out, u, weight, None, stride, padding, dilation,
                                                           False, [0, 0], groups, [False, True, False])[1]
        if u_weight is not None:  # dW = conv weight gradient of (x, gO): linear in each
            g_out = _add(g_out, F.conv2d(x, u_weight, None, stride, padding, dilation, groups))
            g_x = torch.ops.aten.convolution_backward(grad_out, x, u_weight, None, stride, padding, dilation,
                                                      False, [0, 0], groups, [True, False, False])[0]
        if u_bias is not None:
            g_out = _add(g_out, _per_channel(u_bias, grad_out).expand_as(grad_out))
        return g_out, g_x, g_weight, None, None


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: tuple, state: _Pass) -> Tensor:
        ctx.set_materialize_grads(False)
        ctx.geometry, ctx.state, ctx.has_bias = geometry, state, bias is not None
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, *geometry)

    @staticmethod
    def backward(ctx, grad_out: Tensor | None):
        if grad_out is None:
            return None, None, None, None, None
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        only_x = ctx.state.phase == "first"
        mask = (need[0], need[1] and not only_x, need[2] and ctx.has_bias and not only_x)
        dx, dw, db = _ConvBackward.apply(grad_out, x, weight, ctx.geometry, mask)
        return dx, dw, db, None, None


class _BatchNormBackward(torch.autograd.Function):
    """(dx, dweight, dbias) of batch norm for gO; its backward is batch norm's second derivative."""

    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                training: bool, mask: tuple[bool, bool, bool]):
        ctx.set_materialize_grads(False)
        ctx.training = training
        ctx.save_for_backward(grad_out, x, weight, mean, invstd)
        # in eval mode mean / invstd are the running mean and 1 / sqrt(running_var + eps): pass them as
        # running mean and a variance with eps 0
        var = None if training else invstd.pow(-2)
        return torch.ops.aten.native_batch_norm_backward(grad_out, x, weight, None if training else mean, var,
                                                         mean if training else None, invstd if training else None,
                                                         training, 0.0, list(mask))

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor | None, u_weight: Tensor | None, u_bias: Tensor | None):
        grad_out, x, weight, mu, s = ctx.saved_tensors
        dims, m = [0, *range(2, x.dim())], x.numel() / x.shape[1]
        gamma = weight if weight is not None else torch.ones_like(s)
        c = lambda v: _per_channel(v, x)  # noqa: E731
        g_out = g_x = g_weight = None
        if u_bias is not None:  # dbias = sum(gO)
            g_out = c(u_bias).expand_as(x)
        if u_weight is not None:  # dweight = sum(gO * xhat)
            g_out = _add(g_out, (x - c(mu)) * c(s * u_weight))
        if not ctx.training:  # dx = gamma * s * gO
            if u is not None:
                g_out = _add(g_out, u * c(gamma * s))
                g_weight = (u * grad_out).sum(dims) * s
            if u_weight is not None:
                g_x = grad_out * c(u_weight * s)
            return g_out, g_x, g_weight if weight is not None else None, None, None, None, None
        # training: dx = gamma s P gO with P g = g - mean(g) - xhat mean(g xhat), xhat = s (x - mu)
        sum_g = grad_out.sum(dims)
        a, b = sum_g / m, s * ((grad_out * x).sum(dims) - mu * sum_g) / m  # mean(gO), mean(gO xhat)
        zero = torch.zeros_like(s)
        coef_u = coef_g = mean_gx = mean_gxh = grad_s = zero  # d/dxhat = coef_u u + coef_g gO; d/ds = grad_s
        if u is not None:
            sum_u = u.sum(dims)
            u1, ux = sum_u / m, s * ((u * x).sum(dims) - mu * sum_u) / m  # mean(u), mean(u xhat)
            ug = (u * grad_out).sum(dims) / m
            k = gamma * s
            g_out = torch.addcmul(c(k * (s * ux * mu - u1)), x, c(-k * s * ux)).addcmul_(u, c(k)) \
                if g_out is None else g_out + (u - c(u1) - (x - c(mu)) * c(s * ux)) * c(k)
            inner = ug - a * u1 - ux * b
            g_weight = m * s * inner
            coef_u, coef_g, grad_s = -k * b, -k * ux, m * gamma * inner
            mean_gx, mean_gxh = coef_u * u1 + coef_g * a, coef_u * ux + coef_g * b
        if u_weight is not None:
            coef_g = coef_g + u_weight
            mean_gx, mean_gxh = mean_gx + u_weight * a, mean_gxh + u_weight * b
        # dx = s P (d/dxhat) - (d/ds) s^2 xhat / m
        kx = s * (s * mean_gxh + grad_s * s * s / m)
        g_x = torch.addcmul(c(kx * mu - s * mean_gx), x, c(-kx)).addcmul_(grad_out, c(coef_g * s))
        if u is not None:
            g_x.addcmul_(u, c(coef_u * s))
        return g_out, g_x, g_weight if weight is not None else None, None, None, None, None


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, training: bool, momentum: float, eps: float, state: _Pass) -> Tensor:
        ctx.set_materialize_grads(False)
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, training,
                                                             momentum, eps)
        if not training:
            mean, invstd = running_mean, torch.rsqrt(running_var + eps)
        ctx.training, ctx.state, ctx.has_bias = training, state, bias is not None
        ctx.save_for_backward(x, weight, mean, invstd)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor | None):
        if grad_out is None:
            return (None,) * 9
        x, weight, mean, invstd = ctx.saved_tensors
        need, only_x = ctx.needs_input_grad, ctx.state.phase == "first"
        mask = (need[0], weight is not None and need[1] and not only_x, ctx.has_bias and need[2] and not only_x)
        dx, dw, db = _BatchNormBackward.apply(grad_out, x, weight, mean, invstd, ctx.training, mask)
        return dx, dw, db, None, None, None, None, None, None


class _ReLU(torch.autograd.Function):
    """Backward g * (out > 0): its own derivative sends nothing to the input (autograd's sends zeros)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.set_materialize_grads(False)
        out = torch.relu(x)
        ctx.save_for_backward(out > 0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor | None) -> Tensor | None:
        return None if grad is None else grad * ctx.saved_tensors[0]  # (torch.where measured slower)


def _pairs(v) -> list[int] | None:
    if isinstance(v, int):
        return [v, v]
    return list(v) if isinstance(v, (tuple, list)) and len(v) == 2 else None


def _conv2d(state: _Pass, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor | None:
    geometry = (_pairs(stride), _pairs(padding), _pairs(dilation), groups)
    if x.dim() != 4 or None in geometry:  # e.g. padding="same": left to autograd
        return None
    return _Conv2d.apply(x, weight, bias, geometry, state)


def _batch_norm(state: _Pass, x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5) -> Tensor:
    return _BatchNorm.apply(x, weight, bias, running_mean, running_var, training, momentum, eps, state)


def _relu(state: _Pass, x, inplace=False) -> Tensor | None:
    return None if inplace else _ReLU.apply(x)


_ROUTED = {F.conv2d: _conv2d, F.batch_norm: _batch_norm, F.relu: _relu}


class _SecondOrderLayers(TorchFunctionMode):
    """Routes F.conv2d, F.batch_norm and F.relu through the layers above. Anything else runs as usual:
    other ops, keyword-only calls, string padding, in-place ReLU, and everything under autocast (whose
    casting rules these layers do not repeat)."""

    def __init__(self, state: _Pass):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ROUTED and args and not torch.is_autocast_enabled(args[0].device.type):
            out = _ROUTED[func](self.state, *args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def _graph(root) -> tuple[list, list[Tensor]]:
    """The nodes of the graph below `root` (a grad_fn) and the leaf tensors that require grad in it."""
    nodes, leaves, seen, todo = [], [], set(), [root]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf
            leaves.append(node.variable)
        else:
            nodes.append(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return nodes, leaves


class _PagGradient(torch.autograd.Function):
    """The PAG value; its backward hands on the leaves' gradients, already known, and turns the stash on."""

    @staticmethod
    def forward(ctx, value: Tensor, state: _Pass, grads: tuple[Tensor | None, ...], logits: Tensor,
                *leaves: Tensor) -> Tensor:
        ctx.state, ctx.grads = state, grads
        ctx.logits_meta = (logits.shape, logits.dtype, logits.device)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        ctx.state.inject(grad_out)
        shape, dtype, device = ctx.logits_meta
        # a zero gradient for the logits makes sure the forward graph is walked (and the stash emptied) even
        # when the caller's cross-entropy is taken elsewhere (at an adversarial input, for AT + PAG)
        logits_grad = torch.zeros(shape, dtype=dtype, device=device)
        return (None, None, None, logits_grad, *(None if g is None else g * grad_out for g in ctx.grads))


def _one_class(logits: Tensor, x: Tensor, column: Tensor, targets: Tensor, leaves: list[Tensor], scale: float,
               state: _Pass) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """Cosines (B,) for one target class per image, and d(scale * sum(1 - cos)) / d(leaves) along the
    class's backward graph (what reaches the forward graph is stashed). A function of its own so that
    graph is freed on return, before the next class."""
    cotangent = log_softmax_cotangents(logits, column)[0]
    try:
        state.phase = "first"
        (grads,) = torch.autograd.grad(logits, x, cotangent, create_graph=True, retain_graph=True)
        cos = cosine_per_target(grads.unsqueeze(1), targets).squeeze(1)
        state.phase = "collect"
        leaf_grads = torch.autograd.grad((1 - cos).sum() * scale, leaves, retain_graph=True, allow_unused=True)
    finally:
        state.phase = "off"
    return cos.detach(), leaf_grads


class PagTerms(NamedTuple):
    logits: Tensor  # (B, C), differentiable: the cross-entropy takes it from the same forward pass
    loss: Tensor  # scalar, mean of 1 - cos; differentiable once, by one backward pass
    cos: Tensor  # (B, k) cosines, detached, for logging


def pag_objective(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor) -> PagTerms:
    """The PAG term for a training step: `pag_loss`'s value and gradients with one class's graph in memory.

    One forward pass; then per class j, the input-gradient is a VJP over the shared graph with
    create_graph, its cosine is differentiated at once, and its graph freed. The part of that second
    backward that would walk the forward graph (every class again) is stashed at the forward graph's nodes
    (`_Pass`) and sent down it once, with the cross-entropy, by the caller's `loss.backward()` (plain
    autograd from there: DDP, `autograd.grad` and gradient accumulation work as usual). Convolutions,
    batch norm and ReLU run as layers with cheaper second derivatives (`_SecondOrderLayers`). Memory: the
    forward graph, one class's backward graph and the stash, for any k.
    """
    _check_shapes(x, target_grads, target_classes)
    x = x.detach().requires_grad_(True)
    state = _Pass()
    with _SecondOrderLayers(state):
        logits = model(x)
    if logits.grad_fn is None:
        raise RuntimeError("pag_objective needs autograd: call it outside torch.no_grad() / inference_mode()")
    nodes, leaves = _graph(logits.grad_fn)
    leaves = [leaf for leaf in leaves if leaf is not x]
    for node in nodes:
        node.register_prehook(state.hook())
    totals: list[Tensor | None] = [None] * len(leaves)
    scale = 1.0 / target_classes.numel()
    cosines = []
    for j in range(target_classes.shape[1]):
        cos, grads = _one_class(logits, x, target_classes[:, j:j + 1], target_grads[:, j:j + 1], leaves, scale,
                                state)
        cosines.append(cos)
        totals = [t if g is None else g if t is None else t + g for t, g in zip(totals, grads)]
    cos = torch.stack(cosines, dim=1)
    loss = _PagGradient.apply((1 - cos).mean(), state, tuple(totals), logits, *leaves)
    return PagTerms(logits, loss, cos)


def pag_loss(model: nn.Module, x: Tensor, target_grads: Tensor, target_classes: Tensor) -> Tensor:
    """Mean over (b, j) of 1 - cos(grad_x log softmax(model(x))[b, t_bj], target_grads[b, j]).

    x: (B, ...); target_classes: LongTensor (B, k); target_grads: (B, k, ...). Differentiable once in the
    model's parameters (`pag_terms` gives a twice-differentiable form).
    """
    return pag_objective(model, x, target_grads, target_classes).loss


def sample_target_classes(batch: int, num_classes: int, k: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> Tensor:
    """(B, k) distinct random classes per image; k = 0 or k = num_classes gives every class in order."""
    if k in (0, num_classes):
        return torch.arange(num_classes, device=device).expand(batch, -1).contiguous()
    scores = torch.rand(batch, num_classes, generator=generator)
    return scores.argsort(dim=1)[:, :k].to(device)
