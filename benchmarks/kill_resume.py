"""Kill a toy2d training run with SIGKILL at random moments, resume each, and compare with an uninterrupted run.

    python benchmarks/kill_resume.py [--kills 5] [--seed 0] [--out runs/kill_resume] [--set KEY=VALUE ...]

The run trains PAG (exact targets, one sampled class per image) with PGD adversarial training, so every
random stream a resume must restore is in use: the shuffling, the target classes, the attacks' random starts.
Each kill moment is drawn uniformly over the uninterrupted run's wall time, start-up and evaluation included;
the killed run is then resumed with the same command plus --resume. Final weights must be bitwise equal.
Last line: `identical after resume: N/K`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from pagrob.checkpoint import records

SETTINGS = ["device=cpu", "seed=3", "pag.source=exact", "pag.k=1", "adv.method=pgd", "adv.steps=3", "optim.epochs=4",
            "optim.checkpoint_every=20", "eval.n=100", "eval.eps_l2=[0]"]


def command(out: Path, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "pagrob", "--quiet", "train", "--out", str(out)] + \
        [a for s in sets for a in ("--set", s)]


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr}")


def where(out: Path) -> str:
    """What the killed run had reached: its newest checkpoint, or how far it got before the first one."""
    newest = records(out / "checkpoints")
    if newest:
        return f"newest checkpoint {newest[0].stem}"
    return "run finished" if (out / "results.json").exists() else "before the first checkpoint"


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="chooses the kill moments")
    parser.add_argument("--out", default="runs/kill_resume")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = parser.parse_args()
    root, sets = Path(args.out), SETTINGS + args.set
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the same thread count in every run, so the same float sums

    start = time.perf_counter()
    run(command(root / "uninterrupted", sets))
    duration = time.perf_counter() - start
    reference = load_file(str(root / "uninterrupted" / "model.safetensors"))
    print(f"uninterrupted run: {duration:.1f} s; settings: {' '.join(sets)}")

    rng = random.Random(args.seed)
    identical = 0
    for k in range(args.kills):
        out, moment = root / f"killed-{k + 1}", rng.uniform(0, duration)
        proc = subprocess.Popen(command(out, sets), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reached = where(out)
        run(command(out, sets) + ["--resume"])
        weights = load_file(str(out / "model.safetensors"))
        same = weights.keys() == reference.keys() and all(torch.equal(weights[n], reference[n]) for n in reference)
        identical += same
        print(f"kill {k + 1}: SIGKILL at {moment:5.1f} s ({reached}); resumed: "
              f"{'bitwise identical' if same else f'DIFFERENT, max |diff| {max_difference(weights, reference):.3g}'}")
    print(f"identical after resume: {identical}/{args.kills}")


if __name__ == "__main__":
    main()
