"""The pictures that show PAG: large-eps targeted attacks (the paper's Figure 1), input-gradient maps,
toy2d decision regions, and the headline: worst-case robust accuracy against eps, one line per run. PNG files,
one per picture and dataset.

A model with perceptually aligned gradients turns an image into something that looks like the target
class when pushed far toward it; a vanilla model adds noise. Its input-gradients look like edits to
the image rather than static.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from pagrob.attacks import PGD  # noqa: E402
from pagrob.config import Config  # noqa: E402
from pagrob.data import Dataset  # noqa: E402
from pagrob.losses import class_input_gradients  # noqa: E402
from pagrob.outcomes import NORM_LABELS, radius_label, worst_by_radius  # noqa: E402
from pagrob.runs import Run, load_run, read_results  # noqa: E402

LARGE_EPS_FRACTION = 0.3  # default targeted radius: this fraction of the image range's L2 diameter
TARGETED_STEPS = 60
MAX_TARGET_COLUMNS = 10  # datasets with more classes show the first ten
HEADLINE = "worst-case robust accuracy versus ε"  # the caption the report leads with (unless PER_MINUTE applies)
PER_MINUTE = "robustness per minute, from scratch and fine-tuned"  # leads instead where runs were fine-tuned


def pick_images(y: Tensor, k: int) -> Tensor:
    """Indices of the first test image of each of the first k classes met, in test order (varied rows)."""
    seen: dict[int, int] = {}
    for i, label in enumerate(y.tolist()):
        if label not in seen:
            seen[label] = i
            if len(seen) == k:
                break
    return torch.tensor(list(seen.values()))


def default_eps(x: Tensor, bounds: tuple[float, float] | None) -> float:
    lo, hi = bounds or (float(x.min()), float(x.max()))
    return LARGE_EPS_FRACTION * (hi - lo) * math.sqrt(x[0].numel())


def targeted_images(run: Run, x: Tensor, eps: float, classes: Sequence[int], bounds: tuple[float, float] | None,
                    steps: int = TARGETED_STEPS) -> Tensor:
    """(len(x), len(classes), C, H, W): each image pushed by targeted L2 PGD (no random start) toward each class."""
    k = len(classes)
    xs = x.repeat_interleave(k, 0)
    targets = torch.tensor(list(classes)).repeat(len(x))
    attack = PGD(run.model, "l2", eps, steps, random_start=False, bounds=bounds, targeted=True)
    return attack(xs, targets).view(len(x), k, *x.shape[1:])


def _show(ax, image: Tensor) -> None:
    """An image (C, H, W) in [0, 1], grey or colour, without axes."""
    img = image.detach().clamp(0, 1).cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_size(count: int) -> tuple[int, int]:
    cols = min(count, 2)
    return math.ceil(count / cols), cols


def plot_targeted(runs: list[Run], data: Dataset, out: Path, n_images: int = 4, eps: float | None = None,
                  steps: int = TARGETED_STEPS) -> Path:
    """The paper's Figure 1: rows are test images, columns the target classes; one panel per run."""
    idx = pick_images(data.y_test, n_images)
    x, y = data.x_test[idx], data.y_test[idx]
    eps = eps or default_eps(x, data.bounds)
    classes = list(range(min(data.num_classes, MAX_TARGET_COLUMNS)))
    rows, cols = _grid_size(len(runs))
    cell = 0.75 if x.shape[-1] <= 16 else 1.0
    fig = plt.figure(figsize=(cols * cell * (len(classes) + 1) + 0.3, rows * cell * (len(x) + 0.9) + 0.6),
                     layout="constrained")
    panels = fig.subfigures(rows, cols, squeeze=False).flatten()
    for panel, run in zip(panels, runs):
        pushed = targeted_images(run, x, eps, classes, data.bounds, steps)
        with torch.no_grad():
            reached = run.model(pushed.flatten(0, 1)).argmax(1).view(len(x), len(classes))
        axes = panel.subplots(len(x), len(classes) + 1, squeeze=False)
        for i in range(len(x)):
            _show(axes[i, 0], x[i])
            axes[i, 0].set_ylabel(data.classes[int(y[i])] if data.classes else f"class {int(y[i])}", fontsize=8)
            for j, c in enumerate(classes):
                ax = axes[i, j + 1]
                _show(ax, pushed[i, j])
                if reached[i, j] != c:  # the attack did not reach its target: frame the cell
                    for side in ax.spines.values():
                        side.set(color="red", linewidth=1.5)
        axes[0, 0].set_title("input", fontsize=8)
        for j, c in enumerate(classes):
            axes[0, j + 1].set_title(f"→ {data.classes[c] if data.classes else c}", fontsize=8)
        panel.suptitle(f"{run.config.name} ({run.method})", fontsize=10)
    for panel in panels[len(runs):]:
        panel.set_visible(False)
    fig.suptitle(f"{data.name}: targeted L2 PGD toward each class (ε={eps:.3g}, {steps} steps; "
                 "red frame: target not reached)", fontsize=10)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def input_gradients(run: Run, x: Tensor, y: Tensor) -> Tensor:
    """grad_x log p(y | x) for each image, at its own label."""
    xr = x.detach().requires_grad_(True)
    return class_input_gradients(run.model(xr), xr, y[:, None], create_graph=False)[:, 0].detach()


def _show_gradient(ax, g: Tensor) -> None:
    """Grey images: a diverging map centred on 0; colour: the gradient as an image around mid-grey."""
    scale = float(g.abs().max()) or 1.0
    if g.shape[0] == 1:
        ax.imshow(g[0].cpu().numpy(), cmap="seismic", vmin=-scale, vmax=scale, interpolation="nearest")
    else:
        ax.imshow((0.5 + g / (2 * scale)).clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_gradients(runs: list[Run], data: Dataset, out: Path, n_images: int = 6) -> Path:
    """Rows: test images; columns: the image, then grad_x log p(y | x) of each run (each map scaled to its max)."""
    idx = pick_images(data.y_test, n_images)
    x, y = data.x_test[idx], data.y_test[idx]
    grads = [input_gradients(run, x, y) for run in runs]
    cell = 1.1
    fig, axes = plt.subplots(len(x), len(runs) + 1, squeeze=False,
                             figsize=(max(cell * (len(runs) + 1) + 0.6, 3.6), cell * len(x) + 1.2))
    for i in range(len(x)):
        _show(axes[i, 0], x[i])
        axes[i, 0].set_ylabel(f"class {int(y[i])}", fontsize=8)
        for j, g in enumerate(grads):
            _show_gradient(axes[i, j + 1], g[i])
    axes[0, 0].set_title("input", fontsize=8)
    for j, run in enumerate(runs):
        axes[0, j + 1].set_title(run.config.name, fontsize=7, rotation=20)
    fig.suptitle(f"{data.name}: input-gradients ∇x log p(y|x)\n(red +, blue −; each map scaled to its max)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def accuracy_line(ax, eps: list[float], accuracy: list[float], suspect: list[bool], colour) -> None:
    """One run's accuracy against eps (eps[0] the clean point): a line, and a marker at every attacked radius,
    hollow where a guard failed there."""
    ax.plot(eps, accuracy, "-", color=colour)
    ax.scatter(eps[1:], accuracy[1:], s=22, zorder=3, color=[(1, 1, 1, 1) if s else colour for s in suspect],
               edgecolors=[colour] * len(suspect))


def accuracy_axes(ax, xlabel: str, title: str) -> None:
    """A panel of accuracy (%) against a radius, 0 to 100 with a little room."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)


def guard_failed_handle():
    """The legend entry of the hollow markers `accuracy_line` draws where a guard failed."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="k", marker="o", markerfacecolor="w", linestyle="", label="guard failed")


def plot_accuracy_vs_eps(run_dirs: list[Path], out: Path) -> Path:
    """The headline: worst-case robust accuracy (over every attack run, per image) against eps from results.json,
    one panel per norm, one line per run; eps 0 is the clean accuracy on the attacked images. Hollow markers (and
    their legend entry, only then): a guard failed there."""
    from matplotlib.lines import Line2D

    results = [r for r in (read_results(d) for d in run_dirs) if r]
    worst = [worst_by_radius(r) for r in results]
    norms = sorted({norm for w in worst for norm, _ in w})
    fig, axes = plt.subplots(1, max(len(norms), 1), figsize=(5.2 * max(len(norms), 1) + 2.4, 4.2), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, norm in zip(axes[0], norms):
        for k, (r, w) in enumerate(zip(results, worst)):
            points = sorted((p for (n, _), p in w.items() if n == norm), key=lambda p: p["eps"])
            if not points:
                continue
            eps = [0.0] + [p["eps"] for p in points]
            acc = [100 * points[0].get("clean_accuracy", r["clean_accuracy"])] + [100 * p["accuracy"] for p in points]
            accuracy_line(ax, eps, acc, [p.get("verdict", "ok") != "ok" for p in points], colours(k % 10))
        accuracy_axes(ax, f"ε ({NORM_LABELS[norm]})", f"{NORM_LABELS[norm]}: worst case over every attack")
    handles = [Line2D([], [], color=colours(k % 10), label=r["name"]) for k, r in enumerate(results)]
    if any(p.get("verdict", "ok") != "ok" for w in worst for p in w.values()):
        handles.append(guard_failed_handle())
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    datasets = ", ".join(sorted({r["dataset"] for r in results}))
    fig.suptitle(f"{datasets}: {HEADLINE} (ε = 0: clean accuracy on the attacked images)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


FAMILY_COLOURS = {"vanilla": "tab:gray", "pag": "tab:blue", "at": "tab:red", "at+pag": "tab:purple"}


def method_family(cfg: Config) -> str:
    """vanilla | pag | at | at+pag: what a reader compares when asking what each training minute buys."""
    adversarial, aligned = cfg.adv.method != "none", cfg.pag.source != "none"
    return "at+pag" if adversarial and aligned else "at" if adversarial else "pag" if aligned else "vanilla"


def save_with_legend(fig, handles: list, title: str, out: Path) -> Path:
    """The legend in a right margin, the title above, saved to `out` and closed."""
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_robustness_vs_compute(runs: list[Run], out: Path) -> Path:
    """Worst-case robust accuracy against training minutes, one panel per (norm, eps) every run was attacked at,
    one point per run coloured by family (vanilla, PAG, AT, AT+PAG): what each minute of training buys."""
    from matplotlib.lines import Line2D

    worst = [worst_by_radius(r.results) for r in runs]
    radii = sorted(set.intersection(*(set(w) for w in worst))) if worst else []
    fig, axes = plt.subplots(1, max(len(radii), 1), figsize=(5.0 * max(len(radii), 1) + 1.8, 4.0), squeeze=False)
    for ax, (norm, eps) in zip(axes[0], radii):
        for run, w in zip(runs, worst):
            minutes = run.results.get("train_seconds", 0.0) / 60
            accuracy = 100 * w[(norm, eps)]["accuracy"]
            ax.scatter([minutes], [accuracy], s=30, zorder=3, color=FAMILY_COLOURS[method_family(run.config)])
            ax.annotate(run.config.name, (minutes, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("training time (minutes, wall)")
        ax.set_ylabel("worst-case robust accuracy (%)")
        ax.set_title(f"worst case at {radius_label(norm, eps)}", fontsize=10)
        ax.set_ylim(bottom=-2)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=f) for f, c in FAMILY_COLOURS.items()
               if any(method_family(r.config) == f for r in runs)]
    return save_with_legend(fig, handles, f"{runs[0].config.data.name}: robustness against training compute", out)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (higher is better), in order of the first."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(set(front))


def _fine_tuned_from_timed(runs: list[Run]) -> bool:
    """Some run was fine-tuned from another of `runs` (trained here, so timed), and all share a radius."""
    paths = {r.path.resolve() for r in runs}
    shared = set.intersection(*(set(worst_by_radius(r.results)) for r in runs)) if runs else set()
    return bool(shared) and any(Path(r.results["init"]["run"]).resolve() in paths for r in runs if "init" in r.results)


def plot_robustness_per_minute(runs: list[Run], out: Path) -> Path:
    """The robustness-per-minute study at a glance, one row per radius: worst-case robust accuracy against training
    minutes from scratch; against fine-tuning minutes, one line per objective starting at the model it fine-tunes
    (0 min); and clean against robust accuracy for every run, with the Pareto front."""
    from matplotlib.lines import Line2D

    by_path = {r.path.resolve(): r for r in runs}
    tuned = [r for r in runs if "init" in r.results]
    bases = {Path(r.results["init"]["run"]).resolve() for r in tuned}
    scratch = [r for r in runs if "init" not in r.results]
    worst = {r.path: worst_by_radius(r.results) for r in runs}
    radii = sorted(set.intersection(*(set(w) for w in worst.values())))  # make_figures draws it only if any
    objectives = sorted({r.method for r in runs})
    colour = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(objectives)}
    fig, axes = plt.subplots(len(radii), 3, figsize=(15.5, 3.9 * len(radii)), squeeze=False)
    for row, radius in zip(axes, radii):
        label = radius_label(*radius)

        def robust(r: Run) -> float:
            return 100 * worst[r.path][radius]["accuracy"]

        for method in objectives:
            mine = sorted((r for r in scratch if r.method == method), key=lambda r: r.results["train_seconds"])
            if mine:
                row[0].plot([r.results["train_seconds"] / 60 for r in mine], [robust(r) for r in mine], marker="o",
                            color=colour[method])
            for base_path in bases:
                line = [r for r in tuned if r.method == method and Path(r.results["init"]["run"]).resolve() == base_path]
                line.sort(key=lambda r: r.results["train_seconds"])
                base = by_path.get(base_path)
                start = ([0.0], [robust(base)]) if base is not None else ([], [])
                if line:
                    row[1].plot(start[0] + [r.results["train_seconds"] / 60 for r in line],
                                start[1] + [robust(r) for r in line], marker="o", color=colour[method])
        points = []
        for r in runs:
            clean = 100 * worst[r.path][radius].get("clean_accuracy", r.results["clean_accuracy"])
            points.append((clean, robust(r)))
            row[2].scatter([clean], [robust(r)], color=colour[r.method], zorder=3,
                           marker="o" if "init" in r.results else "s", facecolors="none" if "init" not in r.results
                           else colour[r.method])
        front = pareto_front(points)
        row[2].plot([p[0] for p in front], [p[1] for p in front], color="black", lw=0.8, ls="--", zorder=2)
        for ax, title, xlabel in ((row[0], "from scratch", "training minutes (wall)"),
                                  (row[1], "fine-tuned", "fine-tuning minutes (wall; 0 = the model it starts from)"),
                                  (row[2], "clean against robust (dashed: Pareto front)", "clean accuracy (%)")):
            ax.set_title(f"{title}, {label}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"worst-case robust accuracy at {label} (%)")
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour[m], marker="o", label=m) for m in objectives]
    handles += [Line2D([], [], color="black", marker="s", markerfacecolor="none", ls="", label="from scratch"),
                Line2D([], [], color="black", marker="o", ls="", label="fine-tuned")]
    return save_with_legend(fig, handles, f"{runs[0].config.data.name}: {PER_MINUTE}", out)


def plot_toy_boundaries(run_dirs: list[Path], out: Path, extent: float = 70.0) -> Path:
    """Decision regions of toy2d runs side by side, with the test points and an eps=15 disc for scale; each title
    gives the run's worst-case L2 robust accuracy at eps=15 when it was measured."""
    runs = [load_run(d) for d in run_dirs]
    data = runs[0].dataset()
    x, y = data.x_test.numpy(), data.y_test.numpy()
    grid = torch.linspace(-extent, extent, 300)
    gx, gy = torch.meshgrid(grid, 2 * grid, indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], 1)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        with torch.no_grad():
            p1 = torch.softmax(run.model(points), 1)[:, 1].view(gx.shape).numpy()
        ax.contourf(gx.numpy(), gy.numpy(), p1, levels=20, cmap="coolwarm", alpha=0.6, vmin=0, vmax=1)
        ax.contour(gx.numpy(), gy.numpy(), p1, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=4, edgecolors="none")
        ax.add_patch(plt.Circle((-50, -100), 15, fill=False, ls="--", color="k"))
        at15 = worst_by_radius(run.results).get(("l2", 15.0))
        extra = f", worst-case L2 ε=15: {100 * at15['accuracy']:.0f}%" if at15 else ""
        ax.set_title(f"{run.config.name} ({run.method}){extra}", fontsize=9)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    fig.suptitle("toy2d decision regions (black: boundary; dashed circle: L2 ball of radius 15)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def make_figures(run_dirs: Sequence[Path], out_dir: Path, n_images: int = 4, eps: float | None = None
                 ) -> list[tuple[str, Path]]:
    """Every picture that applies to the runs, grouped by dataset: [(caption, path)]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_dataset: dict[str, list[Path]] = {}
    for d in map(Path, run_dirs):
        by_dataset.setdefault(load_run(d).config.data.name, []).append(d)
    figures = []
    for dataset, dirs in by_dataset.items():
        name = dataset.replace(":", "_").replace("/", "_")
        runs = [load_run(d) for d in dirs]
        data = runs[0].dataset()
        if data.is_image:
            figures.append((f"{dataset}: targeted attacks toward every class (Figure 1)",
                            plot_targeted(runs, data, out_dir / f"{name}_targeted.png", n_images, eps)))
            figures.append((f"{dataset}: input-gradient maps",
                            plot_gradients(runs, data, out_dir / f"{name}_gradients.png", max(n_images, 6))))
        elif dataset == "toy2d":
            figures.append(("toy2d: decision regions", plot_toy_boundaries(dirs, out_dir / "toy2d_boundaries.png")))
        if any(read_results(d).get("robust_accuracy") for d in dirs):
            figures.append((f"{dataset}: {HEADLINE}",
                            plot_accuracy_vs_eps(dirs, out_dir / f"{name}_accuracy_vs_eps.png")))
        timed = [r for r in runs if "train_seconds" in r.results and worst_by_radius(r.results)]
        if _fine_tuned_from_timed(timed):
            figures.append((f"{dataset}: {PER_MINUTE}",
                            plot_robustness_per_minute(timed, out_dir / f"{name}_per_minute.png")))
        if len({method_family(r.config) for r in timed}) > 1:
            figures.append((f"{dataset}: robustness against training compute",
                            plot_robustness_vs_compute(timed, out_dir / f"{name}_compute.png")))
    return figures
