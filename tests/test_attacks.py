import pytest
import torch

from pagrob.attacks import PGD, PerturbationError, check_perturbation


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.02)])
def test_pgd_finds_exactly_the_errors_a_linear_model_allows(norm, eps):
    """For a linear two-class model the distance to the boundary is known: |margin| / ||w||_dual."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    x = 0.25 + 0.5 * torch.rand(200, 1, 8, 8)  # away from the [0, 1] walls so clipping does not interfere
    y = model(x).argmax(1)
    w = model[1].weight[1] - model[1].weight[0]
    margin = (model(x)[:, 1] - model(x)[:, 0]).abs()
    distance = margin / (w.norm() if norm == "l2" else w.abs().sum())
    x_adv = PGD(model, norm, eps, steps=20, restarts=1, generator=torch.Generator().manual_seed(0))(x, y)
    check_perturbation(x, x_adv, norm, eps, (0.0, 1.0))
    fooled = model(x_adv).argmax(1) != y
    clear = (distance - eps).abs() > 1e-3 * eps
    assert torch.equal(fooled[clear], (distance < eps)[clear])
    assert 0 < int(fooled.sum()) < len(x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_does_not_stall_on_a_confident_model(norm):
    """Logit gap 60 at the clean point: softmax is one-hot to float32 precision, so the plain cross-entropy
    gradient is ~1e-26 (L2 steps shrink to nothing) or exactly 0 further in. The boundary is 0.3 away."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-100.0, 0.0], [100.0, 0.0]]))
        model.bias.copy_(torch.tensor([50.0, -50.0]))  # boundary at x_0 = 0.5
    x = torch.tensor([[0.2, 0.5]])
    y = torch.tensor([0])
    assert (model(x)[0, 0] - model(x)[0, 1]).item() == pytest.approx(60.0)
    x_adv = PGD(model, norm, 0.35, steps=20, random_start=False)(x, y)
    check_perturbation(x, x_adv, norm, 0.35, (0.0, 1.0))
    assert model(x_adv).argmax(1).item() == 1


def test_targeted_pgd_moves_toward_the_target_class():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[0.5, 0.0]])
    x_adv = PGD(model, "l2", 2.0, steps=20, targeted=True, bounds=None)(x, torch.tensor([1]))
    assert model(x_adv).argmax(1).item() == 1 and x_adv[0, 0] < 0


def test_check_perturbation_catches_leaving_the_ball_or_range():
    x = torch.full((2, 4), 0.5)
    with pytest.raises(PerturbationError, match="leave the l2 ball"):
        check_perturbation(x, x + 0.3, "l2", 0.5, (0.0, 1.0))
    with pytest.raises(PerturbationError, match="valid range"):
        check_perturbation(x, x + 0.6, "linf", 1.0, (0.0, 1.0))
    with pytest.raises(PerturbationError, match="NaN"):
        check_perturbation(x, x * float("nan"), "linf", 1.0, None)
    check_perturbation(x, x + 0.1, "linf", 0.1, (0.0, 1.0))
