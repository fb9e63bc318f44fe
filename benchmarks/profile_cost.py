"""What a whole robustness profile costs against today's two-point evaluation of the same model, in one run.

    PYTHONPATH=src python benchmarks/profile_cost.py --run RUN_DIR [--n 1000] [--out runs/profile_cost]

RUN_DIR is a CIFAR-10 run (the README's figure: a width-16 ResNet-18). Its weights are copied twice into --out,
so neither measurement finds outcomes the other (or an earlier evaluation) left, and both get the minutes
preset's evaluation settings (configs/study/cifar10_minutes.yaml): our PGD, 10 steps x 2 restarts, margin loss;
AutoAttack `apgd-fast` (APGD-CE, APGD-T at 20 steps, 3 targets; Square at 300 queries as the guard on the first
500 images). Then, timed on the same machine one after the other:

- two-point: what the minutes preset runs after training, our PGD then APGD on its survivors, at L2 0.5 and
  L∞ 8/255, guarded (ε-sweep, Square, loss rise);
- profile: `pagrob evaluate RUN --profile` with the same attacks at every radius of every curve (L1 3..24 with
  APGD-L1, L2 0.125..2, L∞ 1..16/255), FMN first, every point guarded; 15 corruptions x 5 severities; the spatial
  grid; the union.

Prints the minutes of each threat, of both, and their ratio (the goal: the profile for at most 4x the two points).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import yaml

from pagrob.evaluate import ROBUSTBENCH_EPS, evaluate_and_write, evaluate_run
from pagrob.runs import load_run
from pagrob.threats.profile import profile_run

MINUTES_EVAL = {"pgd_steps": 10, "pgd_restarts": 2, "pgd_losses": ["margin"], "version": "apgd-fast",
                "norms": ["l2", "linf"], "eps_l2": [ROBUSTBENCH_EPS["l2"]], "eps_linf": [ROBUSTBENCH_EPS["linf"]]}
RUN_FILES = ("config.yaml", "model.json", "model.safetensors")


def fresh_copy(run: Path, out: Path, n: int) -> Path:
    """The run's weights and config in a folder of their own, evaluated with the minutes preset's settings."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy(run / name, out / name)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["eval"] = {**config.get("eval", {}), **MINUTES_EVAL, "n": n}
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def two_point(folder: Path) -> float:
    """Seconds for the minutes preset's evaluation: our PGD after training, then apgd-fast on its survivors."""
    run = load_run(folder)
    start = time.perf_counter()
    data = run.dataset()
    evaluate_and_write(run.model, data, run.config, folder, _no_alignment(), 0.0, progress=False)
    for norm, eps in ROBUSTBENCH_EPS.items():
        evaluate_run(run, "autoattack", norm, [eps], run.config.eval.n, "apgd-fast", alignment=[], progress=False,
                     survivors=True)
    return time.perf_counter() - start


def _no_alignment():
    """A target source that costs nothing: the two-point evaluation is timed for its attacks alone."""
    import torch

    from pagrob.targets import TargetSource

    class Zero(TargetSource):
        name = "none"

        def __call__(self, x, classes, index=None):
            return torch.zeros(*classes.shape, *x.shape[1:])

    return Zero()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="a CIFAR-10 run folder")
    parser.add_argument("--n", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--out", type=Path, default=Path("runs/profile_cost"))
    args = parser.parse_args()
    points = two_point(fresh_copy(args.run, args.out / "two-point", args.n))
    profile = profile_run(load_run(fresh_copy(args.run, args.out / "profile", args.n)), n=args.n,
                          version="apgd-fast", progress=False)
    total = sum(profile["seconds"].values())
    print(f"model: {args.run} ({profile['n']} test images, clean {100 * profile['clean']:.1f}%)")
    print(f"two-point evaluation (PGD-10x2 margin + apgd-fast on its survivors, L2 0.5 and Linf 8/255): "
          f"{points / 60:.1f} min")
    for name, seconds in profile["seconds"].items():
        print(f"profile {name}: {seconds / 60:.1f} min")
    print(f"profile total: {total / 60:.1f} min; ratio profile / two-point: {total / points:.2f} (goal: <= 4)")


if __name__ == "__main__":
    main()
