"""Adversarial training in the one training loop: TRADES, PGD-AT, either with PAG, and the PAG weight schedule."""

import json

import pytest
import torch
import torch.nn.functional as F

from pagrob.attacks import check_perturbation
from pagrob.attacks.trades import TradesAdversary
from pagrob.config import ConfigError, load_config
from pagrob.data import load_dataset
from pagrob.models import build_model
from pagrob.targets import build_source
from pagrob.parts import make_adversary
from pagrob.pipeline import train_and_evaluate
from pagrob.train import Step, lam_at, train_step


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("cnn", (1, 8, 8), 10, 8).train()


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 0.1)])
def test_trades_adversary_stays_in_the_ball_and_raises_the_kl(digits, norm, eps):
    model = _model().eval()
    x = digits.x_train[:32]
    x_adv = TradesAdversary(model, norm, eps, steps=10, generator=torch.Generator().manual_seed(0))(x)
    check_perturbation(x, x_adv, norm, eps, (0.0, 1.0))
    with torch.no_grad():
        log_p = F.log_softmax(model(x), 1)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), log_p, reduction="batchmean", log_target=True)
        noise = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
        kl_noise = F.kl_div(F.log_softmax(model(noise), 1), log_p, reduction="batchmean", log_target=True)
    assert kl > 10 * kl_noise


@pytest.mark.parametrize("method", ["pgd", "trades"])
@pytest.mark.parametrize("source", ["none", "cm"])
def test_adversarial_objectives_compose_with_pag(digits, method, source):
    cfg = load_config(None, ["data.name=digits", f"adv.method={method}", "adv.eps=1.0", "adv.steps=3",
                             f"pag.source={source}", "pag.lam=2", "adv.trades_beta=3"])
    model = _model()
    src = build_source(source, cfg.pag, digits) if source != "none" else None
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(16)
    loss, parts = train_step(model, digits.x_train[idx], digits.y_train[idx], idx,
                             Step(cfg, src, make_adversary(cfg, model, (0.0, 1.0), g), 10, g, "none"))
    robust = 3 * parts["kl"] if method == "trades" else 0.0
    pag = 2 * parts["pag"] if source != "none" else 0.0
    assert loss.item() == pytest.approx(parts["ce"] + robust + pag, rel=1e-5)
    assert ("kl" in parts) == (method == "trades") and ("pag" in parts) == (source != "none")
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_trades_cross_entropy_is_taken_at_the_clean_images(digits):
    cfg = load_config(None, ["data.name=digits", "adv.method=trades", "adv.eps=1.0", "adv.steps=3"])
    model = _model()
    x, y = digits.x_train[:16], digits.y_train[:16]
    g = torch.Generator().manual_seed(0)
    _, parts = train_step(model, x, y, torch.arange(16),
                          Step(cfg, None, make_adversary(cfg, model, (0.0, 1.0), g), 10, g, "none"))
    with torch.no_grad():
        assert parts["ce"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)
        assert parts["kl"] > 0


def test_trades_settings_are_validated():
    with pytest.raises(ConfigError, match="adv.method must be none, pgd, trades, fgsm or n-fgsm"):
        load_config(None, ["adv.method=free"])
    with pytest.raises(ConfigError, match="trades_beta"):
        load_config(None, ["adv.trades_beta=-1"])
    with pytest.raises(ConfigError, match="lam_warmup_fraction"):
        load_config(None, ["pag.lam_warmup_fraction=1.5"])
    assert load_config(None, ["adv.method=trades", "adv.norm=linf", "pag.source=cm"]).method == "trades-linf+pag-cm"


def test_lam_schedule_reaches_the_training_loop(tmp_path):
    """Authors' ViT rule: a scaled weight for the first half. Scale 0 makes the first epoch plain CE."""
    assert [lam_at(load_config(None, ["pag.lam=3", "pag.lam_warmup_fraction=0.5",
                                      "pag.lam_warmup_scale=0.5"]).pag, e, 4) for e in range(4)] == [1.5, 1.5, 3, 3]
    cfg = load_config(None, ["data.name=toy2d", "pag.source=exact", "optim.epochs=2", "pag.lam_warmup_fraction=0.5",
                             "pag.lam_warmup_scale=0", "eval.n=20", "eval.eps_l2=[5]"])
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "train_pag" not in rows[0] and "train_pag" in rows[1]
