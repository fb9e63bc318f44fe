"""The toy2d claim over several seeds: vanilla against PAG (exact targets), with the demo's settings.

    python benchmarks/toy_seeds.py [--seeds 0 1 2 3] [--out runs/bench/toy-seeds]

One seed is one draw of the initial weights and the batch order; the demo shows seed 0 only. Both methods are
trained with `pagrob.demo`'s toy settings (only the objective differs) and attacked with its PGD (L2, 100 steps,
10 restarts, all 600 test points). Prints one line per run and, last, the per-method mean and minimum of the
robust accuracy at eps = 15.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pagrob.config import load_config
from pagrob.demo import RUNS
from pagrob.pipeline import train_and_evaluate

METHODS = ("toy2d-vanilla", "toy2d-pag-exact")


def robust_at(results_file: Path, eps: float) -> tuple[float, float]:
    """(clean, robust) accuracy at eps from a run's results.json."""
    r = json.loads(results_file.read_text())
    return r["clean_accuracy"], next(e["accuracy"] for e in r["robust_accuracy"] if e["eps"] == eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/toy-seeds"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    table: dict[str, list[float]] = {m: [] for m in METHODS}
    for seed in args.seeds:
        for method in METHODS:
            name = f"{method}-seed{seed}"
            cfg = load_config(None, RUNS[method] + [f"seed={seed}", f"name={name}", "eval.eps_l2=[15]"])
            run = train_and_evaluate(cfg, args.out / name, progress=False)
            clean, robust = robust_at(run / "results.json", 15.0)
            table[method].append(robust)
            print(f"{name}: clean {100 * clean:.1f}%, PGD L2 eps=15 {100 * robust:.1f}%", flush=True)
    for method, values in table.items():
        print(f"{method}: eps=15 mean {100 * sum(values) / len(values):.1f}%, min {100 * min(values):.1f}% "
              f"over seeds {args.seeds}")


if __name__ == "__main__":
    main()
