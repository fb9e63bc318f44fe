"""pag_objective (the lean PAG step) against the contract and against plain double backward."""

import copy

import pytest
import torch
import torch.nn.functional as F

from pagrob import losses
from pagrob.losses import pag_objective, pag_terms, sample_target_classes
from pagrob.models import build_model

from contract import brute_force


def problem(arch, shape, classes=5, k=3, b=4, width=4):
    model = build_model(arch, shape, classes, width=width).double()
    x = torch.rand(b, *shape, dtype=torch.float64)
    y = torch.randint(0, classes, (b,))
    chosen = sample_target_classes(b, classes, k, torch.Generator().manual_seed(1))
    targets = torch.randn(b, k, *shape, dtype=torch.float64)
    return model, x, y, chosen, targets


def assert_grads_close(ours, ref):
    scale = max(r.abs().max().item() for r in ref if r is not None)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-7, atol=1e-10 * scale)


@pytest.mark.parametrize("step", ["serial", "batched"])
@pytest.mark.parametrize("arch,shape,k", [("resnet18", (3, 8, 8), 3), ("cnn", (1, 8, 8), 5), ("vit", (3, 8, 8), 2),
                                          ("mlp", (2,), 1)])
def test_pag_objective_matches_one_image_at_a_time_value_and_parameter_gradients(arch, shape, k, step):
    # batch norm in eval mode: images do not interact, so the per-image contract is well defined
    model, x, _, classes, targets = problem(arch, shape, k=k, b=3, width=16 if arch == "vit" else 4)
    model.eval()
    params = list(model.parameters())

    ours = pag_objective(model, x, targets, classes, step)
    ours_grads = torch.autograd.grad(ours.loss, params)
    ref = brute_force(model, x, targets, classes)
    ref_grads = torch.autograd.grad(ref, params)

    assert ours.loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert ours.cos.shape == classes.shape and not ours.cos.requires_grad
    assert_grads_close(ours_grads, ref_grads)


@pytest.mark.parametrize("step", ["serial", "batched", "two per pass"])
@pytest.mark.parametrize("ce_at", ["clean", "other"])
def test_training_step_equals_plain_double_backward_with_batch_norm_statistics(ce_at, step, monkeypatch):
    """Training mode couples the images through the batch statistics; the step must still equal the plain
    double backward (pag_terms), with the cross-entropy at the same forward or at another input (AT + PAG),
    and update the running statistics once, as one forward of the B images does (also in the batched step,
    whose model sees k copies of the batch)."""
    model, x, y, classes, targets = problem("resnet18", (3, 8, 8), k=3, b=4)
    if step == "two per pass":  # what "auto" may choose: passes of 2 and 1 classes
        monkeypatch.setattr(losses, "classes_per_pass", lambda step, x, k: 2)
    model.train()
    plain = copy.deepcopy(model)
    x_other = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    lam = 0.7

    terms = pag_objective(model, x, targets, classes, step)
    logits = terms.logits if ce_at == "clean" else model(x_other)
    (F.cross_entropy(logits, y) + lam * terms.loss).backward()

    logits_ref, cos_ref = pag_terms(plain, x, targets, classes)
    logits_ref = logits_ref if ce_at == "clean" else plain(x_other)
    (F.cross_entropy(logits_ref, y) + lam * (1 - cos_ref).mean()).backward()

    torch.testing.assert_close(terms.cos, cos_ref.detach(), rtol=1e-9, atol=1e-12)
    assert_grads_close([p.grad for p in model.parameters()], [p.grad for p in plain.parameters()])
    for a, r in zip(model.buffers(), plain.buffers()):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("step", ["serial", "batched"])
def test_every_class_contributes_and_the_gradient_scales_with_the_weight(step):
    model, x, _, classes, targets = problem("cnn", (1, 8, 8), k=4)
    params = list(model.parameters())
    one = torch.autograd.grad(pag_objective(model, x, targets, classes, step).loss, params)
    three = torch.autograd.grad(3 * pag_objective(model, x, targets, classes, step).loss, params)
    assert_grads_close([3 * g for g in one], three)
    last_class_only = torch.autograd.grad(pag_objective(model, x, targets[:, 3:], classes[:, 3:], step).loss, params)
    assert not torch.allclose(torch.cat([g.flatten() for g in one]), torch.cat([g.flatten() for g in last_class_only]))


def test_a_second_backward_is_refused_instead_of_silently_dropping_the_pag_gradient():
    """Several passes (serial, k > 1): the stash is spent by the first backward."""
    model, x, _, classes, targets = problem("cnn", (1, 8, 8))
    loss = pag_objective(model, x, targets, classes, "serial").loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="differentiated once"):
        loss.backward()


@pytest.mark.parametrize("step", ["serial", "batched"])
def test_a_backward_without_the_pag_term_is_untouched(step):
    """The stash only flows in a backward pass that contains the PAG loss."""
    model, x, y, classes, targets = problem("resnet18", (3, 8, 8))
    model.eval()
    terms = pag_objective(model, x, targets, classes, step)
    ce_grads = torch.autograd.grad(F.cross_entropy(terms.logits, y), list(model.parameters()), retain_graph=True)
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert_grads_close(ce_grads, ref)


def test_no_grad_gives_a_clear_error():
    model, x, _, classes, targets = problem("mlp", (2,), classes=2, k=1)
    with torch.no_grad(), pytest.raises(RuntimeError, match="outside torch.no_grad"):
        pag_objective(model, x, targets, classes)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_second_order_layers_have_autograd_s_second_derivatives(training, affine):
    """Convolution (bias, stride, groups, dilation), batch norm and ReLU as routed inside pag_objective:
    first and second derivatives against finite differences, every input included."""
    from pagrob._second_order import _Pass, _SecondOrderLayers

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    gamma = (torch.rand(4, dtype=torch.float64, generator=g) + 0.5).requires_grad_(affine)
    beta = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_(affine)
    mean, var = torch.randn(4, dtype=torch.float64, generator=g), torch.rand(4, dtype=torch.float64, generator=g) + 0.5

    def layers(x, w, bias, gamma, beta):
        with _SecondOrderLayers(_Pass()):
            h = F.conv2d(x, w, bias, stride=2, padding=1, dilation=1, groups=2)
            h = F.batch_norm(h, mean.clone(), var.clone(), gamma if affine else None, beta if affine else None,
                             training=training)
            return F.relu(h + 0.3)  # shifted so no input sits at the kink

    inputs = (x, w, bias, gamma, beta) if affine else (x, w, bias)
    fn = layers if affine else (lambda x, w, bias: layers(x, w, bias, None, None))
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_derivative_in_blocks_has_the_right_first_and_second_derivatives(training):
    """The batched step's batch-norm dx for k blocks of cotangents: each block equals autograd's dx for the B-row
    batch, and its derivatives (in the cotangents, x with its statistics, and the weight) pass gradcheck."""
    from pagrob._second_order import _BatchNormBackward

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    grad_out = torch.randn(2 * 3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)  # k = 2 blocks
    gamma = (torch.rand(2, dtype=torch.float64, generator=g) + 0.5).requires_grad_(True)
    running_mean, running_var = torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 0.5

    def stats(x):
        if training:
            return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False).add(1e-5).rsqrt()
        return running_mean, running_var.add(1e-5).rsqrt()

    def blocks_dx(grad_out, x, gamma):
        mean, invstd = (s.detach() for s in stats(x))  # their dependence on x is the layer's to handle
        return _BatchNormBackward.apply(grad_out, x, gamma, mean, invstd, training, (True, False, False))[0]

    out = F.batch_norm(x, running_mean.clone(), running_var.clone(), gamma, None, training=training)
    ref = torch.cat([torch.autograd.grad(out, x, block, retain_graph=True)[0] for block in grad_out.split(3)])
    torch.testing.assert_close(blocks_dx(grad_out, x, gamma), ref)
    assert torch.autograd.gradcheck(blocks_dx, (grad_out, x, gamma))


def test_a_step_name_that_does_not_exist_is_refused():
    model, x, _, classes, targets = problem("cnn", (1, 8, 8))
    with pytest.raises(ValueError, match="step must be one of auto, serial, batched"):
        pag_objective(model, x, targets, classes, "fast")
