"""What the strong evaluation PGD costs after training, against the old 20-step cross-entropy PGD, in one run.

    PYTHONPATH=src python benchmarks/eval_budget.py RUN_DIR... [--threads 2]

For each run folder: the end-of-training evaluation (`pgd_results`: every norm and eps of the run's eval config,
with the guards) timed with the old settings (20 steps, 1 restart, cross-entropy) and with the run's settings
(default 100 steps, 3 restarts, cross-entropy and margin), nothing reused between the two (in-memory outcomes).
Prints seconds, their ratio, and the robust accuracies each found.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from pagrob.evaluate import Victim, pgd_results
from pagrob.outcomes import OutcomeStore, model_hash
from pagrob.runs import load_run


def timed(v: Victim, cfg) -> tuple[float, list[float]]:
    start = time.perf_counter()
    rows = pgd_results(v, cfg, OutcomeStore(None, model_hash(v.model)), progress=False)
    return time.perf_counter() - start, [round(100 * r["accuracy"], 1) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for d in args.run_dirs:
        run = load_run(d)
        data = run.dataset()
        cfg = run.config.eval
        n = cfg.n or len(data.x_test)
        v = Victim(run.model.eval(), data.x_test[:n], data.y_test[:n], data.bounds, data.num_classes)
        old = dataclasses.replace(cfg, pgd_steps=20, pgd_restarts=1, pgd_losses=["ce"])
        t_old, acc_old = timed(v, old)
        t_new, acc_new = timed(v, cfg)
        print(f"{run.config.name}: old PGD-20 {t_old:.1f} s {acc_old}; evaluation PGD "
              f"{cfg.pgd_steps}x{cfg.pgd_restarts} {'+'.join(cfg.pgd_losses)} {t_new:.1f} s {acc_new}; "
              f"ratio {t_new / t_old:.2f}", flush=True)


if __name__ == "__main__":
    main()
