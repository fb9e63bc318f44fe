"""pag.noise: the PAG term is taken at noisy copies of the images, with the targets queried at those same points,
while the cross-entropy stays at the clean images."""

import pytest
import torch
import torch.nn.functional as F

import pagrob.train as train_module
from pagrob.config import ConfigError, load_config
from pagrob.data import load_dataset
from pagrob.models import build_model
from pagrob.targets.base import TargetSource


class QueryPoint(TargetSource):
    """g(x, t) = x for every t: the target shows where it was asked."""

    def __call__(self, x, classes, index=None):
        return x[:, None].expand(-1, classes.shape[1], *x.shape[1:]).clone()


@pytest.mark.parametrize("aug", ["none", "crop_flip"])
def test_targets_are_queried_where_the_pag_term_is_taken(monkeypatch, aug):
    digits = load_dataset("digits")
    cfg = load_config(None, ["data.name=digits", "pag.source=cm", "pag.noise=0.3", "pag.k=3"])
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10, 8).train()
    seen = {}
    real = train_module.pag_objective

    def spy(model, x, targets, classes, step):
        seen.update(x=x.detach(), targets=targets)
        return real(model, x, targets, classes, step)

    monkeypatch.setattr(train_module, "pag_objective", spy)
    x, y = digits.x_train[:16], digits.y_train[:16]
    _, parts = train_module.train_step(model, x, y, torch.arange(16),
                                       train_module.Step(cfg, QueryPoint(), None, 10, torch.Generator().manual_seed(0),
                                                         aug))
    for j in range(3):  # each target was computed at exactly the point the model's gradient is taken at
        assert torch.equal(seen["targets"][:, j], seen["x"])
    if aug == "none":
        assert (seen["x"] - x).std().item() == pytest.approx(0.3, rel=0.1)
        with torch.no_grad():
            assert parts["ce"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_noise_settings_are_validated():
    with pytest.raises(ConfigError, match="pag.noise must be >= 0"):
        load_config(None, ["pag.noise=-1"])
    with pytest.raises(ConfigError, match="store: source holds one fixed target per training image"):
        load_config(None, ["pag.source=store:somewhere", "pag.noise=1"])
