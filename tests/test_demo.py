"""`pagrob demo` run bookkeeping: an interrupted demo continues where it stopped when run again."""

import json

import pytest

import pagrob.demo as demo
import pagrob.train as train_module

SMALL = ["data.name=toy2d", "model.width=8", "optim.epochs=2", "optim.checkpoint_every=10", "eval.n=20",
         "eval.eps_l2=[1]"]


class Stop(Exception):
    pass


def test_an_interrupted_demo_continues_and_a_finished_one_trains_afresh(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "RUNS", {"toy2d-vanilla": SMALL})
    monkeypatch.setattr(demo, "AUTOATTACK", {})
    real, calls = train_module.train_step, [0]

    def counting(*args, stop_at=None, **kwargs):
        calls[0] += 1
        if calls[0] == stop_at:
            raise Stop
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: counting(*a, stop_at=15, **k))
    with pytest.raises(Stop):  # Ctrl-C during step 15; the checkpoint of step 10 is on disk
        demo.run_demo(tmp_path, progress=False)
    run = tmp_path / "toy2d-vanilla"
    assert (run / "checkpoints").is_dir() and not (run / "results.json").exists()

    calls[0] = 0
    monkeypatch.setattr(train_module, "train_step", lambda *a, **k: counting(*a, **k))
    assert demo.run_demo(tmp_path, progress=False).is_file()
    steps = 2 * -(-6000 // 64)  # 2 epochs of toy2d's 6,000 training points
    assert calls[0] == steps - 10, "continued from step 10, not from the start"
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    calls[0] = 0
    demo.run_demo(tmp_path, progress=False)
    assert calls[0] == steps, "a finished run is trained again from the start"
