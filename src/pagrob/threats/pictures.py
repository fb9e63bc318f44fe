"""The robustness profile in pictures and one table, for the report: every run a line or a bar.

- robustness curves: accuracy against ε under L1, L2 and L∞ (ε = 0 is the clean accuracy), the headline radius
  dotted, hollow markers where a guard failed at that point;
- beyond L_p: mean corruption accuracy against severity, and per corruption family, the spatial grid's worst case
  and the union, side by side;
- the summary table: clean, each norm at its headline radius, corruptions (mean, mCE when a reference was
  given), spatial, union, the guards' verdict.
Runs without a profile.json are left out of these; the report's other views still show them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from pagrob.attacks.own import OWN_NORMS  # noqa: E402
from pagrob.outcomes import NORM_LABELS, radius_label  # noqa: E402
from pagrob.threats.corruptions import FAMILIES, SEVERITIES  # noqa: E402
from pagrob.threats.profile import read_profile  # noqa: E402
from pagrob.visualize import accuracy_axes, accuracy_line, guard_failed_handle, save_with_legend  # noqa: E402

CURVES = "robustness profile: accuracy against ε under every norm"


def _norms(profiles: list[dict]) -> list[str]:
    return [norm for norm in NORM_LABELS if any(norm in p["threats"] for p in profiles)]


def plot_curves(profiles: list[dict], out: Path) -> Path:
    norms = _norms(profiles)
    fig, axes = plt.subplots(1, len(norms), figsize=(4.6 * len(norms) + 2.2, 4.0), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, norm in zip(axes[0], norms):
        for k, p in enumerate(profiles):
            t = p["threats"].get(norm)
            if t is None:
                continue
            scale = 255 if norm == "linf" else 1
            eps = [0.0] + [e * scale for e in t["eps"]]
            acc = [100 * p["clean"]] + [100 * a for a in t["robust"]]
            accuracy_line(ax, eps, acc, [q["verdict"] != "ok" for q in t["points"]], colours(k % 10))
            ax.axvline(t["headline"] * scale, color="0.6", linestyle=":", linewidth=1)
        accuracy_axes(ax, f"ε ({NORM_LABELS[norm]}{', in /255' if norm == 'linf' else ''})",
                      f"{NORM_LABELS[norm]}: worst case over FMN, APGD{'' if norm in OWN_NORMS else ', PGD'}")
    handles = [Line2D([], [], color=colours(k % 10), label=p["name"]) for k, p in enumerate(profiles)]
    handles.append(Line2D([], [], color="0.6", linestyle=":", label="headline radius"))
    if any(q["verdict"] != "ok" for p in profiles for n in norms if n in p["threats"] for q in p["threats"][n]["points"]):
        handles.append(guard_failed_handle())
    return save_with_legend(fig, handles, f"{profiles[0]['dataset']}: {CURVES} (n = {profiles[0]['n']}; ε = 0: "
                                          "clean)", out)


def plot_beyond_lp(profiles: list[dict], out: Path) -> Path:
    """Left: mean corruption accuracy against severity. Right: per family, spatial and union, bars per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.0), gridspec_kw={"width_ratios": [1, 1.6]})
    colours = plt.get_cmap("tab10")
    groups = [*FAMILIES, "spatial", "union"]
    width = 0.8 / max(len(profiles), 1)
    for k, p in enumerate(profiles):
        colour = colours(k % 10)
        corr = p["threats"].get("corruptions")
        if corr is not None:
            by_severity = [sum(accs[s] for accs in corr["per"].values()) / len(corr["per"])
                           for s in range(len(SEVERITIES))]
            left.plot([0, *SEVERITIES], [100 * p["clean"]] + [100 * a for a in by_severity], "-o", ms=3,
                      color=colour, label=p["name"])
        values = [corr["families"].get(f) if corr else None for f in FAMILIES]
        values += [p["threats"].get("spatial"), p.get("union")]
        for g, value in enumerate(values):
            if value is not None:
                right.bar(g + (k - (len(profiles) - 1) / 2) * width, 100 * value, width, color=colour)
    left.set_xlabel("severity (0: clean)")
    left.set_ylabel("accuracy (%), mean over the 15 corruptions")
    left.set_ylim(0, 100)
    left.grid(alpha=0.3)
    left.set_title("common corruptions (CIFAR-10-C families, made here)", fontsize=10)
    right.set_xticks(range(len(groups)), [g if g in FAMILIES else {"spatial": "spatial grid",
                                                                  "union": "union"}[g] for g in groups])
    right.set_ylabel("accuracy (%)")
    right.set_ylim(0, 100)
    right.grid(alpha=0.3, axis="y")
    right.set_title("per corruption family (all severities), spatial worst case, union of every threat",
                    fontsize=10)
    handles = [Line2D([], [], color=colours(k % 10), label=p["name"]) for k, p in enumerate(profiles)]
    return save_with_legend(fig, handles, f"{profiles[0]['dataset']}: robustness beyond L_p balls "
                                          f"(n = {profiles[0]['n']})", out)


def profile_figures(run_dirs: list[Path], out_dir: Path) -> list[tuple[str, Path]]:
    """[(caption, path)] per dataset with profiled runs: the curves, then corruptions/spatial/union."""
    by_dataset: dict[str, list[dict]] = {}
    for d in run_dirs:
        p = read_profile(d)
        if p is not None:
            by_dataset.setdefault(p["dataset"], []).append(p)
    figures = []
    for dataset, profiles in by_dataset.items():
        name = dataset.replace(":", "_").replace("/", "_")
        if _norms(profiles):
            figures.append((f"{dataset}: {CURVES}", plot_curves(profiles, out_dir / f"{name}_profile_curves.png")))
        if any(k in p["threats"] for p in profiles for k in ("corruptions", "spatial")):
            figures.append((f"{dataset}: corruptions, spatial transforms and the union",
                            plot_beyond_lp(profiles, out_dir / f"{name}_profile_beyond.png")))
    return figures


def profile_table(profiles: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per profiled run: clean, each norm at its headline radius, corruptions, spatial, union, verdict."""
    norms = _norms(profiles)
    heads = {n: next(p["threats"][n]["headline"] for p in profiles if n in p["threats"]) for n in norms}
    mce = any("mce" in p["threats"].get("corruptions", {}) for p in profiles)
    head = (["run", "method", "clean"] + [radius_label(n, heads[n]) for n in norms]
            + ["corruptions (mean)"] + (["mCE"] if mce else []) + ["spatial", "union", "verdict"])
    body = []
    for p in profiles:
        t = p["threats"]
        cells = [p["name"], p["method"], f"{100 * p['clean']:.1f}"]
        for n in norms:
            if n in t and heads[n] in t[n]["eps"]:
                i = t[n]["eps"].index(heads[n])
                cells.append(f"{100 * t[n]['robust'][i]:.1f}" + ("" if t[n]["points"][i]["verdict"] == "ok" else " ⚠"))
            else:
                cells.append("–")
        corr = t.get("corruptions")
        cells.append("–" if corr is None else f"{100 * corr['mean']:.1f}")
        if mce:
            cells.append(f"{100 * corr['mce']:.0f}" if corr and "mce" in corr else "–")
        cells.append("–" if "spatial" not in t else f"{100 * t['spatial']:.1f}")
        cells.append("–" if p.get("union") is None else f"{100 * p['union']:.1f}")
        cells.append(p.get("verdict", "unfinished"))
        body.append(cells)
    return head, body
