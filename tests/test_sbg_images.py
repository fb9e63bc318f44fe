"""SBG on photographs: the EDM score model trained at given noise levels (CLI, budget, resume after a kill),
its targets through the config (pag.sbg_sigma), their exact meaning against the smoothed training set, and
`pagrob targets compare`."""

import json
from pathlib import Path

import pytest
import torch

from pagrob.cli import main
from pagrob.config import ConfigError, load_config
from pagrob.data import Dataset, load_dataset
from pagrob.diffusion import ScoreTrainConfig, load_score_model, train_score_model
from pagrob.diffusion.models import EDMScore
from pagrob.targets import build_source
from pagrob.targets.score_based import ScoreBased
from pagrob.targets.smoothed import SmoothedTrainingSet
from fakes import interrupt_after, write_cifar_like

TINY = ["--width", "8", "--batch-size", "8", "--sigmas", "1", "2"]


@pytest.fixture(scope="module")
def cifar_file(tmp_path_factory) -> Path:
    """A CIFAR-10-shaped file of smooth random images (200 train, 20 test), every class present."""
    return write_cifar_like(tmp_path_factory.mktemp("data") / "cifar10.npz", 200, 20)


@pytest.fixture(scope="module")
def score_model(tmp_path_factory, cifar_file) -> Path:
    out = tmp_path_factory.mktemp("score") / "model"
    assert main(["--quiet", "targets", "train-score-model", "--dataset", "cifar10", "--data", str(cifar_file),
                 "--holdout", "30", "--steps", "3", "--out", str(out), "--device", "cpu"] + TINY) == 0
    return out


def test_train_score_model_writes_a_model_its_settings_and_progress(score_model):
    progress = json.loads((score_model / "progress.json").read_text())
    assert progress["step"] == 3 and progress["done"] and progress["steps"] == 3
    settings = json.loads((score_model / "train_config.json").read_text())
    assert settings["holdout"] == 30 and settings["sigmas"] == [1.0, 2.0]
    model = load_score_model(score_model)
    assert isinstance(model, EDMScore) and model.null_label == 10
    assert [model.noise_level(t) for t in range(2)] == pytest.approx([1.0, 2.0])


def test_a_killed_training_resumes_its_step_count(tmp_path, monkeypatch, cifar_file):
    import pagrob.diffusion.train as trainer

    data = load_dataset("cifar10", cifar_file, holdout=30)
    cfg = ScoreTrainConfig(steps=6, batch_size=4, width=8, sigmas=[1, 2], holdout=30)
    interrupt_after(monkeypatch, trainer, "diffusion_loss", 4)
    with pytest.raises(KeyboardInterrupt):
        train_score_model(data, tmp_path, cfg, progress=False, save_every=2)
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 4
    monkeypatch.undo()
    calls = interrupt_after(monkeypatch, trainer, "diffusion_loss", 10**6)  # counts the calls, kills none
    train_score_model(data, tmp_path, cfg, progress=False)
    assert len(calls) == 2 and json.loads((tmp_path / "progress.json").read_text())["step"] == 6
    with pytest.raises(ConfigError, match="other settings"):
        train_score_model(data, tmp_path, ScoreTrainConfig(steps=6, batch_size=4, width=8, sigmas=[1]),
                          progress=False)


def test_a_minutes_budget_stops_training_and_counts_across_invocations(tmp_path, cifar_file):
    data = load_dataset("cifar10", cifar_file)
    cfg = ScoreTrainConfig(steps=1000, batch_size=4, width=8, sigmas=[2], minutes=1e-9)
    train_score_model(data, tmp_path, cfg, progress=False)
    first = json.loads((tmp_path / "progress.json").read_text())
    assert first["step"] == 1 and first["done"] and first["loss"] > 0
    train_score_model(data, tmp_path, cfg, progress=False)  # the budget is spent: nothing more
    assert json.loads((tmp_path / "progress.json").read_text()) == first


def test_sbg_targets_through_the_config_and_an_untrained_sigma_refused(score_model, cifar_file):
    data = load_dataset("cifar10", cifar_file, holdout=30)
    cfg = load_config(None, ["data.name=cifar10", "pag.source=sbg", f"pag.score_model={score_model}",
                             "pag.sbg_sigma=2", "pag.sbg_draws=0"])
    classes = torch.tensor([[0, 3], [9, 1], [2, 2]])
    g = build_source("sbg", cfg.pag, data)(data.x_train[:3], classes)
    assert g.shape == (3, 2, 3, 32, 32) and torch.isfinite(g).all()
    cfg.pag.sbg_sigma = 1.5
    with pytest.raises(ConfigError, match=r"pag.sbg_sigma: noise level 1.5 is not one this score model was "
                                          r"trained at \(1, 2\); train one with: .* --sigmas 1.5$"):
        build_source("sbg", cfg.pag, data)


class ExactDenoiser(EDMScore):
    """An EDM model whose denoiser is the exact posterior mean of a training set smoothed with noise σ."""

    def __init__(self, x_train, y_train, sigmas):
        super().__init__(3, tuple(x_train.shape[1:]), sigmas, width=8)
        self.x_train, self.y_train = x_train.flatten(1).double(), y_train

    def denoise(self, u_t, sigma, labels):
        x = (0.5 + 0.5 * u_t).flatten(1).double()  # data units
        s = 0.5 * sigma.double()[:, None]
        logits = -((x[:, None] - self.x_train[None]) ** 2).sum(-1) / (2 * s ** 2)
        allowed = (labels[:, None] == self.null_label) | (self.y_train[None] == labels[:, None])
        mean = torch.softmax(logits.masked_fill(~allowed, -torch.inf), 1) @ self.x_train
        return (2 * mean - 1).float().view_as(u_t)


def test_sbg_of_an_exact_denoiser_is_the_smoothed_training_sets_score():
    """EDM preconditioning, noise levels as timesteps and the units of SBG all agree with `smooth` at σ."""
    g = torch.Generator().manual_seed(0)
    x_train, y_train = torch.rand(30, 3, 4, 4, generator=g), torch.arange(30) % 3
    model = ExactDenoiser(x_train, y_train, [0.5, 1.0])
    q, classes = torch.rand(5, 3, 4, 4, generator=g), torch.arange(3).expand(5, -1)
    sbg = ScoreBased(model, model.timestep_at(1.0), draws=0)(q, classes)
    exact = SmoothedTrainingSet(x_train, y_train, 3, 1.0)(q, classes)
    torch.testing.assert_close(sbg, exact, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(ScoreBased(model, model.timestep_at(0.5), draws=0)(q, classes), exact, rtol=0.05)


def test_compare_writes_table_json_and_panels_with_cosines_in_range(score_model, cifar_file, tmp_path):
    assert main(["--quiet", "targets", "compare", "--dataset", "cifar10", "--data", str(cifar_file), "--holdout",
                 "30", "--score-model", str(score_model), "--sigma", "1", "2", "--n", "12", "--out",
                 str(tmp_path)]) == 0
    results = json.loads((tmp_path / "compare.json").read_text())
    assert results["n_images"] == 12 and results["split"] == "validation" and set(results["sigmas"]) == {"1", "2"}
    for entry in results["sigmas"].values():
        for pair in ("sbg~smooth", "sbg~cm", "sbg~nn", "smooth~cm", "smooth~nn"):
            values = entry[pair]["per_class"] + [entry[pair]["mean"]]
            assert len(values) == 11 and all(-1 <= v <= 1 for v in values), pair
        assert entry["smooth~cm"]["mean"] > 0  # smooth moves an image toward the class, as CM does
        assert (tmp_path / entry["panel"]).stat().st_size > 1000
    table = (tmp_path / "compare.md").read_text()
    assert "| airplane |" in table and "| all |" in table and "targets_sigma2.png" in table


def test_compare_refuses_images_the_model_may_have_trained_on(score_model, cifar_file, tmp_path, capsys):
    assert main(["targets", "compare", "--dataset", "cifar10", "--data", str(cifar_file), "--holdout", "20",
                 "--score-model", str(score_model), "--sigma", "2", "--out", str(tmp_path)]) == 2
    assert "trained with --holdout 30, not 20" in capsys.readouterr().err
    assert main(["targets", "compare", "--dataset", "cifar10", "--data", str(cifar_file), "--holdout", "30",
                 "--score-model", str(score_model), "--sigma", "3", "--out", str(tmp_path)]) == 2
    assert "noise level 3 is not one this score model was trained at" in capsys.readouterr().err
