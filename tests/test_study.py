"""`pagrob study cifar10`: presets load and differ only in the objective, the dry run, and the whole pipeline
end to end (smoke preset, a synthetic CIFAR-10 file) including resuming and refusing a changed plan."""

import json
from pathlib import Path

import pytest
import yaml

from pagrob.cli import main
from pagrob.config import ConfigError, to_dict
from pagrob.runs import RunError
from pagrob.files import write_json
from pagrob.study import dry_run_study, load_study, run_study, select_runs, steps_from
from fakes import write_cifar_like

OBJECTIVE = {"name", "pag.source", "adv.method"}  # what may differ between the runs of a cpu or smoke study


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@pytest.fixture(scope="module")
def cifar_file(tmp_path_factory) -> Path:
    """A CIFAR-10-shaped file of smooth random images (320 train, 40 test), every class present."""
    return write_cifar_like(tmp_path_factory.mktemp("data") / "cifar10.npz", 320, 40)


@pytest.mark.parametrize("preset", ["cpu", "smoke"])
def test_runs_of_a_study_differ_only_in_their_objective(preset, tmp_path):
    study = load_study(preset, tmp_path, data="/some/cifar10.npz")
    names = [r.name for r in study.runs]
    assert names == ["vanilla", "pag-oi", "pag-cm", "pag-nn", "pag-smooth", "pag-sbg", "at-l2", "at-l2+pag-smooth"]
    trees = [flat(to_dict(r.cfg)) for r in study.runs]
    differing = {k for t in trees for k in t if t[k] != trees[0][k]}
    assert differing == OBJECTIVE
    assert all(r.cfg.data.data_dir == "/some/cifar10.npz" for r in study.runs)
    assert [r.cfg.method for r in study.runs] == ["vanilla", "pag-oi", "pag-cm", "pag-nn", "pag-smooth", "pag-sbg",
                                                  "at-l2", "at-l2+pag-smooth"]
    stores = {r.store for r in study.runs if r.store is not None}
    assert len(stores) == 1 and next(iter(stores)).parent == tmp_path / "stores"  # built once, shared by two runs
    assert [r.name for r in study.runs if r.score_model] == ["pag-sbg"]
    assert study.runs[5].score_model == tmp_path / "score-model" and study.score_model.sigmas


def test_the_profile_preset_trains_the_cpu_runs_alike_and_profiles_each(tmp_path):
    """cpu_profile: the cpu preset's runs but SBG, with the same configs (the same weights), each profiled."""
    profiled = load_study("cpu_profile", tmp_path, data="/d.npz")
    cpu = {r.name: r for r in load_study("cpu", tmp_path, data="/d.npz").runs}
    assert [r.name for r in profiled.runs] == [n for n in cpu if n != "pag-sbg"]
    for run in profiled.runs:
        mine, theirs = flat(to_dict(run.cfg)), flat(to_dict(cpu[run.name].cfg))
        assert {k for k in mine if mine[k] != theirs[k]} == {"eval.n"}, run.name
    assert profiled.profile == 1000 and load_study("cpu", tmp_path).profile == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {data: {name: cifar10}}\nruns: {vanilla: []}\nevaluation: {profile: -5}\n")
    with pytest.raises(ConfigError, match="evaluation.profile must be a whole number"):
        load_study(str(bad), tmp_path)


def test_paper_preset_runs_the_papers_recipes(tmp_path):
    study = load_study("paper", tmp_path)
    by_name = {r.name: r.cfg for r in study.runs}
    assert {c.model.width for c in by_name.values()} == {64} and {c.optim.epochs for c in by_name.values()} == {100}
    assert by_name["pag-cm"].pag.k == 10 and by_name["pag-sbg"].pag.source.startswith("store:")
    assert by_name["at-l2"].adv.eps == 0.5 and study.version == "standard" and study.n >= 500


def test_presets_and_their_mistakes_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown study preset 'gpu'"):
        load_study("gpu", tmp_path)
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_study("smoke", tmp_path, overrides=["optim.lrr=0.1"])
    bad = tmp_path / "p.yaml"
    bad.write_text("base: {data: {name: cifar10}}\nruns: {a: [], b: [data.train_n=5]}\n")
    with pytest.raises(ConfigError, match="share one data section"):
        load_study(str(bad), tmp_path)
    bad.write_text("base: {data: {name: cifar10}}\nruns: {a: [pag.source=sbg]}\n")
    with pytest.raises(ConfigError, match="study run a: pag.source=sbg needs a score model; give the preset"):
        load_study(str(bad), tmp_path)
    bad.write_text("base: {data: {name: cifar10}}\nruns: {a: [pag.source=sbg, pag.sbg_sigma=3]}\n"
                   "score_model: {sigmas: [1, 2]}\n")
    with pytest.raises(ConfigError, match=r"pag.sbg_sigma=3 is not among the score model's sigmas \[1.0, 2.0\]"):
        load_study(str(bad), tmp_path)
    bad.write_text("base: {data: {name: cifar10}}\nruns: {a: []}\nscore_model: {sigmas: [1], compare: -5}\n")
    with pytest.raises(ConfigError, match="score_model.compare must be a whole number of images >= 0, got -5"):
        load_study(str(bad), tmp_path)
    bad.write_text("base: {data: {name: cifar10}}\nruns: {a: []}\nscore_model: {sigmas: [1], epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"score_model knows only .* \(found \['epochs'\]\)"):
        load_study(str(bad), tmp_path)


def test_dry_run_lists_every_run_its_files_and_cost(tmp_path, cifar_file):
    text = dry_run_study(load_study("smoke", tmp_path, data=str(cifar_file)), tmp_path)
    for name in ("vanilla", "pag-oi", "pag-cm", "pag-nn", "pag-smooth", "pag-sbg", "at-l2", "at-l2+pag-smooth"):
        assert f"- {name} (" in text
    assert f"present: {cifar_file}" in text and "target stores: 1" in text and "estimated total" in text
    assert f"score model: EDM UNet width 8 at sigmas [2.0], 2 steps of 8 (time not estimated: give it a minutes " \
           f"cap), into {tmp_path / 'score-model'}" in text
    assert not (tmp_path / "runs").exists()  # a dry run trains nothing


def test_paper_dry_run_names_the_missing_sbg_store(tmp_path, capsys):
    # one target class and small batches keep the eight ResNet-18 timing steps cheap; what is checked is unchanged
    assert main(["study", "cifar10", "--preset", "paper", "--out", str(tmp_path), "--dry-run",
                 "--data", str(tmp_path / "absent.npz"), "--set", "pag.k=1", "--set", "optim.batch_size=8"]) == 0
    text = capsys.readouterr().out
    assert "MISSING: stores/cifar10-sbg" in text and "MISSING: " + str(tmp_path / "absent.npz") in text
    assert text.count("resnet18 11.17 M parameters") == 8


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory, cifar_file) -> Path:
    out = tmp_path_factory.mktemp("study")
    assert main(["--quiet", "study", "cifar10", "--preset", "smoke", "--data", str(cifar_file), "--out", str(out)]) == 0
    return out


def test_smoke_study_trains_evaluates_draws_and_reports_every_run(smoke_study):
    runs = sorted(p.name for p in (smoke_study / "runs").iterdir())
    assert runs == sorted(["vanilla", "pag-oi", "pag-cm", "pag-nn", "pag-smooth", "pag-sbg", "at-l2",
                           "at-l2+pag-smooth"])
    for name in runs:
        results = json.loads((smoke_study / "runs" / name / "results.json").read_text())
        assert results["dataset"] == "cifar10" and results["test_split"] == "test"
        radii = {(e["norm"], round(e["eps"], 6)) for e in results["robust_accuracy"]}
        assert radii == {("l2", 0.5), ("linf", round(8 / 255, 6))}
        assert set(results["alignment_scores"]) == {"cm", "smooth"}
    for name in ("pag-smooth", "at-l2+pag-smooth"):  # both read the one store the study built
        source = yaml.safe_load((smoke_study / "runs" / name / "config.yaml").read_text())["pag"]["source"]
        assert source == f"store:{smoke_study / 'stores' / 'smooth-sigma2'}"
    sbg = yaml.safe_load((smoke_study / "runs" / "pag-sbg" / "config.yaml").read_text())["pag"]
    assert sbg["source"] == "sbg" and sbg["score_model"] == str(smoke_study / "score-model")
    assert json.loads((smoke_study / "score-model" / "progress.json").read_text())["step"] == 2
    assert (smoke_study / "stores").is_dir() and (smoke_study / "report.html").is_file()
    report = (smoke_study / "report.md").read_text()
    assert "cifar10_targeted.png" in report and (smoke_study / "cifar10_targeted.png").is_file()
    assert "cifar10: robustness against training compute" in report and (smoke_study / "cifar10_compute.png").is_file()
    assert "Study preset `smoke`" in report
    # the score model's targets against the exact ones, computed once after its training, shown in the report
    compared = json.loads((smoke_study / "score-model" / "compare" / "compare.json").read_text())
    assert compared["n_images"] == 4 and compared["split"] == "test" and list(compared["sigmas"]) == ["2"]
    assert "SBG, smooth, CM and NN targets at σ = 2" in report
    assert (smoke_study / "cifar10_targets_compared_sigma2.png").is_file()


def test_a_study_started_again_keeps_what_is_done_and_redoes_what_is_not(smoke_study, cifar_file):
    kept = smoke_study / "runs" / "vanilla" / "model.safetensors"
    stamp = kept.stat().st_mtime_ns
    score_model = smoke_study / "score-model" / "model.safetensors"
    score_stamp = score_model.stat().st_mtime_ns
    redo = smoke_study / "runs" / "pag-cm"
    for f in redo.iterdir():
        if f.is_file():
            f.unlink()
    report = run_study(load_study("smoke", smoke_study, data=str(cifar_file)), smoke_study, progress=False)
    assert kept.stat().st_mtime_ns == stamp and (redo / "results.json").is_file() and report.is_file()
    assert score_model.stat().st_mtime_ns == score_stamp  # trained once, kept


def test_a_changed_plan_is_refused_in_the_same_folder(smoke_study, cifar_file):
    with pytest.raises(RunError, match="planned differently"):
        run_study(load_study("smoke", smoke_study, data=str(cifar_file), overrides=["optim.lr=0.2"]), smoke_study,
                  progress=False)


def _preset_with_init(tmp_path: Path) -> Path:
    """The smoke preset's base and evaluation, with a run fine-tuned from another (`init`)."""
    tree = yaml.safe_load((Path(__file__).parents[1] / "configs" / "study" / "cifar10_smoke.yaml").read_text())
    tree["runs"] = {"base": [], "pag-smooth": ["pag.source=smooth"], "ft-fgsm": {"init": "base",
                                                                                 "set": ["adv.method=fgsm"]}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_runs_picks_named_runs_with_the_runs_they_start_from(tmp_path, capsys):
    from pagrob.study import select_runs
    study = load_study(str(_preset_with_init(tmp_path)), tmp_path / "s")
    ft = {r.name: r for r in study.runs}["ft-fgsm"]
    assert ft.init == "base" and ft.cfg.init == str(tmp_path / "s" / "runs" / "base") and ft.cfg.method == "fgsm-l2"
    assert [r.name for r in select_runs(study, ["ft-fgsm"]).runs] == ["base", "ft-fgsm"]
    assert [(r.name, r.store is not None) for r in select_runs(study, ["pag-smooth"]).runs] == [("pag-smooth", True)]
    with pytest.raises(ConfigError, match="no run at-l2 in study preset .*its runs are base, pag-smooth, ft-fgsm"):
        select_runs(study, ["at-l2"])
    assert main(["study", "cifar10", "--preset", "smoke", "--out", str(tmp_path / "x"), "--dry-run", "--runs",
                 "vanilla,nope"]) != 0
    assert "no run nope in study preset smoke; its runs are vanilla, pag-oi" in capsys.readouterr().err


def test_an_init_must_name_an_earlier_run(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base: {data: {name: cifar10}}\nruns: {a: {init: b}, b: []}\n")
    with pytest.raises(ConfigError, match="init: b must name a run listed before it"):
        load_study(str(path), tmp_path)
    path.write_text("base: {data: {name: cifar10}}\nruns: {a: {inti: b}}\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['inti'\]"):
        load_study(str(path), tmp_path)


def test_a_study_trains_only_the_named_runs_and_fine_tunes_from_its_own_run(tmp_path, cifar_file):
    out = tmp_path / "s"
    assert main(["--quiet", "study", "cifar10", "--preset", str(_preset_with_init(tmp_path)), "--data",
                 str(cifar_file), "--out", str(out), "--runs", "ft-fgsm"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["base", "ft-fgsm"]  # no store, no pag-smooth
    assert not (out / "stores").exists()
    results = json.loads((out / "runs" / "ft-fgsm" / "results.json").read_text())
    assert results["init"]["run"] == str((out / "runs" / "base").resolve()) and results["method"] == "fgsm-l2"
    report = (out / "report.md").read_text()
    assert "ft-fgsm" in report and "pag-smooth" not in report


def test_minutes_preset_fine_tunes_every_objective_from_one_base(tmp_path):
    """Every objective from scratch at base's minutes, and fine-tuned from base at two budgets; evaluated on 1,000
    test images, AutoAttack continuing on what the guarded PGD left."""
    study = load_study("minutes", tmp_path, data="/some/cifar10.npz")
    by_name = {r.name: r for r in study.runs}
    scratch = ["pag-cm", "at-l2", "fgsm-l2", "n-fgsm-l2", "fgsm-l2+pag-cm"]
    assert [by_name[n].cfg.method for n in ["base"] + scratch] == ["vanilla"] + scratch
    assert {by_name[n].cfg.optim.minutes for n in ["base"] + scratch} == {by_name["base"].cfg.optim.minutes}
    for minutes in (0.5, 1.5):
        for name in ["vanilla"] + scratch:
            run = by_name[f"ft{minutes}-{name}"]
            assert run.init == "base" and run.cfg.init == str(tmp_path / "runs" / "base")
            assert run.cfg.optim.minutes == minutes and run.cfg.method == name
    base = by_name["base"].cfg.optim
    assert base.nesterov and base.schedule == "onecycle" and by_name["base"].init is None
    assert study.n >= 1000 and study.survivors and study.version == "apgd-fast"
    assert all(r.cfg.eval.n >= 1000 and r.cfg.eval.pgd_restarts >= 2 for r in study.runs)


def test_steps_from_repeats_the_planned_steps_of_an_earlier_study(tmp_path):
    study = select_runs(load_study("minutes", tmp_path / "again", data="/some/cifar10.npz"), ["ft0.5-pag-cm"])
    with pytest.raises(ConfigError, match="no planned steps for run base"):
        steps_from(study, tmp_path / "first")
    for i, run in enumerate(study.runs):
        (tmp_path / "first" / "runs" / run.name).mkdir(parents=True)
        write_json(tmp_path / "first" / "runs" / run.name / "results.json", {"planned_steps": 100 + i})
    fixed = steps_from(study, tmp_path / "first")
    assert [r.cfg.optim.steps for r in fixed.runs] == [100, 101] and [r.name for r in fixed.runs] == ["base",
                                                                                                     "ft0.5-pag-cm"]
    assert [r.cfg.optim.steps for r in study.runs] == [0, 0]  # the study it came from is left as it was


def test_steps_from_the_shipped_file_fixes_every_minutes_run_of_the_preset(tmp_path):
    study = load_study("minutes", tmp_path, data="/some/cifar10.npz")
    fixed = steps_from(study, Path(__file__).parents[1] / "configs/study/cifar10_minutes_steps.json")
    steps = {r.name: r.cfg.optim.steps for r in fixed.runs}
    assert steps["base"] == 492 and steps["ft1.5-n-fgsm-l2"] == 237 and all(n > 0 for n in steps.values())
    (tmp_path / "broken.json").write_text('{"base": 492}')
    with pytest.raises(ConfigError, match="not a JSON file with a 'steps' mapping"):
        steps_from(study, tmp_path / "broken.json")
