"""Guards against gradient masking (Athalye et al., 2018; Carlini et al., 2019), run with every robust evaluation.

A model can look robust because its gradients are useless to the attack (zero, shattered, saturated),
not because its decisions are stable. Each guard looks for one symptom:

  in_ball    every adversarial example lies in its eps-ball and the valid range (else the number is a bug);
  eps_sweep  accuracy under gradient ascent falls to near zero as eps grows to cover the whole input range;
  blackbox   Square, which never reads a gradient, does not fool clearly more images than the white-box attacks;
  loss_rise  gradient ascent raises the attack loss by more than random noise of the same size does.

Two more guards ask whether there is a robust model to speak of at all:

  collapse   (runs trained with a single-step adversary) the run's own training attack still fools at least half
             of the images the evaluation attack fools; else it has overfitted catastrophically (Wong et al. 2020):
             it defeats its one step, not the threat model;
  learned    clean accuracy is at least 1 - (1 - 1/C)^2 (19 % for C = 10 classes): a model near chance has not
             learned, and its "robust" accuracy is chance surviving, not robustness.

The sweep and the loss probe ascend the margin loss (best other logit minus the true one) with
normalised steps, not cross-entropy: far from the boundary softmax saturates, cross-entropy's gradient
underflows to exactly zero, and a healthy model would look masked. They run on evenly spaced images
of the evaluated set, so ordered test sets (toy2d's are sorted by class) are covered.

Each guard returns a dict with `passed` and, when it failed, a `reason`; `verdict` folds them into
"ok", "suspect" or "not learned" (`VERDICTS`, mildest first) plus the reasons.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pagrob.attacks import PerturbationError, check_perturbation, project
from pagrob.attacks.apgd_l1 import sparse_step
from pagrob.attacks.checks import norms
from pagrob.attacks.pgd import margin

SWEEP_FACTORS = (2.0, 4.0, 8.0)  # multiples of the evaluated eps, capped at the covering eps
SWEEP_IMAGES = 200
SWEEP_STEPS = 20
NEAR_ZERO = 0.05  # largest accuracy accepted at the covering eps
BLACKBOX_MIN_IMAGES = 3  # Square may fool this many images the white-box attacks missed ...
BLACKBOX_FRACTION = 0.02  # ... or this fraction of the evaluated images, whichever is larger
PROBE_IMAGES = 100
PROBE_STEPS = 10
RISE_FRACTION = 0.8  # share of images where ascent must beat noise
L1_FRACTION = 0.05  # share of coordinates an L1 step moves (the steepest single coordinate is far too slow)
COLLAPSE_FRACTION = 0.5  # most of the evaluation attack's fooled images a single-step attack may leave standing
VERDICTS = ("ok", "suspect", "not learned")  # mildest first: a table shows the worst of its numbers'


def _guard(passed: bool, reason: str, **details) -> dict:
    return {"passed": bool(passed), **details, **({} if passed else {"reason": reason})}


def outside_ball(x: Tensor, x_adv: Tensor, norm: str, eps: float, bounds: tuple[float, float] | None
                 ) -> tuple[Tensor, str | None]:
    """(per-image mask of examples that break the ball or range, check_perturbation's message or None)."""
    try:
        check_perturbation(x, x_adv, norm, eps, bounds)
        return torch.zeros(len(x), dtype=torch.bool, device=x.device), None
    except PerturbationError as err:
        finite = torch.isfinite(x_adv).flatten(1).all(1)
        bad = ~finite | (norms((x_adv - x).double(), norm) > eps * (1 + 1e-4) + 1e-6)
        if bounds is not None:
            bad |= ((x_adv < bounds[0] - 1e-6) | (x_adv > bounds[1] + 1e-6)).flatten(1).any(1)
        return bad, str(err)


def in_ball(violations: int, n: int, message: str | None) -> dict:
    """Guard (a), from the counts gathered while attacking. Offending examples were counted as not fooled."""
    return _guard(violations == 0, f"{violations} of {n} adversarial examples were invalid ({message}); "
                                   "they were counted as not fooled", violations=violations)


def covering_eps(x: Tensor, norm: str, bounds: tuple[float, float] | None, eps: float = 0.0) -> float:
    """An eps whose ball reaches every valid input: the range's diameter; for unbounded inputs the evaluated
    points' spread, or the sweep's largest multiple of eps when that is more (the points may be one class)."""
    if bounds is not None:
        width, d = bounds[1] - bounds[0], x[0].numel()
        return {"l1": width * d, "l2": width * math.sqrt(d)}.get(norm, width)
    spread = x.amax(0) - x.amin(0)
    size = spread.norm() if norm == "l2" else spread.sum() if norm == "l1" else spread.max()
    return max(float(size), SWEEP_FACTORS[-1] * eps)


def sweep_grid(eps: float, cover: float) -> list[float]:
    return sorted({min(eps * f, cover) for f in SWEEP_FACTORS} | {cover})


def spread(x: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """k evenly spaced examples (all when there are fewer)."""
    if len(x) <= k:
        return x, y
    idx = torch.linspace(0, len(x) - 1, k, device=x.device).round().long()
    return x[idx], y[idx]


def eps_sweep(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, bounds: tuple[float, float] | None,
              batch_size: int = 256) -> dict:
    """Guard (b): accuracy under margin ascent on a growing eps grid must end near zero.

    Each radius starts from the previous radius's result (it lies in the larger ball too), so what a smaller
    radius found is never lost to the larger one's coarser steps: the sweep falls monotonically unless the
    gradients lead nowhere, and a model that keeps its accuracy at the covering radius is flagged. Once no image
    stands, the larger radii are not attacked: their balls hold the same fooling points, so their accuracy is 0
    too (`zero_from` says where that was found).
    """
    grid = sweep_grid(eps, covering_eps(x, norm, bounds, eps))
    x, y = spread(x, y, SWEEP_IMAGES)
    starts = x.clone()
    accs = []
    for e in grid:
        if accs and accs[-1] == 0:
            accs.append(0.0)
            continue
        correct = 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            starts[i:i + batch_size] = margin_ascent(model, xb, yb, norm, e, bounds, SWEEP_STEPS,
                                                     start=starts[i:i + batch_size])
            with torch.no_grad():
                correct += int((model(starts[i:i + batch_size]).argmax(1) == yb).sum())
        accs.append(correct / max(len(x), 1))
    reason = (f"accuracy is still {accs[-1]:.0%} at eps={grid[-1]:g}, the sweep's largest radius, where it should "
              "be near 0")
    zero_from = next((e for e, a in zip(grid, accs) if a == 0), None)
    return _guard(accs[-1] <= NEAR_ZERO, reason, eps=grid, accuracy=accs, n_examples=len(x), zero_from=zero_from)


def blackbox(whitebox_survivors: int, blackbox_extra: int, n: int, queries: int) -> dict:
    """Guard (c): `blackbox_extra` = images Square fooled among the `whitebox_survivors` the gradients could not."""
    limit = max(BLACKBOX_MIN_IMAGES, BLACKBOX_FRACTION * n)
    return _guard(blackbox_extra <= limit,
                  f"the black-box Square attack fooled {blackbox_extra} of {n} images that the white-box attacks "
                  f"could not (limit {limit:g})", whitebox_survivors=whitebox_survivors, blackbox_extra=blackbox_extra,
                  square_queries=queries)


def _unit(v: Tensor, norm: str, at: Tensor | None = None, bounds: tuple[float, float] | None = None) -> Tensor:
    """A step of unit size along v: its signs (L-inf), v normalised (L2), or for L1 an even split over the
    `L1_FRACTION` largest entries of v (leaving out, given the point `at` and `bounds`, coordinates at a wall
    that v pushes outward)."""
    if norm == "linf":
        return v.sign()
    if norm == "l1":
        k = torch.full((len(v),), math.ceil(L1_FRACTION * v[0].numel()), device=v.device)
        return sparse_step(v, k, at, bounds)
    return v / norms(v, "l2").clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def margin_ascent(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float,
                  bounds: tuple[float, float] | None, steps: int, start: Tensor | None = None) -> Tensor:
    """PGD on the margin loss within the eps-ball around x, from `start` (default x itself), keeping each
    image's best iterate.

    No random start: a zero gradient must leave x where it is. Keeping the best iterate stops large
    steps (large eps) from oscillating across a thin class region and losing what they found.
    """
    x_adv = (x if start is None else start).clone()
    with torch.no_grad():
        best, best_margin = x_adv.clone(), margin(model(x_adv), y)
    step = 2.5 * eps / steps
    for i in range(steps + 1):
        x_adv.requires_grad_(True)
        m = margin(model(x_adv), y)
        better = m.detach() > best_margin
        best[better], best_margin[better] = x_adv.detach()[better], m.detach()[better]
        if i == steps:
            break
        (grad,) = torch.autograd.grad(m.sum(), x_adv)
        x_adv = project(x, x_adv.detach() + step * _unit(grad, norm, x_adv.detach(), bounds), norm, eps, bounds)
    return best


def loss_rise(model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float, bounds: tuple[float, float] | None,
              seed: int = 0) -> dict:
    """Guard (d): gradient ascent on the margin within the eps-ball must beat random noise of size eps, or
    cross the decision boundary (at large eps on a curved landscape, a lucky random direction can end higher
    than ten ascent steps that have already fooled the model; those gradients did point uphill)."""
    x, y = spread(x, y, PROBE_IMAGES)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
    x_noise = project(x, x + eps * _unit(noise, norm), norm, eps, bounds)
    x_adv = margin_ascent(model, x, y, norm, eps, bounds, PROBE_STEPS)
    with torch.no_grad():
        start, noisy, ascent = (margin(model(v), y) for v in (x, x_noise, x_adv))
    tol = 1e-4 * start.abs().clamp_min(1.0)
    rose = ascent - start > tol
    beats = ((ascent - start > (noisy - start).clamp_min(0) + tol) | (rose & (ascent > 0))).float().mean().item()
    return _guard(beats >= RISE_FRACTION,
                  f"gradient ascent beat random noise (or fooled the model) on only {beats:.0%} of images "
                  f"(need {RISE_FRACTION:.0%}): the gradients do not point uphill",
                  fraction=beats, margin_start=start.mean().item(), margin_noise=noisy.mean().item(),
                  margin_ascent=ascent.mean().item(), n_examples=len(x))


def collapse(fooled: int, standing: int, adversary: str) -> dict:
    """Guard (e): `standing` = images the run's own single-step training attack (`adversary`) leaves correctly
    classified among the `fooled` ones the evaluation attack fools."""
    limit = COLLAPSE_FRACTION * fooled
    return _guard(standing <= limit,
                  f"catastrophic overfitting: the run's own training attack ({adversary}) leaves standing "
                  f"{standing} of the {fooled} images the evaluation attack fools (limit {limit:g}); the model defeats its one-step "
                  "attack, not the threat model", fooled=fooled, standing=standing, adversary=adversary)


def chance_line(num_classes: int) -> float:
    """1 - (1 - 1/C)^2: clean accuracy below this is too close to chance (1/C) to call learned; 19 % for 10 classes."""
    return 1 - (1 - 1 / num_classes) ** 2


def learned(clean_accuracy: float, num_classes: int) -> dict:
    """Guard (f): a model near chance has not learned; whatever survives an attack on it is not robustness."""
    line = chance_line(num_classes)
    return _guard(clean_accuracy >= line,
                  f"the model has not learned: clean accuracy {clean_accuracy:.1%} is below {line:.0%} "
                  f"(1 - (1 - 1/C)^2 for C = {num_classes} classes, near chance); train longer or fix the recipe",
                  clean_accuracy=clean_accuracy, line=line)


def verdict(guards: dict[str, dict]) -> tuple[str, list[str]]:
    """("ok" | "suspect" | "not learned", the failed guards' reasons). Not learned outranks every other failure."""
    reasons = [f"{name}: {g['reason']}" for name, g in guards.items() if not g["passed"]]
    if "learned" in guards and not guards["learned"]["passed"]:
        return "not learned", reasons
    return ("suspect" if reasons else "ok"), reasons


def worst_verdict(verdicts) -> str:
    """The most severe of several verdicts (VERDICTS order; "ok" when there are none)."""
    return max(verdicts, key=VERDICTS.index, default="ok")


def run_verdict(results: dict) -> str:
    """The worst verdict of a run's robust numbers (its results.json): ok, suspect or not learned."""
    return worst_verdict(e.get("verdict", "ok") for e in results.get("robust_accuracy", []))
