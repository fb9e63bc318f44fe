"""Robust evaluation: the torchattacks adapters, AutoAttack's breakdown, and the gradient-masking guards."""

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from pagrob import guards
from pagrob.attacks import check_perturbation
from pagrob.attacks.library import VERSIONS, LibraryAttack, as_images, from_images, unit_box, unit_eps
from pagrob.cli import main
from pagrob.data import load_dataset
from pagrob.attacks.settings import AttackSettings
from pagrob.evaluate import Victim, merge_entries, robust_accuracy, summary_line
from small_models import digits_cnn


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def plain(digits):
    """A small CNN trained for a few seconds: ~95% clean, no defence at all."""
    return digits_cnn(digits, epochs=8)


def attack_digits(model, x, y, attack, eps, version="custom-fast", **settings):
    s = AttackSettings(attack=attack, norm="l2", eps=eps, version=version, **settings)
    return robust_accuracy(Victim(model, x, y, (0.0, 1.0), 10), s, progress=False)


class Quantize(nn.Module):
    """Rounds pixels to 16 levels: the identity on digits (stored as k/16), but with zero gradient everywhere."""

    def forward(self, x):
        return torch.round(x * 16) / 16


def test_plain_model_has_accuracy_over_90_percent(plain, digits):
    assert (plain(digits.x_test).argmax(1) == digits.y_test).float().mean() > 0.9


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_each_component_stays_in_the_ball_and_fools_a_plain_model(plain, digits, name):
    x, y = digits.x_test[:24], digits.y_test[:24]
    x_adv = LibraryAttack(plain, name, "l2", 2.0, 10, version="custom-fast")(x, y)
    check_perturbation(x, x_adv, "l2", 2.0, (0.0, 1.0))
    fooled = plain(x_adv).argmax(1) != y
    assert fooled.float().mean() > 0.8
    assert torch.equal(x_adv[~fooled], x[~fooled])  # what it cannot fool comes back untouched


@pytest.mark.parametrize("name", ["apgd-ce", "square"])
def test_library_attacks_leave_an_evaluated_batch_norm_model_untouched(name):
    """torchattacks restores the mode of the model it was handed; that must not switch ours to training mode,
    where every later forward pass would rewrite batch norm's running statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    x = torch.rand(8, 3, 8, 8)
    model(x)  # materialise the lazy layer, then fix the statistics by evaluating
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(x)
    LibraryAttack(model, name, "l2", 0.5, 10, version="custom-fast")(x, torch.zeros(8, dtype=torch.long))
    assert not model.training and not any(m.training for m in model.modules())
    model(torch.rand(8, 3, 8, 8))  # a later forward pass, as the next attack's check makes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.allclose(model(x), logits)


def test_unit_box_keeps_distances_for_unbounded_vectors():
    x = torch.tensor([[-50.0, -100.0], [30.0, 60.0], [0.0, 1.0]])
    box = unit_box(x, 15.0, None)
    u = box.to_unit(x)
    assert u.min() >= 0 and u.max() <= 1
    assert torch.allclose(box.low + box.scale * u, x, atol=1e-4)
    tiles = as_images(u)
    assert tiles.shape == (3, 2, 5, 5) and torch.allclose(from_images(tiles, (2,)), u)
    # A change of L2 norm r in the points is a change of norm 5 r / scale in the tiles (and the same in L-inf).
    delta = torch.tensor([[3.0, 4.0]])
    tile_delta = as_images(delta / box.scale)
    assert tile_delta.flatten(1).norm() == pytest.approx(unit_eps(5.0, "l2", box, (2,)), rel=1e-5)
    assert tile_delta.abs().max() == pytest.approx(unit_eps(4.0, "linf", box, (2,)), rel=1e-5)


def test_library_attack_on_points_finds_exactly_the_errors_a_linear_model_allows():
    """Unbounded 2-D points: a point is foolable iff its distance to the linear boundary is below eps."""
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    x = torch.randn(300, 2) * 20
    y = model(x).argmax(1)
    w = model.weight[1] - model.weight[0]
    distance = (model(x)[:, 1] - model(x)[:, 0]).abs().detach() / w.norm()
    x_adv = LibraryAttack(model, "apgd-ce", "l2", 10.0, 2, bounds=None, version="custom-fast")(x, y)
    check_perturbation(x, x_adv, "l2", 10.0, None)
    fooled = model(x_adv).argmax(1) != y
    clear = (distance - 10.0).abs() > 0.05
    assert torch.equal(fooled[clear], (distance < 10.0)[clear])
    assert 0 < int(fooled.sum()) < len(x)


def test_apgd_t_refuses_two_classes_with_the_fix():
    with pytest.raises(ValueError, match="at least 4 classes.*use apgd-ce, fab-t or square"):
        LibraryAttack(nn.Linear(2, 2), "apgd-t", "l2", 1.0, 2, bounds=None)


def test_autoattack_breaks_a_plain_model_and_its_guards_pass(plain, digits):
    x, y = digits.x_test[:100], digits.y_test[:100]
    entry = attack_digits(plain, x, y, "autoattack", 2.0)
    print(summary_line(entry))
    assert entry["accuracy"] < 0.05
    assert entry["verdict"] == "ok" and entry["suspect_reasons"] == []
    assert all(g["passed"] for g in entry["guards"].values())
    b = entry["breakdown"]
    assert list(b) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert sum(b.values()) + round(entry["accuracy"] * 100) == 100
    fooled = [i for ids in entry["broken_by"].values() for i in ids]
    assert len(fooled) == len(set(fooled)) == sum(b.values()) - b["clean"]
    assert entry["guards"]["eps_sweep"]["accuracy"][-1] <= guards.NEAR_ZERO
    json.dumps(entry)  # goes into results.json as is


class Band(nn.Module):
    """Class 1 only in the band 1.6 < x_0 < 4.4: steps much wider than the band jump over it."""

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), 2 - (x[:, 0] - 3) ** 2], 1)


def test_the_eps_sweep_keeps_what_a_smaller_radius_found():
    """At the covering radius (~1000) each step is ~125 wide and jumps over the band from x_0 = 0; the radius-2
    attack lands in it, and that example lies in the larger ball too, so the sweep must not lose it."""
    x = torch.cat([0.1 * torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([[1000.0, 0]])])
    x[:30, 0] = 0.0
    y = torch.zeros(31, dtype=torch.long)
    result = guards.eps_sweep(Band(), x, y, "l2", 0.5, None)
    assert result["eps"][0] == 1.0 and result["eps"][-1] > 900
    assert result["accuracy"][1] == pytest.approx(1 / 31) and result["accuracy"][-1] <= 1 / 31
    assert result["passed"]


def test_the_eps_sweep_stops_attacking_once_no_image_stands(monkeypatch):
    """A model every image of which falls at the first radius: the larger balls hold the same fooling points, so
    their accuracy is 0 without another attack (one margin ascent, not one per radius)."""
    calls = []
    ascent = guards.margin_ascent
    monkeypatch.setattr(guards, "margin_ascent", lambda *a, **k: (calls.append(a[4]), ascent(*a, **k))[1])
    x, y = torch.zeros(8, 2), torch.zeros(8, dtype=torch.long)
    result = guards.eps_sweep(Band(), x + torch.tensor([1.0, 0.0]), y, "l2", 0.5, None)
    assert result["accuracy"] == [0.0] * len(result["eps"]) and len(result["eps"]) > 2
    assert calls == [result["eps"][0]] and result["zero_from"] == result["eps"][0] and result["passed"]
    calls.clear()
    result = guards.eps_sweep(Band(), x, y, "l2", 0.5, None)  # x_0 = 0: out of reach of the first radius
    assert len(calls) > 1 and (result["zero_from"] is None or result["zero_from"] > result["eps"][0])


class Ridge(nn.Module):
    """Margin x_0 + 100 |x_1|: the gradient at x_1 = 0 points along x_0 only, a random step sideways climbs far."""

    def forward(self, x):
        return torch.stack([torch.zeros_like(x[:, 0]), x[:, 0] + 100 * x[:, 1].abs()], 1)


def test_loss_rise_accepts_an_ascent_that_fools_the_model_even_if_noise_climbs_higher():
    x = torch.zeros(50, 2)
    x[:, 0] = -1.0
    y = torch.zeros(50, dtype=torch.long)
    result = guards.loss_rise(Ridge(), x, y, "l2", 2.0, None)
    assert result["margin_noise"] > result["margin_ascent"] > 0  # noise climbs higher; ascent crosses over
    assert result["passed"]


def test_guards_flag_a_gradient_masking_quantiser(plain, digits, capsys):
    masked = nn.Sequential(Quantize(), plain).eval()
    x, y = digits.x_test[:100], digits.y_test[:100]
    assert torch.equal(masked(x).argmax(1), plain(x).argmax(1))  # same classifier on clean digits
    entry = attack_digits(masked, x, y, "autoattack", 2.0)
    with capsys.disabled():
        print("\nmasked model:", summary_line(entry))
    failed = {k for k, g in entry["guards"].items() if not g["passed"]}
    assert entry["verdict"] == "suspect"
    assert failed == {"eps_sweep", "blackbox", "loss_rise"}
    assert entry["guards"]["blackbox"]["blackbox_extra"] > 20  # Square fools what the gradients cannot
    assert entry["guards"]["loss_rise"]["fraction"] == 0.0
    assert len(entry["suspect_reasons"]) == 3 and "suspect" in summary_line(entry).lower()


def test_a_single_white_box_attack_is_checked_against_square(plain, digits):
    masked = nn.Sequential(Quantize(), plain).eval()
    x, y = digits.x_test[:60], digits.y_test[:60]
    entry = attack_digits(masked, x, y, "pgd", 2.0, pgd_steps=20, pgd_restarts=1)
    assert entry["accuracy"] > 0.5 and not entry["guards"]["blackbox"]["passed"]
    assert entry["steps"] == 20 and entry["losses"] == ["ce", "margin"] and "version" not in entry


def test_a_version_s_guard_images_bound_the_square_guard(plain, digits, monkeypatch):
    """A version may run its black-box guard on the first images only: the masked model's PGD survivors beyond
    them are not attacked by Square, and the guard's limit is taken on the images it saw."""
    monkeypatch.setitem(VERSIONS, "guard-10", replace(VERSIONS["apgd-fast"], guard_images=10))
    masked = nn.Sequential(Quantize(), plain).eval()
    x, y = digits.x_test[:60], digits.y_test[:60]
    entry = attack_digits(masked, x, y, "pgd", 2.0, version="guard-10", pgd_steps=5, pgd_restarts=1)
    whole = attack_digits(masked, x, y, "pgd", 2.0, version="apgd-fast", pgd_steps=5, pgd_restarts=1)
    guard = entry["guards"]["blackbox"]
    assert 0 < guard["whitebox_survivors"] <= 10 < whole["guards"]["blackbox"]["whitebox_survivors"]
    assert not guard["passed"] and "of 10 images" in guard["reason"]  # masking shows on 10 images too


def test_in_ball_guard_counts_and_names_invalid_examples():
    x = torch.full((4, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[1] += 0.4  # L2 norm 0.8 > 0.5
    x_adv[2, 0, 0, 0] = 1.3  # inside the ball, outside [0, 1]... and norm 0.8: both
    bad, message = guards.outside_ball(x, x_adv, "l2", 0.5, (0.0, 1.0))
    assert bad.tolist() == [False, True, True, False] and "leave the l2 ball" in message
    verdict = guards.in_ball(int(bad.sum()), 4, message)
    assert not verdict["passed"] and verdict["violations"] == 2 and "counted as not fooled" in verdict["reason"]
    bad, message = guards.outside_ball(x, x, "l2", 0.5, (0.0, 1.0))
    assert not bad.any() and message is None


def test_merge_entries_replaces_the_same_evaluation_only():
    old = [{"attack": "pgd", "norm": "l2", "eps": 0.5, "n_examples": 10, "accuracy": 0.3},
           {"attack": "autoattack", "version": "standard", "norm": "l2", "eps": 0.5, "n_examples": 10, "accuracy": 0.2}]
    new = [{"attack": "autoattack", "version": "standard", "norm": "l2", "eps": 0.5, "n_examples": 10, "accuracy": 0.1}]
    assert merge_entries(old, new) == [old[0], new[0]]


def test_cli_evaluate_writes_guarded_entries_and_alignment(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["--quiet", "train", "--out", str(out), "--set", "optim.epochs=2", "--set", "eval.eps_l2=[15]",
                 "--set", "eval.n=60", "--set", "name=toy"]) == 0
    capsys.readouterr()
    args = ["--quiet", "evaluate", str(out), "--attack", "autoattack", "--version", "custom-fast", "--eps", "15"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "toy: autoattack (custom-fast) l2 eps=15" in printed and "guards:" in printed
    assert "alignment with exact" in printed
    assert main(args) == 0  # the same evaluation again replaces, never duplicates
    results = json.loads((out / "results.json").read_text())
    aa = [e for e in results["robust_accuracy"] if e["attack"] == "autoattack"]
    assert len(aa) == 1 and aa[0]["n_examples"] == 60 and aa[0]["verdict"] in ("ok", "suspect")
    assert aa[0]["skipped"] == ["apgd-t needs at least 4 classes, the data has 2"]
    assert set(aa[0]["guards"]) == {"in_ball", "eps_sweep", "blackbox", "loss_rise", "learned"}
    pgd = [e for e in results["robust_accuracy"] if e["attack"] == "pgd"]
    assert len(pgd) == 1 and "verdict" in pgd[0]  # the training-time PGD number is guarded too
    assert aa[0]["guards"]["eps_sweep"] == pgd[0]["guards"]["eps_sweep"]  # one sweep per model, norm and images
    assert -1 <= results["alignment_scores"]["exact"]["cosine"] <= 1
    assert main(["evaluate", str(out), "--attack", "apgd-t"]) == 2
    assert "at least 4 classes" in capsys.readouterr().err
