"""A whole run: train (`pagrob.train`, which saves the weights), then evaluate (`pagrob.evaluate`, which writes
results.json), then clear the checkpoints. The CLI's `train`, the demo and the sweep all run through here.
"""

from __future__ import annotations

from pathlib import Path

from pagrob import checkpoint, console
from pagrob.config import Config
from pagrob.data import Dataset
from pagrob.evaluate import evaluate_and_write
from pagrob.train import CHECKPOINTS, finished, train


def train_and_evaluate(cfg: Config, out: Path, progress: bool = True, data: Dataset | None = None,
                       resume: bool = False) -> Path:
    """Train, evaluate and write the run folder `out`. Returns `out`.

    `resume` continues from the newest good checkpoint in `out`; a finished run is left as is. Under torchrun
    only rank 0 evaluates and writes.
    """
    if resume and finished(out):
        console.line(f"pagrob: {out} holds a finished run (results.json); nothing to resume")
        return out
    trained = train(cfg, out, progress, data, resume)
    if trained is not None:
        evaluate_and_write(trained.model, trained.data, cfg, out, trained.align_source, trained.seconds, progress,
                           facts=trained.facts())
        checkpoint.remove(out / CHECKPOINTS)
    return out
