"""`pagrob sweep`: grid parsing, the counted compute, and a tiny end-to-end sweep on toy2d with an AT run beside it."""

import json

import pytest

from pagrob.cli import main
from pagrob.config import ConfigError, load_config
from pagrob.dryrun import passes_per_image
from pagrob.sweep import parse_grid, plan, split_values


def test_grid_values_keep_bracketed_lists_whole():
    assert split_values("0, 0.5,[l2,linf]") == ["0", "0.5", "[l2,linf]"]
    assert parse_grid(["pag.lam=0,1", "pag.k=1,3"]) == [("pag.lam", ["0", "1"]), ("pag.k", ["1", "3"])]
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid(["pag.lam"])
    with pytest.raises(ConfigError, match="empty value"):
        parse_grid(["pag.lam=0,,1"])


def test_plan_is_the_product_and_checks_every_config_first():
    runs = plan(None, ["data.name=toy2d"], parse_grid(["pag.lam=0,1", "pag.k=1,2"]), [["at", "adv.method=pgd"]])
    assert [r.name for r in runs] == ["lam0-k1", "lam0-k2", "lam1-k1", "lam1-k2", "at"]
    assert runs[-1].cfg.adv.method == "pgd" and runs[-1].varied == {}
    with pytest.raises(ConfigError, match="pag.lam must be >= 0"):
        plan(None, [], parse_grid(["pag.lam=1,-1"]), [])
    with pytest.raises(ConfigError, match="unknown config key"):
        plan(None, [], parse_grid(["pag.lamda=1"]), [])
    with pytest.raises(ConfigError, match="share a name"):
        plan(None, [], parse_grid(["pag.lam=1"]), [["lam1", "adv.method=pgd"]])


@pytest.mark.parametrize("overrides,passes", [
    ([], 2),
    (["pag.source=cm"], 3 * 10 + 2),  # k = 0: all 10 classes
    (["pag.source=cm", "pag.k=3"], 3 * 3 + 2),
    (["pag.source=cm", "pag.lam=0"], 2),  # a zero weight skips the term
    (["adv.method=pgd", "adv.steps=7"], 2 * 7 + 2),
    (["adv.method=pgd", "adv.steps=7", "pag.source=cm", "pag.k=3"], 2 * 7 + 2 + 3 * 3 + 2),
    (["adv.method=trades", "adv.steps=5"], 1 + 2 * 5 + 4),
    (["adv.method=trades", "adv.steps=5", "pag.source=cm", "pag.k=3"], 1 + 2 * 5 + 3 * 3 + 2 + 2),
])
def test_passes_are_counted_from_the_objective(overrides, passes):
    assert passes_per_image(load_config(None, overrides), 10) == passes


def test_toy_sweep_writes_one_report_and_reuses_finished_runs(tmp_path, capsys):
    args = ["--quiet", "sweep", "--set", "data.name=toy2d", "--set", "optim.epochs=1", "--set", "eval.n=60",
            "--set", "eval.eps_l2=[10]", "--set", "pag.source=exact", "--grid", "pag.lam=0,1",
            "--extra", "at", "adv.method=pgd", "adv.eps=10", "adv.steps=3", "pag.source=none", "--out", str(tmp_path)]
    assert main(args) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["name"] for r in rows] == ["lam0", "lam1", "at"]
    assert [r["extra"] for r in rows] == [False, False, True]
    assert all(r["alignment_source"] == "exact" and -1 <= r["alignment"] <= 1 for r in rows)
    assert [r["passes_per_image_step"] for r in rows] == [2, 8, 8]  # PAG: k = 2 classes; AT: 3 steps
    assert rows[1]["passes_total"] == 8 * 6000 * 1
    assert all("worst L2 10" in r["robust"] and r["train_seconds"] > 0 for r in rows)
    text = (tmp_path / "sweep.md").read_text()
    assert "robust_vs_alignment.png" in text and "robust_vs_compute.png" in text and "| at |" in text
    assert (tmp_path / "robust_vs_alignment.png").stat().st_size > 0
    assert (tmp_path / "robust_vs_compute.png").stat().st_size > 0

    stamp = (tmp_path / "lam1" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([a for a in args if a != "--quiet"]) == 0
    assert capsys.readouterr().out.count("finished earlier, reused") == 3
    assert (tmp_path / "lam1" / "results.json").stat().st_mtime_ns == stamp


def test_every_run_is_scored_against_the_base_configs_targets_not_its_own(tmp_path, monkeypatch):
    import pagrob.sweep as sweep
    seen = []
    real = sweep.build_source

    def recording(name, pag, data):
        seen.append((name, pag.sigma))
        return real(name, pag, data)

    monkeypatch.setattr(sweep, "build_source", recording)
    args = ["--quiet", "sweep", "--set", "data.name=toy2d", "--set", "optim.epochs=1", "--set", "eval.n=40",
            "--set", "eval.eps_l2=[10]", "--set", "pag.source=exact", "--set", "pag.sigma=0.5",
            "--grid", "pag.sigma=0.25,1", "--align-source", "exact", "--out", str(tmp_path)]
    assert main(args) == 0
    assert seen == [("exact", 0.5), ("exact", 0.5)]
    assert "sigma 0.5" in (tmp_path / "sweep.md").read_text()


def test_rank_correlation_reads_order_only_and_says_how_sure_it_is():
    from pagrob.sweep import rank_correlation, spearman
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)  # monotone, whatever the spacing
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties share their mean rank
    six = rank_correlation([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 3, 2, 5, 4, 6])
    assert six.rho == pytest.approx(0.8857143) and six.low <= six.rho <= six.high <= 1.0 and six.low < 0.8  # wide
    assert rank_correlation([0.1, 0.2, 0.3], [1, 2, 3], seed=1) == rank_correlation([0.1, 0.2, 0.3], [1, 2, 3], seed=1)
    # a perfect order of three is one of 6 orderings, and its reverse is as extreme: p = 2/6, not "certain"
    three = rank_correlation([0.1, 0.2, 0.3], [1, 2, 3])
    assert (three.rho, three.low, three.high) == (1.0, 1.0, 1.0) and three.p == pytest.approx(1 / 3)
    assert rank_correlation([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]).p == pytest.approx(2 / 120)


def test_the_permutation_p_value_of_many_runs_comes_from_seeded_shuffles():
    from pagrob.sweep import permutation_p
    xs = list(range(12))
    assert permutation_p(xs, xs, draws=500) == pytest.approx(1 / 501)  # 2 of 12! orderings: no shuffle matches
    unrelated = [3, 11, 0, 7, 5, 9, 1, 10, 2, 8, 4, 6]
    assert 0.2 < permutation_p(xs, unrelated, draws=2000) <= 1.0
    assert permutation_p(xs, unrelated, draws=500, seed=1) == permutation_p(xs, unrelated, draws=500, seed=1)


def test_a_sweep_killed_mid_run_resumes_that_run_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    import pagrob.train as train_module
    from fakes import interrupt_after
    args = ["sweep", "--set", "data.name=toy2d", "--set", "optim.epochs=2", "--set", "eval.n=60",
            "--set", "eval.eps_l2=[10]", "--set", "pag.source=exact", "--grid", "pag.lam=1"]
    assert main(["--quiet", *args, "--out", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as m:
        interrupt_after(m, train_module, "train_step", 120)  # toy2d: 94 steps an epoch: one checkpoint
        with pytest.raises(KeyboardInterrupt):
            main(["--quiet", *args, "--out", str(tmp_path / "killed")])
    assert list((tmp_path / "killed" / "lam1" / "checkpoints").glob("*.json"))
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "killed")]) == 0  # before: "holds an unfinished run", exit 2
    said = capsys.readouterr()
    assert "resum" in said.err.lower(), said.err
    whole, resumed = (json.loads((tmp_path / d / "lam1" / "results.json").read_text()) for d in ("whole", "killed"))
    assert resumed["clean_accuracy"] == whole["clean_accuracy"]
    assert [e["accuracy"] for e in resumed["robust_accuracy"]] == [e["accuracy"] for e in whole["robust_accuracy"]]


def test_a_run_whose_guards_failed_is_shown_but_not_ranked(tmp_path):
    from pagrob.sweep import correlation, plot_sweep, sweep_table

    def row(name, alignment, robust, verdict="ok"):
        return {"name": name, "method": "pag-sbg", "varied": {"pag.lam": name[3:]}, "extra": False,
                "clean_accuracy": 0.4, "robust": {"worst L2 0.5": robust}, "alignment_source": "smooth",
                "alignment": alignment, "verdict": verdict, "train_seconds": 300.0, "passes_per_image_step": 5,
                "passes_total": 1.5e5}

    rows = [row("lam1", 0.1, 0.15), row("lam3", 0.2, 0.20), row("lam10", 0.3, 0.27),
            row("lam30", 0.05, 0.096, "not learned")]
    found, left_out = correlation(rows, "worst L2 0.5")
    assert left_out == ["lam30"] and found.runs == 3 and found.rho == pytest.approx(1.0)  # with lam30: 0.8
    assert correlation(rows[2:], "worst L2 0.5") == (None, ["lam30"])  # one learned run: nothing to rank
    assert "| lam30 | 30 | pag-sbg | 40.0 | 9.6 |" in sweep_table(rows) and "not learned |" in sweep_table(rows)
    first, _ = plot_sweep(rows, tmp_path)
    assert first.stat().st_size > 0
