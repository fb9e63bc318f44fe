"""A robustness profile of any run: every threat of `THREATS` on the same first n test images, and their union.

`pagrob evaluate RUN --profile` writes RUN/profile.json:

    {"n": 1000, "clean": 0.71,
     "threats": {"l1": {"eps": [...], "robust": [...], "headline": 12, "points": [guards per radius], ...},
                 "l2": {...}, "linf": {...},
                 "corruptions": {"mean": 0.55, "per": {"gaussian_noise": [5 severities], ...}, "families": {...}},
                 "spatial": 0.31},
     "union": 0.04, "union_of": {"l1": "L1 12", ...}, "seconds": {...}, ...}

Accuracies are fractions of the n images. The union is per image: correct, and withstanding every threat at its
headline setting. Every threat keeps its per-image outcomes in the run folder (the L_p attacks beside
`pagrob evaluate`'s, so they share a worst case), so a killed profile continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from pagrob import console
from pagrob.accuracy import predict
from pagrob.attacks.library import get_version
from pagrob.devices import resolve_device
from pagrob.errors import ConfigError
from pagrob.evaluate import ROBUSTBENCH_EPS, Victim, eval_settings, l1_beside_l2, provenance
from pagrob.files import write_json
from pagrob.guards import covering_eps, worst_verdict
from pagrob.outcomes import FOLDER, OutcomeStore, model_hash
from pagrob.threats.lp import default_radii
from pagrob.threats.registry import THREATS, ProfileContext

PROFILE = "profile.json"
PROFILE_OUTCOMES = "profile_outcomes"  # min-norm, corruption and spatial outcomes per image
DEFAULT_N = 1000
DEFAULT_VERSION = "apgd-fast"  # APGD-CE + APGD-T (20 steps, 3 targets) at each radius; Square guards them


def read_profile(run_dir: Path) -> dict | None:
    """RUN/profile.json, or None for a run never profiled."""
    path = Path(run_dir) / PROFILE
    return json.loads(path.read_text()) if path.is_file() else None


def threat_names() -> str:
    return ", ".join(THREATS)


def parse_radii(items: list[str]) -> dict[str, list[float]]:
    """['l2=0.25,0.5', 'linf=0.0156'] -> {'l2': [0.25, 0.5], 'linf': [0.0156]}; one sentence for a bad item."""
    radii: dict[str, list[float]] = {}
    norms = [name for name, t in THREATS.items() if t.norm]
    for item in items:
        norm, sep, values = item.partition("=")
        if not sep or norm not in norms:
            raise ConfigError(f"--radii {item!r}: write NORM=E1,E2,... with NORM one of {', '.join(norms)}")
        if norm in radii:
            raise ConfigError(f"--radii gives {norm} twice: list all its radii in one {norm}=E1,E2,...")
        try:
            radii[norm] = sorted(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--radii {item!r}: the radii must be numbers, e.g. {norm}=0.25,0.5") from None
        if not radii[norm] or not all(math.isfinite(e) and e > 0 for e in radii[norm]):
            raise ConfigError(f"--radii {item!r}: every radius must be a positive number")
    return radii


def check_request(threats: list[str] | None, radii: dict[str, list[float]], reference: Path | None) -> list[str]:
    """The threats asked for (all by default), in registry order; a bad name, radii or a reference for a threat
    not asked for is one sentence, before anything is loaded."""
    threats = list(THREATS) if not threats else threats
    unknown = [t for t in threats if t not in THREATS]
    if unknown:
        raise ConfigError(f"unknown threat {', '.join(map(repr, unknown))}: use {threat_names()}")
    off = [norm for norm in radii if norm not in threats]
    if off:
        raise ConfigError(f"--radii {', '.join(off)}: that threat is not among --threats {' '.join(threats)}")
    if reference is not None and "corruptions" not in threats:
        raise ConfigError("--reference sets the corruption error's denominator: it needs the corruptions threat")
    return [t for t in THREATS if t in threats]


def applicable(threats: list[str], data) -> tuple[list[str], dict[str, str]]:
    """(the threats this data admits, the others with the reason): corruptions and transforms need images in
    [0, 1] with 1 or 3 channels, at least 8 pixels a side."""
    shape = tuple(data.x_test.shape[1:])
    image = (len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 8 and data.bounds == (0.0, 1.0))
    skipped = {t: f"inputs of shape {shape} are not images in [0, 1] of 1 or 3 channels and >= 8 px"
               for t in threats if THREATS[t].images_only and not image}
    return [t for t in threats if t not in skipped], skipped


def headlines(input_shape: tuple[int, ...], bounded: bool, eval_eps: dict[str, list[float]]) -> dict[str, float]:
    """Per norm, the radius the summary and the union use: RobustBench's L2 0.5 and L∞ 8/255 for images in
    [0, 1] (the run's first positive evaluation radius for unbounded inputs), and L1 beside L2 (`l1_beside_l2`)."""
    if bounded:
        out = dict(ROBUSTBENCH_EPS)
    else:
        out = {}
        for norm, eps in eval_eps.items():
            positive = [e for e in eps if e > 0]
            if not positive:
                raise ConfigError(f"the run's eval.eps_{norm} has no positive radius to centre the {norm} curve on "
                                  f"(unbounded inputs have no standard one): set one in its config.yaml")
            out[norm] = positive[0]
    out["l1"] = l1_beside_l2(out["l2"], math.prod(input_shape))
    return out


def check_radii(radii: dict[str, list[float]], x: torch.Tensor, bounds: tuple[float, float] | None) -> None:
    """Refuse a radius past the one whose ball holds every valid input: there the answer is 0 by construction."""
    if bounds is None:
        return
    for norm, eps in radii.items():
        cover = covering_eps(x, norm, bounds)
        if max(eps) > cover:
            raise ConfigError(f"{norm} radius {max(eps):g} is larger than {cover:g}, the radius whose ball already "
                              "holds every valid input; use smaller radii (--radii)")


def _reference(path: Path | None, n: int, dataset: str) -> dict | None:
    """A reference run's corruption accuracies (for mCE), on the same n images of the same data."""
    if path is None:
        return None
    ref = read_profile(path)
    if ref is None:
        raise ConfigError(f"--reference {path}: it has no {PROFILE}; profile it first (pagrob evaluate {path} "
                          f"--profile --n {n})")
    if ref.get("n") != n or ref.get("dataset") != dataset or "corruptions" not in ref.get("threats", {}):
        raise ConfigError(f"--reference {path}: its profile has no corruptions on the first {n} {dataset} images "
                          f"(it has n={ref.get('n')} of {ref.get('dataset')}); profile it with --n {n}")
    per = ref["threats"]["corruptions"]["per"]
    flawless = [name for name, accs in per.items() if all(a == 1 for a in accs)]
    if flawless:
        raise ConfigError(f"--reference {path} makes no error under {', '.join(flawless)}: the corruption error "
                          "divides by the reference's errors; choose a weaker reference")
    return {"run": str(Path(path).resolve()), "per": per}


def profile_run(run, n: int | None = None, threats: list[str] | None = None,
                radii: dict[str, list[float]] | None = None, version: str = DEFAULT_VERSION,
                reference: Path | None = None, device: str | torch.device | None = None,
                progress: bool = True) -> dict:
    """Profile a run (`pagrob.runs.Run`) on its first n test images; write and return RUN/profile.json."""
    get_version(version)
    radii = radii or {}
    asked = check_request(threats, radii, reference)
    data = run.dataset()
    n = n if n is not None else (run.config.eval.n or DEFAULT_N)
    n = min(n, len(data.x_test)) if n > 0 else len(data.x_test)
    selected, skipped = applicable(asked, data)
    ev = run.config.eval
    heads = headlines(tuple(data.x_test.shape[1:]), data.bounds is not None, {"l2": ev.eps_l2, "linf": ev.eps_linf})
    grids = {norm: sorted(set(radii.get(norm, default_radii(norm, heads[norm])) + [heads[norm]]))
             for norm in heads if norm in selected}
    check_radii(grids, data.x_test[:1], data.bounds)
    ref = _reference(reference, n, data.name) if "corruptions" in selected else None
    device = device or resolve_device(run.config.device)
    model = run.model.to(device).eval()
    x, y = data.x_test[:n].to(device), data.y_test[:n].to(device)
    victim = Victim(model, x, y, data.bounds, data.num_classes, run.config.adv.method)
    settings = eval_settings(ev, attack="autoattack", version=version)
    clean_ok = predict(model, x) == y
    digest = model_hash(model)  # profile.json names the weights it describes
    ctx = ProfileContext(victim, settings, grids, heads, OutcomeStore(run.path / FOLDER, digest),
                         OutcomeStore(run.path / PROFILE_OUTCOMES, digest), clean_ok, reference=ref, progress=progress)
    console.line(f"profile of {run.config.name}: {', '.join(selected)} on the first {n} {data.test_split} images "
                 f"(clean {100 * clean_ok.float().mean().item():.1f}%)", progress)
    profile = {"n": n, "clean": clean_ok.float().mean().item(), "threats": {}, "union": None, "union_of": {},
               "not_run": skipped, "details": {}, "seconds": {}, "test_split": data.test_split,
               "dataset": data.name, "name": run.config.name, "method": run.method, "model": digest,
               "attacks": {"version": version, "then": list(ctx.then), "pgd": settings.budget("pgd")},
               "provenance": provenance(settings, device)}
    union = clean_ok.cpu().clone()
    verdicts = []
    for name in selected:
        start = time.perf_counter()
        result = THREATS[name].run(ctx)
        profile["threats"][name] = result.summary
        profile["details"].update({name: result.details} if result.details else {})
        profile["union_of"][name] = result.headline_label
        profile["seconds"][name] = time.perf_counter() - start
        union &= result.headline.cpu()
        verdicts.append(result.verdict)
        write_json(run.path / PROFILE, profile)  # what is done so far, readable while the rest runs
    profile["union"] = union.float().mean().item()
    profile["verdict"] = worst_verdict(verdicts)
    write_json(run.path / PROFILE, profile)
    console.line(f"profile of {run.config.name}: union {100 * profile['union']:.1f}% "
                 f"({' & '.join(profile['union_of'].values())}); {run.path / PROFILE}", progress)
    return profile


def summary_row(profile: dict) -> dict[str, float | None]:
    """The summary table's numbers: clean, each norm at its headline radius, corruptions mean, spatial, union."""
    row: dict[str, float | None] = {"clean": profile["clean"]}
    for name, t in profile["threats"].items():
        if isinstance(t, dict) and "headline" in t:
            row[name] = t["robust"][t["eps"].index(t["headline"])]
        elif isinstance(t, dict):
            row[name] = t["mean"]
        else:
            row[name] = t
    row["union"] = profile.get("union")
    return row
