"""Tables and figures from run folders: `report.md` and a self-contained `report.html`.

Both are rendered from the same tables (clean and robust accuracy per attack and eps, the guards'
verdicts, AutoAttack's per-component breakdown, alignment scores) and the same pictures
(`pagrob.visualize`); the HTML embeds the pictures as base64, so it opens offline as one file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pagrob.runs import load_run, read_results  # noqa: E402

Table = tuple[list[str], list[list[str]]]  # header, rows of cells
GUARDS = (("in_ball", "in ball"), ("eps_sweep", "ε-sweep"), ("blackbox", "black-box"), ("loss_rise", "loss rises"))
SUSPECT = "⚠"


def _eps_label(norm: str, eps: float) -> str:
    if norm == "linf" and eps < 1 and abs(eps * 255 - round(eps * 255)) < 1e-6:  # 8/255 and friends
        return f"L∞ {round(eps * 255)}/255"
    return f"{'L2' if norm == 'l2' else 'L∞'} {eps:g}"


def _attack_label(entry: dict) -> str:
    version = entry.get("version", "standard")
    return entry["attack"] + ("" if version == "standard" else f" [{version}]")


def _column(entry: dict) -> tuple:
    return entry["attack"], entry.get("version", "standard"), entry["norm"], float(entry["eps"])


def _by_dataset(run_dirs: list[Path]) -> dict[str, list[dict]]:
    by_dataset: dict[str, list[dict]] = {}
    for d in run_dirs:
        r = read_results(Path(d))
        if r:
            by_dataset.setdefault(r["dataset"], []).append(r)
    return by_dataset


def accuracy_table(rows: list[dict]) -> tuple[Table, str]:
    """Clean and robust accuracy (%) per run and (attack, norm, eps) of one dataset, and the footnote."""
    entries = [e for r in rows for e in r.get("robust_accuracy", [])]
    columns = sorted({_column(e) for e in entries}, key=lambda c: (c[2], c[0] != "autoattack", c[0], c[1], c[3]))
    sizes = {c: {e["n_examples"] for e in entries if _column(e) == c} for c in columns}
    varied = len({n for v in sizes.values() for n in v}) > 1
    head = ["run", "method", "clean"]
    for c in columns:
        label = f"{c[0]}{'' if c[1] == 'standard' else f' [{c[1]}]'} {_eps_label(c[2], c[3])}"
        head.append(label + (f" (n={'/'.join(map(str, sorted(sizes[c])))})" if varied else ""))
    head.append("alignment")
    body = []
    for r in rows:
        found = {_column(e): e for e in r.get("robust_accuracy", [])}
        cells = [r.get("name", ""), r["method"], f"{100 * r['clean_accuracy']:.1f}"]
        for c in columns:
            e = found.get(c)
            cells.append("–" if e is None else
                         f"{100 * e['accuracy']:.1f}" + (f" {SUSPECT}" if e.get("verdict") == "suspect" else ""))
        al = r.get("alignment", {})
        cells.append(f"{al['cosine']:.3f} ({al['source']})" if al else "–")
        body.append(cells)
    n_attack = sorted({e["n_examples"] for e in entries})
    note = (f"Accuracies in %, robust ones on the first {', '.join(map(str, n_attack))} test points; clean on all "
            f"{rows[0]['n_test']}. {SUSPECT}: a gradient-masking guard failed (see the guards table). Alignment: mean "
            "cosine between the model's grad log p(t|x) and the named target source, all classes, held-out points.")
    return (head, body), note


def guards_table(rows: list[dict]) -> tuple[Table, list[str]]:
    """One row per guarded robust number: each guard passed (✓) or failed (✗), the verdict; and the reasons."""
    head = ["run", "attack", "ε", "n", "robust %"] + [label for _, label in GUARDS] + ["verdict"]
    body, reasons = [], []
    for r in rows:
        for e in r.get("robust_accuracy", []):
            if "guards" not in e:
                continue
            marks = ["✓" if e["guards"][k]["passed"] else "✗" for k, _ in GUARDS if k in e["guards"]]
            body.append([r["name"], _attack_label(e), _eps_label(e["norm"], e["eps"]), str(e["n_examples"]),
                         f"{100 * e['accuracy']:.1f}", *marks, e["verdict"]])
            reasons += [f"{r['name']}, {_attack_label(e)} {_eps_label(e['norm'], e['eps'])}: {why}"
                        for why in e.get("suspect_reasons", [])]
    return (head, body), reasons


def breakdown_table(rows: list[dict]) -> Table:
    """Which attack fooled how many images, for every multi-attack (AutoAttack) entry, in the order they ran."""
    entries = [(r, e) for r in rows for e in r.get("robust_accuracy", []) if e["attack"] == "autoattack"]
    parts = list(dict.fromkeys(k for _, e in entries for k in e.get("breakdown", {})))
    head = ["run", "attack", "ε", "n"] + [("misclassified clean" if k == "clean" else k) for k in parts] + ["robust"]
    body = [[r["name"], _attack_label(e), _eps_label(e["norm"], e["eps"]), str(e["n_examples"])]
            + [str(e["breakdown"].get(k, "–")) for k in parts]
            + [str(round(e["accuracy"] * e["n_examples"]))] for r, e in entries]
    return head, body


def alignment_table(rows: list[dict]) -> Table:
    """Mean cosine between the model's input-gradients and each target source scored for it."""
    sources = list(dict.fromkeys(s for r in rows for s in r.get("alignment_scores", {})))
    body = [[r["name"], r["method"]] + [f"{r['alignment_scores'][s]['cosine']:.3f}"
                                        if s in r.get("alignment_scores", {}) else "–" for s in sources]
            for r in rows]
    return ["run", "method"] + sources, body


def markdown_table(table: Table) -> str:
    head, body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def html_table(table: Table) -> str:
    head, body = table
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = []
    for row in body:
        tds = "".join(f'<td class="{_cell_class(c)}">{html.escape(c)}</td>' for c in row)
        rows.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell_class(cell: str) -> str:
    return "bad" if cell in ("✗", "suspect") or cell.endswith(SUSPECT) else ("good" if cell in ("✓", "ok") else "")


def results_table(run_dirs: list[Path]) -> str:
    """One Markdown table per dataset: clean accuracy, robust accuracy per (attack, norm, eps), alignment."""
    parts = []
    for dataset, rows in _by_dataset(run_dirs).items():
        table, note = accuracy_table(rows)
        parts.append("\n".join([f"### {dataset}", "", markdown_table(table), "", note, ""]))
    return "\n".join(parts)


def _sections(run_dirs: list[Path]) -> list[tuple[str, Table, list[str]]]:
    """(heading, table, notes) for every table of the report, dataset by dataset."""
    sections = []
    for dataset, rows in _by_dataset(run_dirs).items():
        table, note = accuracy_table(rows)
        sections.append((f"{dataset}: clean and robust accuracy", table, [note]))
        guarded, reasons = guards_table(rows)
        if guarded[1]:
            sections.append((f"{dataset}: gradient-masking guards", guarded,
                             ["in ball: every adversarial example inside its ε-ball and the valid range; ε-sweep: "
                              "accuracy falls to ~0 as ε grows to cover the input range; black-box: Square fools "
                              "no clearly more images than the white-box attacks; loss rises: gradient ascent beats "
                              "random noise."] + reasons))
        broken = breakdown_table(rows)
        if broken[1]:
            sections.append((f"{dataset}: AutoAttack, images fooled by each component", broken,
                             ["Each component runs on the images that all before it left correctly classified."]))
        aligned = alignment_table(rows)
        if len(aligned[0]) > 2:
            sections.append((f"{dataset}: alignment scores", aligned,
                             ["Mean cosine between grad log p(t|x) and each target source, all classes t, "
                              "held-out images (1 = the model's gradients point where the source says)."]))
    return sections


def plot_toy_boundaries(run_dirs: list[Path], out: Path, extent: float = 70.0) -> Path:
    """Decision regions of toy2d runs side by side, with the test points and an eps=15 disc for scale."""
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
        r = run.results
        at15 = sorted((e["attack"] != "autoattack", e["attack"], e["accuracy"]) for e in r.get("robust_accuracy", [])
                      if e["norm"] == "l2" and e["eps"] == 15)
        extra = f", L2 {at15[0][1]} ε=15: {100 * at15[0][2]:.0f}%" if at15 else ""
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
    """report.md and report.html in out_dir, with the tables and every picture that applies; returns report.md."""
    from pagrob.diffusion.pictures import sbg_figures
    from pagrob.visualize import make_figures

    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(d) for d in run_dirs]
    sections = _sections(run_dirs)
    figures = make_figures([d for d in run_dirs if read_results(d)], out_dir)
    figures += sbg_figures([d for d in run_dirs if read_results(d)], out_dir)
    md = [f"# {title}", "", notes, ""]
    for heading, table, lines in sections:
        md += [f"## {heading}", "", markdown_table(table), ""] + [f"- {line}" if i else line
                                                                  for i, line in enumerate(lines)] + [""]
    for caption, path in figures:
        md += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
    (out_dir / "report.md").write_text("\n".join(md))
    write_html(out_dir / "report.html", title, notes, sections, figures)
    return out_dir / "report.md"


def write_html(path: Path, title: str, notes: str, sections: list[tuple[str, Table, list[str]]],
               figures: list[tuple[str, Path]]) -> Path:
    """One self-contained HTML file: tables, notes, and the pictures inlined as base64 PNG."""
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "td.bad{background:#fde2e2;color:#900}td.good{color:#070}img{max-width:100%;border:1px solid #eee}"
             "p.note,li{font-size:13px;color:#444}")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(notes)}</p>"]
    for heading, table, lines in sections:
        body += [f"<h2>{html.escape(heading)}</h2>", html_table(table)]
        if lines:
            body.append(f'<p class="note">{html.escape(lines[0])}</p>')
            body += [f"<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in lines[1:])}</ul>"] if lines[1:] else []
    for caption, png in figures:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        body += [f"<h2>{html.escape(caption)}</h2>", f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">']
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return path
