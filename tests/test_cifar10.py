"""CIFAR-10 from an npz file is CIFAR-10: same name, class names, augmentation, radii and tensors as torchvision's.

The synthetic tests build small files in CIFAR-10's layouts; the last test reads the real shared file when it is
there (../shared/data/cifar10.npz beside the checkout) and is skipped, saying why, when it is not.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from torchvision.transforms.functional import to_tensor

from pagrob.config import load_config
from pagrob.data import Dataset, DatasetError, load_dataset
from pagrob.data.augment import resolve_mode
from pagrob.data.images import CIFAR10_CLASSES
from pagrob.data.split import first_training_images
from pagrob.evaluate import ROBUSTBENCH_EPS
from pagrob.targets import reference_source_name
from pagrob.pipeline import train_and_evaluate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz"


def fake_cifar(n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
            "y_train": np.arange(n_train) % 10, "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
            "y_test": (np.arange(n_test) * 3) % 10, "classes": np.array(CIFAR10_CLASSES)}


def write_torchvision_folder(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """The official python-pickle layout: rows of 3072 bytes, the red plane, then green, then blue."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(x: np.ndarray, y: np.ndarray) -> dict:
        return {"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}

    chunks = np.array_split(np.arange(len(arrays["x_train"])), 5)
    for i, rows in enumerate(chunks, 1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(arrays["x_train"][rows], arrays["y_train"][rows])))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(arrays["x_test"], arrays["y_test"])))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))


def test_npz_gives_the_tensors_torchvision_gives(tmp_path, monkeypatch):
    arrays = fake_cifar()
    np.savez(tmp_path / "c.npz", **arrays)
    write_torchvision_folder(tmp_path / "tv", arrays)
    # The fake batches cannot carry the official files' md5 sums; everything else is torchvision's own code.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    from_npz = load_dataset("cifar10", tmp_path / "c.npz")
    from_tv = load_dataset("cifar10", tmp_path / "tv")
    for split in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(from_npz, split), getattr(from_tv, split)), split
    assert from_npz.name == from_tv.name == "cifar10" and from_npz.classes == from_tv.classes == CIFAR10_CLASSES
    # ...and what a torchvision user gets image by image: PIL image -> ToTensor.
    ds = tv_cifar.CIFAR10(str(tmp_path / "tv"), train=False)
    assert torch.equal(torch.stack([to_tensor(ds[i][0]) for i in range(len(ds))]), from_npz.x_test)
    assert from_npz.x_train.dtype == torch.float32 and from_npz.x_train.shape == (30, 3, 32, 32)


def test_npz_cifar10_is_a_cifar10_run_in_every_respect(tmp_path):
    np.savez(tmp_path / "c.npz", **fake_cifar())
    cfg = load_config(None, ["data.name=cifar10", f"data.data_dir={tmp_path / 'c.npz'}"])
    data = load_dataset(cfg.data.name, cfg.data.data_dir)
    assert data.name == "cifar10" and data.num_classes == 10 and data.bounds == (0.0, 1.0)
    assert resolve_mode(cfg.data.augment, data.name, data.is_image) == "crop_flip"
    assert reference_source_name(data.name) == "cm"
    assert ROBUSTBENCH_EPS == {"l2": 0.5, "linf": 8 / 255}


@pytest.mark.parametrize("change, words", [
    (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "not uint8 (N, 32, 32, 3)"),
    (lambda a: a.update(x_test=a["x_test"][:, :28]), "x_test is uint8 (12, 28, 32, 3)"),
    (lambda a: a.update(y_train=a["y_train"] + 1), "labels 1..10, outside CIFAR-10's 0..9"),
    (lambda a: a.update(y_test=-a["y_test"]), "outside CIFAR-10's 0..9"),
    (lambda a: a.update(y_train=a["y_train"] % 9), "9 classes, not CIFAR-10's 10"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "not 30 integer labels"),
    (lambda a: a.update(classes=np.array(CIFAR10_CLASSES[::-1])), "class names"),
    (lambda a: a.pop("y_test"), "lacks the arrays ['y_test']"),
])
def test_a_file_that_is_not_cifar10_is_refused_in_one_sentence(tmp_path, change, words):
    arrays = fake_cifar()
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path / "bad.npz")
    message = str(err.value)
    assert words in message and "\n" not in message and message.count(". ") == 0, message


def test_missing_npz_names_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR-10 file not found"):
        load_dataset("cifar10", tmp_path / "none.npz")


def test_holdout_carves_validation_from_training_images_only(tmp_path):
    np.savez(tmp_path / "c.npz", **fake_cifar(n_train=40))
    full = load_dataset("cifar10", tmp_path / "c.npz")
    val = load_dataset("cifar10", tmp_path / "c.npz", holdout=8)
    assert val.test_split == "validation" and full.test_split == "test"
    assert len(val.x_train) == 32 and len(val.x_test) == 8
    rows = {r.numpy().tobytes() for r in full.x_train}
    assert all(r.numpy().tobytes() in rows for r in val.x_test)  # validation images are training images...
    assert not {r.numpy().tobytes() for r in val.x_test} & {r.numpy().tobytes() for r in val.x_train}  # ...held out
    assert not {r.numpy().tobytes() for r in full.x_test} & {r.numpy().tobytes() for r in val.x_test}
    assert torch.equal(load_dataset("cifar10", tmp_path / "c.npz", holdout=8).x_test, val.x_test)  # fixed choice
    with pytest.raises(DatasetError, match="data.holdout = 40"):
        load_dataset("cifar10", tmp_path / "c.npz", holdout=40)


@pytest.fixture(scope="module")
def shared_cifar10():
    if not SHARED.is_file():
        pytest.skip(f"the real CIFAR-10 file is not here ({SHARED} does not exist; on a machine without it the "
                    "synthetic tests above cover the loader)")
    return load_dataset("cifar10", SHARED)


def test_shared_file_is_cifar10_with_the_standard_statistics(shared_cifar10):
    d = shared_cifar10
    assert d.name == "cifar10" and d.x_train.shape == (50_000, 3, 32, 32) and d.classes == CIFAR10_CLASSES
    assert torch.bincount(d.y_train).tolist() == [5000] * 10
    means, stds = d.x_train.mean((0, 2, 3)), d.x_train.std((0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465]), atol=1e-4), means
    assert torch.allclose(stds, torch.tensor([0.2470, 0.2435, 0.2616]), atol=1e-4), stds
    assert d.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


METHODS = {
    "vanilla": [],
    "pag-oi": ["pag.source=oi"],
    "pag-cm": ["pag.source=cm"],
    "pag-nn": ["pag.source=nn", "pag.nn_sample=3"],
    "pag-smooth": ["pag.source=smooth"],
    "at-l2": ["adv.method=pgd", "adv.steps=2"],
    "trades-l2": ["adv.method=trades", "adv.steps=2"],
    "at-l2+pag-smooth": ["adv.method=pgd", "adv.steps=2", "pag.source=smooth"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_one_training_step_of_every_method_on_real_images(shared_cifar10, tmp_path, method):
    """One optimizer step (one batch: the first 64 images, every class at least twice as NN and smooth need) of each
    objective through `train_and_evaluate`, on real photographs."""
    cfg = load_config(None, ["data.name=cifar10", f"data.data_dir={SHARED}", "data.train_n=64", "model.arch=resnet18",
                             "model.width=4", "optim.epochs=1", "optim.batch_size=64", "pag.k=2", "pag.sigma=2.0",
                             "eval.n=4", "eval.pgd_steps=2", "device=cpu", f"name={method}"] + METHODS[method])
    head = first_training_images(shared_cifar10, 64)
    data = Dataset(head.name, head.x_train, head.y_train, head.x_test[:10], head.y_test[:10], 10,
                   classes=head.classes)  # ten test images: the per-epoch accuracy need not see 5,000
    out = train_and_evaluate(cfg, tmp_path / method, progress=False, data=data)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and np.isfinite(metrics[0]["train_loss"])
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "cifar10" and results["method"] == method and results["test_split"] == "test"
    if "pag" in method:
        assert np.isfinite(metrics[0]["train_pag"]) and metrics[0]["train_pag"] > 0
