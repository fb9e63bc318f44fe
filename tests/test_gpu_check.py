"""benchmarks/gpu_check.py: the GPU's one prepared check, rehearsed on the CPU with tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pagrob

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402  (a script beside pag_step.py, which it imports)

SECTIONS = ["environment", "pag_step", "auto_rows", "cifar10", "ddp"]
DEADLINE = 1200


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[Path, dict, str, str]:
    """One `--device cpu --tiny` run: its folder, gpu_check.json, gpu_check.md and what it printed."""
    out = tmp_path_factory.mktemp("gpu-check")
    src = str(Path(pagrob.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    # a generous deadline: a CPU shared with other work must not push items past their budgets (that is tested apart)
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--tiny", "--out",
                           str(out), "--deadline", str(DEADLINE)], capture_output=True, text=True, env=env,
                          timeout=DEADLINE + 60)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), done.stdout


def measured(report: dict, section: str) -> list[dict]:
    items = report["sections"][section]["items"]
    assert not [i for i in items if "error" in i], items
    return items


def test_every_section_ran_within_the_deadline(rehearsal):
    _, report, md, _ = rehearsal
    assert list(report["sections"]) == SECTIONS
    for name in SECTIONS:
        section = report["sections"][name]
        assert section["status"] == "done", (name, section)
        assert all(i["item_seconds"] > 0 for i in section["items"] if "skipped" not in i)
    assert 0 < report["elapsed_s"] < DEADLINE == report["deadline_s"]
    assert report["sections"]["ddp"]["budget_s"] == gpu_check.BUDGET_S["ddp"] * DEADLINE / gpu_check.DEADLINE_S
    assert measured(report, "environment")[0]["torch"] == torch.__version__
    for heading in ("## Environment", "## PAG step", "## Rows per backward pass", "## CIFAR-10", "## Distributed"):
        assert heading in md


def test_the_pag_table_holds_real_times_and_consistent_ratios(rehearsal):
    _, report, md, _ = rehearsal
    check, *rows = measured(report, "pag_step")
    assert check["ok"] and "loss check" in check["lines"][0]
    assert sorted(r["precision"] for r in rows) == ["bf16", "fp32"]
    for r in rows:
        t, mb, q = r["seconds"], r["mb"], r["ratios"]
        assert min(t.values()) > 0 and min(mb.values()) > 0
        assert q["time_vs_repeat"] == pytest.approx(t["pag"] / t["repeat"])
        assert q["memory_vs_repeat"] == pytest.approx(mb["pag"] / mb["repeat"])
        assert q["time_vs_vanilla"] == pytest.approx(t["pag"] / t["vanilla"])
        assert q["time_vs_at7"] == pytest.approx(t["pag"] / t["at7"])
        assert f"| {r['precision']} | {r['step']} | {t['pag']:.4f} | {t['repeat']:.4f} |" in md
        assert f"| {q['time_vs_repeat']:.2f} | {q['memory_vs_repeat']:.2f} | {q['time_vs_vanilla']:.2f} |" in md


def test_auto_rows_recommends_the_fastest_measured_choice(rehearsal):
    _, report, md, stdout = rehearsal
    rows = measured(report, "auto_rows")
    assert [r["classes_per_pass"] for r in rows] == list(gpu_check.TINY.classes_per_pass)
    assert all(r["rows"] == r["B"] * r["classes_per_pass"] and r["seconds"] > 0 for r in rows)
    section = report["sections"]["auto_rows"]
    least = min(r["seconds"] for r in rows)
    fastest = min(rows, key=lambda r: (round(r["seconds"] / least, 3), r["rows"]))  # ties: fewer rows
    assert section["recommended_rows"] == fastest["rows"]
    assert section["advice"] in md and "AUTO_ROWS['cpu']" in section["advice"]
    assert section["advice"] in stdout


def test_cifar_runs_train_and_evaluate_with_pagrob_and_report_epochs_per_minute(rehearsal):
    out, report, md, _ = rehearsal
    runs = measured(report, "cifar10")
    there = gpu_check.DEFAULT_DATA.is_file()
    assert all(r["data"] == str(gpu_check.DEFAULT_DATA) if there else r["data"].startswith("synthetic") for r in runs)
    assert f"Data: {runs[0]['data']}" in md
    assert [r["method"] for r in runs] == ["vanilla", "pag-cm", "at-l2"]
    for r in runs:
        assert r["train_images"] == gpu_check.TINY.train_n and r["robust_n"] == gpu_check.TINY.eval_n
        assert r["epochs_per_minute"] == pytest.approx(r["epochs"] * 60 / r["train_seconds"])
        assert r["evaluate_seconds"] > 0 and 0 <= r["robust_accuracy"] <= 1
        results = json.loads((out / "cifar10" / r["run"] / "results.json").read_text())
        assert results["train_seconds"] == r["train_seconds"]
        assert f"| {r['run']} | {r['train_images']} | {r['epochs']} | {r['train_seconds']:.1f} | " in md


def test_ddp_ran_under_torchrun_on_gloo(rehearsal):
    out, report, md, _ = rehearsal
    (ddp,) = measured(report, "ddp")
    assert ddp["ddp_backend"] == ddp["expected_backend"] == "gloo" and ddp["steps"] >= 1, "DDP's log names gloo"
    assert 0 < ddp["train_seconds"] < ddp["wall_seconds"]
    assert (out / "ddp" / "results.json").is_file() and f"| gloo | gloo | {ddp['steps']} |" in md


def test_the_budgets_fit_the_deadline():
    assert list(gpu_check.BUDGET_S) == SECTIONS and sum(gpu_check.BUDGET_S.values()) < gpu_check.DEADLINE_S < 480


def test_best_rows_weighs_every_batch_size():
    """B 64 is fastest at 5 classes per pass, B 128 at 2: 320 rows gives each its fastest."""
    best = {64: 5, 128: 2}
    rows = [{"B": b, "k": 10, "classes_per_pass": c, "rows": b * c, "seconds": 1.0 if c == best[b] else 2.0}
            for b in best for c in (1, 2, 5, 10)]
    assert gpu_check.best_rows(rows) == {"recommended_rows": 320, "slowdown_vs_each_fastest": 1.0,
                                         "per_batch": {64: 5, 128: 2}}
    flat = [{**r, "seconds": 1.0} for r in rows]
    assert gpu_check.best_rows(flat)["recommended_rows"] == 64, "a tie goes to the fewest rows"


def test_a_section_records_failures_and_skips_what_its_budget_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.BUDGET_S, "trial", 0.5)
    check = gpu_check.Check(tmp_path, {"started": "now", "device": "cpu", "tiny": True,
                                       "deadline_s": gpu_check.DEADLINE_S, "sections": {}})

    def slow(_: float) -> dict:
        gpu_check.time.sleep(0.3)
        return {"value": 1}

    def exits(_: float) -> dict:
        raise SystemExit("benchmarks/pag_step.py --memory-of pag failed")

    check.section("trial", [("fails", lambda _: 1 / 0), ("exits", exits), ("slow", slow),
                            ("after", lambda _: {"value": 2})])
    items = {i["item"]: i for i in json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["trial"]["items"]}
    assert items["fails"]["error"] == "ZeroDivisionError: division by zero" and items["slow"]["value"] == 1
    assert items["exits"]["error"] == "SystemExit: benchmarks/pag_step.py --memory-of pag failed"
    assert "left of the section's budget" in items["after"]["skipped"]
    assert "trial: fails: ZeroDivisionError" in (tmp_path / "gpu_check.md").read_text()


def test_a_subprocess_past_its_time_is_killed_with_its_children(tmp_path):
    """torchrun's workers are the launcher's children: a timeout must not leave them running."""
    pid_file = tmp_path / "child.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open('{pid_file}', 'w').write(str(p.pid)); time.sleep(60)")
    with pytest.raises(subprocess.TimeoutExpired):
        gpu_check.run_group([sys.executable, "-c", script], dict(os.environ), 2.0)
    child = int(pid_file.read_text())
    gpu_check.time.sleep(0.2)
    state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(f"/proc/{child}").exists() else "gone"
    assert state in ("gone", "Z"), "the grandchild was killed too"


def test_without_the_npz_the_runs_take_random_images_of_cifar10s_shape():
    data = gpu_check.synthetic_cifar(0, 8)
    assert data.x_train.shape == (50_000, 3, 32, 32) and data.x_test.shape == (8, 3, 32, 32)
    assert 0 <= float(data.x_train.min()) and float(data.x_train.max()) <= 1
    assert set(data.y_train.tolist()) == set(range(10))
