"""`pagrob demo`: the main job, offline on a laptop CPU in under 15 minutes.

Trains vanilla and PAG with every target source on toy2d and digits, evaluates them under the same
attacks (our PGD after training, then AutoAttack with the gradient-masking guards), and writes the run
folders, `report.md` and a self-contained `report.html` with the pictures under one output folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from pagrob.config import load_config
from pagrob.diffusion import demo_assets as sbg_assets
from pagrob.evaluate import evaluate_run, summary_line
from pagrob.report import write_report
from pagrob.runs import load_run, read_results
from pagrob.train import resolve_device, train

# Shared settings: the same training and evaluation for every run of a dataset, so only the method differs.
TOY = ["data.name=toy2d", "optim.epochs=10", "optim.lr=0.05", "eval.norms=[l2]", "eval.eps_l2=[5,10,15,20,30]",
       "eval.n=600", "eval.batch_size=1000"]
# Digits pixels are in [0, 1] and an image has L2 norm ~4.5: eps 0.5 is a faint change, 2.0 a visible one.
DIGITS = ["data.name=digits", "optim.epochs=30", "optim.lr=0.05", "model.width=16", "eval.norms=[l2,linf]",
          "eval.eps_l2=[0.5,1.0,2.0]", "eval.eps_linf=[0.1]", "eval.n=200", "eval.batch_size=1000"]
# eval.batch_size: one batch per attack, so each attack step is one call on all its images.

RUNS: dict[str, list[str]] = {
    "toy2d-vanilla": TOY,
    "toy2d-pag-exact": TOY + ["pag.source=exact", "pag.sigma=5"],
    # Score-based targets from a score model the demo trains (and, for digits, a target store it builds) once.
    "toy2d-pag-sbg": TOY + sbg_assets.TOY_SBG,
    "digits-vanilla": DIGITS,
    "digits-pag-oi": DIGITS + ["pag.source=oi"],
    "digits-pag-cm": DIGITS + ["pag.source=cm"],
    "digits-pag-nn": DIGITS + ["pag.source=nn"],
    "digits-pag-sbg": DIGITS + sbg_assets.DIGITS_SBG,
    # Madry L2 adversarial training at eps 0.5 (7 PGD steps), alone and with the PAG class-mean term.
    # (At eps 1.0 this small CNN does not learn at all under PGD-AT: clean accuracy stays near chance.)
    "digits-at-l2": DIGITS + ["adv.method=pgd", "adv.eps=0.5"],
    "digits-at-l2+pag-cm": DIGITS + ["adv.method=pgd", "adv.eps=0.5", "pag.source=cm"],
}

# AutoAttack after training, by dataset: (norm, radii, first n test images, version). Its cost is in the
# images still standing after APGD-CE: APGD-T and FAB-T try 9 targets x 100 steps and Square spends 5,000
# queries on each (about a minute per robust digits run on 2 CPU cores). So L2, the headline, runs the
# standard version and L-inf the labelled "custom-fast" one (20 steps, 3 targets, 1,000 queries).
# toy2d's 600 test points are sorted by class: all are attacked.
AUTOATTACK: dict[str, list[tuple[str, list[float], int, str]]] = {
    "toy2d": [("l2", [15.0], 600, "standard")],
    "digits": [("l2", [0.5, 2.0], 200, "standard"), ("linf", [0.1], 200, "custom-fast")],
}

NOTES = """Every run of a dataset shares its model, optimiser, epochs and attacks; only the training objective
differs. "pgd" columns: our PGD (20 steps, step 2.5·ε/20, random start) right after training. "autoattack":
AutoAttack (APGD-CE, APGD-T, FAB-T, Square; torchattacks) on the first n test images, standard version
unless the column says [custom-fast].
Every adversarial example is checked against its ε-ball and the valid range, and every robust number is
guarded against gradient masking (ε-sweep, black-box check, loss rise). Settings: `pagrob.demo.RUNS`,
`pagrob.demo.AUTOATTACK`."""


def run_demo(out: Path, progress: bool = True, only: list[str] | None = None) -> Path:
    """Train and evaluate the demo runs (all, or those named in `only`) and write `out/report.md`."""
    start = time.perf_counter()
    dirs = []
    for name, overrides in RUNS.items():
        if only and name not in only:
            continue
        cfg = load_config(None, [o.replace("{assets}", str(out / "assets")) for o in overrides] + [f"name={name}"])
        if any("{assets}" in o for o in overrides):  # score model / SBG store, made once and reused
            sbg_assets.prepare(out / "assets", cfg.data.name, resolve_device(cfg.device), progress)
        dirs.append(train(cfg, out / name, progress))
        if progress:
            print(f"[demo] {name} done after {time.perf_counter() - start:.0f} s", flush=True)
    for d in dirs:
        autoattack_run(d, progress)
        if progress:
            print(f"[demo] AutoAttack on {d.name} done after {time.perf_counter() - start:.0f} s", flush=True)
    return write_report(dirs, out, "pagrob demo", NOTES)


def autoattack_run(run_dir: Path, progress: bool = True) -> list[dict]:
    """AutoAttack with guards at the demo's radii for the run's dataset; one line per result on screen."""
    run = load_run(run_dir)
    entries = []
    for i, (norm, eps, n, version) in enumerate(AUTOATTACK.get(read_results(run_dir)["dataset"], [])):
        # alignment: scored once, with the first evaluation
        entries += evaluate_run(run, "autoattack", norm, eps, n, version, alignment=None if i == 0 else [],
                                progress=progress)
    for entry in entries:
        print(f"[demo] {run.config.name}: {summary_line(entry)}", flush=True)
    return entries
