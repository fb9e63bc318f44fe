"""`pagrob sweep`: a grid of runs from one base config, and one report that answers two questions.

1. Does stronger alignment buy robustness? Robust accuracy against alignment, where alignment is measured
   for every run against the same reference source (the dataset's, unless told otherwise), so runs trained
   with different sources or none sit on one axis.
2. What does the robustness cost? Robust accuracy against training compute, as wall time and as network
   passes (counted from the objective: `dryrun.passes_per_image`), with any extra runs (adversarial
   training, say) on the same plots.

Runs already finished with the same config are reused and a run killed mid-training resumes from its checkpoint, so
an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pagrob.alignment import ALIGNMENT_IMAGES, alignment_score  # noqa: E402
from pagrob.config import Config, ConfigError, PagConfig, load_config, to_dict  # noqa: E402
from pagrob.dryrun import passes_per_image  # noqa: E402
from pagrob.files import write_json  # noqa: E402
from pagrob.guards import run_verdict  # noqa: E402
from pagrob.outcomes import radius_label, worst_by_radius  # noqa: E402
from pagrob.pipeline import train_and_evaluate  # noqa: E402
from pagrob.runs import load_run, read_results  # noqa: E402
from pagrob.report import markdown_table  # noqa: E402
from pagrob.targets import build_source, reference_source_name  # noqa: E402
from pagrob.threats.pictures import profile_figures, profile_table  # noqa: E402
from pagrob.threats.profile import read_profile  # noqa: E402
from pagrob.train import finished  # noqa: E402


@dataclass
class PlannedRun:
    name: str
    overrides: list[str]  # beyond the base config's own
    varied: dict[str, str]  # the grid values of this run; empty for an extra run
    cfg: Config


def split_values(text: str) -> list[str]:
    """'0,0.5,[l2,linf]' -> ['0', '0.5', '[l2,linf]']: commas inside brackets belong to the value."""
    values, depth, current = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    if any(not v for v in values):
        raise ConfigError(f"grid values '{text}' contain an empty value; write key=v1,v2,...")
    return values


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['pag.lam=0,1,2'] -> [('pag.lam', ['0', '1', '2'])]."""
    grid = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"grid '{item}' must look like key=v1,v2,..., e.g. pag.lam=0,0.5,1,2")
        key, values = item.split("=", 1)
        grid.append((key.strip(), split_values(values)))
    return grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def plan(config: str | None, overrides: list[str], grid: list[tuple[str, list[str]]],
         extras: list[list[str]]) -> list[PlannedRun]:
    """Every run of the sweep with its validated config: all user errors surface before any training."""
    runs = []
    keys = [k for k, _ in grid]
    for combo in itertools.product(*[values for _, values in grid]):
        varied = dict(zip(keys, combo))
        name = "-".join(_slug(f"{k.split('.')[-1]}{v}") for k, v in varied.items()) or "base"
        own = [f"{k}={v}" for k, v in varied.items()]
        runs.append(PlannedRun(name, own, varied, load_config(config, overrides + own + [f"name={name}"])))
    for extra in extras:
        if not extra:
            raise ConfigError("--extra needs a name, then key=value overrides, e.g. --extra at adv.method=pgd")
        name, own = _slug(extra[0]), extra[1:]
        runs.append(PlannedRun(name, own, {}, load_config(config, overrides + own + [f"name={name}"])))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two runs of the sweep share a name ({names}); give extra runs other names")
    return runs


def _done(out: Path, cfg: Config) -> bool:
    """Finished earlier with exactly this config."""
    if not (out / "results.json").is_file() or not (out / "config.yaml").is_file():
        return False
    try:
        return to_dict(load_config(out / "config.yaml")) == to_dict(cfg)
    except ConfigError:
        return False


def summarize(run: PlannedRun, run_dir: Path, align_source: str | None, reference: PagConfig) -> dict:
    """One row of the sweep: the grid values, accuracies, alignment against one common source (on the held-out
    alignment images) and training compute. The source's settings come from `reference` (the sweep's base config),
    never from the run: a sweep over pag.sigma must not move the yardstick with it."""
    results = read_results(run_dir)
    trained = load_run(run_dir)
    data = trained.dataset()
    source = align_source or reference_source_name(data.name)
    cosine = alignment_score(trained.model, data.x_test[:ALIGNMENT_IMAGES], build_source(source, reference, data),
                             data.num_classes)
    per_image = passes_per_image(run.cfg, data.num_classes)
    return {
        "name": run.name, "method": run.cfg.method, "varied": run.varied, "extra": not run.varied,
        "clean_accuracy": results["clean_accuracy"],
        "robust": {f"worst {radius_label(norm, eps)}": w["accuracy"] for (norm, eps), w in worst_by_radius(results).items()},
        "verdict": run_verdict(results),
        "alignment_source": source, "alignment": cosine,
        "train_seconds": results["train_seconds"],
        "passes_per_image_step": per_image,
        "passes_total": per_image * len(data.x_train) * run.cfg.optim.epochs,
    }


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (the Pearson correlation of the ranks); nan when either side is constant."""
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var > 0 else float("nan")


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho with two answers to "how sure?": a 90 % bootstrap interval over the runs, and the
    permutation p-value, how often a random pairing of the same values is at least as correlated (|rho|). With a
    handful of perfectly ordered runs every resample is ordered too and the interval shrinks to a point; p does not."""
    rho: float
    low: float
    high: float
    p: float
    runs: int

    def describe(self) -> str:
        return (f"Spearman rho {self.rho:.2f} over {self.runs} runs: 90 % bootstrap {self.low:.2f} to {self.high:.2f}, "
                f"permutation p = {self.p:.2g}")


def permutation_p(xs: list[float], ys: list[float], draws: int = 20000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: exact over every ordering up to 8 points, else from
    `draws` seeded shuffles (counting the observed pairing, so p is never 0)."""
    observed = abs(spearman(xs, ys)) - 1e-12
    if len(ys) <= 8:
        orders = list(itertools.permutations(ys))
        return sum(abs(spearman(xs, list(o))) >= observed for o in orders) / len(orders)
    rng, shuffled = random.Random(seed), list(ys)
    hits = 0
    for _ in range(draws):
        rng.shuffle(shuffled)
        hits += abs(spearman(xs, shuffled)) >= observed
    return (hits + 1) / (draws + 1)


def rank_correlation(xs: list[float], ys: list[float], draws: int = 2000, seed: int = 0) -> RankCorrelation:
    """Spearman's rho of (xs, ys), its 90 % bootstrap interval over the points (resampled with replacement,
    seeded) and its permutation p-value."""
    rng = random.Random(seed)
    n = len(xs)
    boot = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        rho = spearman([xs[i] for i in idx], [ys[i] for i in idx])
        if rho == rho:  # a resample of one repeated point has no ranks to correlate
            boot.append(rho)
    boot.sort()
    low, high = (boot[int(0.05 * (len(boot) - 1))], boot[int(0.95 * (len(boot) - 1))]) if boot else (float("nan"),) * 2
    return RankCorrelation(spearman(xs, ys), low, high, permutation_p(xs, ys), n)


def _label(row: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in row["varied"].items()) or row["name"]


def _panel(ax, rows: list[dict], column: str, x_of, join: bool) -> None:
    """One attack's robust accuracy against x_of(row): grid runs as circles (joined in grid order when `join`),
    extra runs as red stars, runs whose guards failed (a model that has not learned, say) as grey crosses; every
    point named."""
    shown = [r for r in rows if column in r["robust"]]
    grid_rows = [r for r in shown if not r["extra"] and r["verdict"] == "ok"]
    xs, ys = [x_of(r) for r in grid_rows], [100 * r["robust"][column] for r in grid_rows]
    ax.plot(xs, ys, "o-" if join else "o", color="tab:blue", label="grid")
    for r, px, py in zip(grid_rows, xs, ys):
        ax.annotate(_label(r), (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for r in shown:
        point = (x_of(r), 100 * r["robust"][column])
        if r["verdict"] != "ok":
            ax.plot(*point, "x", ms=9, color="grey")
            ax.annotate(f"{_label(r)} ({r['verdict']})", point, fontsize=7, color="grey", xytext=(4, -10),
                        textcoords="offset points")
        elif r["extra"]:
            ax.plot(*point, "*", ms=12, color="tab:red", mec="k")
            ax.annotate(r["name"], point, fontsize=8, fontweight="bold", color="tab:red", xytext=(4, -10),
                        textcoords="offset points")
    top = max(100 * r["robust"][column] for r in shown)
    ax.set_ylim(-2, max(10.0, 1.12 * top))  # percent scale even when every run is at 0
    ax.set_title(column, fontsize=9)
    ax.grid(alpha=0.3)


def correlation(rows: list[dict], column: str) -> tuple[RankCorrelation | None, list[str]]:
    """Alignment against robust accuracy in `column` over the runs whose guards passed (a model near chance has no
    robustness to rank), None below three such runs; and the names of the runs left out."""
    left_out = [r["name"] for r in rows if column in r["robust"] and r["verdict"] != "ok"]
    points = [(r["alignment"], r["robust"][column]) for r in rows if column in r["robust"] and r["verdict"] == "ok"]
    return (rank_correlation(*map(list, zip(*points))) if len(points) >= 3 else None), left_out


def plot_sweep(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """robust_vs_alignment.png (one panel per attack) and robust_vs_compute.png (wall time above, network passes
    below, one column per attack)."""
    columns = sorted({c for r in rows for c in r["robust"]})
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(max(3.6 * n, 5.6), 4.2), squeeze=False)
    for ax, c in zip(axes[0], columns):
        _panel(ax, rows, c, lambda r: r["alignment"], join=True)
        ax.set_xlabel(f"alignment (cos to {rows[0]['alignment_source']} targets)", fontsize=8)
        found, left_out = correlation(rows, c)
        if found:
            ax.set_title(f"{c}\n" + found.describe().replace(": ", ":\n")
                         + (f"\n(without {', '.join(left_out)}: guards failed)" if left_out else ""), fontsize=8)
    axes[0][0].set_ylabel("robust accuracy (%)")
    fig.suptitle("robust accuracy vs alignment\nblue: grid, in grid order; red stars: extra runs;\n"
                 "grey crosses: guards failed", fontsize=10)
    fig.tight_layout()
    first = out / "robust_vs_alignment.png"
    fig.savefig(first, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, n, figsize=(max(3.6 * n, 5.6), 7), squeeze=False)
    for i, c in enumerate(columns):
        _panel(axes[0][i], rows, c, lambda r: r["train_seconds"], join=False)
        axes[0][i].set_xlabel("training wall time (s)", fontsize=8)
        _panel(axes[1][i], rows, c, lambda r: r["passes_total"], join=False)
        axes[1][i].set_xscale("log")
        axes[1][i].set_xlabel("training network passes (per image, summed)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("robust accuracy (%)")
    fig.suptitle("robust accuracy vs training compute\nblue: grid; red stars: extra runs; grey crosses: guards failed",
                 fontsize=10)
    fig.tight_layout()
    second = out / "robust_vs_compute.png"
    fig.savefig(second, dpi=110)
    plt.close(fig)
    return first, second


def _correlation_lines(rows: list[dict]) -> list[str]:
    """Per attack column with three learned runs or more: Spearman's rho between alignment and robust accuracy."""
    lines = []
    for c in sorted({c for r in rows for c in r["robust"]}):
        found, left_out = correlation(rows, c)
        if found:
            without = f"; left out, their guards failed: {', '.join(left_out)}" if left_out else ""
            lines.append(f"- Alignment against {c}: {found.describe()} (extras included{without}).")
    return lines + [""] if lines else []


def sweep_table(rows: list[dict]) -> str:
    columns = sorted({c for r in rows for c in r["robust"]})
    keys = list(dict.fromkeys(k for r in rows for k in r["varied"]))
    head = ["run", *keys, "method", "clean %", *[f"{c} %" for c in columns],
            f"alignment ({rows[0]['alignment_source']})", "train s", "passes/image/step", "passes total", "guards"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], *[r["varied"].get(k, "–") for k in keys], r["method"], f"{100 * r['clean_accuracy']:.1f}",
                 *[f"{100 * r['robust'][c]:.1f}" if c in r["robust"] else "–" for c in columns],
                 f"{r['alignment']:.3f}", f"{r['train_seconds']:.0f}", str(r["passes_per_image_step"]),
                 f"{r['passes_total']:.3g}", r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _profile_lines(run_dirs: list[Path], out: Path) -> list[str]:
    """The runs' robustness profiles (`pagrob evaluate RUN --profile`), where any has one: table and figures."""
    profiles = [p for p in map(read_profile, run_dirs) if p is not None]
    if not profiles:
        return []
    lines = ["## Robustness profile (runs profiled with pagrob evaluate RUN --profile)", "",
             markdown_table(profile_table(profiles)), ""]
    return lines + [f"![{caption}]({path.name})\n" for caption, path in profile_figures(run_dirs, out)]


def run_sweep(config: str | None, overrides: list[str], grid_items: list[str], extras: list[list[str]], out: Path,
              progress: bool = True, align_source: str | None = None) -> Path:
    """Train every run of the grid (and the extras) into `out/<run>/`, then write `out/sweep.md` and figures."""
    runs = plan(config, overrides, parse_grid(grid_items), extras)
    out.mkdir(parents=True, exist_ok=True)
    for i, run in enumerate(runs):
        if _done(out / run.name, run.cfg):
            if progress:
                print(f"[sweep] {run.name}: finished earlier, reused", flush=True)
            continue
        if progress:
            print(f"[sweep] {i + 1}/{len(runs)} {run.name} ({run.cfg.method})", flush=True)
        # a run killed mid-training carries on from its checkpoint (training refuses one of another config)
        train_and_evaluate(run.cfg, out / run.name, progress, resume=not finished(out / run.name))
    reference = load_config(config, overrides).pag
    rows = [summarize(run, out / run.name, align_source, reference) for run in runs]
    write_json(out / "sweep.json", rows)
    first, second = plot_sweep(rows, out)
    varied = ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in parse_grid(grid_items))
    body = [
        "# pagrob sweep", "",
        f"Grid: {varied or 'none'}; extra runs: {', '.join(r.name for r in runs if not r.varied) or 'none'}. "
        f"Base: {config or 'defaults'} {' '.join(overrides)}".rstrip(), "",
        sweep_table(rows), "",
        "Accuracies in % (robust ones: per image, the worst case over every attack in each run's results.json, "
        "the guards' Square included). Alignment: every run scored against the same "
        f"`{rows[0]['alignment_source']}` targets (the base config's settings: sigma {reference.sigma:g}) on "
        "held-out images, whatever it trained with. Network passes are "
        "counted from the objective (a forward or backward sweep of one image through the network; vanilla = 2 "
        "per step); wall time is measured, and on a shared machine it carries the other processes' noise.", "",
        *_correlation_lines(rows),
        f"![robust accuracy vs alignment]({first.name})", "",
        f"![robust accuracy vs training compute]({second.name})", "",
        *_profile_lines([out / run.name for run in runs], out),
    ]
    path = out / "sweep.md"
    path.write_text("\n".join(body))
    return path
