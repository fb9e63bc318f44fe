"""Target store: reads back exactly the (image, class) rows asked for, refuses data it was not built for, resumes an
interrupted build, rebuilds damaged shards, and feeds training through `pag.source=store:PATH`."""

import json

import numpy as np
import pytest
import torch

from pagrob.config import ConfigError, load_config
from pagrob.data import Dataset, load_dataset
from pagrob.targets import ClassMean
from pagrob.targets.base import TargetSource
from pagrob.targets.exact import ExactToy
from pagrob.targets.store import StoreError, build_store, open_store

SPEC = {"name": "cm", "params": {}}


def tiny(n=37, seed=0, name="tiny"):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = torch.arange(n) % 3
    return Dataset(name, x, y, torch.rand(9, 1, 4, 4, generator=g), torch.arange(9) % 3, num_classes=3)


SHARD_MB = 5 * 3 * 16 * 2 / 2 ** 20  # five images per shard: 37 train images make 8 shards, one of them short


def build(path, data, source=None, **kw):
    source = source or ClassMean(data.x_train, data.y_train, data.num_classes)
    return build_store(path, data, source, SPEC, shard_mb=SHARD_MB, batch_size=3, progress=False, **kw)


def close_to_fp16(got, want):
    """fp16 keeps ~3 significant digits of each row relative to the row's largest entry."""
    scale = want.flatten(2).abs().amax(2)[..., None, None, None]
    assert ((got - want).abs() <= 1e-3 * scale).all()


def test_store_reads_back_the_rows_asked_for_in_any_order(tmp_path):
    data = tiny()
    build(tmp_path / "s", data)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["splits"]["train"]["shards"]) == 8
    assert manifest["dataset"] == "tiny" and manifest["shape"] == [1, 4, 4] and manifest["source"] == SPEC
    assert np.load(tmp_path / "s" / "train-00000.npy", mmap_mode="r").dtype == np.float16
    store = open_store(tmp_path / "s", data)
    cm = ClassMean(data.x_train, data.y_train, 3)
    index = torch.tensor([36, 0, 17, 5, 5, 22])
    classes = torch.tensor([[2, 0], [1, 1], [0, 2], [2, 1], [0, 0], [1, 2]])
    close_to_fp16(store(data.x_train[index], classes, index), cm(data.x_train[index], classes))
    # Held-out images come without an index: the store finds them by content.
    xt = data.x_test[[4, 1, 7]]
    allc = torch.arange(3).expand(3, -1)
    close_to_fp16(store(xt, allc), cm(xt, allc))
    with pytest.raises(StoreError, match="not among them"):
        store(torch.full((2, 1, 4, 4), 0.123), allc[:2])


def test_per_row_scale_keeps_tiny_and_huge_targets(tmp_path):
    """Exact toy targets span ~1e-17 to ~1: plain fp16 would flush the small ones to zero."""
    data = load_dataset("toy2d")
    data = Dataset("toy2d", data.x_train[::20], data.y_train[::20], data.x_test[::20], data.y_test[::20], 2, None)
    exact = ExactToy(5.0)
    build_store(tmp_path / "s", data, exact, {"name": "exact", "params": {"sigma": 5.0}}, progress=False)
    store = open_store(tmp_path / "s", data)
    index = torch.arange(len(data.x_train))
    classes = torch.arange(2).expand(len(index), -1)
    want = exact(data.x_train, classes).double()
    got = store(data.x_train, classes, index).double()
    norms = want.norm(dim=-1)
    nonzero = norms > 0
    assert norms[nonzero].min() < 1e-10  # the case that matters is present
    assert (got[~nonzero] == 0).all()
    cos = (got * want).sum(-1)[nonzero] / (got.norm(dim=-1) * norms)[nonzero]
    assert cos.min() > 0.999
    torch.testing.assert_close(got.norm(dim=-1), norms, rtol=2e-3, atol=0)


def test_a_store_for_other_data_is_refused_with_what_differs(tmp_path):
    data = tiny()
    build(tmp_path / "s", data)
    with pytest.raises(StoreError, match="dataset: 'tiny' in the store vs 'other' here"):
        open_store(tmp_path / "s", tiny(name="other"))
    with pytest.raises(StoreError, match="train images: 37 in the store vs 36 here"):
        open_store(tmp_path / "s", Dataset("tiny", data.x_train[:36], data.y_train[:36], data.x_test, data.y_test, 3))
    changed = data.x_train.clone()
    changed[3, 0, 1, 1] += 0.01
    with pytest.raises(StoreError, match="different pixels"):
        open_store(tmp_path / "s", Dataset("tiny", changed, data.y_train, data.x_test, data.y_test, 3))
    with pytest.raises(StoreError, match="train labels differ"):
        open_store(tmp_path / "s", Dataset("tiny", data.x_train, data.y_train.flip(0), data.x_test, data.y_test, 3))
    with pytest.raises(StoreError, match="pagrob targets build --dataset tiny"):
        open_store(tmp_path / "s", tiny(seed=1))
    with pytest.raises(StoreError, match="built differently"):
        build_store(tmp_path / "s", data, ClassMean(data.x_train, data.y_train, 3), {"name": "oi", "params": {}},
                    shard_mb=SHARD_MB, progress=False)


class Interrupted(Exception):
    pass


class Counting(TargetSource):
    """Class-mean targets that count the images they were asked for and can fail after `fail_after` calls."""

    name = "cm"

    def __init__(self, data, fail_after=None):
        self.inner = ClassMean(data.x_train, data.y_train, data.num_classes)
        self.images, self.calls, self.fail_after = 0, 0, fail_after

    def __call__(self, x, classes, index=None):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Interrupted
        self.images += len(x)
        return self.inner(x, classes, index)


def test_interrupted_build_continues_where_it_stopped_and_is_refused_until_done(tmp_path):
    data = tiny()
    build(tmp_path / "ref", data)
    with pytest.raises(Interrupted):
        build(tmp_path / "s", data, Counting(data, fail_after=7))  # dies inside the 4th shard
    with pytest.raises(StoreError, match="unfinished"):
        open_store(tmp_path / "s", data)
    again = Counting(data)
    build(tmp_path / "s", data, again)
    assert again.images == (37 - 15) + 9  # train shards 3.. (images 15..36) and the test split; not the first 3
    for f in sorted((tmp_path / "ref").glob("*.npy")):
        assert f.read_bytes() == (tmp_path / "s" / f.name).read_bytes()
    assert not list((tmp_path / "s").glob("*.partial"))
    open_store(tmp_path / "s", data)


def test_a_damaged_shard_is_rebuilt_and_a_missing_one_refused(tmp_path):
    data = tiny()
    build(tmp_path / "s", data)
    shard = tmp_path / "s" / "train-00002.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[:-4] + b"\0\0\0\0")
    again = Counting(data)
    build(tmp_path / "s", data, again)
    assert again.images == 5 and shard.read_bytes() == good
    shard.unlink()
    with pytest.raises(StoreError, match="missing train-00002.npy"):
        open_store(tmp_path / "s", data)


def test_a_truncated_shard_is_refused_at_open_by_name(tmp_path):
    data = tiny()
    build(tmp_path / "s", data)
    shard = tmp_path / "s" / "train-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(StoreError, match="train-00001.npy is damaged"):
        open_store(tmp_path / "s", data)


def test_training_opens_the_store_from_the_config_and_gets_batch_rows(tmp_path):
    from pagrob.losses import pag_loss
    from pagrob.models import build_model
    from pagrob.targets import make_source

    data = load_dataset("toy2d")
    build_store(tmp_path / "exact", data, ExactToy(5.0), {"name": "exact", "params": {"sigma": 5.0}}, progress=False)
    cfg = load_config(None, [f"pag.source=store:{tmp_path / 'exact'}"])
    source = make_source(cfg.pag.source, cfg.pag, data)
    idx = torch.randperm(len(data.x_train))[:64]
    classes = torch.randint(2, (64, 1))
    targets = source(data.x_train[idx], classes, idx)
    want = ExactToy(5.0)(data.x_train[idx], classes)
    cos = torch.nn.functional.cosine_similarity(targets.double(), want.double(), dim=-1, eps=1e-30)
    assert (cos[want.norm(dim=-1) > 0] > 0.999).all()
    loss = pag_loss(build_model("mlp", (2,), 2, 16), data.x_train[idx], targets, classes)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="does not match dataset digits"):
        make_source(cfg.pag.source, cfg.pag, load_dataset("digits"))


def test_missing_store_names_the_build_command(tmp_path):
    with pytest.raises(StoreError, match="pagrob targets build"):
        open_store(tmp_path / "nothing", tiny())


def test_cli_builds_a_store_and_reports_a_mismatch(tmp_path, capsys):
    from pagrob.cli import main

    out = tmp_path / "s"
    assert main(["--quiet", "targets", "build", "--dataset", "toy2d", "--source", "exact", "--set", "pag.sigma=10",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {"name": "exact", "params": {"sigma": 10.0}} and manifest["complete"]
    assert set(manifest["splits"]) == {"train", "test"}
    assert main(["--quiet", "targets", "build", "--dataset", "toy2d", "--source", "exact", "--out", str(out)]) == 2
    assert "built differently" in capsys.readouterr().err
