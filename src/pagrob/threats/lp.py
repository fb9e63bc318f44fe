"""A robustness curve under one L_p norm: robust accuracy at every radius of a grid, for little more than one point.

Two facts make a curve cheap. An image fooled at ε is fooled at every larger ε (the example lies in the larger
ball too), and one that no attack fools at ε is counted robust at every smaller ε (the smaller ball is inside the
larger one, where the attacks already searched). So:

1. a minimum-norm attack (FMN, Pintor et al. 2021) finds, in one pass over the clean-correct images, each
   image's smallest adversarial perturbation it can: that image is fooled at every radius >= its norm;
2. the radii are then attacked from the largest down, each on the images still undecided there: correctly
   classified, with no adversarial example found within the radius, and not already standing at a larger
   radius. Most images are attacked once, at the largest radius below their FMN norm, and stand.

Each radius's attack is the guarded `robust_accuracy` of `pagrob.evaluate` (every guard at every point); every
number is the worst case per image over every attack that ran at that radius, earlier evaluations' included,
closed upward (fooled at ε, fooled at every larger radius). Per-image outcomes are kept, so a killed curve resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from pagrob import console, guards
from pagrob.accuracy import predict
from pagrob.attacks import fmn
from pagrob.attacks.settings import AttackSettings
from pagrob.evaluate import Victim, robust_accuracy
from pagrob.outcomes import FOOLED, INVALID, SURVIVED, OutcomeStore, pending, radius_label

# Each norm's grid as multiples of its headline radius (CIFAR-10: L∞ 1..16/255, L2 0.125..2, L1 3..24).
MULTIPLES = {"linf": (1 / 8, 1 / 4, 1 / 2, 1, 2), "l2": (1 / 4, 1 / 2, 1, 2, 4), "l1": (1 / 4, 1 / 2, 1, 2)}
FMN_STEPS = 50  # a shortcut, not the verdict: APGD decides every image FMN leaves undecided


def default_radii(norm: str, headline: float) -> list[float]:
    return [headline * m for m in MULTIPLES[norm]]


@dataclass
class CurveResult:
    """A norm's curve: robust accuracy per radius (ascending), the per-image verdicts, each point's guarded entry."""

    norm: str
    eps: list[float]
    robust: Tensor  # (radii, n) bool: correct and never fooled within that radius
    points: list[dict]
    min_norm: dict

    def accuracy(self) -> list[float]:
        return self.robust.float().mean(1).tolist()

    def at(self, eps: float) -> Tensor:
        """Per-image robustness at one radius of the grid."""
        for e, row in zip(self.eps, self.robust):
            if math.isclose(e, eps, rel_tol=1e-9):
                return row
        raise KeyError(f"{radius_label(self.norm, eps)} is not on the curve's grid")

    def summary(self) -> dict:
        return {"eps": self.eps, "robust": self.accuracy(), "points": self.points, "min_norm": self.min_norm,
                "verdict": guards.worst_verdict(p["verdict"] for p in self.points)}


def min_norms(v: Victim, norm: str, clean_ok: Tensor, store: OutcomeStore, batch_size: int,
              steps: int = FMN_STEPS, progress: bool = True) -> tuple[Tensor, int]:
    """(each image's smallest adversarial norm FMN found, float64, inf where none and 0 where the clean image is
    already wrong; how many of its examples failed the range check and were thrown away). Resumes per batch."""
    n = len(v.x)
    key = {"component": f"fmn-{norm}", "attack_norm": norm, "steps": steps, "step_size": fmn.STEP_SIZE,
           "final_step": fmn.FINAL_STEP, "gamma": list(fmn.GAMMA)}  # FMN draws nothing at random
    outcomes = store.open_named(f"fmn-{norm}-{steps}-n{n}", key, n, values=True)
    batches = pending(outcomes, clean_ok, batch_size)
    todo = sum(len(b) for b in batches)
    start = time.perf_counter()
    bar = console.bar(total=int(clean_ok.sum()), initial=int(clean_ok.sum()) - todo, desc=f"fmn {norm}",
                      unit="img", leave=False, enabled=progress)
    for done, batch in enumerate(batches, 1):
        b = batch.to(v.x.device)
        x_adv, dist = fmn.FMN(v.model, norm, steps=steps, bounds=v.bounds)(v.x[b], v.y[b])
        invalid = torch.zeros(len(b), dtype=torch.bool)
        if v.bounds is not None:  # an example outside the valid range is no evidence: thrown away, counted
            invalid = ((x_adv < v.bounds[0] - 1e-6) | (x_adv > v.bounds[1] + 1e-6)).flatten(1).any(1).cpu()
        dist = torch.where(invalid, torch.full_like(dist.cpu(), math.inf), dist.cpu())
        new = torch.where(invalid, INVALID, torch.where(torch.isfinite(dist), FOOLED, SURVIVED))
        outcomes.update(batch, new, "an FMN example left the valid range" if invalid.any() else None, dist)
        bar.update(len(batch))
        console.line(f"fmn {norm}: batch {done} of {len(batches)} ({time.perf_counter() - start:.0f} s)",
                     progress and not console.interactive())
    bar.close()
    values = torch.tensor([math.inf if d is None else d for d in outcomes.values], dtype=torch.float64)
    codes = torch.tensor(outcomes.codes)
    dist = torch.where(clean_ok.cpu(), values, torch.zeros_like(values))
    found = torch.isfinite(dist) & clean_ok.cpu()
    console.line(f"fmn {norm}: an adversarial example for {int(found.sum())} of {int(clean_ok.sum())} correctly "
                 f"classified images, median norm {dist[found].median().item() if found.any() else math.nan:.4g} "
                 f"({time.perf_counter() - start:.1f} s)", progress)
    return dist, int((codes == INVALID).sum())


def stored_fooled(store: OutcomeStore, norm: str, eps: float, n: int) -> Tensor:
    """Images any stored attack (this curve's, its guards', an earlier evaluation's) fooled within radius `eps`:
    at it or at any smaller radius, whose ball lies inside this one."""
    fooled = torch.zeros(n, dtype=torch.bool)
    for o in store.all_of(norm):
        if o.key["eps"] <= eps * (1 + 1e-12):
            codes = torch.tensor(o.codes[:n])
            fooled[:len(codes)] |= codes == FOOLED
    return fooled


def lp_curve(v: Victim, s: AttackSettings, radii: list[float], store: OutcomeStore, min_norm_store: OutcomeStore,
             then: tuple[str, ...] = ("pgd",), fmn_steps: int = FMN_STEPS, progress: bool = True) -> CurveResult:
    """Robust accuracy at every radius of `radii` under `s.norm`: FMN once, then `s`'s attacks (AutoAttack's
    components at `s.version`, followed by `then`) radius by radius from the largest, on the undecided images."""
    radii = sorted(radii)
    n = len(v.x)
    clean_ok = (predict(v.model, v.x, s.batch_size) == v.y).cpu()
    dist, fmn_invalid = min_norms(v, s.norm, clean_ok, min_norm_store, s.batch_size, fmn_steps, progress)
    sweep = guards.eps_sweep(v.model, v.x, v.y, s.norm, radii[-1], v.bounds)
    stood = torch.zeros(n, dtype=torch.bool)  # no attack fooled it at a larger radius: robust at this one
    direct, points = {}, {}
    for eps in reversed(radii):
        undecided = clean_ok & (dist > eps) & ~stood
        entry = robust_accuracy(v, s.with_(eps=eps), store, progress, sweep,
                                candidates=undecided.to(v.x.device), then=then)
        fooled_here = torch.zeros(n, dtype=torch.bool)
        for idx in entry["broken_by"].values():
            fooled_here[idx] = True
        direct[eps] = fooled_here | stored_fooled(store, s.norm, eps, n)  # the black-box guard's finds too
        stood |= undecided & ~direct[eps]
        if fmn_invalid:
            ball = entry["guards"]["in_ball"]
            entry["guards"]["in_ball"] = guards.in_ball(ball["violations"] + fmn_invalid, n,
                                                        f"{ball.get('reason', '')} {fmn_invalid} FMN examples "
                                                        "outside the valid range".strip())
            entry["verdict"], entry["suspect_reasons"] = guards.verdict(entry["guards"])
        points[eps] = {"eps": eps, "attacked": int(undecided.sum()), "fooled_by_attacks": int(fooled_here.sum()),
                       "fooled_by_min_norm": int((clean_ok & (dist <= eps)).sum()), "guards": entry["guards"],
                       "verdict": entry["verdict"], "suspect_reasons": entry["suspect_reasons"],
                       "attacks": list(entry["broken_by"]), "skipped": entry["skipped"],
                       "seconds": entry["seconds"]}
    inherited = "ok"
    for eps in reversed(radii):  # a radius takes the standing images of the larger ones: and their verdicts
        inherited = guards.worst_verdict([inherited, points[eps]["verdict"]])
        points[eps]["verdict"] = inherited
    robust = torch.zeros(len(radii), n, dtype=torch.bool)
    fooled = ~clean_ok
    for j, eps in enumerate(radii):  # closed upward: fooled within a smaller ball is fooled within this one
        fooled = fooled | direct[eps] | (dist <= eps)
        robust[j] = ~fooled
        points[eps]["robust"] = robust[j].float().mean().item()
        console.line(f"{radius_label(s.norm, eps)}: robust {100 * points[eps]['robust']:.1f}% "
                     f"(attacked {points[eps]['attacked']} undecided images; guards: {points[eps]['verdict']})",
                     progress)
    found = dist[clean_ok & torch.isfinite(dist)]
    min_norm = {"attack": f"fmn ({fmn_steps} steps)", "found": int(found.numel()), "of": int(clean_ok.sum()),
                "median": found.median().item() if found.numel() else None, "invalid": fmn_invalid}
    return CurveResult(s.norm, radii, robust, [points[e] for e in radii], min_norm)


def every_radius(v: Victim, s: AttackSettings, radii: list[float], store: OutcomeStore, min_norm_store: OutcomeStore,
                 then: tuple[str, ...] = ("pgd",), fmn_steps: int = FMN_STEPS, progress: bool = True) -> Tensor:
    """The reference the shortcut must match: the same attacks and guards (FMN, then `s`'s, `then` and the
    black-box guard) at every radius on every clean-correct image, closed upward the same way. (radii, n) bool.
    For tests and audits: a curve costs a fraction of it."""
    radii = sorted(radii)
    clean_ok = (predict(v.model, v.x, s.batch_size) == v.y).cpu()
    dist, _ = min_norms(v, s.norm, clean_ok, min_norm_store, s.batch_size, fmn_steps, progress)
    robust = torch.zeros(len(radii), len(v.x), dtype=torch.bool)
    for j, eps in enumerate(radii):
        robust_accuracy(v, s.with_(eps=eps), store, progress, then=then)
        robust[j] = clean_ok & ~stored_fooled(store, s.norm, eps, len(v.x)) & ~(dist <= eps)
    return robust
