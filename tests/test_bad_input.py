"""Bad input gets one clear message and exit code 2, before long work where possible; nothing is lost or unpickled."""

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pagrob.pipeline as pipeline
import pagrob.train as train_module
from pagrob import checkpoint
from pagrob.cli import main
from pagrob.losses import pag_loss
from pagrob.models import build_model
from pagrob.train import CHECKPOINTS

QUICK = ["--set", "device=cpu", "--set", "optim.epochs=2", "--set", "optim.batch_size=600", "--set", "eval.n=50",
         "--set", "eval.eps_l2=[0]"]  # toy2d: 10 steps an epoch
SRC = Path(__file__).resolve().parents[1] / "src" / "pagrob"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["--quiet", *argv])
    return code, capsys.readouterr().err


def refused(capsys, out: Path, *sets: str) -> str:
    """Train with `--set` items that must be refused before any work: exit 2, one line, nothing written."""
    code, err = run(capsys, "train", "--out", str(out), *[a for s in sets for a in ("--set", s)])
    assert code == 2
    assert err.startswith("pagrob: error: ") and err.count("\n") == 1, err
    assert not out.exists(), "refused before writing anything"
    return err


@pytest.mark.parametrize("sets,message", [
    (["pag.lamda=1"], "unknown config key 'pag.lamda'. Did you mean 'pag.lam'?"),
    (["optim.epochs=two"], "config key 'optim.epochs' expects int, got 'two'"),
    (["pag.lam=-1"], "pag.lam must be >= 0, got -1.0"),
    (["pag.step=fast"], "pag.step must be auto, serial or batched, got 'fast'"),
    (["pag.source=exact", "pag.k=3"], "pag.k = 3 is larger than the number of classes of toy2d (2)"),
    (["adv.method=pgd", "adv.eps=-0.5"], "adv.eps must be >= 0, got -0.5"),
    (["eval.eps_l2=[0.5, -1]"], "eval eps values must be >= 0"),
    (["optim.checkpoint_every=-5"], "optim.checkpoint_every must be >= 0"),
    (["pag.source=score"], "pag.source must be none, oi, cm, nn, exact"),
])
def test_bad_config_values(capsys, tmp_path, sets, message):
    assert message in refused(capsys, tmp_path / "run", *sets)


def test_mistyped_key_in_a_yaml_file(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  epoch: 3\n")
    code, err = run(capsys, "train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert code == 2 and "unknown config key 'optim.epoch'. Did you mean 'optim.epochs'?" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("extra", [[], ["--nproc", "2"]])
def test_gpu_asked_for_where_there_is_none(capsys, tmp_path, extra):
    code, err = run(capsys, "train", "--out", str(tmp_path / "run"), "--set", "device=cuda", *extra)
    assert code == 2 and "device 'cuda' asked for, but no GPU is visible to PyTorch; use --set device=cpu" in err
    assert not (tmp_path / "run").exists()


def test_nproc_below_one(capsys, tmp_path):
    code, err = run(capsys, "train", "--out", str(tmp_path / "run"), "--nproc", "0")
    assert code == 2 and "--nproc must be >= 1, got 0" in err


@pytest.mark.parametrize("x_train,message", [
    (np.random.rand(20, 3, 8, 8).astype(np.float32) * 255, "float images must lie in [0, 1] (found 0"),
    (np.where(np.eye(8) > 0, np.nan, 0.5).astype(np.float32)[None, None].repeat(20, 0), "float images must lie in [0, 1]"),
    (np.random.rand(20, 5).astype(np.float32), "expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W)"),
    (np.random.rand(20, 8, 8, 5).astype(np.float32), "expected 1 (grayscale) or 3 (RGB) channels"),
])
def test_bad_images_in_an_npz_dataset(capsys, tmp_path, x_train, message):
    path = tmp_path / "data.npz"
    y = np.arange(20) % 2
    np.savez(path, x_train=x_train, y_train=y, x_test=np.zeros((4, 8, 8, 3), np.uint8), y_test=y[:4])
    assert message in refused(capsys, tmp_path / "run", f"data.name=npz:{path}")


def test_pag_loss_refuses_targets_of_the_wrong_shape():
    model = build_model("mlp", (2,), 3, width=8)
    x, classes = torch.randn(4, 2), torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=re.escape("target_grads must be (B, k, *x.shape[1:]) = (4, 2, 2), got (4, 2, 3)")):
        pag_loss(model, x, torch.randn(4, 2, 3), classes)
    with pytest.raises(ValueError, match=re.escape("target_classes must be (B, k) = (4, k), got (3, 2)")):
        pag_loss(model, x, torch.randn(4, 2, 2), classes[:3])


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    code, err = run(capsys, "train", "--out", str(out), *QUICK, "--set", "optim.lr=1e10",
                    "--set", "optim.checkpoint_every=1")
    assert code == 2
    step = int(re.search(r"the training loss became (nan|inf|-inf) at step (\d+) \(epoch 1\)", err).group(2))
    assert f"the last good checkpoint, step-{step - 1:08d}.json, is kept" in err
    tensors, state = checkpoint.load(out / CHECKPOINTS / f"step-{step - 1:08d}.json")
    assert state["step"] == step - 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))
    code, err = run(capsys, "train", "--out", str(out), *QUICK)
    assert code == 2 and "holds an unfinished run" in err and "continue it with --resume" in err


class Crash(Exception):
    pass


@pytest.fixture
def unfinished(tmp_path, monkeypatch, capsys) -> Path:
    """A run killed after training, before its evaluation: checkpoints at steps 10 and 20 (the epoch ends)."""
    def dying(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(pipeline, "evaluate_and_write", dying)
    with pytest.raises(Crash):
        main(["--quiet", "train", "--out", str(tmp_path / "run"), *QUICK])
    monkeypatch.undo()
    capsys.readouterr()
    return tmp_path / "run"


def test_truncated_checkpoint_falls_back_to_the_previous_good_one(capsys, unfinished):
    newest = unfinished / CHECKPOINTS / "step-00000020.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    code, err = run(capsys, "train", "--out", str(unfinished), "--resume")
    assert code == 0
    assert "step-00000020.safetensors is damaged (1000 bytes fail the checksum in step-00000020.json: truncated " \
           "or altered); resuming from the older good step-00000010.json" in err
    assert (unfinished / "results.json").is_file() and not (unfinished / CHECKPOINTS).exists()


def test_altered_record_is_detected(capsys, unfinished):
    record = unfinished / CHECKPOINTS / "step-00000020.json"
    record.write_text(record.read_text().replace('"step": 20', '"step": 21'))
    code, err = run(capsys, "train", "--out", str(unfinished), "--resume")
    assert code == 0 and "step-00000020.json is damaged (its record fails its checksum)" in err


def test_every_checkpoint_damaged(capsys, unfinished):
    for f in (unfinished / CHECKPOINTS).glob("*.safetensors"):
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit-pattern, same length
        f.write_bytes(bytes(data))
    code, err = run(capsys, "train", "--out", str(unfinished), "--resume")
    assert code == 2 and "no usable checkpoint in" in err and "step-00000010.safetensors is damaged" in err


def test_resume_with_another_config_is_refused(capsys, unfinished):
    code, err = run(capsys, "train", "--out", str(unfinished), "--resume", *QUICK, "--set", "optim.lr=0.5")
    assert code == 2
    assert "was trained with another config (optim.lr: 0.01 -> 0.5); resume with its own config" in err


def test_resume_of_nothing(capsys, tmp_path):
    code, err = run(capsys, "train", "--out", str(tmp_path / "empty"), "--resume")
    assert code == 2 and "nothing to resume in" in err and "no config.yaml" in err


def test_damaged_model_file_is_refused_by_evaluate(capsys, unfinished):
    assert run(capsys, "train", "--out", str(unfinished), "--resume")[0] == 0
    model = unfinished / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    code, err = run(capsys, "evaluate", str(unfinished))
    assert code == 2 and "model.safetensors is damaged and cannot be read" in err


class Payload:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_is_refused_without_running_its_code(capsys, tmp_path, unfinished):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Payload(marker))
    # 1. As a checkpoint's tensor file, with a record whose checksums match it (the attacker wrote both).
    folder = unfinished / CHECKPOINTS
    for f in folder.iterdir():
        f.unlink()
    checkpoint.save(folder, 7, {"w": torch.zeros(1)}, {})
    record = folder / "step-00000007.json"
    meta = json.loads(record.read_text())
    meta.pop("sha256")
    meta["tensors_sha256"] = checkpoint.sha256_bytes(evil)
    record.write_text(json.dumps({**meta, "sha256": checkpoint._digest(meta)}))
    (folder / "step-00000007.safetensors").write_bytes(evil)
    code, err = run(capsys, "train", "--out", str(unfinished), "--resume")
    assert code == 2 and "is not a safetensors file" in err
    # 2. As a run's model.safetensors.
    (unfinished / "model.json").write_text(json.dumps({"arch": "mlp", "input_shape": [2], "num_classes": 2,
                                                       "width": 64}))
    (unfinished / "model.safetensors").write_bytes(evil)
    code, err = run(capsys, "evaluate", str(unfinished))
    assert code == 2 and "model.safetensors is damaged" in err
    # 3. As a .pt: torch.load with weights_only=True, the only way this project may call it, refuses it.
    torch.save(Payload(marker), tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert not marker.exists(), "the payload never ran"


def calls_of(text: str, name: str) -> list[str]:
    """The text of every `name(...)` call in `text`, up to its matching parenthesis."""
    found = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        found.append(text[m.start():i])
    return found


def test_every_torch_load_in_the_package_is_weights_only():
    calls = [(p.name, c) for p in SRC.rglob("*.py") for c in calls_of(p.read_text(), "torch.load")]
    assert all(re.search(r"weights_only\s*=\s*True", c) for _, c in calls), calls
    unsafe = re.compile(r"pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True")
    assert not [p.name for p in SRC.rglob("*.py") if unsafe.search(p.read_text())]
