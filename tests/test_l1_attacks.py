"""The L1 threat in the attacks layer: the exact projection onto L1 ball and box, l1-APGD, FMN, the L1 guards."""

import pytest
import torch
from small_models import digits_cnn
from torch import nn

from pagrob.attacks.apgd_l1 import APGDL1
from pagrob.attacks.checks import check_perturbation, norms, project
from pagrob.attacks.fmn import FMN
from pagrob.attacks.pgd import EvalPGD
from pagrob.attacks.square_l1 import SquareL1
from pagrob.guards import covering_eps, eps_sweep, loss_rise, margin_ascent

BOX = (0.0, 1.0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread costs more in synchronisation than it gains (10x on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def plain(digits):
    """An ordinary digits CNN (about 95 % clean accuracy)."""
    return digits_cnn(digits, epochs=8)


def fooled(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def small_problems(n: int = 300, d: int = 6, seed: int = 0):
    """Random centres in the box, a quarter of their coordinates on a wall, points to project around them, radii."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    walls = torch.rand(n, d, generator=g) < 0.25
    x = torch.where(walls, x.round(), x)
    x_adv = x + 0.6 * torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
    return x, x_adv, eps


def kkt_violation(x, x_adv, p, eps, bounds):
    """How far p is from satisfying the optimality conditions of min ||p - x_adv||^2 s.t. ||p - x||_1 <= eps, p in
    bounds: p - x = sign(w) min(max(|w| - lam, 0), cap) for one lam >= 0 (w = x_adv - x), lam = 0 unless the
    ball binds. Returns the largest violation per problem."""
    w, delta = x_adv - x, p - x
    cap = torch.where(w > 0, bounds[1] - x, x - bounds[0]) if bounds else torch.full_like(w, float("inf"))
    free = (delta.abs() > 1e-12) & (delta.abs() < cap - 1e-12)
    lam_free = torch.where(free, w.abs() - delta.abs(), torch.nan)
    lam = torch.where(free.any(1), lam_free.nanmean(1), torch.zeros(len(w), dtype=w.dtype))
    # with no free coordinate lam is only bracketed: take the smallest value the zero coordinates allow
    zero = (delta.abs() <= 1e-12) & (cap > 1e-12)
    lam = torch.where(free.any(1), lam, torch.where(zero, w.abs(), torch.zeros_like(w)).amax(1))
    rebuilt = w.sign() * torch.minimum((w.abs() - lam[:, None]).clamp_min(0), cap)
    slack = (eps - norms(delta, "l1")).clamp_min(0)
    return torch.maximum((rebuilt - delta).abs().amax(1), lam * slack)


@pytest.mark.parametrize("bounds", [BOX, None])
def test_l1_projection_is_feasible_optimal_and_idempotent(bounds):
    x, x_adv, eps = small_problems()
    p = project(x, x_adv, "l1", eps, bounds)
    assert (norms(p - x, "l1") <= eps + 1e-12).all()
    if bounds is not None:
        assert (p >= 0).all() and (p <= 1).all()
    assert kkt_violation(x, x_adv, p, eps, bounds).max() < 1e-9
    assert torch.allclose(project(x, p, "l1", eps, bounds), p, atol=1e-12)
    # no feasible point is nearer: random ones, and ones close to p (moved, clipped, pulled into the ball)
    g = torch.Generator().manual_seed(1)
    for scale in (1.0, 0.05, 0.002):
        for _ in range(20):
            z = p + scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
            z = z.clamp(*bounds) if bounds is not None else z
            z = x + (z - x) * (eps / norms(z - x, "l1")).clamp(max=1.0)[:, None]
            assert ((p - x_adv).pow(2).sum(1) <= (z - x_adv).pow(2).sum(1) + 1e-12).all()


def test_l1_projection_in_float32_images_and_radius_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 4, 4, generator=g)
    x_adv = x + torch.randn(x.shape, generator=g)
    for eps in (0.0, 0.5, 3.0, 1e6):
        p = project(x, x_adv, "l1", eps, BOX)
        check_perturbation(x, p, "l1", eps, BOX)
        assert p.dtype == x.dtype
    assert torch.equal(project(x, x_adv, "l1", 0.0, BOX), x)
    assert torch.allclose(project(x, x_adv, "l1", 1e6, BOX), x_adv.clamp(0, 1))  # the box alone binds


def test_l2_and_linf_projection_unchanged_and_per_image_radii():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x_adv = x + 0.3 * torch.randn(x.shape, generator=g)
    delta = x_adv - x
    scale = (0.5 / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    assert torch.equal(project(x, x_adv, "l2", 0.5, BOX), (x + delta * scale.view(-1, 1, 1, 1)).clamp(0, 1))
    assert torch.equal(project(x, x_adv, "linf", 0.1, BOX), (x + delta.clamp(-0.1, 0.1)).clamp(0, 1))
    radii = torch.linspace(0.0, 2.0, 16)
    for norm in ("l1", "l2", "linf"):
        each = torch.cat([project(x[i:i + 1], x_adv[i:i + 1], norm, float(r), BOX) for i, r in enumerate(radii)])
        assert torch.allclose(project(x, x_adv, norm, radii, BOX), each, atol=1e-6)


def dense_l1_pgd(model, x, y, eps, steps):
    """The plain L1 PGD: a dense step (the gradient scaled to L1 size 2.5 eps / steps), then the projection."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        step = grad / norms(grad, "l1").clamp_min(1e-12).view(-1, 1, 1, 1)
        x_adv = project(x, x_adv.detach() + 2.5 * eps / steps * step, "l1", eps, BOX)
    return x_adv


def test_l1_apgd_beats_dense_pgd_and_stays_in_ball_and_box(plain, digits):
    x, y = digits.x_test[:200], digits.y_test[:200]
    eps = 1.0  # the budget to swing one of the 64 pixels across the whole range
    rng = torch.get_rng_state()
    apgd = APGDL1(plain, eps, steps=100, seed=0)(x, y)
    assert torch.equal(torch.get_rng_state(), rng)
    dense = dense_l1_pgd(plain, x, y, eps, steps=100)
    for x_adv in (apgd, dense):
        check_perturbation(x, x_adv, "l1", eps, BOX)
    n_apgd, n_dense = int(fooled(plain, apgd, y).sum()), int(fooled(plain, dense, y).sum())
    print(f"L1 eps {eps}: l1-APGD fools {n_apgd} of {len(x)}, dense L1 PGD {n_dense}")
    assert n_apgd >= n_dense + 0.15 * len(x)
    assert torch.equal(APGDL1(plain, eps, steps=100, seed=0)(x, y), apgd)  # deterministic given the seed
    standing = ~fooled(plain, apgd, y)
    assert torch.equal(apgd[standing], x[standing])  # what it cannot fool comes back unchanged


def test_l1_apgd_targeted_fools_what_ce_leaves(plain, digits):
    x, y = digits.x_test[:200], digits.y_test[:200]
    ce = APGDL1(plain, 1.0, steps=50)(x, y)
    left = ~fooled(plain, ce, y)
    targeted = APGDL1(plain, 1.0, name="apgd-t", steps=50, targets=3)(x[left], y[left])
    check_perturbation(x[left], targeted, "l1", 1.0, BOX)
    print(f"apgd-t fools {int(fooled(plain, targeted, y[left]).sum())} of the {int(left.sum())} apgd-ce left")
    assert fooled(plain, targeted, y[left]).any()
    with pytest.raises(ValueError, match="4 classes"):
        APGDL1(nn.Linear(4, 3), 1.0, name="apgd-t")(torch.rand(2, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("norm,eps", [("l1", 1.0), ("l2", 0.4), ("linf", 0.07)])
def test_fmn_finds_verified_minimal_examples_consistent_with_fixed_eps_attacks(plain, digits, norm, eps):
    x, y = digits.x_test[:200], digits.y_test[:200]
    x_adv, dist = FMN(plain, norm)(x, y)
    assert dist.dtype == torch.float64
    found = torch.isfinite(dist)
    assert found.float().mean() > 0.95
    assert fooled(plain, x_adv[found], y[found]).all()
    assert torch.equal(dist[found], norms((x_adv - x).double(), norm)[found])
    assert torch.equal(x_adv[~found], x[~found])
    check_perturbation(x, x_adv, "linf", 1.0, BOX)  # only the range: any distance is allowed
    attack = (APGDL1(plain, eps) if norm == "l1" else
              EvalPGD(plain, norm, eps, steps=50, restarts=1, generator=torch.Generator().manual_seed(0)))
    hit = fooled(plain, attack(x, y), y)
    within = dist <= eps
    print(f"{norm} eps {eps}: FMN dist <= eps on {int(within.sum())}, fixed-eps attack fools {int(hit.sum())}; "
          f"FMN/eps on those: median {float((dist[hit] / eps).median()):.2f}, max {float((dist[hit] / eps).max()):.2f}")
    assert within.sum() >= 0.8 * hit.sum()  # a minimum-norm attack is about as strong as one at fixed eps ...
    assert (dist[hit] <= 1.5 * eps).float().mean() >= 0.85  # ... and finds most of those images near eps


@pytest.mark.parametrize("norm,dual", [("l1", "linf"), ("l2", "l2"), ("linf", "l1")])
def test_fmn_on_unbounded_vectors_finds_the_known_distance(norm, dual):
    """A linear two-class model: every adversarial point is at least |margin| / ||w||_dual away, and that is reached."""
    model = nn.Linear(10, 2)
    x = torch.randn(50, 10)
    y = model(x).argmax(1)
    w = model.weight[1] - model.weight[0]
    with torch.no_grad():
        distance = (model(x)[:, 1] - model(x)[:, 0]).abs() / norms(w[None], dual)
    x_adv, dist = FMN(model, norm, bounds=None)(x, y)
    assert torch.isfinite(dist).all() and fooled(model, x_adv, y).all()
    assert (dist >= distance.double() * (1 - 1e-4)).all()
    assert (dist <= distance.double() * 1.05).all()


class Quantize(nn.Module):
    """The identity on digits (stored as k/16), with zero gradient everywhere: gradient masking."""

    def forward(self, v):
        return torch.round(v * 16) / 16


def test_l1_guards_pass_on_an_ordinary_model_and_flag_a_masked_one(plain, digits):
    x, y = digits.x_test, digits.y_test
    assert covering_eps(x, "l1", BOX) == 64.0
    sweep = eps_sweep(plain, x, y, "l1", 1.0, BOX)
    assert sweep["passed"] and sweep["accuracy"][-1] == 0.0 and sweep["eps"][-1] == 64.0
    # the ascent alone, from the clean images, not only after the smaller radii, reaches near 0 at the covering radius
    xs, ys = x[::2], y[::2]
    at_cover = margin_ascent(plain, xs, ys, "l1", 64.0, BOX, steps=20)
    check_perturbation(xs, at_cover, "l1", 64.0, BOX)
    assert (~fooled(plain, at_cover, ys)).float().mean() <= 0.05
    assert loss_rise(plain, x, y, "l1", 1.0, BOX)["passed"]
    masked = nn.Sequential(Quantize(), plain)
    assert not eps_sweep(masked, x, y, "l1", 1.0, BOX)["passed"]
    assert not loss_rise(masked, x, y, "l1", 1.0, BOX)["passed"]


def test_square_l1_needs_no_gradient(plain, digits):
    """The black-box search fools a masked model about as often as the plain one, where l1-APGD is stopped."""
    x, y = digits.x_test[:200], digits.y_test[:200]
    masked = nn.Sequential(Quantize(), plain)
    rng = torch.get_rng_state()
    counts, found = {}, {}
    for name, model in (("plain", plain), ("masked", masked)):
        found[name] = SquareL1(model, 2.0, queries=300, seed=0)(x, y)
        check_perturbation(x, found[name], "l1", 2.0, BOX)
        counts[name] = int(fooled(model, found[name], y).sum())
        standing = ~fooled(model, found[name], y)
        assert torch.equal(found[name][standing], x[standing])
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(SquareL1(plain, 2.0, queries=300, seed=0)(x, y), found["plain"])
    white = int(fooled(masked, APGDL1(masked, 2.0, steps=50)(x, y), y).sum())
    print(f"L1 eps 2: SquareL1 (300 queries) fools {counts['plain']} (plain), {counts['masked']} (masked) of "
          f"{len(x)}; l1-APGD fools {white} of the masked model's")
    assert counts["plain"] >= 0.3 * len(x)
    assert counts["masked"] >= 0.8 * counts["plain"] and counts["masked"] >= 2 * white


def test_square_l1_on_unbounded_vectors():
    """A linear two-class model: points within half the radius of the boundary are all found, none beyond it."""
    model = nn.Linear(10, 2)
    x = torch.randn(200, 10)
    y = model(x).argmax(1)
    with torch.no_grad():
        distance = (model(x)[:, 1] - model(x)[:, 0]).abs() / (model.weight[1] - model.weight[0]).abs().max()
    x_adv = SquareL1(model, 1.0, queries=300, bounds=None)(x, y)
    check_perturbation(x, x_adv, "l1", 1.0, None)
    hit = fooled(model, x_adv, y)
    assert hit[distance < 0.5].all() and not hit[distance > 1.0].any()
