"""DDP on two CPU processes (gloo): the ranks agree, and they agree with one process on the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import pagrob.train as train_module
from pagrob import checkpoint, distributed
from pagrob.config import load_config
from pagrob.data import Dataset, toy2d
from pagrob.pipeline import train_and_evaluate
from pagrob.train import fit

# AT + PAG: the model is called twice in a step and the PAG term needs a double backward, both inside DDP.
# Batches of 63 split 32 / 31 between the ranks, so the share weighting of the ranks' losses is exercised;
# 640 images make 11 batches an epoch (the last of 10 images).
SETTINGS = ["device=cpu", "pag.source=exact", "adv.method=pgd", "adv.steps=2", "adv.random_start=false",
            "optim.epochs=2", "optim.batch_size=63", "optim.lr=0.05", "optim.checkpoint_every=4", "eval.n=50",
            "eval.eps_l2=[0]"]


def small_toy(n: int = 640) -> Dataset:
    full = toy2d.load()
    pick = torch.randperm(len(full.x_train), generator=torch.Generator().manual_seed(1))[:n]
    return Dataset("toy2d", full.x_train[pick], full.y_train[pick], full.x_test[:200], full.y_test[:200], 2, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, crash_at: int, resume: bool) -> None:
    """One DDP process; with `crash_at`, it dies (like a SIGKILL) before that many steps are done."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if crash_at:
        real, calls = train_module.train_step, [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                os._exit(9)
            return real(*args, **kwargs)

        train_module.train_step = dying
    ctx = distributed.start(torch.device("cpu"))
    try:
        trained = fit(load_config(None, SETTINGS), small_toy(), Path(out), ctx, progress=False, resume=resume)
    finally:
        distributed.stop(ctx)
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_gloo_processes_match_each_other_and_one_process_across_a_crash(tmp_path):
    """Both ranks die at step 15 of 22 (after the checkpoint at step 12), then resume from it."""
    with pytest.raises(mp.ProcessExitedException):
        mp.start_processes(_rank, args=(2, free_port(), str(tmp_path), 15, False), nprocs=2, start_method="spawn")
    assert [r.name for r in checkpoint.records(tmp_path / "checkpoints")][0] == "step-00000012.json"
    mp.start_processes(_rank, args=(2, free_port(), str(tmp_path), 0, True), nprocs=2, start_method="spawn")
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    single = fit(load_config(None, SETTINGS), small_toy(), tmp_path / "single", progress=False).model.state_dict()
    assert max_difference(ranks[0], ranks[1]) == 0.0
    assert max_difference(ranks[0], dict(single)) < 1e-5
    assert max_difference(ranks[0], {k: v * 0 for k, v in single.items()}) > 0.1, "the weights did train"
    # rank 0 alone wrote the metrics, with the losses averaged over both ranks
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    singles = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_pag"] == pytest.approx(singles[-1]["train_pag"], abs=1e-3)


def test_one_torchrun_process_joins_a_group_and_trains_under_ddp(monkeypatch):
    """WORLD_SIZE=1 from torchrun is still DDP (so one GPU checks NCCL); without torchrun it is a plain process."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.setenv(name, "1" if name == "WORLD_SIZE" else "0")
    assert not distributed.start(torch.device("cpu")).active
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    ctx = distributed.start(torch.device("cpu"))
    try:
        assert ctx.active and ctx.world == 1 and torch.distributed.get_backend() == "gloo"
        assert isinstance(distributed.wrap(torch.nn.Linear(2, 2), ctx), torch.nn.parallel.DistributedDataParallel)
    finally:
        distributed.stop(ctx)


@pytest.mark.parametrize("nproc", [1, 2])
def test_pagrob_train_nproc_from_the_command_line(tmp_path, nproc):
    """`python -m pagrob train --nproc N` runs torchrun's launcher, N = 1 too; rank 0 writes one ordinary run
    folder."""
    sets = ["device=cpu", "pag.source=exact", "optim.epochs=1", "eval.n=50", "eval.eps_l2=[0]"]
    argv = [sys.executable, "-m", "pagrob", "--quiet", "train", "--nproc", str(nproc), "--out", str(tmp_path / "ddp")]
    done = subprocess.run(argv + [a for s in sets for a in ("--set", s)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["dataset"] == "toy2d", "one results JSON, printed by rank 0 alone"
    train_and_evaluate(load_config(None, sets), tmp_path / "single", progress=False)
    ddp, single = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("ddp", "single"))
    assert max_difference(ddp, single) < 1e-5
    assert not (tmp_path / "ddp" / "checkpoints").exists()


def test_nproc_1_launches_torchrun_rather_than_training_here(tmp_path, monkeypatch):
    """`--nproc 1` is one DDP process under torchrun's launcher; without --nproc, this process trains alone."""
    from pagrob import cli

    launched = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, argv: launched.append((nproc, argv)))
    assert cli.main(["train", "--nproc", "1", "--out", str(tmp_path / "run"), "--set", "device=cpu"]) == 0
    assert launched == [(1, ["train", "--out", str(tmp_path / "run"), "--set", "device=cpu"])]
    assert not (tmp_path / "run").exists(), "nothing trained in this process"
