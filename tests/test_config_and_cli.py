import json
import subprocess
import sys

import pytest

from pagrob import load_run
from pagrob.cli import main
from pagrob.config import Config, ConfigError, load_config


def test_unknown_key_lists_valid_keys_and_suggests_the_close_one():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["pag.lamda=2"])
    assert "Did you mean 'pag.lam'?" in str(err.value) and "optim.epochs" in str(err.value)


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  name: digits\npag:\n  source: cm\n  lam: 2\n")
    cfg = load_config(path, ["optim.weight_decay=1e-4", "eval.eps_l2=[0.5, 1]"])
    assert (cfg.data.name, cfg.pag.source, cfg.pag.lam, cfg.optim.weight_decay) == ("digits", "cm", 2.0, 1e-4)
    assert cfg.eval.eps_l2 == [0.5, 1.0] and cfg.method == "pag-cm"


@pytest.mark.parametrize("override,message", [("pag.lam=-1", "pag.lam must be >= 0"),
                                              ("adv.eps=-0.1", "adv.eps must be >= 0"),
                                              ("pag.source=foo", "pag.source must be"),
                                              ("optim.epochs=two", "expects int")])
def test_out_of_range_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_cli_train_writes_the_run_folder_and_load_run_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--quiet", "train", "--out", str(out), "--set", "pag.source=exact", "--set", "optim.epochs=2",
                 "--set", "eval.eps_l2=[15]", "--set", "eval.n=120", "--set", "name=t"])
    assert code == 0
    for f in ("config.yaml", "model.safetensors", "model.json", "metrics.jsonl", "results.json"):
        assert (out / f).is_file(), f
    assert list(out.glob("events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "toy2d" and results["method"] == "pag-exact" and results["n_test"] == 600
    entry = results["robust_accuracy"][0]
    assert {entry["attack"], entry["norm"], entry["eps"], entry["n_examples"]} == {"pgd", "l2", 15.0, 120}
    assert 0 <= entry["accuracy"] <= 1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and "test_alignment" in metrics[0] and "train_pag" in metrics[0]

    run = load_run(out)
    x, y = run.test_set()
    assert x.shape == (120, 2) and not run.model.training
    acc = (run.model(x).argmax(1) == y).float().mean().item()
    assert results["clean_accuracy"] == pytest.approx((run.model(run.dataset().x_test).argmax(1)
                                                       == run.dataset().y_test).float().mean().item())
    assert 0 <= acc <= 1


def test_cli_reports_user_errors_in_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "optim.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pagrob: error: unknown config key 'optim.epoch'") and err.count("\n") == 1
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "data.name=cifar10",
                 "--set", f"data.data_dir={tmp_path}"]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "pag.k=5", "--set", "pag.source=exact"]) == 2
    assert "larger than the number of classes" in capsys.readouterr().err


@pytest.mark.parametrize("sets, message", [
    (["data.name=digits", "pag.source=exact"], "only for toy2d, not digits; use one of oi, cm, nn, sbg"),
    (["data.name=digits", "model.arch=mlp"], "mlp takes flat vectors; inputs have shape (1, 8, 8)"),
    (["data.name=toy2d", "model.arch=cnn"], "cnn takes images (C, H, W)"),
    (["data.name=mnist"], "data.name must be toy2d, digits, cifar10"),
])
def test_mismatched_settings_are_user_errors_not_tracebacks(tmp_path, capsys, sets, message):
    assert main(["train", "--out", str(tmp_path / "r"), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pagrob: error: ") and message in err and err.count("\n") == 1


def test_train_off_a_terminal_writes_plain_lines_not_bars(tmp_path):
    """stderr to a file: one line per epoch, no carriage-return redraws."""
    sets = ["device=cpu", "pag.source=exact", "optim.epochs=3", "eval.n=20", "eval.eps_l2=[5]"]
    argv = [sys.executable, "-m", "pagrob", "train", "--out", str(tmp_path / "run")]
    with open(tmp_path / "stderr.txt", "w") as log:
        subprocess.run(argv + [a for s in sets for a in ("--set", s)], stdout=subprocess.DEVNULL, stderr=log,
                       check=True)
    text = (tmp_path / "stderr.txt").read_text()
    assert "\r" not in text
    epochs = [line for line in text.splitlines() if " epoch " in line]
    assert [line.split(":")[0] for line in epochs] == ["run epoch 1/3", "run epoch 2/3", "run epoch 3/3"]


def test_a_store_backed_run_is_labelled_by_its_store():
    cfg = Config()
    labels = []
    for source in ("none", "cm", "store:runs/study/stores/smooth-sigma2", "store:runs/nn-store/"):
        cfg.pag.source = source
        labels.append(cfg.method)
    cfg.adv.method = "pgd"
    labels.append(cfg.method)
    assert labels == ["vanilla", "pag-cm", "pag-smooth-sigma2", "pag-nn-store", "at-l2+pag-nn-store"]
