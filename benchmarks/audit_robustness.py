"""Audit reported robust accuracies with an independent PGD: is any number more than 3 points too high?

    PYTHONPATH=src python benchmarks/audit_robustness.py RUN_DIR... [--steps 100 --restarts 5] [--threads 2]

For every (run, norm, eps) that a run's results.json reports (its worst case, or its per-attack entries for
older runs), this attacks the same first n test images with its own PGD, written apart from pagrob.attacks on
purpose so that it is a real cross-check: each restart runs cross-entropy and a margin loss (best other logit
minus the true one) from a random point of the ball, with a step size that halves twice, and an image counts as
fooled if any iterate fooled it. Prints reported vs found and flags gaps over --tolerance points.
Exit status 1 when any number is flagged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from pagrob.runs import load_run, read_results


def _per_image_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))


def _project(x: Tensor, x_adv: Tensor, norm: str, eps: float, bounds) -> Tensor:
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_image_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    out = x + delta
    return out if bounds is None else out.clamp(*bounds)


def _loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Per-image loss to increase: cross-entropy, or the best wrong logit minus the true one."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.clone()
    wrong.scatter_(1, y[:, None], float("-inf"))
    return wrong.max(1).values - true


def _direction(g: Tensor, norm: str) -> Tensor:
    return g.sign() if norm == "linf" else g / _per_image_norm(g).clamp_min(1e-12)


def audit_pgd(model, x: Tensor, y: Tensor, norm: str, eps: float, bounds, steps: int, restarts: int,
              seed: int = 1234) -> Tensor:
    """Per image: True when some iterate of some restart (CE or margin) is misclassified."""
    gen = torch.Generator().manual_seed(seed)
    fooled = torch.zeros(len(x), dtype=torch.bool)
    schedule = [4.0 if t < steps // 2 else 2.0 if t < 3 * steps // 4 else 1.0 for t in range(steps)]
    for _ in range(restarts):
        for kind in ("ce", "margin"):
            todo = (~fooled).nonzero().squeeze(1)
            if len(todo) == 0:
                return fooled
            xs, ys = x[todo], y[todo]
            noise = torch.randn(xs.shape, generator=gen)
            if norm == "linf":
                start = xs + eps * (2 * torch.rand(xs.shape, generator=gen) - 1)
            else:
                start = xs + noise / _per_image_norm(noise) * eps * torch.rand(len(xs), generator=gen).view(
                    -1, *([1] * (xs.dim() - 1)))
            x_adv = _project(xs, start, norm, eps, bounds)
            hit = torch.zeros(len(xs), dtype=torch.bool)
            for t in range(steps + 1):
                x_adv = x_adv.detach().requires_grad_(True)
                logits = model(x_adv)
                hit |= (logits.argmax(1) != ys).detach()
                if t == steps:
                    break
                (g,) = torch.autograd.grad(_loss(logits, ys, kind).sum(), x_adv)
                x_adv = _project(xs, x_adv.detach() + schedule[t] * eps / steps * _direction(g, norm), norm, eps,
                                 bounds)
            fooled[todo] |= hit
    return fooled


def reported(results: dict) -> list[dict]:
    """The robust numbers a report shows for this run: its worst cases, or (older runs) its per-attack entries."""
    if results.get("worst_case"):
        return results["worst_case"]
    return results.get("robust_accuracy", [])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--tolerance", type=float, default=3.0, help="points a reported number may exceed ours by")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"independent PGD: {args.steps} steps x {args.restarts} restarts x (CE, margin)")
    print(f"{'run':32s} {'radius':>14s} {'n':>5s} {'reported':>9s} {'found':>7s} {'gap':>6s}")
    flagged = 0
    for d in map(Path, args.run_dirs):
        results = read_results(d)
        if not results:
            print(f"{d}: no results.json, skipped")
            continue
        run = load_run(d)
        model = run.model.eval()
        for p_ in model.parameters():
            p_.requires_grad_(False)
        data = run.dataset()
        for entry in reported(results):
            n = entry["n_examples"]
            x, y = data.x_test[:n], data.y_test[:n]
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            fooled = audit_pgd(model, x, y, entry["norm"], float(entry["eps"]), data.bounds, args.steps,
                               args.restarts)
            found = 100 * (correct & ~fooled).float().mean().item()
            shown = 100 * entry["accuracy"]
            gap = shown - found
            flag = "  <-- more than %.0f points too high" % args.tolerance if gap > args.tolerance else ""
            flagged += bool(flag)
            label = f"{entry['norm']} {float(entry['eps']):g}"
            what = "" if results.get("worst_case") else f" [{entry['attack']}]"
            print(f"{results.get('name', d.name):32s} {label + what:>14s} {n:5d} {shown:9.1f} {found:7.1f} "
                  f"{gap:+6.1f}{flag}", flush=True)
    print(f"{flagged} number(s) flagged")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
