"""The robustness profile: curves that cost little more than a point and lose nothing, the union per image,
spatial transforms exactly, one command that resumes, and mistakes refused in one sentence."""

import contextlib
import json

import pytest
import torch

from pagrob.attacks.settings import AttackSettings
from pagrob.cli import main
from pagrob.evaluate import Victim
from pagrob.outcomes import OutcomeStore, model_hash
from pagrob.report import write_report
from pagrob.runs import load_run
from pagrob.threats import profile as profile_module
from pagrob.threats.lp import every_radius, lp_curve
from pagrob.threats.registry import THREATS, Threat, ThreatResult
from pagrob.threats.spatial import Grid, rotate_translate, spatial_robust
from small_models import digits_cnn


@pytest.fixture(scope="module")
def model(digits):
    return digits_cnn(digits, epochs=3, seed=1, noise=0.3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A short digits run folder, as `pagrob train` writes it."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["--quiet", "train", "--out", str(out), "--set", "data.name=digits", "--set", "model.width=8",
                 "--set", "optim.epochs=6", "--set", "optim.lr=0.05", "--set", "eval.n=30",
                 "--set", "eval.pgd_steps=10", "--set", "eval.pgd_restarts=1", "--set", "name=digits"]) == 0
    return out


# Attacks draw their random starts per batch, from where it starts (`evaluate.batch_seed`): the shortcut's batches
# hold other images than every radius's, so at 20 steps an image may fall to one draw and not to another (one of
# 60 did under L1). Batches of one image give both the same draws, and leave only the shortcut to compare.
@pytest.mark.parametrize("norm, radii, batch", [("l2", [0.25, 0.5, 1.0, 2.0], 32),
                                                ("linf", [0.02, 0.05, 0.1, 0.2], 32),
                                                ("l1", [0.5, 1.0, 2.0, 4.0], 1)])
def test_the_curve_shortcut_finds_the_worst_case_of_attacking_every_radius(model, digits, tmp_path, norm, radii,
                                                                           batch):
    """FMN, then each radius from the largest on the undecided images only: per image and radius the same
    verdicts as every attack at every radius on every image, for a fraction of the attacked images."""
    v = Victim(model, digits.x_test[:40], digits.y_test[:40], (0.0, 1.0), 10)
    s = AttackSettings(attack="autoattack", norm=norm, eps=radii[0], version="apgd-fast", pgd_steps=10,
                       pgd_restarts=1, batch_size=batch)
    then = () if norm == "l1" else ("pgd",)
    curve = lp_curve(v, s, radii, OutcomeStore(tmp_path / "a", model_hash(model)),
                     OutcomeStore(tmp_path / "p", model_hash(model)), then, progress=False)
    full = every_radius(v, s, radii, OutcomeStore(tmp_path / "full", model_hash(model)),
                        OutcomeStore(tmp_path / "fullp", model_hash(model)), then, progress=False)
    assert torch.equal(curve.robust, full), (curve.accuracy(), full.float().mean(1).tolist())
    accuracy = curve.accuracy()
    assert accuracy == sorted(accuracy, reverse=True) and accuracy[0] > accuracy[-1]
    clean = int((model(v.x).argmax(1) == v.y).sum())
    attacked = sum(p["attacked"] for p in curve.points)
    assert attacked < 0.6 * clean * len(radii), (attacked, clean)  # each radius on every image would be clean x R
    assert all(p["verdict"] == "ok" for p in curve.points), [p["suspect_reasons"] for p in curve.points]


class Quantised(torch.nn.Module):
    """A model behind a rounding layer: its input-gradient is zero, so every gradient attack finds nothing."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


def test_a_curve_counts_what_the_black_box_guard_found_and_says_suspect(model, digits, tmp_path):
    """With the gradients masked, only Square fools: its finds must leave the curve, at their radius and every
    larger one, and every point must be flagged."""
    masked = Quantised(model).eval()
    v = Victim(masked, digits.x_test[:40], digits.y_test[:40], (0.0, 1.0), 10)
    s = AttackSettings(attack="autoattack", norm="l2", eps=1.0, version="apgd-fast", pgd_steps=5, pgd_restarts=1)
    radii = [0.5, 1.0, 2.0]
    store = OutcomeStore(tmp_path / "a", model_hash(masked))
    curve = lp_curve(v, s, radii, store, OutcomeStore(tmp_path / "p", model_hash(masked)), ("pgd",), progress=False)
    square = torch.zeros(len(radii), 40, dtype=torch.bool)
    for j, eps in enumerate(radii):
        for o in store.all_at("l2", eps):
            if o.component == "square":
                square[j:] |= torch.tensor(o.codes) == 0  # fooled here counts at every larger radius
    assert square[-1].any() and not (curve.robust & square).any()
    assert all(p["verdict"] == "suspect" for p in curve.points)


def test_the_union_is_per_image_not_the_smallest_marginal(run_dir, monkeypatch):
    """Two threats that each leave half the images standing, different halves: each marginal is 0.5 of the
    correct images, the union none of them."""
    def half(first: bool):
        def run(ctx):
            idx = ctx.clean_ok.nonzero().squeeze(1)
            mask = torch.zeros_like(ctx.clean_ok)
            mask[idx[: len(idx) // 2] if first else idx[len(idx) // 2:]] = True
            return ThreatResult(mask.float().mean().item(), mask, "half")
        return run

    monkeypatch.setattr(profile_module, "THREATS", {"front": Threat("first half", False, half(True)),
                                                    "back": Threat("second half", False, half(False))})
    profile = profile_module.profile_run(load_run(run_dir), progress=False)
    assert profile["threats"]["front"] > 0.2 and profile["threats"]["back"] > 0.2
    assert profile["union"] == 0.0
    assert json.loads((run_dir / "profile.json").read_text())["union"] == 0.0
    (run_dir / "profile.json").unlink()


def test_rotations_and_translations_move_pixels_where_they_should():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 4] = 1  # right of centre
    assert rotate_translate(x, 90, 0, 0)[0, 0].argmax().item() == 2  # a quarter turn counter-clockwise: top centre
    assert rotate_translate(x, 0, -1, 1)[0, 0].argmax().item() == 3 * 5 + 3  # one left, one down
    y = torch.rand(2, 3, 32, 32)
    assert torch.equal(rotate_translate(y, 0, 0, 0), y)
    moved = rotate_translate(y, 0, 2, 0)
    assert torch.allclose(moved[..., 2:], y[..., :-2], atol=1e-6) and moved[..., :2].abs().max() == 0  # black in


def test_the_spatial_worst_case_is_the_grid_search_itself(model, digits, tmp_path):
    """Dropping an image at the first transform that fools it changes nothing: every image is robust exactly when
    every transform of the grid leaves it correct."""
    x, y = digits.x_test[:50], digits.y_test[:50]
    grid = Grid((-8.0, 0.0, 8.0), (0,))
    robust = spatial_robust(model, x, y, grid, OutcomeStore(tmp_path, model_hash(model)), batch_size=16,
                            progress=False)
    with torch.no_grad():
        every = torch.stack([model(rotate_translate(x, a, dx, dy)).argmax(1) == y
                             for a, dx, dy in grid.transforms()]).all(0)
    assert torch.equal(robust, every) and 0 < int(robust.sum()) < len(x)


def test_a_profile_is_written_resumed_and_reported(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["--quiet", "evaluate", str(run_dir), "--profile", "--n", "24"]) == 0
    out = capsys.readouterr().out
    profile = json.loads((run_dir / "profile.json").read_text())
    assert profile["n"] == 24 and set(profile["threats"]) == set(THREATS)
    for norm in ("l1", "l2", "linf"):
        t = profile["threats"][norm]
        assert len(t["eps"]) == len(t["robust"]) >= 4 and t["headline"] in t["eps"]
        assert t["robust"] == sorted(t["robust"], reverse=True)
        assert all("in_ball" in p["guards"] and "eps_sweep" in p["guards"] for p in t["points"])
    corr = profile["threats"]["corruptions"]
    assert len(corr["per"]) == 15 and all(len(a) == 5 for a in corr["per"].values())
    assert 0 <= profile["union"] <= min(profile["threats"]["spatial"], profile["clean"])
    assert f"union {100 * profile['union']:.1f}%" in out

    calls = []
    real = profile_module.THREATS["l2"].run
    monkeypatch.setitem(profile_module.THREATS, "l2", Threat("", False, lambda ctx: calls.append(1) or real(ctx), "l2"))
    import pagrob.evaluate as evaluate
    monkeypatch.setattr(evaluate, "_make_attack", lambda *a: (_ for _ in ()).throw(AssertionError("attacked again")))
    again = profile_module.profile_run(load_run(run_dir), n=24, progress=False)
    assert calls and untimed(again) == untimed(profile)

    write_report([run_dir], tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "robustness profile" in md and (tmp_path / "digits_profile_curves.png").stat().st_size > 5000
    assert (tmp_path / "digits_profile_beyond.png").is_file()


def untimed(value):
    """A profile without its timings (they differ between runs of the same numbers)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in ("seconds", "provenance")}
    return [untimed(v) for v in value] if isinstance(value, list) else value


@pytest.mark.parametrize("argv, message", [
    (["--threats", "l3"], "argument --threats: invalid choice"),
    (["--radii", "l2=-1"], "every radius must be a positive number"),
    (["--radii", "l5=1"], "write NORM=E1,E2"),
    (["--radii", "linf=2"], "larger than 1, the radius whose ball already holds every valid input"),
    (["--threats", "l2", "--radii", "l1=3"], "that threat is not among --threats"),
    (["--eps", "0.5"], "leave out --attack, --norm, --eps"),
])
def test_a_bad_threat_or_radius_is_one_sentence_and_exit_2(run_dir, capsys, argv, message):
    parsing = "invalid choice" in message  # argparse's own refusal: its usage lines, then the sentence
    with pytest.raises(SystemExit) if parsing else contextlib.nullcontext() as caught:
        code = main(["--quiet", "evaluate", str(run_dir), "--profile", *argv])
    err = capsys.readouterr().err.strip()
    assert (caught.value.code if parsing else code) == 2
    assert message in err.splitlines()[-1] and (parsing or len(err.splitlines()) == 1), err
