"""pag_loss against its definition, computed one image and one class at a time."""

import pytest
import torch
import torch.nn.functional as F

from pagrob.losses import pag_loss, pag_objective, pag_terms, sample_target_classes
from pagrob.models import build_model

from contract import brute_force


@pytest.mark.parametrize("arch,shape,k", [("mlp", (2,), 2), ("cnn", (1, 8, 8), 3), ("cnn", (3, 8, 8), 1),
                                          ("vit", (3, 8, 8), 4)])
def test_pag_loss_matches_brute_force_value_and_parameter_gradients(arch, shape, k):
    model = build_model(arch, shape, 5 if arch != "mlp" else 2, width=8 if arch != "vit" else 16).double()
    b = 4
    x = torch.rand(b, *shape, dtype=torch.float64)
    classes = sample_target_classes(b, 5 if arch != "mlp" else 2, k, torch.Generator().manual_seed(1))
    targets = torch.randn(b, k, *shape, dtype=torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]

    ours = pag_loss(model, x, targets, classes)
    ours_grads = torch.autograd.grad(ours, params)
    ref = brute_force(model, x, targets, classes)
    ref_grads = torch.autograd.grad(ref, params)

    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, r in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-7, atol=1e-10)


def test_confident_predictions_keep_the_true_class_gradient_direction():
    """With p_y ~ 1 in float32, naive 1 - p_y rounds to 0; the gradient of log p_y must still point along
    grad z_y - grad z_other (for a linear model: w_y - w_other), not along -w_other."""
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[40.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0]])
    target = (model.weight[0] - model.weight[1]).detach().view(1, 1, 2)
    _, cos = pag_terms(model, x, target, torch.tensor([[0]]))
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("fast", [False, True])
def test_a_huge_logit_gap_keeps_every_class_direction_and_finite_parameter_gradients(fast):
    """Logit gap 160: p_1 = e^-160 underflows float32, so grad log p(1 | x) computed plainly is exactly 0 (its
    cosine 0, the cosine's derivative NaN). Its direction, w_1 - w_0 for a linear model, must survive."""
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[80.0, 0.0], [0.0, -80.0]]))
    x = torch.tensor([[1.0, 1.0]])
    w = model.weight.detach()
    targets = torch.stack([w[0] - w[1], w[1] - w[0]]).view(1, 2, 2)
    classes = torch.tensor([[0, 1]])
    loss = pag_objective(model, x, targets, classes).loss if fast else pag_loss(model, x, targets, classes)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(model.weight.grad).all()


def test_a_zero_target_has_cosine_zero_and_finite_gradients():
    model = build_model("mlp", (2,), 2, width=8)
    x = torch.randn(4, 2)
    classes = torch.tensor([[0, 1]]).expand(4, 2)
    targets = torch.randn(4, 2, 2)
    targets[0] = 0.0
    _, cos = pag_terms(model, x, targets, classes)
    assert cos[0].abs().max().item() == 0.0 and cos[1:].abs().min().item() > 0
    (1 - cos).mean().backward()
    assert all(torch.isfinite(prm.grad).all() for prm in model.parameters())


@pytest.mark.parametrize("fast", [False, True])
def test_a_vanishing_model_gradient_counts_as_zero_instead_of_overflowing(fast):
    """Input-gradients of 1e-39 (saturated units give such; here tiny weights): rescaling them to unit size
    would make the backward pass overflow to inf/NaN. They count as 0: cosine 0, finite parameter gradients."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.SiLU(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1e-39, 0.0], [0.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.0, -200.0]))  # unit 2 saturated: SiLU'(-200) = 0
    x = torch.tensor([[0.3, 0.4]])
    targets = torch.tensor([[[1.0, 0.5], [-1.0, -0.5]]])
    classes = torch.tensor([[0, 1]])
    loss = pag_objective(model, x, targets, classes).loss if fast else pag_loss(model, x, targets, classes)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert all(torch.isfinite(prm.grad).all() for prm in model.parameters())


def test_pag_loss_is_zero_for_targets_equal_to_the_model_gradients_and_two_for_opposite():
    model = build_model("mlp", (2,), 2, width=8)
    x = torch.randn(5, 2)
    classes = torch.tensor([[0, 1]]).expand(5, 2)
    xr = x.clone().requires_grad_(True)
    logp = F.log_softmax(model(xr), 1)
    grads = torch.stack([torch.autograd.grad(logp[:, t].sum(), xr, retain_graph=True)[0] for t in (0, 1)], 1)
    assert pag_loss(model, x, grads, classes).item() == pytest.approx(0.0, abs=1e-5)
    assert pag_loss(model, x, -grads, classes).item() == pytest.approx(2.0, abs=1e-5)


def test_pag_loss_rejects_wrong_shapes_with_the_expected_shape_in_the_message():
    model = build_model("mlp", (2,), 2)
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"target_grads must be \(B, k, \*x.shape\[1:\]\) = \(3, 2, 2\)"):
        pag_loss(model, x, torch.randn(3, 2), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target_classes must be"):
        pag_loss(model, x, torch.randn(3, 2, 2), torch.zeros(3, dtype=torch.long))


def test_sample_target_classes_are_distinct_per_image():
    classes = sample_target_classes(50, 10, 4, torch.Generator().manual_seed(0))
    assert classes.shape == (50, 4)
    assert all(len(set(row.tolist())) == 4 for row in classes)
    assert sample_target_classes(3, 10, 0).tolist() == [list(range(10))] * 3
