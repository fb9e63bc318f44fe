"""Single-step adversaries (FGSM with random start, N-FGSM) as ADVERSARIES entries, alone and with PAG."""

import json

import pytest
import torch
import torch.nn.functional as F

from pagrob.attacks import check_perturbation
from pagrob.attacks.adversaries import ADVERSARIES, AdversaryEntry
from pagrob.attacks.checks import norms
from pagrob.attacks.fast import fgsm, nfgsm
from pagrob.attacks.pgd import PGD, uniform_ball
from pagrob import guards
from pagrob.attacks.settings import AttackSettings
from pagrob.config import ConfigError, load_config
from pagrob.evaluate import Victim, robust_accuracy, summary_line, worst_cases
from pagrob.outcomes import OutcomeStore
from pagrob.pipeline import train_and_evaluate
from pagrob.data import load_dataset
from pagrob.models import build_model
from pagrob.parts import make_adversary
from pagrob.targets import build_source
from pagrob.train import Step, train_step

EPS = {"l2": 1.0, "linf": 0.1}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits):
    """A width-8 CNN trained for a few Adam steps: confident enough that a step must aim to raise its loss."""
    torch.manual_seed(0)
    net = build_model("cnn", digits.input_shape, 10, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for i in [j % len(digits.x_train) for j in range(0, 3 * len(digits.x_train), 64)]:
        loss = F.cross_entropy(net(digits.x_train[i:i + 64]), digits.y_train[i:i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fgsm_stays_in_the_ball_and_raises_the_loss(digits, model, norm):
    x, y, eps = digits.x_test[:64], digits.y_test[:64], EPS[norm]
    x_adv = fgsm(model, norm, eps, generator=torch.Generator().manual_seed(0))(x, y)
    check_perturbation(x, x_adv, norm, eps, (0.0, 1.0))
    assert float(norms(x_adv - x, norm).max()) > 0.9 * eps  # the 1.25 eps step reaches the ball's edge
    # the step, not the noise, raises the loss: noise of the same ball alone stays far lower
    noise = (x + uniform_ball(x.shape, norm, eps, torch.Generator().manual_seed(0))).clamp(0, 1)
    assert _loss(model, x_adv, y).mean() > 2 * _loss(model, noise, y).mean()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_nfgsm_goes_past_eps_unprojected_and_raises_the_loss(digits, model, norm):
    x, y, eps = digits.x_test[:64], digits.y_test[:64], EPS[norm]
    x_adv = nfgsm(model, norm, eps, generator=torch.Generator().manual_seed(0))(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    size = norms(x_adv - x, norm)
    assert float(size.max()) > 1.5 * eps  # noise of 2 eps plus a step of eps, not projected back
    assert float(size.max()) <= 3 * eps + 1e-5
    with pytest.raises(Exception, match="leave the"):
        check_perturbation(x, x_adv, norm, eps, (0.0, 1.0))
    assert _loss(model, x_adv, y).mean() > 2 * _loss(model, x, y).mean()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_one_fgsm_step_does_much_of_what_pgd_does(digits, model, norm):
    """Aimed, not random: FGSM-RS fools far more images than uniform noise of the same ball, and at least half
    as many as 10-step PGD on this (not adversarially trained) model."""
    x, y, eps = digits.x_test[:200], digits.y_test[:200], EPS[norm]
    g = torch.Generator().manual_seed(1)
    fooled = lambda v: float((model(v).argmax(1) != y).float().mean())  # noqa: E731
    noise = fooled((x + uniform_ball(x.shape, norm, eps, g)).clamp(0, 1))
    pgd = fooled(PGD(model, norm, eps, steps=10, generator=g)(x, y))
    one_step = fooled(fgsm(model, norm, eps, generator=g)(x, y))
    assert one_step > noise + 0.2 and one_step > 0.5 * pgd


@pytest.mark.parametrize("method", ["fgsm", "n-fgsm"])
@pytest.mark.parametrize("source", ["none", "cm"])
def test_single_step_training_composes_with_pag(digits, method, source):
    cfg = load_config(None, ["data.name=digits", f"adv.method={method}", "adv.eps=1.0", f"pag.source={source}",
                             "pag.lam=2"])
    torch.manual_seed(0)
    net = build_model("cnn", (1, 8, 8), 10, 8).train()
    src = build_source(source, cfg.pag, digits) if source != "none" else None
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(16)
    adversary = make_adversary(cfg, net, (0.0, 1.0), g)
    assert adversary.projected == (method == "fgsm")
    loss, parts = train_step(net, digits.x_train[idx], digits.y_train[idx], idx, Step(cfg, src, adversary, 10, g,
                                                                                       "none"))
    assert loss.item() == pytest.approx(parts["ce"] + (2 * parts["pag"] if src else 0.0), rel=1e-5)
    assert "kl" not in parts
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_run_labels_follow_the_registry():
    label = lambda *s: load_config(None, list(s)).method  # noqa: E731
    assert label("adv.method=fgsm") == "fgsm-l2"
    assert label("adv.method=n-fgsm", "adv.norm=linf") == "n-fgsm-linf"
    assert label("adv.method=fgsm", "pag.source=cm") == "fgsm-l2+pag-cm"
    assert label("adv.method=pgd", "pag.source=cm") == "at-l2+pag-cm"


def test_an_adversary_is_one_entry(monkeypatch, digits):
    with pytest.raises(ConfigError, match="adv.method must be"):
        load_config(None, ["adv.method=noise"])
    monkeypatch.setitem(ADVERSARIES, "noise", AdversaryEntry(
        "uniform noise", "noise", lambda m, a, b, g: (lambda x, y: (x + a.eps).clamp(*b)), lambda a: 0))
    cfg = load_config(None, ["adv.method=noise", "adv.eps=0.25"])
    assert cfg.method == "noise-l2"
    adversary = make_adversary(cfg, torch.nn.Identity(), (0.0, 1.0), None)
    assert torch.equal(adversary(torch.zeros(1, 2), None), torch.full((1, 2), 0.25))


def test_collapse_and_learned_guards_draw_their_lines():
    assert guards.collapse(10, 5, "fgsm")["passed"] and not guards.collapse(10, 6, "fgsm")["passed"]
    assert "catastrophic overfitting" in guards.collapse(10, 6, "fgsm")["reason"]
    assert guards.chance_line(10) == pytest.approx(0.19) and guards.chance_line(2) == pytest.approx(0.75)
    assert guards.learned(0.19, 10)["passed"] and not guards.learned(0.179, 10)["passed"]
    failed = {"loss_rise": {"passed": False, "reason": "x"}}
    assert guards.verdict({**failed, "learned": guards.learned(0.9, 10)})[0] == "suspect"
    status, reasons = guards.verdict({**failed, "learned": guards.learned(0.179, 10)})
    assert status == "not learned" and any("has not learned" in r for r in reasons)
    assert guards.worst_verdict(["ok", "not learned", "suspect"]) == "not learned"
    assert guards.worst_verdict([]) == "ok"


def _victim(model, digits, adversary="none", n=40):
    return Victim(model, digits.x_test[:n], digits.y_test[:n], (0.0, 1.0), 10, adversary)


SETTINGS = AttackSettings(attack="pgd", norm="l2", eps=1.0, pgd_steps=5, pgd_restarts=1, version="custom-fast")


def test_a_model_near_chance_gets_the_not_learned_verdict(digits):
    torch.manual_seed(3)
    untrained = build_model("cnn", digits.input_shape, 10, width=8).eval()
    entry = robust_accuracy(_victim(untrained, digits), SETTINGS, progress=False)
    assert entry["clean_accuracy"] < 0.19
    assert entry["verdict"] == "not learned" and not entry["guards"]["learned"]["passed"]
    assert "NOT LEARNED" in summary_line(entry)
    store = OutcomeStore(None, "m")
    assert worst_cases(store, torch.ones(40, dtype=torch.bool), [entry])[0]["verdict"] == "not learned"


def test_the_collapse_guard_runs_the_runs_own_single_step_attack(digits, model, monkeypatch):
    entry = robust_accuracy(_victim(model, digits, "fgsm"), SETTINGS, progress=False)
    assert entry["guards"]["collapse"]["passed"] and entry["guards"]["collapse"]["adversary"] == "fgsm"
    assert entry["verdict"] == "ok"
    assert "collapse" not in robust_accuracy(_victim(model, digits, "pgd"), SETTINGS, progress=False)["guards"]
    # a training attack that fools nothing: what a catastrophically overfitted model's own attack looks like
    monkeypatch.setitem(ADVERSARIES, "fgsm", AdversaryEntry("no-op", "fgsm", lambda m, a, b, g: (lambda x, y: x),
                                                            lambda a: 1, single_step=True))
    entry = robust_accuracy(_victim(model, digits, "fgsm"), SETTINGS, progress=False)
    assert not entry["guards"]["collapse"]["passed"] and entry["verdict"] == "suspect"
    assert any("catastrophic overfitting" in r for r in entry["suspect_reasons"])


def test_every_epoch_logs_the_pgd_check(digits, tmp_path):
    cfg = load_config(None, ["data.name=digits", "adv.method=n-fgsm", "adv.eps=1.0", "optim.epochs=1",
                             "optim.lr=0.01", "eval.n=20", "eval.pgd_steps=2", "eval.pgd_restarts=1",
                             "eval.eps_l2=[1.0]"])
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= row["test_pgd_accuracy"] < row["test_accuracy"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "n-fgsm-l2" and "collapse" in results["robust_accuracy"][0]["guards"]
