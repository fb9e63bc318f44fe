"""One registry per kind of name: a new entry is accepted by config validation, the CLI and the dispatch alike."""

import pytest
import torch

from pagrob import data as data_pkg
from pagrob import models, targets
from pagrob.cli import build_parser
from pagrob.config import ConfigError, load_config
from pagrob.data import DatasetEntry, load_dataset
from pagrob.models import ArchEntry, build_model
from pagrob.targets import SourceEntry, TargetSource, make_source


class Zeros(TargetSource):
    name = "zeros"

    def __call__(self, x, classes, index=None):
        return torch.zeros(*classes.shape, *x.shape[1:])


def test_a_source_is_one_entry(monkeypatch):
    with pytest.raises(ConfigError, match="pag.source must be"):
        load_config(None, ["pag.source=zeros"])
    monkeypatch.setitem(targets.SOURCES, "zeros", SourceEntry("all-zero targets", lambda pag, d: Zeros(),
                                                              lambda pag: {}))
    cfg = load_config(None, ["pag.source=zeros"])
    assert isinstance(make_source(cfg.pag.source, cfg.pag, load_dataset("toy2d")), Zeros)
    args = build_parser().parse_args(["targets", "build", "--dataset", "toy2d", "--source", "zeros", "--out", "x"])
    assert args.source == "zeros"


def test_a_dataset_is_one_entry(monkeypatch):
    with pytest.raises(ConfigError, match="data.name must be"):
        load_config(None, ["data.name=tiny"])
    tiny = load_dataset("toy2d")
    monkeypatch.setitem(data_pkg.DATASETS, "tiny", DatasetEntry("toy2d again", lambda d, dl: tiny))
    assert load_config(None, ["data.name=tiny"]).data.name == "tiny"
    assert load_dataset("tiny") is tiny
    assert build_parser().parse_args(["targets", "build", "--dataset", "tiny", "--source", "cm",
                                      "--out", "x"]).dataset == "tiny"


def test_an_architecture_is_one_entry(monkeypatch):
    with pytest.raises(ConfigError, match="model.arch must be"):
        load_config(None, ["model.arch=linear"])
    monkeypatch.setitem(models.ARCHS, "linear", ArchEntry("one linear layer", False,
                                                          lambda s, c, w: torch.nn.Linear(s[0], c)))
    assert load_config(None, ["model.arch=linear"]).model.arch == "linear"
    assert build_model("linear", (2,), 2)(torch.zeros(3, 2)).shape == (3, 2)
