"""optim.precision (bf16 autocast) and optim.memory_format (channels_last): the GPU's training paths, run on the
CPU. Training follows them; evaluation and its attacks stay float32 and contiguous whatever they say."""

import json

import pytest
import torch

import pagrob.train as train_module
from pagrob.config import load_config
from pagrob.data import Dataset, toy2d
from pagrob.dryrun import dry_run
from pagrob.errors import ConfigError
from pagrob.evaluate import evaluate_and_write
from pagrob.parts import check_against_data
from pagrob.pipeline import train_and_evaluate
from pagrob.runs import load_run
from pagrob.targets import make_source
from pagrob.train import fit

# A ResNet-18 layout (convolutions, batch norm in training mode) with PAG CM targets: the double backward under
# autocast. Two optimizer steps of 32 images. Width 8, not 4: with torch 2.14.1's oneDNN 3.12 on an AVX2-only CPU
# the backward of a 1x1, stride-2 convolution from 4 channels_last channels at 32x32 hangs (segfaults on one
# thread), a library bug that width 4's first shortcut hits and width 8's does not.
SETTINGS = ["device=cpu", "model.arch=resnet18", "model.width=8", "pag.source=cm", "pag.k=2", "optim.epochs=1",
            "optim.batch_size=32", "optim.lr=0.05", "data.augment=none", "eval.n=16", "eval.pgd_steps=5",
            "eval.pgd_restarts=1"]

TRAIN_STEP = train_module.train_step


def random_images(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(3)
    return Dataset("cifar10", torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10,
                   torch.rand(32, 3, 32, 32, generator=g), torch.arange(32) % 10, 10)


def fit_recording(tmp_path, monkeypatch, *sets: str) -> tuple[dict, list[dict]]:
    """Weights after `fit` with SETTINGS + sets, and what each training step saw: autocast, layout, loss."""
    seen = []

    def recording(model, x, y, index, step, lam=None):
        loss, parts = TRAIN_STEP(model, x, y, index, step, lam)
        conv = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1)
        channels_last = not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last)
        seen.append({"autocast": torch.is_autocast_enabled("cpu"), "loss": parts["loss"], "pag": parts["pag"],
                     "channels_last": channels_last})
        return loss, parts

    monkeypatch.setattr(train_module, "train_step", recording)
    trained = fit(load_config(None, SETTINGS + list(sets)), random_images(), tmp_path, progress=False)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in trained.model.parameters()), \
        "evaluation gets a float32, contiguous model"
    return {k: v.clone() for k, v in trained.model.state_dict().items()}, seen


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_a_bf16_step_runs_the_pag_double_backward_and_its_loss_is_close_to_float32s(tmp_path, monkeypatch):
    fp32, seen32 = fit_recording(tmp_path / "fp32", monkeypatch)
    bf16, seen16 = fit_recording(tmp_path / "bf16", monkeypatch, "optim.precision=bf16")
    assert [s["autocast"] for s in seen32] == [False, False] and [s["autocast"] for s in seen16] == [True, True]
    first32, first16 = seen32[0], seen16[0]  # the same weights and batch: only the arithmetic differs
    assert first16["loss"] != first32["loss"], "bf16 arithmetic, not float32's"
    assert first16["loss"] == pytest.approx(first32["loss"], rel=0.03)
    assert first16["pag"] == pytest.approx(first32["pag"], rel=0.03)
    assert all(torch.isfinite(v.float()).all() for v in bf16.values())
    assert 0 < max_difference(bf16, fp32) < 0.05, "the bf16 steps trained the weights, close to float32's"


def test_a_channels_last_step_equals_a_contiguous_one(tmp_path, monkeypatch):
    contiguous, seen_c = fit_recording(tmp_path / "contiguous", monkeypatch)
    channels_last, seen_cl = fit_recording(tmp_path / "channels_last", monkeypatch, "optim.memory_format=channels_last")
    assert [s["channels_last"] for s in seen_c] == [False, False]
    assert [s["channels_last"] for s in seen_cl] == [True, True]
    # the same weights and batch: only the layout differs, so both steps' losses and the weights agree to rounding
    assert seen_cl[0]["loss"] == pytest.approx(seen_c[0]["loss"], rel=1e-5)
    assert seen_cl[1]["loss"] == pytest.approx(seen_c[1]["loss"], rel=1e-5)
    assert max_difference(channels_last, contiguous) < 1e-4


def test_evaluation_under_a_bf16_config_is_float32(tmp_path):
    """A bf16, channels_last run's evaluation equals a float32 evaluation of its saved weights, guards' figures
    included (the loss-rise guard's means would move under bf16)."""
    bf16 = load_config(None, SETTINGS + ["optim.precision=bf16", "optim.memory_format=channels_last"])
    data = random_images()
    first = json.loads((train_and_evaluate(bf16, tmp_path / "bf16", progress=False, data=data) / "results.json")
                       .read_text())
    fp32 = load_config(None, SETTINGS)
    again = evaluate_and_write(load_run(tmp_path / "bf16").model, data, fp32, tmp_path / "fp32",
                               make_source("cm", fp32.pag, data), 0.0, progress=False)

    def figures(results: dict) -> list:
        return [{k: v for k, v in e.items() if k not in ("seconds", "seconds_by_attack", "provenance")}
                for e in results["robust_accuracy"]]

    assert figures(first) and figures(first) == figures(again)
    assert (first["clean_accuracy"], first["alignment"]) == (again["clean_accuracy"], again["alignment"])


def test_precision_and_layout_are_checked_before_training():
    with pytest.raises(ConfigError, match="optim.precision must be fp32 or bf16"):
        load_config(None, ["optim.precision=fp16"])
    with pytest.raises(ConfigError, match="optim.memory_format must be contiguous or channels_last"):
        load_config(None, ["optim.memory_format=nhwc"])
    with pytest.raises(ConfigError, match="pag.step=batched does not run under bf16"):
        load_config(None, ["optim.precision=bf16", "pag.step=batched"])
    with pytest.raises(ConfigError, match="channels_last lays out images"):
        check_against_data(load_config(None, ["optim.memory_format=channels_last"]), toy2d.load())


def test_the_dry_run_takes_its_step_as_training_does(monkeypatch):
    """A bf16, channels_last recipe's dry run steps under autocast with channels_last batches."""
    seen = []

    def recording(model, x, y, index, step, lam=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return TRAIN_STEP(model, x, y, index, step, lam)

    monkeypatch.setattr("pagrob.dryrun.train_step", recording)
    cfg = load_config(None, SETTINGS + ["optim.precision=bf16", "optim.memory_format=channels_last",
                                        "data.name=digits", "model.arch=cnn"])
    assert dry_run(cfg, batch=8, timing=False)["step_parts"]["pag"] > 0 and seen and all(seen)
