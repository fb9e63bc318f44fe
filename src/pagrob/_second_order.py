"""The second-order machinery behind `pagrob.losses.pag_objective`: one forward graph, input-gradients taken
over it with create_graph, cheaper second derivatives for convolution, batch norm and ReLU, and a stash that
sends the second backward down the forward graph once however many passes the classes take.

Measured gain: 0.45 of the time, 0.20 of the memory of repeating the batch (pag_step.py, B 16, k 10, one thread).

Classes per backward pass (`_Pass.copies`): 1, or c > 1, where the model runs on the batch repeated c times
but every routed convolution and batch norm computes on the first B rows only and hands on c copies
(`_Blocks`): the c classes' input-gradients are then one backward pass over B*c rows, each block of B rows
differentiated against the B-row forward (its batch statistics included).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


class _Pass:
    """Which backward pass over pag_objective's forward graph is running, and the gradient it stashes.

    "first": a class's input-gradient (only d/dx is asked for; the layers below skip weight gradients).
    "collect": that class's cosine differentiated. Each forward-graph node has a pre-hook that keeps the
      gradient arriving there and passes nothing on, so the forward graph is not walked once per class.
    "inject": the caller's backward (switched on by `_PagGradient`): each node adds its kept gradient,
      scaled, to what arrives from the cross-entropy, so the forward graph is walked once.
    """

    def __init__(self, copies: int = 1) -> None:
        self.copies = copies  # k in a batched step (the model sees k copies of the batch), else 1
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


def _blocks(t: Tensor, rows: int) -> Tensor:
    """(k * rows, ...) -> (k, rows, ...): the k blocks of a batched backward pass."""
    return t.view(-1, rows, *t.shape[1:])


def _over_blocks(t: Tensor) -> Tensor:
    return t[0] if t.shape[0] == 1 else t.sum(0)


class _BatchNormBackward(torch.autograd.Function):
    """(dx, dweight, dbias) of batch norm for gO; its backward is batch norm's second derivative.

    gO may hold k blocks of x's B rows (k classes' cotangents): each block is differentiated as its own batch
    over x's statistics, and what reaches x, weight and bias is summed over the blocks.
    """

    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, invstd: Tensor,
                training: bool, mask: tuple[bool, bool, bool]):
        ctx.set_materialize_grads(False)
        ctx.training = training
        ctx.save_for_backward(grad_out, x, weight, mean, invstd)
        if grad_out.shape[0] != x.shape[0]:  # k blocks: only dx is ever asked for (see `_in_blocks`)
            return _batch_norm_dx_in_blocks(grad_out, x, weight, mean, invstd, training), None, None
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
        rows, n_ch = x.shape[0], x.shape[1]
        g, xb = _blocks(grad_out, rows), x.unsqueeze(0)  # (k, B, C, ...), (1, B, C, ...)
        dims, m = [1, *range(3, g.dim())], x.numel() / n_ch
        gamma = weight if weight is not None else torch.ones_like(s)
        ones = [1] * (x.dim() - 2)
        c = lambda v: v.view(-1, 1, n_ch, *ones)  # noqa: E731  (C,) or (k, C) against blocks
        ub = None if u is None else _blocks(u, rows)
        g_out = g_x = g_weight = None
        if u_bias is not None:  # dbias = sum(gO)
            g_out = c(u_bias).expand_as(g)
        if u_weight is not None:  # dweight = sum(gO * xhat)
            g_out = _add(g_out, (xb - c(mu)) * c(s * u_weight))
        if not ctx.training:  # dx = gamma * s * gO
            if ub is not None:
                g_out = _add(g_out, ub * c(gamma * s))
                g_weight = _over_blocks((ub * g).sum(dims)) * s
            if u_weight is not None:
                g_x = _over_blocks(g * c(u_weight * s))
            return _flat(g_out), g_x, g_weight if weight is not None else None, None, None, None, None
        # training: dx = gamma s P gO with P g = g - mean(g) - xhat mean(g xhat), xhat = s (x - mu); per block,
        # every per-channel quantity below is (k, C)
        sum_g = g.sum(dims)
        a, b = sum_g / m, s * ((g * xb).sum(dims) - mu * sum_g) / m  # mean(gO), mean(gO xhat)
        zero = torch.zeros_like(a)
        coef_u = coef_g = mean_gx = mean_gxh = grad_s = zero  # d/dxhat = coef_u u + coef_g gO; d/ds = grad_s
        if ub is not None:
            sum_u = ub.sum(dims)
            u1, ux = sum_u / m, s * ((ub * xb).sum(dims) - mu * sum_u) / m  # mean(u), mean(u xhat)
            ug = (ub * g).sum(dims) / m
            k = gamma * s
            g_out = _add(g_out, torch.addcmul(c(k * (s * ux * mu - u1)), xb, c(-k * s * ux)).addcmul_(ub, c(k)))
            inner = ug - a * u1 - ux * b
            g_weight = _over_blocks(m * s * inner)
            coef_u, coef_g, grad_s = -k * b, -k * ux, m * gamma * inner
            mean_gx, mean_gxh = coef_u * u1 + coef_g * a, coef_u * ux + coef_g * b
        if u_weight is not None:
            coef_g = coef_g + u_weight
            mean_gx, mean_gxh = mean_gx + u_weight * a, mean_gxh + u_weight * b
        # dx = s P (d/dxhat) - (d/ds) s^2 xhat / m, summed over the blocks
        kx = s * (s * mean_gxh + grad_s * s * s / m)
        per_block = g * c(coef_g * s)
        if ub is not None:
            per_block.addcmul_(ub, c(coef_u * s))
        g_x = _over_blocks(per_block).addcmul_(x, c(-_over_blocks(kx))[0]).add_(c(_over_blocks(kx * mu - s * mean_gx))[0])
        return _flat(g_out), g_x, g_weight if weight is not None else None, None, None, None, None


def _flat(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.flatten(0, 1)


def _batch_norm_dx_in_blocks(grad_out: Tensor, x: Tensor, weight: Tensor | None, mu: Tensor, s: Tensor,
                             training: bool) -> Tensor:
    """Batch norm's dx for k blocks of cotangents, each block against x's B rows and statistics."""
    gamma_s = s if weight is None else weight * s
    c = lambda v: v.view(-1, 1, x.shape[1], *([1] * (x.dim() - 2)))  # noqa: E731
    if not training:
        return grad_out * _per_channel(gamma_s, x)
    g, xb = _blocks(grad_out, x.shape[0]), x.unsqueeze(0)
    dims, m = [1, *range(3, g.dim())], x.numel() / x.shape[1]
    sum_g = g.sum(dims)
    a, b = sum_g / m, s * ((g * xb).sum(dims) - mu * sum_g) / m  # per block: mean(gO), mean(gO xhat)
    dx = torch.addcmul(c(gamma_s * (s * b * mu - a)), xb, c(-gamma_s * s * b)).addcmul_(g, c(gamma_s))
    return dx.flatten(0, 1)


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
                running_var: Tensor | None, training: bool, momentum: float, eps: float, state: _Pass) -> Tensor:
        ctx.set_materialize_grads(False)
        out, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, training,
                                                             momentum, eps)
        if not training:
            mean, invstd = running_mean.clone(), torch.rsqrt(running_var + eps)
        ctx.training, ctx.state, ctx.has_bias = training, state, bias is not None
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, invstd)
        return out, mean, invstd

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, _mean: None, _invstd: None):
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


class _Blocks(torch.autograd.Function):
    """k copies of a layer's B-row output `out` for an input `x` that holds k copies of its B rows.

    Backward, in the first pass of a batched step: the layer's own derivative applied to each block of the
    cotangent, handed to `x` (`first`, built on the B-row forward's saved tensors). In every other pass: the true
    derivative of the copying, the blocks summed and handed to `out`, whose B-row layer takes it from there.
    """

    @staticmethod
    def forward(ctx, out: Tensor, x: Tensor, first: Callable[[Tensor], Tensor], state: _Pass) -> Tensor:
        ctx.set_materialize_grads(False)
        ctx.first, ctx.state = first, state
        return out.repeat(x.shape[0] // out.shape[0], *([1] * (out.dim() - 1)))

    @staticmethod
    def backward(ctx, grad: Tensor | None):
        if grad is None:
            return None, None, None, None
        if ctx.state.phase == "first":
            return None, ctx.first(grad), None, None
        return _blocks(grad, grad.shape[0] // ctx.state.copies).sum(0), None, None, None


def _in_blocks(state: _Pass, x: Tensor, layer: Callable[[Tensor], tuple[Tensor, ...]],
               first: Callable[..., Tensor]) -> Tensor:
    """`layer` on x, or in a batched step (x: k copies of B rows) on its first B rows, copied k times; `first`
    (B-row input, the layer's other outputs, cotangent) is the layer's derivative for one block."""
    if state.copies == 1:
        return layer(x)[0]
    rows = x.shape[0] // state.copies
    x_rows = x[:rows].clone()  # a copy, so that the saved input does not keep all k copies alive
    out, *saved = layer(x_rows)
    return _Blocks.apply(out, x, partial(first, x_rows, *saved), state)


def _pairs(v) -> list[int] | None:
    if isinstance(v, int):
        return [v, v]
    return list(v) if isinstance(v, (tuple, list)) and len(v) == 2 else None


def _conv2d(state: _Pass, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor | None:
    geometry = (_pairs(stride), _pairs(padding), _pairs(dilation), groups)
    if x.dim() != 4 or None in geometry:  # e.g. padding="same": left to autograd
        return None

    def dx(x_rows: Tensor, grad: Tensor) -> Tensor:  # only the input's shape matters for dx
        shape_only = x_rows.new_empty(()).expand(grad.shape[0], *x_rows.shape[1:])
        return _ConvBackward.apply(grad, shape_only, weight, geometry, (True, False, False))[0]

    return _in_blocks(state, x, lambda x: (_Conv2d.apply(x, weight, bias, geometry, state),), dx)


def _batch_norm(state: _Pass, x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5) -> Tensor:
    def dx(x_rows: Tensor, mean: Tensor, invstd: Tensor, grad: Tensor) -> Tensor:
        return _BatchNormBackward.apply(grad, x_rows, weight, mean, invstd, training, (True, False, False))[0]

    return _in_blocks(state, x, lambda x: _BatchNorm.apply(x, weight, bias, running_mean, running_var, training,
                                                           momentum, eps, state), dx)


def _relu(state: _Pass, x, inplace=False) -> Tensor | None:
    return None if inplace else _ReLU.apply(x)  # row by row: the same on k copies


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




def math_attention():
    """Attention computed by its plain formula: the fused kernels behind F.scaled_dot_product_attention (timm's
    and torchvision's vision transformers) have no double backward, which the PAG term needs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def routed_forward(model: torch.nn.Module, x: Tensor, copies: int, stash: bool
                   ) -> tuple[Tensor, _Pass, list[Tensor]]:
    """The model's output on `x` with the layers above routed, a stash hook on every node of its graph if
    `stash`, and the leaves (parameters) that require grad, `x` left out."""
    state = _Pass(copies)
    with _SecondOrderLayers(state), math_attention():
        out = model(x)
    if out.grad_fn is None:
        raise RuntimeError("pag_objective needs autograd: call it outside torch.no_grad() / inference_mode()")
    if not stash:
        return out, state, []
    nodes, leaves = _graph(out.grad_fn)
    for node in nodes:
        node.register_prehook(state.hook())
    return out, state, [leaf for leaf in leaves if leaf is not x]
