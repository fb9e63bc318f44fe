"""The one list of threats a robustness profile measures: `THREATS`, read by the CLI's choices, the profile's
validation and its dispatch. A new threat is one more entry: what it needs of the inputs, and how it runs.

Each threat returns its summary for profile.json and, per image, whether the image withstood the threat at its
headline setting (L_p: the headline radius; corruptions: every corruption at severity 3; spatial: the whole
grid): the union of threats is then per image, never the minimum of the marginals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pagrob import console, guards
from pagrob.attacks.own import OWN_NORMS
from pagrob.attacks.settings import AttackSettings
from pagrob.evaluate import Victim, batch_seed
from pagrob.outcomes import FOOLED, SURVIVED, OutcomeStore, pending, radius_label
from pagrob.threats import corruptions
from pagrob.threats.corruptions import CORRUPTION_NAMES, FAMILIES, SEVERITIES, corrupt
from pagrob.threats.lp import lp_curve
from pagrob.threats.spatial import default_grid, spatial_robust

UNION_SEVERITY = 3  # the corruption severity the union asks an image to withstand (every corruption at it)


@dataclass
class ProfileContext:
    """What every threat reads: the model and images, the attack settings, the radii, where outcomes go."""

    victim: Victim
    settings: AttackSettings  # the L_p attacks: AutoAttack's components at settings.version, then `then`
    radii: dict[str, list[float]]  # per norm, ascending
    headline: dict[str, float]  # per norm, the radius the union and the summary table use
    attack_store: OutcomeStore  # the run's attack_outcomes: L_p outcomes shared with `pagrob evaluate`
    profile_store: OutcomeStore  # min-norm, corruption and spatial outcomes
    clean_ok: Tensor
    then: tuple[str, ...] = ("pgd",)
    reference: dict | None = None  # a reference run's profile (for mCE)
    progress: bool = True


@dataclass
class ThreatResult:
    summary: dict | float  # profile.json's threats[name]
    headline: Tensor  # (n,) bool: withstood the threat at its headline setting
    headline_label: str
    verdict: str = "ok"
    details: dict = field(default_factory=dict)  # more of it, under profile.json's details[name]


@dataclass(frozen=True)
class Threat:
    summary: str  # one line for the CLI's help
    images_only: bool  # needs (C, H, W) images in [0, 1]
    run: Callable[[ProfileContext], ThreatResult]
    norm: str | None = None  # an L_p threat's norm


def _norm_threat(norm: str) -> Callable[[ProfileContext], ThreatResult]:
    def run(ctx: ProfileContext) -> ThreatResult:
        v = ctx.victim
        then = () if norm in OWN_NORMS else ctx.then  # PGD's dense steps are no L1 attack (Croce & Hein 2021)
        curve = lp_curve(v, ctx.settings.with_(norm=norm, eps=ctx.headline[norm]), ctx.radii[norm],
                         ctx.attack_store, ctx.profile_store, then, progress=ctx.progress)
        summary = curve.summary()
        summary["headline"] = ctx.headline[norm]
        return ThreatResult(summary, curve.at(ctx.headline[norm]), radius_label(norm, ctx.headline[norm]),
                            summary["verdict"])
    return run


def _corruptions(ctx: ProfileContext) -> ThreatResult:
    v, n, s = ctx.victim, len(ctx.victim.x), ctx.settings
    start = time.perf_counter()
    per, correct = {}, {}
    for name in CORRUPTION_NAMES:
        accs = []
        for severity in SEVERITIES:
            key = {"component": f"corruption:{name}", "severity": severity, "seed": s.seed,
                   "version": corruptions.VERSION}
            outcomes = ctx.profile_store.open_named(f"corruption-{name}-s{severity}-n{n}", key, n)
            for batch in pending(outcomes, None, s.batch_size):
                b = batch.to(v.x.device)
                # an image's seed is fixed by its index: the same draws in any batch, at every severity
                xc = corrupt(name, v.x[b], severity, torch.tensor([batch_seed(s.seed, i) for i in batch.tolist()]))
                with torch.no_grad():
                    ok = (v.model(xc).argmax(1) == v.y[b]).cpu()
                outcomes.update(batch, torch.where(ok, SURVIVED, FOOLED), None)
            correct[name, severity] = torch.tensor(outcomes.codes) == SURVIVED
            accs.append(correct[name, severity].float().mean().item())
        per[name] = accs
        console.line(f"corruption {name}: {' / '.join(f'{100 * a:.1f}' for a in accs)} % at severities "
                     f"{SEVERITIES[0]}-{SEVERITIES[-1]}", ctx.progress)
    summary = {"mean": sum(sum(a) for a in per.values()) / (len(per) * len(SEVERITIES)), "per": per,
               "families": {f: sum(sum(per[c]) for c in names) / (len(names) * len(SEVERITIES))
                            for f, names in FAMILIES.items()},
               "seconds": time.perf_counter() - start}
    if ctx.reference is not None:
        summary["mce"] = mean_corruption_error(per, ctx.reference["per"])
        summary["reference"] = ctx.reference["run"]
    headline = ctx.clean_ok.cpu().clone()
    for name in CORRUPTION_NAMES:
        headline &= correct[name, UNION_SEVERITY]
    return ThreatResult(summary, headline, f"every corruption at severity {UNION_SEVERITY}")


def mean_corruption_error(per: dict[str, list[float]], reference: dict[str, list[float]]) -> float:
    """mCE (Hendrycks & Dietterich 2019): per corruption, the errors summed over severities divided by the
    reference model's, averaged over corruptions; 1.0 is the reference's own."""
    ratios = []
    for name, accs in per.items():
        ref_error = sum(1 - a for a in reference[name])
        if ref_error == 0:
            raise ValueError(f"the reference run makes no error under {name}: mCE divides by its errors")
        ratios.append(sum(1 - a for a in accs) / ref_error)
    return sum(ratios) / len(ratios)


def _spatial(ctx: ProfileContext) -> ThreatResult:
    v = ctx.victim
    grid = default_grid(v.x.shape[-2])
    start = time.perf_counter()
    robust = spatial_robust(v.model, v.x, v.y, grid, ctx.profile_store, ctx.settings.batch_size, ctx.progress)
    learned = guards.learned(ctx.clean_ok.float().mean().item(), v.num_classes)
    verdict, _ = guards.verdict({"learned": learned})
    return ThreatResult(robust.float().mean().item(), robust.to(ctx.clean_ok.device), "every transform of the grid",
                        verdict, {"grid": grid.describe(), "seconds": time.perf_counter() - start})


THREATS: dict[str, Threat] = {
    "l1": Threat("L1 curve: APGD-L1 (Croce & Hein 2021) and FMN over a grid of radii", False, _norm_threat("l1"), "l1"),
    "l2": Threat("L2 curve: AutoAttack's APGD (torchattacks), our PGD and FMN over a grid of radii", False,
                 _norm_threat("l2"), "l2"),
    "linf": Threat("L∞ curve: AutoAttack's APGD (torchattacks), our PGD and FMN over a grid of radii", False,
                   _norm_threat("linf"), "linf"),
    "corruptions": Threat("the 15 CIFAR-10-C corruptions at 5 severities, made from the test images (seeded)", True,
                          _corruptions),
    "spatial": Threat("worst case over rotations ±30° and translations ±3 px (grid search, no gradient)", True,
                      _spatial),
}
