"""Equal minutes: optim.minutes plans the steps from a measured step time, optim.steps pins them, the plan is kept
in the checkpoint; step-counted schedules (step, onecycle, warm-up) and Nesterov SGD."""

import json
import time

import pytest
import torch

from pagrob import checkpoint, train
from pagrob.config import ConfigError, load_config
from pagrob.data import load_dataset
from pagrob.parts import make_optimizer
from pagrob.pipeline import train_and_evaluate
from pagrob.schedules import Plan, lr_factor

QUICK = ["data.name=digits", "model.width=4", "optim.batch_size=100", "eval.n=10", "eval.pgd_steps=2",
         "eval.pgd_restarts=1", "eval.eps_l2=[1.0]"]


def test_step_schedule_drops_on_epoch_boundaries_as_before():
    plan = Plan(total=40, per_epoch=10, milestones=(0.5, 0.75))  # 4 epochs: drops before epochs 3 and 4 (2, 3)
    assert [lr_factor("step", s, plan) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_onecycle_warms_up_then_decays_to_zero():
    plan = Plan(total=100, per_epoch=10, warmup=0.2)
    f = [lr_factor("onecycle", s, plan) for s in range(100)]
    assert f[0] == pytest.approx(1 / 20) and f[19] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[19:], f[20:])) and f[99] == pytest.approx(1 / 80)
    assert all(a <= b for a, b in zip(f[:19], f[1:20]))


def test_new_optimizer_keys_are_validated():
    with pytest.raises(ConfigError, match="optim.schedule must be step or onecycle"):
        load_config(None, ["optim.schedule=cosine"])
    with pytest.raises(ConfigError, match="optim.nesterov needs optim.name=sgd"):
        load_config(None, ["optim.nesterov=true", "optim.name=adam"])
    with pytest.raises(ConfigError, match="optim.warmup"):
        load_config(None, ["optim.warmup=1"])
    with pytest.raises(ConfigError, match="optim.minutes must be >= 0"):
        load_config(None, ["optim.minutes=-1"])
    cfg = load_config(None, ["optim.nesterov=true"])
    assert make_optimizer(cfg, torch.nn.Linear(2, 2)).param_groups[0]["nesterov"] is True


def test_pinned_steps_end_mid_epoch_and_are_recorded(tmp_path):
    cfg = load_config(None, QUICK + ["optim.steps=15", "optim.schedule=onecycle", "optim.warmup=0.2"])
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    digits = load_dataset("digits")
    per_epoch = -(-len(digits.x_train) // 100)
    assert len(rows) == -(-15 // per_epoch) and rows[-1]["lr"] == pytest.approx(0.01 * lr_factor(
        "onecycle", 15, Plan(15, per_epoch, warmup=0.2)))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["planned_steps"] == 15 and results["step_seconds_estimate"] is None
    assert results["train_minutes"] == pytest.approx(results["train_seconds"] / 60)


def test_the_per_epoch_checks_are_not_counted_as_training_minutes(tmp_path, monkeypatch):
    slow = 0.4  # a per-epoch check this slow would be most of these runs' training time
    check = train.pgd_check
    monkeypatch.setattr(train, "pgd_check", lambda *a: (time.sleep(slow), check(*a))[1])
    cfg = load_config(None, QUICK + ["optim.steps=30"])
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2 and results["check_minutes"] * 60 >= 2 * slow
    assert results["train_seconds"] + results["check_minutes"] * 60 >= json.loads(rows[-1])["seconds"]
    assert results["train_seconds"] < json.loads(rows[-1])["seconds"]  # the first epoch's check is not in it


def test_minutes_plan_steps_from_the_measured_step_time_and_a_resume_keeps_the_plan(tmp_path, monkeypatch):
    cfg = load_config(None, QUICK + ["optim.minutes=0.01"])
    digits = load_dataset("digits")
    trained = train.fit(cfg, digits, tmp_path / "run", progress=False)
    plan = trained.plan
    assert plan["step_seconds_estimate"] > 0
    assert plan["planned_steps"] == max(1, int(0.6 / plan["step_seconds_estimate"]))
    # at least half the timed steps last the median or longer: the measurement's own wall time is recorded
    assert plan["timing_seconds"] >= (train.TIMED_STEPS + 1) // 2 * plan["step_seconds_estimate"]
    assert checkpoint.latest(tmp_path / "run" / train.CHECKPOINTS)[1]["plan"] == plan
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()

    def no_timing(*args):
        raise AssertionError("a resumed run must not measure its step time again")

    monkeypatch.setattr(train, "_time_steps", no_timing)
    again = train.fit(cfg, digits, tmp_path / "run", progress=False, resume=True)
    assert again.plan == plan and (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() == rows


def test_timing_leaves_the_run_as_it_would_be_without_it(tmp_path, monkeypatch):
    """A run that measured its step time (then planned 3 steps) trains the weights a run pinned to 3 steps does:
    the timing steps' changes to the weights, optimizer and random streams are undone."""
    digits = load_dataset("digits")
    settings = QUICK + ["pag.source=cm", "pag.k=1", "adv.method=fgsm"]  # draws from every random stream
    pinned = train.fit(load_config(None, settings + ["optim.steps=3"]), digits, tmp_path / "a", progress=False)

    def measured_then_three(cfg, per_epoch, saved, measure):
        return {"planned_steps": 3, "step_seconds_estimate": measure()}

    monkeypatch.setattr(train, "plan_steps", measured_then_three)
    timed = train.fit(load_config(None, settings + ["optim.minutes=1"]), digits, tmp_path / "b", progress=False)
    assert timed.plan["step_seconds_estimate"] > 0
    a, b = pinned.model.state_dict(), timed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
