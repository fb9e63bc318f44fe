"""Tables and figures from run folders: `report.md` and the PNG pictures it links."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pagrob.runs import load_run, read_results  # noqa: E402


def _eps_label(norm: str, eps: float) -> str:
    if norm == "linf" and eps < 1:
        return f"L∞ {eps * 255:.3g}/255"
    return f"{'L2' if norm == 'l2' else 'L∞'} {eps:g}"


def results_table(run_dirs: list[Path]) -> str:
    """One Markdown table per dataset: clean accuracy, robust accuracy per (attack, norm, eps), alignment."""
    by_dataset: dict[str, list[dict]] = {}
    for d in run_dirs:
        r = read_results(d)
        if r:
            by_dataset.setdefault(r["dataset"], []).append(r)
    parts = []
    for dataset, rows in by_dataset.items():
        columns = sorted({(e["attack"], e["norm"], e["eps"]) for r in rows for e in r["robust_accuracy"]},
                         key=lambda c: (c[0], c[1], c[2]))
        head = ["run", "method", "clean"] + [f"{a} {_eps_label(n, e)}" for a, n, e in columns] + ["alignment"]
        lines = [f"### {dataset}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            acc = {(e["attack"], e["norm"], e["eps"]): e["accuracy"] for e in r["robust_accuracy"]}
            cells = [r.get("name", ""), r["method"], f"{100 * r['clean_accuracy']:.1f}"]
            cells += [f"{100 * acc[c]:.1f}" if c in acc else "–" for c in columns]
            al = r.get("alignment", {})
            cells.append(f"{al['cosine']:.3f} ({al['source']})" if al else "–")
            lines.append("| " + " | ".join(cells) + " |")
        n_attack = {e["n_examples"] for r in rows for e in r["robust_accuracy"]}
        lines += ["", f"Accuracies in %, robust ones on the first {', '.join(map(str, sorted(n_attack)))} test "
                      f"points; clean on all {rows[0]['n_test']}. Alignment: mean cosine between the model's "
                      "grad log p(t|x) and the named target source, all classes, held-out points.", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def plot_toy_boundaries(run_dirs: list[Path], out: Path, extent: float = 70.0) -> Path:
    """Decision regions of toy2d runs side by side, with the test points and an eps=15 disc for scale."""
    runs = [load_run(d) for d in run_dirs]
    x, y = runs[0].test_set()
    grid = torch.linspace(-extent, extent, 300)
    gx, gy = torch.meshgrid(grid, 2 * grid, indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], 1)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4.5), squeeze=False)
    for ax, run in zip(axes[0], runs):
        with torch.no_grad():
            p1 = torch.softmax(run.model(points), 1)[:, 1].view(gx.shape)
        ax.contourf(gx, gy, p1, levels=20, cmap="coolwarm", alpha=0.6, vmin=0, vmax=1)
        ax.contour(gx, gy, p1, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=4, edgecolors="none")
        ax.add_patch(plt.Circle((-50, -100), 15, fill=False, ls="--", color="k"))
        r = run.results
        pgd15 = [e["accuracy"] for e in r.get("robust_accuracy", []) if e["norm"] == "l2" and e["eps"] == 15]
        extra = f", L2 PGD ε=15: {100 * pgd15[0]:.0f}%" if pgd15 else ""
        ax.set_title(f"{run.config.name} ({run.config.method}){extra}", fontsize=9)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    fig.suptitle("toy2d decision regions (black: boundary; dashed circle: L2 ball of radius 15)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(run_dirs: list[Path], out_dir: Path, title: str = "pagrob report", notes: str = "") -> Path:
    """report.md with the results tables, any notes, and the toy2d boundary picture when toy runs are present."""
    out_dir.mkdir(parents=True, exist_ok=True)
    body = [f"# {title}", "", notes, "", results_table(run_dirs)]
    toy = [d for d in run_dirs if read_results(d).get("dataset") == "toy2d"]
    if toy:
        picture = plot_toy_boundaries(toy, out_dir / "toy2d_boundaries.png")
        body += ["## toy2d decision boundaries", "", f"![toy2d decision boundaries]({picture.name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(body))
    return path
