"""Evaluations that survive a kill, the worst case over every attack, the strong evaluation PGD, provenance."""

import json

import pytest
import torch

from pagrob import evaluate
from pagrob.attacks import PGD
from pagrob.attacks.pgd import EvalPGD
from pagrob.attacks.settings import AttackSettings
from pagrob.data import load_dataset
from pagrob.evaluate import Victim, predict, run_sequence, worst_cases
from pagrob.outcomes import FOOLED, NOT_ATTACKED, OutcomeStore, model_hash, worst_case
from small_models import digits_cnn


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits):
    return noisy_cnn(digits)


def noisy_cnn(digits):
    """A small CNN trained briefly with noise: some images resist a weak attack, not a strong one."""
    return digits_cnn(digits, epochs=3, seed=1, noise=0.3)


class Killed(Exception):
    pass


def test_a_killed_evaluation_continues_to_the_uninterrupted_numbers(model, digits, tmp_path, monkeypatch):
    """Kill in the middle of a component (the evaluation PGD, after its first batch), run again: the per-image
    outcomes of every component equal those of an uninterrupted run, and nothing already attacked is redone."""
    v = Victim(model, digits.x_test[:48], digits.y_test[:48], (0.0, 1.0), 10)
    s = AttackSettings(attack="pgd", eps=0.3, pgd_steps=8, pgd_restarts=2, batch_size=8, version="custom-fast")
    clean_ok = predict(model, v.x) == v.y
    names = ["pgd", "apgd-ce"]
    whole = OutcomeStore(tmp_path / "whole", model_hash(model))
    expected = run_sequence(v, names, s, clean_ok, whole, progress=False)
    assert 0 < len(expected.broken_by["pgd"]) and int(expected.robust.sum()) > 0

    parts = OutcomeStore(tmp_path / "parts", model_hash(model))
    real = evaluate._make_attack
    calls = []

    def dies_in_the_second_pgd_batch(name, *args):
        calls.append(name)
        if calls.count("pgd") == 2 and len(calls) == 2:
            raise Killed
        return real(name, *args)

    monkeypatch.setattr(evaluate, "_make_attack", dies_in_the_second_pgd_batch)
    with pytest.raises(Killed):
        run_sequence(v, names, s, clean_ok, parts, progress=False)
    kept = parts.open("pgd", s, 48).codes
    assert sum(c != NOT_ATTACKED for c in kept) == 8  # one batch saved, the rest not yet attacked
    resumed = run_sequence(v, names, s, clean_ok, parts, progress=False)
    assert calls.count("pgd") == 2 + (int(clean_ok.sum()) - 8 + 7) // 8  # only the unattacked batches ran again

    for name in names:
        assert parts.open(name, s, 48).codes == whole.open(name, s, 48).codes, name
    assert resumed.broken_by == expected.broken_by and torch.equal(resumed.robust, expected.robust)
    saved = json.loads(next((tmp_path / "parts").glob("pgd-*.json")).read_text())
    assert saved["model"] == model_hash(model) and len(saved["codes"]) == 48


def test_outcomes_of_other_weights_are_not_reused(model, digits, tmp_path):
    s = AttackSettings(attack="pgd", eps=1.0, pgd_steps=5, pgd_restarts=1)
    OutcomeStore(tmp_path, "aaaa").open("pgd", s, 10).update(torch.arange(10), torch.zeros(10, dtype=torch.long), None)
    assert OutcomeStore(tmp_path, "bbbb").open("pgd", s, 10).codes == [NOT_ATTACKED] * 10
    assert OutcomeStore(tmp_path, "aaaa").open("pgd", s, 10).codes == [FOOLED] * 10


def test_worst_case_is_per_image_over_every_attack(model, digits, tmp_path):
    """Attacks that each fool different images: the worst case is their union, below each one alone."""
    v = Victim(model, digits.x_test[:60], digits.y_test[:60], (0.0, 1.0), 10)
    store = OutcomeStore(tmp_path, model_hash(model))
    clean_ok = predict(model, v.x) == v.y
    weak = AttackSettings(attack="pgd", eps=0.5, pgd_steps=3, pgd_restarts=1, pgd_losses=("ce",))
    margin = weak.with_(pgd_losses=("margin",))
    runs = [run_sequence(v, [name], s, clean_ok, store, progress=False)
            for name, s in (("pgd", weak), ("pgd", margin), ("apgd-ce", weak.with_(version="custom-fast")))]
    entries = [{"attack": "pgd", "norm": "l2", "eps": 0.5, "n_examples": 60, "accuracy": r.robust.float().mean().item(),
                "verdict": "ok"} for r in runs]
    [wc] = worst_cases(store, clean_ok, entries)
    together = clean_ok.clone()
    for r in runs:
        together &= r.robust
    assert wc["accuracy"] == pytest.approx(together.float().mean().item())
    assert wc["accuracy"] <= min(e["accuracy"] for e in entries)
    assert sorted(a["budget"] for a in wc["attacks"]) == ["3x1-ce", "3x1-margin", "custom-fast"]
    assert wc["n_examples"] == 60 and wc["verdict"] == "ok"
    entries[1]["verdict"] = "suspect"
    assert worst_cases(store, clean_ok, entries)[0]["verdict"] == "suspect"


def test_eval_pgd_is_at_least_as_strong_as_one_cross_entropy_run(model, digits):
    x, y = digits.x_test[:200], digits.y_test[:200]
    weak = PGD(model, "l2", 0.8, 20, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(0))(x, y)
    strong = EvalPGD(model, "l2", 0.8, 100, 3, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(0))(x, y)
    with torch.no_grad():
        weak_acc, strong_acc = ((model(a).argmax(1) == y).float().mean().item() for a in (weak, strong))
    print(f"\nrobust accuracy at L2 0.8: PGD-20 {weak_acc:.3f}, evaluation PGD {strong_acc:.3f}")
    assert strong_acc < weak_acc
    assert (x - strong).flatten(1).norm(dim=1).max() <= 0.8 + 1e-5 and strong.min() >= 0 and strong.max() <= 1


def test_margin_pgd_fools_where_cross_entropy_underflows():
    """A confident linear model at large scale: the margin's gradient never vanishes."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    with torch.no_grad():
        net.weight.mul_(1e4)
    x = torch.rand(50, 4)
    y = net(x).argmax(1)
    adv = PGD(net, "linf", 0.5, 50, bounds=(0.0, 1.0), loss="margin", generator=torch.Generator().manual_seed(0))(x, y)
    assert (net(adv).argmax(1) != y).float().mean() > 0.5


def test_each_entry_says_how_it_was_made():
    s = AttackSettings(attack="pgd", eps=0.5, pgd_steps=5, pgd_restarts=2, version="custom-fast")
    p = evaluate.provenance(s, torch.device("cpu"))
    assert p["pagrob"] and p["torch"] == torch.__version__ and p["torchattacks"] and p["device"] == "cpu"
    assert p["settings"] == {"attack": "pgd", "norm": "l2", "eps": 0.5, "version": "custom-fast", "pgd_steps": 5,
                             "pgd_restarts": 2, "pgd_losses": ["ce", "margin"], "batch_size": 256, "seed": 0}
    assert p["git_commit"] is None or len(p["git_commit"].split("-")[0]) == 40


def test_settings_refuse_bad_values_with_the_fix():
    with pytest.raises(ValueError, match="unknown attack 'pgdd': use autoattack, pgd"):
        AttackSettings(attack="pgdd")
    with pytest.raises(ValueError, match="eps must be > 0"):
        AttackSettings(eps=0)
    with pytest.raises(ValueError, match="PGD losses must be among ce, margin"):
        AttackSettings(pgd_losses=("hinge",))


def test_an_attack_on_the_survivors_attacks_only_them_and_reaches_the_same_worst_case(model, digits, tmp_path):
    """AutoAttack after a stored PGD (`survivors`): its components see only what PGD left standing, its entry's
    accuracy is the chain's, equal to the per-image worst case, and the breakdown counts each image once."""
    v = Victim(model, digits.x_test[:60], digits.y_test[:60], (0.0, 1.0), 10)
    store = OutcomeStore(tmp_path, model_hash(model))
    pgd = AttackSettings(attack="pgd", eps=0.5, pgd_steps=3, pgd_restarts=1, version="apgd-fast")
    first = evaluate.robust_accuracy(v, pgd, store, progress=False)
    fooled_by_pgd = set(first["broken_by"]["pgd"])
    assert fooled_by_pgd and first["accuracy"] > 0
    chain = evaluate.robust_accuracy(v, pgd.with_(attack="autoattack"), store, progress=False, survivors=True)
    assert set(chain["after"]) == {"pgd 3x1-ce+margin"}  # its guard's Square is left to the chain's own guard
    assert chain["after"]["pgd 3x1-ce+margin"] == len(fooled_by_pgd)
    apgd = store.open("apgd-ce", pgd.with_(attack="autoattack"), 60).codes
    assert all(apgd[i] == NOT_ATTACKED for i in fooled_by_pgd)  # nothing PGD fooled was attacked again
    per_image = worst_case(store, predict(model, v.x) == v.y, "l2", 0.5)  # over every stored outcome file
    assert chain["accuracy"] == pytest.approx(per_image["accuracy"])
    assert sum(chain["breakdown"].values()) == 60 - round(chain["accuracy"] * 60)  # each image counted once
    assert chain["guards"]["blackbox"]["whitebox_survivors"] == round(chain["accuracy"] * 60) + chain["guards"][
        "blackbox"]["blackbox_extra"]  # the guard's Square outcomes stay out of `after`: it still sees them
    assert "after pgd 3x1-ce+margin" in evaluate.summary_line(chain)


def test_versions_that_run_a_component_alike_share_its_outcomes():
    """apgd-fast runs custom-fast's APGD-CE and APGD-T: one outcome file each, whichever version asked."""
    fast = AttackSettings(attack="autoattack", version="apgd-fast")
    assert fast.budget("apgd-ce") == fast.budget("apgd-t") == "custom-fast"
    assert fast.budget("square") == "apgd-fast"  # 300 queries, a budget of its own
    for version in ("standard", "rand", "custom-fast"):  # the names outcome files were stored under stay the same
        assert {AttackSettings(version=version).budget(c) for c in ("apgd-ce", "apgd-t", "fab-t", "square")} == {version}
