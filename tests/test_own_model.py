"""Bring your own classifier: a network from a file pagrob has never seen is imported with its weights, measured
exactly as its own code measures it, evaluated, drawn, fine-tuned and reloaded; bad input is refused in one line."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pagrob.cli import main
from pagrob.runs import load_run

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz"
MEAN, STD = [0.45, 0.5, 0.55], [0.2, 0.25, 0.3]
NORMALIZE = "0.45,0.5,0.55/0.2,0.25,0.3"
USER_NET = '''
import torch.nn as nn


class Net(nn.Module):
    """Not one of pagrob's architectures: in-place ReLU, batch norm, max pooling, a dropout layer."""

    def __init__(self, classes, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(2 * width, classes))

    def forward(self, x):
        return self.head(self.features(x))


def build(num_classes, width=8):
    return Net(num_classes, width)


def seven_outputs(num_classes):
    return Net(7, 8)


def broken(num_classes):
    raise RuntimeError("this factory is broken on purpose")


def not_a_module(num_classes):
    return 3
'''


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["--quiet", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small 10-class image set (class = colour pattern + noise), the user's file, and weights its own code trained."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    patterns = rng.uniform(0.2, 0.8, (10, 16, 16, 3))

    def images(n):
        y = np.arange(n) % 10
        return (np.clip(patterns[y] + rng.normal(0, 0.15, (n, 16, 16, 3)), 0, 1) * 255).astype(np.uint8), y

    (x_tr, y_tr), (x_te, y_te) = images(300), images(60)
    np.savez(root / "data.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    (root / "usernet.py").write_text(USER_NET)
    module = _user_module(root / "usernet.py")
    torch.manual_seed(0)
    net = module.build(10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.from_numpy(x_tr).permute(0, 3, 1, 2).float() / 255
    for step in range(40):
        i = (step * 50) % 300
        loss = F.cross_entropy(net(_normalized(x[i:i + 50])), torch.from_numpy(y_tr[i:i + 50]).long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    # As a DataParallel training script saves it, beside other things, under `state_dict`.
    torch.save({"epoch": 40, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, root / "w.pth")
    return root, net, torch.from_numpy(x_te).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y_te).long()


def _user_module(path: Path):
    spec = importlib.util.spec_from_file_location("usernet_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _normalized(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - mean) / std


def _import(capsys, root: Path, out: Path, *extra: str, weights: str = "w.pth", factory: str = "build") -> tuple[int, str]:
    return _cli(capsys, "import-checkpoint", root / weights, "--model", f"{root / 'usernet.py'}:{factory}",
                "--model-args", '{"num_classes": 10}', "--dataset", f"npz:{root / 'data.npz'}",
                "--normalize", NORMALIZE, "--out", out, *extra)


def _l2_pgd(model, x, y, eps, steps=40):
    """An attack written apart from pagrob.attacks: L2 PGD on the cross-entropy, step 2.5 eps / steps."""
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += 2.5 * eps / steps * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta *= (eps / delta.flatten(1).norm(dim=1).clamp_min(eps)).view(-1, 1, 1, 1)
    with torch.no_grad():
        return (model((x + delta).clamp(0, 1)).argmax(1) == y).float().mean().item()


def test_a_user_model_is_imported_measured_evaluated_drawn_fine_tuned_and_reloaded(world, tmp_path, capsys):
    root, net, x_test, y_test = world
    code, out = _import(capsys, root, tmp_path / "run")
    assert code == 0, out
    run = load_run(tmp_path / "run")
    with torch.no_grad():
        own = (net(_normalized(x_test)).argmax(1) == y_test).float().mean().item()
    assert own > 0.5, "the user's own training learned the patterns"
    assert run.results["clean_accuracy"] == own  # pagrob measures exactly what the user's code measures
    with torch.no_grad():
        assert torch.equal(run.model(x_test).argmax(1), net(_normalized(x_test)).argmax(1))
    assert run.results["imported_from"]["sha256"] == hashlib.sha256((root / "w.pth").read_bytes()).hexdigest()

    code, out = _cli(capsys, "evaluate", tmp_path / "run", "--attack", "pgd", "--norm", "l2", "--eps", "0.5",
                     "--n", "30", "--alignment", "cm")
    assert code == 0, out
    worst = load_run(tmp_path / "run").results["worst_case"][0]
    assert worst["n_examples"] == 30 and worst["verdict"] == "ok"
    independent = _l2_pgd(run.model, x_test[:30], y_test[:30], 0.5)
    assert worst["accuracy"] <= independent + 1e-9, "pagrob's attack is at least as strong as a plain PGD"
    assert worst["accuracy"] < worst["clean_accuracy"], "the attack found adversarial examples"

    code, out = _cli(capsys, "visualize", tmp_path / "run", "--out", tmp_path / "figs", "--images", "2")
    assert code == 0, out
    assert list((tmp_path / "figs").glob("*.png"))

    code, out = _cli(capsys, "train", "--init", tmp_path / "run", "--out", tmp_path / "ft",  # data: the run's
                     "--set", "pag.source=cm", "--set", "pag.k=1",
                     "--set", "optim.epochs=1", "--set", "optim.batch_size=100", "--set", "eval.n=10",
                     "--set", "eval.pgd_steps=5", "--set", "eval.pgd_restarts=1")
    assert code == 0, out
    tuned = load_run(tmp_path / "ft")
    assert tuned.config.model.arch == run.config.model.arch and tuned.config.model.normalize == [MEAN, STD]
    assert tuned.config.data.name == f"npz:{root / 'data.npz'}"
    assert tuned.results["init"]["weights_sha256"] == hashlib.sha256(
        (tmp_path / "run" / "model.safetensors").read_bytes()).hexdigest()
    before, after = run.model.state_dict(), tuned.model.state_dict()
    assert before.keys() == after.keys()
    assert torch.equal(before["normalize.mean"], after["normalize.mean"]), "the user's normalisation is kept"
    assert not torch.equal(before["net.head.1.weight"], after["net.head.1.weight"]), "fine-tuning moved the weights"
    code, out = _cli(capsys, "report", tmp_path / "run", tmp_path / "ft", "--out", tmp_path / "report")
    assert code == 0, out
    text = (tmp_path / "report" / "report.md").read_text()
    assert "was fine-tuned from the run" in text and "was imported from" in text


def test_safetensors_weights_import_the_same_model(world, tmp_path, capsys):
    from safetensors.torch import save_file

    root, net, x_test, y_test = world
    save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    code, out = _cli(capsys, "import-checkpoint", tmp_path / "w.safetensors", "--model", f"{root / 'usernet.py'}:build",
                     "--model-args", '{"num_classes": 10}', "--dataset", f"npz:{root / 'data.npz'}",
                     "--normalize", NORMALIZE, "--out", tmp_path / "run")
    assert code == 0, out
    with torch.no_grad():
        assert torch.equal(load_run(tmp_path / "run").model(x_test), net(_normalized(x_test)))


def test_a_user_architecture_trains_from_scratch_and_a_changed_file_is_refused(world, tmp_path, capsys):
    root = world[0]
    source = (root / "usernet.py").read_text()
    (tmp_path / "mine.py").write_text(source)
    code, out = _cli(capsys, "train", "--out", tmp_path / "run", "--set", f"data.name=npz:{root / 'data.npz'}",
                     "--set", f"model.arch=file:{tmp_path / 'mine.py'}:build", "--set", "model.args={num_classes: 10}",
                     "--set", "adv.method=pgd", "--set", "adv.steps=2", "--set", "optim.epochs=1",
                     "--set", "optim.batch_size=100", "--set", "eval.n=10", "--set", "eval.pgd_steps=5",
                     "--set", "eval.pgd_restarts=1")
    assert code == 0, out
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["source"]["sha256"] == hashlib.sha256((tmp_path / "mine.py").read_bytes()).hexdigest()
    assert spec["args"] == {"num_classes": 10}
    load_run(tmp_path / "run")
    (tmp_path / "mine.py").write_text(source + "\n# edited\n")
    code, out = _cli(capsys, "evaluate", tmp_path / "run", "--attack", "pgd", "--n", "4")
    assert code == 2 and "has changed since" in out and out.count("\n") == 1, out


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _bad_weights(root: Path, tmp: Path, net) -> dict[str, Path]:
    """Weight files that must be refused: each kind of misfit, and files that are not plain state dicts."""
    state = net.state_dict()
    files = {"shapes": tmp / "shapes.pt", "keys": tmp / "keys.pt", "module": tmp / "module.pt",
             "code": tmp / "code.pt", "text": tmp / "text.pt"}
    wider = _user_module(root / "usernet.py").build(10, width=12).state_dict()
    torch.save(wider, files["shapes"])
    torch.save({**{k: v for k, v in state.items() if not k.startswith("head")}, "extra.weight": torch.zeros(2)},
               files["keys"])
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), files["module"])  # a pickled module, not a state dict
    torch.save({"features.0.weight": _Payload(tmp / "payload-ran")}, files["code"])
    files["text"].write_text("not a checkpoint")
    return files


@pytest.mark.parametrize("case,message", [
    ("missing-file", "model file not found"),
    ("missing-factory", "defines no function or class 'nothere'"),
    ("factory-raises", "raised RuntimeError: this factory is broken on purpose"),
    ("not-a-module", "returned a int, not a torch.nn.Module"),
    ("wrong-output", "pagrob needs logits of shape"),
    ("shapes", "shape mismatches"),
    ("keys", "missing keys"),
    ("module", "weights_only=True (refused, nothing was executed)"),
    ("code", "weights_only=True (refused, nothing was executed)"),
    ("text", "weights_only=True (refused, nothing was executed)"),
    ("missing-weights", "weights file not found"),
])
def test_bad_models_and_weights_are_refused_in_one_sentence_leaving_nothing(world, tmp_path, capsys, case, message):
    root, net = world[0], world[1]
    out = tmp_path / "run"
    factory = {"missing-factory": "nothere", "factory-raises": "broken", "not-a-module": "not_a_module",
               "wrong-output": "seven_outputs"}.get(case, "build")
    weights = "w.pth"
    if case in ("shapes", "keys", "module", "code", "text"):
        weights = str(_bad_weights(root, tmp_path, net)[case])
    elif case == "missing-weights":
        weights = str(tmp_path / "absent.pt")
    model = str(tmp_path / "absent.py") if case == "missing-file" else f"{root / 'usernet.py'}"
    code, text = _cli(capsys, "import-checkpoint", root / weights, "--model", f"{model}:{factory}",
                      "--model-args", '{"num_classes": 10}', "--dataset", f"npz:{root / 'data.npz'}", "--out", out)
    assert code == 2, text
    assert text.startswith("pagrob: error: ") and text.count("\n") == 1 and message in text, text
    assert not out.exists() and not list(tmp_path.glob(".run*")), "nothing is left behind"
    assert not (tmp_path / "payload-ran").exists(), "no pickled code ran"


def test_misfit_keys_are_listed_ten_at_most(world, tmp_path, capsys):
    root, net = world[0], world[1]
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(25)}, tmp_path / "many.pt")
    code, text = _cli(capsys, "import-checkpoint", tmp_path / "many.pt", "--model", f"{root / 'usernet.py'}:build",
                      "--model-args", '{"num_classes": 10}', "--dataset", f"npz:{root / 'data.npz'}",
                      "--out", tmp_path / "run")
    assert code == 2
    assert "unexpected keys (25): layer0.weight" in text and "layer9.weight, ..." in text
    assert "layer10.weight" not in text


@pytest.mark.parametrize("content", [b"a text file, not an archive\n", b"x"])
def test_a_file_that_is_not_an_npz_is_refused_in_one_sentence(tmp_path, capsys, content):
    bad = tmp_path / "data.npz"
    bad.write_bytes(content)
    code, text = _cli(capsys, "train", "--out", tmp_path / "run", "--set", f"data.name=npz:{bad}")
    assert code == 2 and text.count("\n") == 1 and "is not a numpy .npz archive" in text, text
    code, text = _cli(capsys, "study", "cifar10", "--data", bad, "--out", tmp_path / "study", "--dry-run")
    assert code == 2 and text.count("\n") == 1 and "is not a numpy .npz archive" in text, text
    assert not (tmp_path / "run").exists()


def test_robustbench_json_is_refused_for_a_run_it_would_not_accept(world, tmp_path, capsys):
    root = world[0]
    assert _import(capsys, root, tmp_path / "run")[0] == 0
    code, text = _cli(capsys, "report", tmp_path / "run", "--robustbench-json", tmp_path / "rb.json")
    assert code == 2 and "leaderboard here is CIFAR-10's" in text and not (tmp_path / "rb.json").exists(), text


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason=f"needs the real CIFAR-10 at {SHARED_CIFAR}")
def test_robustbench_json_from_an_autoattack_standard_evaluation(world, tmp_path, capsys):
    root = world[0]
    (tmp_path / "tiny.py").write_text("import torch.nn as nn\n\ndef make(num_classes):\n    return nn.Sequential("
                                      "nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n")
    # nearest class mean as a linear layer: it has learned something (50 % on the 20 images), so its numbers are
    # reported; an untrained layer near chance would get the not-learned verdict and be refused
    with np.load(SHARED_CIFAR) as d:
        x = torch.tensor(d["x_train"][:10000]).permute(0, 3, 1, 2).reshape(10000, -1).float() / 255
        y = torch.tensor(d["y_train"][:10000]).long()
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    torch.save({"1.weight": means, "1.bias": -0.5 * (means * means).sum(1)}, tmp_path / "w.pt")
    code, text = _cli(capsys, "import-checkpoint", tmp_path / "w.pt", "--model", f"{tmp_path / 'tiny.py'}:make",
                      "--model-args", '{"num_classes": 10}', "--dataset", "cifar10",
                      "--set", f"data.data_dir={SHARED_CIFAR}", "--out", tmp_path / "run")
    assert code == 0, text
    code, text = _cli(capsys, "evaluate", tmp_path / "run", "--attack", "pgd", "--norm", "linf", "--n", "20")
    assert code == 0, text
    code, text = _cli(capsys, "report", tmp_path / "run", "--robustbench-json", tmp_path / "rb.json")
    assert code == 2 and "AutoAttack's standard version" in text, text
    code, text = _cli(capsys, "evaluate", tmp_path / "run", "--attack", "autoattack", "--version", "standard",
                      "--norm", "linf", "--n", "20", "--alignment")
    assert code == 0, text
    code, text = _cli(capsys, "report", tmp_path / "run", "--robustbench-json", tmp_path / "rb.json")
    assert code == 0, text
    info = json.loads((tmp_path / "rb.json").read_text())
    entry = next(e for e in load_run(tmp_path / "run").results["robust_accuracy"] if e["attack"] == "autoattack")
    assert info["dataset"] == "cifar10" and info["eps"] == "8/255" and info["number_forward_passes"] == 1
    assert info["autoattack_acc"] == f"{100 * entry['accuracy']:.2f}"
    assert info["clean_acc"] == f"{100 * entry['clean_accuracy']:.2f}"
    assert info["pagrob"]["n_examples"] == 20 and info["pagrob"]["attack"]["version"] == "standard"
    assert info["architecture"] == "make(num_classes=10)"
    assert float(info["pagrob"]["worst_case_acc"]) <= float(info["autoattack_acc"])
