"""Tables and figures from run folders: `report.md` and a self-contained `report.html`.

The report leads with what a reader came for: per dataset, one figure (worst-case robust accuracy against eps,
one line per run; robustness per training minute instead where runs were fine-tuned from others) and one summary
table (clean accuracy, the worst-case robust accuracy at each radius,
alignment, training minutes, the guards' verdict). A worst case is per image over every attack pagrob ran at
that radius (`results.json`'s `worst_case`), so no number shown is one attack's optimistic view. The per-attack
numbers, the guards' rows, AutoAttack's breakdowns, the alignment scores and the provenance of the numbers
follow in collapsible sections. The HTML embeds the pictures as base64, so it opens offline as one file.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from pagrob.diffusion.pictures import sbg_figures
from pagrob.guards import run_verdict
from pagrob.outcomes import radius_label, worst_by_radius as worst
from pagrob.runs import read_results
from pagrob.threats.pictures import profile_figures, profile_table
from pagrob.threats.profile import read_profile
from pagrob.visualize import HEADLINE, PER_MINUTE, make_figures

Table = tuple[list[str], list[list[str]]]  # header, rows of cells
GUARDS = (("in_ball", "in ball"), ("eps_sweep", "ε-sweep"), ("blackbox", "black-box"), ("loss_rise", "loss rises"),
          ("collapse", "one-step"), ("learned", "learned"))
SUSPECT = "⚠"


@dataclass
class Section:
    """One table of the report with its notes; `folded` ones open on a click (HTML and GitHub Markdown)."""

    heading: str
    table: Table
    notes: list[str]
    folded: bool = False


def _attack_label(entry: dict) -> str:
    if entry["attack"] == "pgd" and "steps" in entry:
        return f"pgd [{entry['steps']}×{entry.get('restarts', 1)}, {'+'.join(entry.get('losses', ['ce']))}]"
    version = entry.get("version", "standard")
    after = " after the earlier attacks" if entry.get("after") else ""
    return entry["attack"] + ("" if version == "standard" else f" [{version}]") + after


def _column(entry: dict) -> tuple:
    return _attack_label(entry), entry["norm"], float(entry["eps"])


def _by_dataset(run_dirs: list[Path]) -> dict[str, list[dict]]:
    by_dataset: dict[str, list[dict]] = {}
    for d in run_dirs:
        r = read_results(Path(d))
        if r:
            by_dataset.setdefault(r["dataset"], []).append(r)
    return by_dataset


def _failed_runs(rows: list[dict], verdict: str | None = None) -> list[str]:
    """Runs with a failed guard (or, given `verdict`, with that verdict)."""
    named = [(r["name"], run_verdict(r)) for r in rows]
    return [name for name, v in named if (v != "ok" if verdict is None else v == verdict)]


def _mark(verdict: str | None) -> str:
    return "" if verdict in (None, "ok") else f" {SUSPECT}"


def _warning(rows: list[dict]) -> str:
    """The caption's guard warning: only when a guard failed, naming the runs."""
    suspect, unlearned = _failed_runs(rows, "suspect"), _failed_runs(rows, "not learned")
    if not suspect and not unlearned:
        return "Every guard passed."
    said = [f"{SUSPECT}: a guard failed for {', '.join(suspect)} (see the guards section); those numbers may be too "
            "high or the training collapsed." if suspect else "",
            f"{', '.join(unlearned)} did not learn (clean accuracy near chance): {SUSPECT} marks numbers that are "
            "chance, not robustness." if unlearned else ""]
    return " ".join(p for p in said if p)


def summary_table(rows: list[dict]) -> tuple[Table, str]:
    """Per run: clean, worst-case robust accuracy at each radius, alignment, training minutes, verdict."""
    radii = sorted({k for r in rows for k in worst(r)})
    sizes = sorted({w["n_examples"] for r in rows for w in worst(r).values()})
    head = ["run", "method", "clean"] + [radius_label(*k) for k in radii] + ["alignment", "train min", "verdict"]
    body = []
    for r in rows:
        found = worst(r)
        cells = [r.get("name", ""), r["method"], f"{100 * r['clean_accuracy']:.1f}"]
        for k in radii:
            w = found.get(k)
            cells.append("–" if w is None else f"{100 * w['accuracy']:.1f}" + _mark(w.get("verdict")))
        # the training's own score, else (an imported run) the first one an evaluation took
        al = r.get("alignment") or next(({"source": s, **v} for s, v in r.get("alignment_scores", {}).items()), {})
        cells.append(f"{al['cosine']:.3f} ({al['source']})" if al else "–")
        cells.append(f"{r['train_seconds'] / 60:.1f}" if "train_seconds" in r else "–")
        cells.append(run_verdict(r))
        body.append(cells)
    note = (f"Accuracies in %: clean on all {rows[0]['n_test']} test points; robust on the first "
            f"{', '.join(map(str, sizes))}, each the worst case over every attack run at that radius (an image counts "
            "only if it was classified correctly and no attack fooled it; the attacks are listed under \"Each attack "
            f"on its own\"). {_warning(rows)} Alignment: mean cosine between the model's grad log p(t|x) and the named "
            "target source, all classes, held-out points.")
    return (head, body), note


def accuracy_table(rows: list[dict]) -> tuple[Table, str]:
    """Each attack's own robust accuracy (%) per run and (attack, norm, eps): upper bounds above the worst case."""
    entries = [e for r in rows for e in r.get("robust_accuracy", [])]
    columns = sorted({_column(e) for e in entries}, key=lambda c: (c[1], not c[0].startswith("autoattack"), c))
    sizes = {c: {e["n_examples"] for e in entries if _column(e) == c} for c in columns}
    varied = len({n for v in sizes.values() for n in v}) > 1
    head = ["run", "method", "clean"]
    for c in columns:
        head.append(f"{c[0]} {radius_label(c[1], c[2])}" + (f" (n={'/'.join(map(str, sorted(sizes[c])))})"
                                                          if varied else ""))
    body = []
    for r in rows:
        found = {_column(e): e for e in r.get("robust_accuracy", [])}
        cells = [r.get("name", ""), r["method"], f"{100 * r['clean_accuracy']:.1f}"]
        for c in columns:
            e = found.get(c)
            cells.append("–" if e is None else f"{100 * e['accuracy']:.1f}" + _mark(e.get("verdict")))
        body.append(cells)
    note = ("Each attack alone, in %: every one is an upper bound on the true robust accuracy, and the summary's worst "
            "case is at most the lowest of them. pgd [steps×restarts, losses]: pagrob's evaluation PGD; autoattack: "
            f"APGD-CE, APGD-T, FAB-T, Square (torchattacks), standard version unless marked; \"after the earlier "
            f"attacks\": run on what they left standing, so its number is the whole chain's. {_warning(rows)}")
    return (head, body), note


def guards_table(rows: list[dict]) -> tuple[Table, list[str]]:
    """One row per guarded robust number: each guard passed (✓) or failed (✗), the verdict; and the reasons."""
    head = ["run", "attack", "ε", "n", "robust %"] + [label for _, label in GUARDS] + ["verdict"]
    body, reasons = [], []
    for r in rows:
        for e in r.get("robust_accuracy", []):
            if "guards" not in e:
                continue
            marks = ["–" if k not in e["guards"] else "✓" if e["guards"][k]["passed"] else "✗" for k, _ in GUARDS]
            body.append([r["name"], _attack_label(e), radius_label(e["norm"], e["eps"]), str(e["n_examples"]),
                         f"{100 * e['accuracy']:.1f}", *marks, e["verdict"]])
            reasons += [f"{r['name']}, {_attack_label(e)} {radius_label(e['norm'], e['eps'])}: {why}"
                        for why in e.get("suspect_reasons", [])]
    return (head, body), reasons


def breakdown_table(rows: list[dict]) -> Table:
    """Which attack fooled how many images, for every multi-attack (AutoAttack) entry, in the order they ran."""
    entries = [(r, e) for r in rows for e in r.get("robust_accuracy", []) if e["attack"] == "autoattack"]
    parts = list(dict.fromkeys(k for _, e in entries for k in e.get("breakdown", {})))
    head = ["run", "attack", "ε", "n"] + [("misclassified clean" if k == "clean" else k) for k in parts] + ["robust"]
    body = [[r["name"], _attack_label(e), radius_label(e["norm"], e["eps"]), str(e["n_examples"])]
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


def provenance_lines(rows: list[dict]) -> list[str]:
    """How the numbers were made, printed once: each distinct code/library/device combination, then each distinct
    attack setting with the runs that used it."""
    seen: dict[str, list[str]] = {}
    settings: dict[str, list[str]] = {}
    for r in rows:
        for e in r.get("robust_accuracy", []):
            p = e.get("provenance")
            if not p:
                continue
            env = (f"pagrob {p['pagrob']}" + (f" (commit {p['git_commit']})" if p.get("git_commit") else "")
                   + f", torch {p['torch']}, torchattacks {p['torchattacks']}, device {p['device']}")
            seen.setdefault(env, [])
            if r["name"] not in seen[env]:
                seen[env].append(r["name"])
            text = ", ".join(f"{k}={v}" for k, v in p["settings"].items() if k not in ("eps",))
            settings.setdefault(text, [])
            if r["name"] not in settings[text]:
                settings[text].append(r["name"])
    many = len(seen) > 1
    lines = [env + (f": {', '.join(names)}" if many else "") for env, names in seen.items()]
    return lines + [f"settings {text} (at every reported ε)" for text in settings]


def origin_notes(rows: list[dict]) -> list[str]:
    """Where each run's weights came from, when not from scratch: the run it was fine-tuned from, or the file it was
    imported from, each with its sha256."""
    notes = []
    for r in rows:
        if "init" in r:
            notes.append(f"{r['name']} was fine-tuned from the run {r['init']['run']} (weights sha256 "
                         f"{r['init']['weights_sha256'][:12]}...).")
        if "imported_from" in r:
            notes.append(f"{r['name']} was imported from {r['imported_from']['file']} (sha256 "
                         f"{r['imported_from']['sha256'][:12]}...).")
    return notes


def _sections(rows: list[dict], dataset: str) -> list[Section]:
    """Every table of one dataset: the summary first, the details folded."""
    table, note = summary_table(rows)
    sections = [Section(f"{dataset}: clean and worst-case robust accuracy", table, [note, *origin_notes(rows)])]
    table, note = accuracy_table(rows)
    sections.append(Section(f"{dataset}: each attack on its own", table, [note], folded=True))
    guarded, reasons = guards_table(rows)
    if guarded[1]:
        failed = _failed_runs(rows)
        verdict = f"failed for {', '.join(failed)}" if failed else "all passed"
        sections.append(Section(f"{dataset}: guards: gradient masking, collapse, learning ({verdict})", guarded,
                                ["in ball: every adversarial example inside its ε-ball and the valid range; ε-sweep: "
                                 "accuracy falls to ~0 as ε grows to cover the input range; black-box: Square fools "
                                 "no clearly more images than the white-box attacks; loss rises: gradient ascent beats "
                                 "random noise; one-step (single-step adversarial training only): the run's own "
                                 "training attack fools at least half the images the evaluation attack fools, else "
                                 "catastrophic overfitting; learned: clean accuracy at least 1 - (1 - 1/C)² (19 % for "
                                 "10 classes); –: not run."] + reasons, folded=True))
    broken = breakdown_table(rows)
    if broken[1]:
        sections.append(Section(f"{dataset}: AutoAttack, images fooled by each component", broken,
                                ["Each component runs on the images that all before it left correctly classified."],
                                folded=True))
    aligned = alignment_table(rows)
    if len(aligned[0]) > 2:
        sections.append(Section(f"{dataset}: alignment scores", aligned,
                                ["Mean cosine between grad log p(t|x) and each target source, all classes t, "
                                 "held-out images (1 = the model's gradients point where the source says)."],
                                folded=True))
    return sections


def _profile_section(profiles: list[dict], dataset: str) -> Section:
    n = sorted({p["n"] for p in profiles})
    versions = sorted({p["attacks"]["version"] for p in profiles})
    note = (f"Robustness profile (pagrob evaluate --profile), accuracies in % of the first {'/'.join(map(str, n))} "
            f"test images. Each L_p column is the curve's point at that radius: the worst case per image over FMN "
            f"(minimum norm), AutoAttack's APGD components ({', '.join(versions)}) and our PGD at that radius, "
            "closed upward (fooled within a smaller ball counts at every larger one). Corruptions: the 15 CIFAR-10-C "
            "corruptions made from the test images (seeded), mean over 5 severities. Spatial: correct under every "
            "rotation and translation of the grid. Union: per image, correct and withstanding every threat at its "
            "headline setting (the L_p columns' radii, every corruption at severity 3, the whole spatial grid).")
    notes = [note] + [f"{p['name']}: {name} not run ({why})" for p in profiles for name, why in p["not_run"].items()]
    if len({tuple(p["union_of"]) for p in profiles}) > 1:  # a profile of some threats only: its union is of those
        notes += [f"{p['name']}: union of {' & '.join(p['union_of'].values())}" for p in profiles]
    return Section(f"{dataset}: robustness profile, every threat", profile_table(profiles), notes)


def write_report(run_dirs: list[Path], out_dir: Path, title: str = "pagrob report", notes: str = "",
                 figure_images: int = 4) -> Path:
    """report.md and report.html in out_dir: per dataset the headline figure and summary first, details folded,
    then the pictures and how the numbers were made; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(d) for d in run_dirs if read_results(Path(d))]
    profiled = profile_figures(run_dirs, out_dir)
    figures = make_figures(run_dirs, out_dir, figure_images) + sbg_figures(run_dirs, out_dir)
    leads = [(c, p) for c, p in figures if PER_MINUTE in c] + [(c, p) for c, p in figures if HEADLINE in c]
    headline = {}
    for caption, path in leads:  # per dataset the per-minute figure where there is one, else accuracy versus eps
        headline.setdefault(caption.split(":")[0], (caption, path))
    others = [f for f in figures if f not in headline.values()]
    by_dataset = _by_dataset(run_dirs)
    blocks: list[tuple[str, object]] = []  # ("section", Section) | ("figure", (caption, path)) | ("list", ...)
    for dataset, rows in by_dataset.items():
        if dataset in headline:
            blocks.append(("figure", headline[dataset]))
        sections = _sections(rows, dataset)
        blocks.append(("section", sections[0]))
        profiles = [p for p in map(read_profile, run_dirs) if p is not None and p["dataset"] == dataset]
        if profiles:
            blocks += [("figure", f) for f in profiled if f[0].startswith(f"{dataset}:")]
            blocks.append(("section", _profile_section(profiles, dataset)))
        blocks += [("section", s) for s in sections[1:]]
    blocks += [("figure", f) for f in others]
    provenance = provenance_lines([r for rows in by_dataset.values() for r in rows])
    if provenance:
        blocks.append(("list", ("How these numbers were made", provenance)))
    (out_dir / "report.md").write_text(_markdown(title, notes, blocks))
    write_html(out_dir / "report.html", title, notes, blocks)
    return out_dir / "report.md"


def _markdown(title: str, notes: str, blocks: list[tuple[str, object]]) -> str:
    md = [f"# {title}", "", notes, ""]
    for kind, item in blocks:
        if kind == "figure":
            caption, path = item
            md += [f"## {caption}", "", f"![{caption}]({path.name})", ""]
        elif kind == "list":
            heading, lines = item
            md += [f"## {heading}", ""] + [f"- {line}" for line in lines] + [""]
        else:
            body = [markdown_table(item.table), ""] + [f"- {line}" if i else line
                                                       for i, line in enumerate(item.notes)] + [""]
            if item.folded:  # GitHub renders Markdown inside <details> when blank lines surround it
                md += [f"<details><summary>{html.escape(item.heading)}</summary>", ""] + body + ["</details>", ""]
            else:
                md += [f"## {item.heading}", ""] + body
    return "\n".join(md)


def write_html(path: Path, title: str, notes: str, blocks: list[tuple[str, object]]) -> Path:
    """One self-contained HTML file: figures, tables (details folded), notes, pictures inlined as base64 PNG."""
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "td.bad{background:#fde2e2;color:#900}td.good{color:#070}img{max-width:100%;border:1px solid #eee}"
             "p.note,li{font-size:13px;color:#444}details{margin:.4em 0}summary{cursor:pointer;font-weight:600}")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(notes)}</p>"]
    for kind, item in blocks:
        if kind == "figure":
            caption, png = item
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body += [f"<h2>{html.escape(caption)}</h2>",
                     f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">']
        elif kind == "list":
            heading, lines = item
            body += [f"<h2>{html.escape(heading)}</h2>",
                     f"<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in lines)}</ul>"]
        else:
            inner = [html_table(item.table)]
            if item.notes:
                inner.append(f'<p class="note">{html.escape(item.notes[0])}</p>')
                if item.notes[1:]:
                    inner.append(f"<ul>{''.join(f'<li>{html.escape(line)}</li>' for line in item.notes[1:])}</ul>")
            if item.folded:
                body.append(f"<details><summary>{html.escape(item.heading)}</summary>{''.join(inner)}</details>")
            else:
                body += [f"<h2>{html.escape(item.heading)}</h2>"] + inner
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    return path
