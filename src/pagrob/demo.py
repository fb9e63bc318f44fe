"""`pagrob demo`: the main job, offline on a laptop CPU in under 15 minutes.

Trains vanilla and PAG with every target source on toy2d and digits, evaluates them under the same
attacks (our PGD after training, then AutoAttack with the gradient-masking guards), and writes the run
folders, `report.md` and a self-contained `report.html` with the pictures under one output folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from pagrob.config import Config, load_config
from pagrob.diffusion import demo_assets as sbg_assets
from pagrob.evaluate import evaluate_run, summary_line
from pagrob.report import write_report
from pagrob.runs import load_run, read_results
from pagrob.devices import resolve_device
from pagrob.pipeline import train_and_evaluate
from pagrob.train import CHECKPOINTS, finished

# Shared settings: the same training and evaluation for every run of a dataset, so only the method differs.
# toy2d: raw coordinates and Adam. On standardised inputs plain gradient descent never moves first-layer weights
# off the data's line, so even vanilla ends up with boundaries across the line (robust), unlike the paper's
# vanilla; Adam's per-coordinate steps do move them, as init does, and then the region beside the line is
# whatever the network happens to compute there. PGD with 100 steps and 10 restarts: 20 steps miss a third of
# the adversarial examples on these steep networks.
TOY = ["data.name=toy2d", "model.normalize=none", "model.width=128", "optim.name=adam", "optim.lr=0.003",
       "optim.weight_decay=0", "optim.epochs=120", "eval.norms=[l2]", "eval.eps_l2=[5,10,15,20,30]",
       "eval.pgd_steps=100", "eval.pgd_restarts=10", "eval.n=600", "eval.batch_size=1000"]
# PAG on toy2d: targets of the sigma = 20 noisy mixture, taken at x_sigma = x + N(0, 20^2 I) (pag.noise) so the
# gradient field is shaped in the tube around the line an attacker moves in; "at-data" takes them at x only.
TOY_PAG, TOY_EXACT, TOY_NOISE = ["pag.lam=0.3"], ["pag.source=exact", "pag.sigma=20"], ["pag.noise=20"]
# Digits pixels are in [0, 1] and an image has L2 norm ~4.5: eps 0.5 is a faint change, 2.0 a visible one.
DIGITS = ["data.name=digits", "optim.epochs=30", "optim.lr=0.05", "model.width=16", "eval.norms=[l2,linf]",
          "eval.eps_l2=[0.5,1.0,2.0]", "eval.eps_linf=[0.1]", "eval.n=200", "eval.batch_size=1000"]
# eval.batch_size: one batch per attack, so each attack step is one call on all its images.

RUNS: dict[str, list[str]] = {
    "toy2d-vanilla": TOY,
    "toy2d-pag-exact": TOY + TOY_PAG + TOY_EXACT + TOY_NOISE,
    "toy2d-pag-exact-at-data": TOY + TOY_PAG + TOY_EXACT,
    # Score-based targets from a score model the demo trains (and, for digits, a target store it builds) once.
    "toy2d-pag-sbg": TOY + TOY_PAG + sbg_assets.TOY_SBG + TOY_NOISE,
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
differs. "pgd" columns: our PGD (random start, step 2.5·ε/steps; digits 20 steps, toy2d 100 steps and 10
restarts) right after training. "autoattack": AutoAttack (APGD-CE, APGD-T, FAB-T, Square; torchattacks) on
the first n test images, standard version unless the column says [custom-fast].
toy2d: an MLP on raw coordinates trained with Adam; PAG's exact targets are those of the mixture at noise level
σ = 20, taken at x + N(0, 20² I) ("pag-exact", "pag-sbg") or at the data points alone ("pag-exact-at-data").
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
        dirs.append(train_or_continue(cfg, out / name, progress))
        if progress:
            print(f"[demo] {name} done after {time.perf_counter() - start:.0f} s", flush=True)
    for d in dirs:
        autoattack_run(d, progress)
        if progress:
            print(f"[demo] AutoAttack on {d.name} done after {time.perf_counter() - start:.0f} s", flush=True)
    return write_report(dirs, out, "pagrob demo", NOTES)


def train_or_continue(cfg: Config, run_dir: Path, progress: bool = True) -> Path:
    """Continue a run an interrupted demo left with the same settings; train any other afresh (a demo run
    folder is the demo's own: its old checkpoints and results are replaced)."""
    config_file = run_dir / "config.yaml"
    interrupted = (run_dir / CHECKPOINTS).is_dir() and not finished(run_dir)
    resume = interrupted and config_file.is_file() and load_config(config_file) == cfg
    if not resume:
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    elif progress:
        print(f"[demo] continuing the interrupted {cfg.name} from its last checkpoint", flush=True)
    return train_and_evaluate(cfg, run_dir, progress, resume=resume)


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
