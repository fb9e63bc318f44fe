"""The paper's recipes in configs/paper/: published settings, and an offline dry run of every one.

The dry runs here use narrow models (ResNet-18 width 8, ViT width 64) so that the ten of them fit in seconds;
`pagrob train --config F --dry-run` runs them at full width (see configs/paper/README.md for timings).
"""

from pathlib import Path

import pytest

from pagrob.cli import main
from pagrob.config import load_config
from pagrob.dryrun import auto_batch, dry_run
from pagrob.train import lam_at

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
RECIPES = sorted(PAPER.glob("*.yaml"))
NARROW = {"resnet18": "model.width=8", "vit": "model.width=64"}


def test_the_recipes_the_paper_needs_are_there():
    names = {p.stem for p in RECIPES}
    assert len(RECIPES) >= 10
    assert {"cifar10_rn18_vanilla", "cifar10_rn18_at_l2", "cifar10_rn18_oi", "cifar10_rn18_cm", "cifar10_rn18_nn",
            "cifar10_rn18_sbg", "cifar10_vit_sbg", "stl10_rn18_sbg", "cifar100_rn18_sbg",
            "cifar10_rn18_at_l2_sbg"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_has_the_published_settings(path):
    cfg = load_config(path)
    o = cfg.optim
    assert (o.epochs, o.batch_size, o.lr, o.momentum, o.weight_decay) == (100, 64, 0.01, 0.9, 1e-4)
    assert sorted({max(1, round(m * o.epochs)) for m in o.milestones}) == [49, 74]  # drops before epochs 50, 75
    assert cfg.seed == 3407 and cfg.data.augment == "crop_flip"
    if cfg.pag.source != "none":
        assert cfg.pag.k == 10
        expected = 30.0 if cfg.model.arch == "vit" else 15.0  # pag_coeff 3.0 / 1.5 times their factor 10
        assert cfg.pag.lam == expected
    if path.stem.endswith("sbg"):
        assert cfg.pag.source.startswith("store:")
    if cfg.model.arch == "vit":
        assert cfg.model.width == 384
        assert lam_at(cfg.pag, 0, 100) == pytest.approx(20.0) and lam_at(cfg.pag, 49, 100) == pytest.approx(20.0)
        assert lam_at(cfg.pag, 50, 100) == 30.0
    if "at_l2" in path.stem:
        assert (cfg.adv.method, cfg.adv.norm, cfg.adv.eps) == ("pgd", "l2", 0.5)
    else:
        assert cfg.adv.method == "none"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_dry_run_needs_no_files(path, tmp_path):
    base = load_config(path)
    cfg = load_config(path, [f"data.data_dir={tmp_path}", NARROW[base.model.arch]])
    r = dry_run(cfg, batch=2, timing=False)
    assert all(v == v and abs(v) < 1e6 for v in r["step_parts"].values())  # finite
    what = [w for w, _ in r["needs"]]
    assert not any(ok for _, ok in r["needs"])  # nothing is on disk, and the dry run did not need it
    assert str(tmp_path) in what[0]
    if cfg.pag.source.startswith("store:"):
        assert any(cfg.pag.source[6:] in w for w in what)
        assert "pag" in r["step_parts"]
    n_train = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000}[cfg.data.name]
    assert r["steps_per_epoch"] == -(-n_train // 64) and r["total_steps"] == 100 * r["steps_per_epoch"]
    pag = 3 * 10 + 2 if cfg.pag.source != "none" else 0
    at = 2 * 7 + 2 if cfg.adv.method == "pgd" else 0
    assert r["passes_per_image"] == (pag + at or 2)


def test_cli_dry_run_prints_the_plan(tmp_path, capsys):
    recipe = PAPER / "cifar10_rn18_vanilla.yaml"
    assert main(["train", "--config", str(recipe), "--dry-run", "--set", f"data.data_dir={tmp_path}"]) == 0
    text = capsys.readouterr().out
    assert "[MISSING]" in text and "cifar-10-batches-py" in text
    assert "100 epochs x 782 steps of 64 images = 78200 steps" in text
    assert "x vanilla" in text


def test_train_without_out_or_dry_run_is_a_clear_error(capsys):
    assert main(["train", "--config", str(PAPER / "cifar10_rn18_vanilla.yaml")]) == 2
    assert "--out" in capsys.readouterr().err


def test_the_measured_batch_shrinks_with_the_image():
    assert auto_batch((3, 32, 32), 64) == 2 and auto_batch((3, 96, 96), 64) == 1
    assert auto_batch((1, 8, 8), 64) == 32 and auto_batch((2,), 64) == 64 and auto_batch((1, 8, 8), 16) == 16
