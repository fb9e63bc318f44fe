"""Crash-safe runs: a run that dies at any step and is resumed ends with the very weights of an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pagrob.pipeline as pipeline
import pagrob.train as train_module
from pagrob import checkpoint
from pagrob.config import load_config
from pagrob.data import Dataset, toy2d
from pagrob.pipeline import train_and_evaluate as train
from pagrob.train import CHECKPOINTS

# PAG with sampled target classes and PGD with random starts: every random stream a resume must restore.
SETTINGS = ["device=cpu", "pag.source=exact", "pag.k=1", "adv.method=pgd", "adv.steps=2", "optim.epochs=3",
            "optim.batch_size=64", "optim.checkpoint_every=3", "optim.lr=0.05", "eval.n=50", "eval.eps_l2=[0]"]
STEPS_PER_EPOCH = 10


class Crash(Exception):
    pass


def small_toy(n: int = 640) -> Dataset:
    full = toy2d.load()
    pick = torch.randperm(len(full.x_train), generator=torch.Generator().manual_seed(1))[:n]
    return Dataset("toy2d", full.x_train[pick], full.y_train[pick], full.x_test[:200], full.y_test[:200], 2, None)


def weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


def train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    train(load_config(None, SETTINGS), out, progress=False, data=small_toy())
    return out


def crash_after(monkeypatch, calls: int) -> None:
    """Make train_step raise on its (calls + 1)-th call, as a killed process would stop there."""
    real, seen = train_module.train_step, [0]

    def dying(*args, **kwargs):
        if seen[0] == calls:
            raise Crash
        seen[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", dying)


@pytest.mark.parametrize("calls", [1, 4, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 7, 3 * STEPS_PER_EPOCH - 1])
def test_resume_after_a_crash_at_any_step_gives_identical_weights(tmp_path, monkeypatch, reference, calls):
    cfg = load_config(None, SETTINGS)
    crash_after(monkeypatch, calls)
    with pytest.raises(Crash):
        train(cfg, tmp_path, progress=False, data=small_toy())
    monkeypatch.undo()
    train(cfg, tmp_path, progress=False, data=small_toy(), resume=True)
    ref, got = weights(reference), weights(tmp_path)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert train_rows(tmp_path) == train_rows(reference)
    assert not (tmp_path / CHECKPOINTS).exists(), "a finished run clears its checkpoints"


def test_crash_during_final_evaluation_resumes_from_the_last_epoch(tmp_path, monkeypatch, reference):
    cfg = load_config(None, SETTINGS)

    def dying(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(pipeline, "evaluate_and_write", dying)
    with pytest.raises(Crash):
        train(cfg, tmp_path, progress=False, data=small_toy())
    monkeypatch.undo()
    state = checkpoint.latest(tmp_path / CHECKPOINTS)[1]
    assert state["epoch"] == 3 and state["step"] == 3 * STEPS_PER_EPOCH
    train(cfg, tmp_path, progress=False, data=small_toy(), resume=True)
    assert all(torch.equal(v, weights(tmp_path)[k]) for k, v in weights(reference).items())
    assert json.loads((tmp_path / "results.json").read_text())["clean_accuracy"] == \
        json.loads((reference / "results.json").read_text())["clean_accuracy"]


def test_checkpoints_keep_the_newest_two_and_write_no_temporary_files(tmp_path, monkeypatch):
    crash_after(monkeypatch, 2 * STEPS_PER_EPOCH + 5)
    with pytest.raises(Crash):
        train(load_config(None, SETTINGS), tmp_path, progress=False, data=small_toy())
    names = sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir())
    # 25 steps done; checkpoints every 3 steps and at the epoch ends (10, 20): ..., 18, 20, 21, 24
    assert names == ["step-00000021.json", "step-00000021.safetensors", "step-00000024.json",
                     "step-00000024.safetensors"]


def test_sigkill_then_resume_from_the_command_line(tmp_path):
    """A real SIGKILL on the `pagrob train` process, then `pagrob train --resume` with the same command."""
    sets = ["device=cpu", "optim.epochs=2", "optim.checkpoint_every=5", "eval.n=50", "eval.eps_l2=[0]",
            "pag.source=exact", "pag.k=1"]
    argv = [sys.executable, "-m", "pagrob", "--quiet", "train"] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(argv + ["--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(argv + ["--out", str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not checkpoint.records(run / CHECKPOINTS) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.records(run / CHECKPOINTS), "the run was killed after its first checkpoint"
    done = subprocess.run(argv + ["--out", str(run), "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(torch.equal(v, weights(run)[k]) for k, v in weights(tmp_path / "whole").items())
