"""Pictures and reports: the files exist, read back, and say what they should."""

import base64
import json
import re

import pytest
import torch

from pagrob.cli import main
from pagrob.report import SUSPECT, summary_table, write_report
from pagrob.runs import load_run
from pagrob.visualize import make_figures, pick_images, targeted_images


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short digits run and a short toy2d run, each with one AutoAttack entry."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--set", "eval.n=40"]
    main(["--quiet", "train", "--out", str(root / "digits"), "--set", "data.name=digits", "--set", "model.width=8",
          "--set", "optim.epochs=10",
          "--set", "optim.lr=0.05", "--set", "eval.eps_l2=[0.5,1.0]", "--set", "name=digits", *common])
    main(["--quiet", "train", "--out", str(root / "toy"), "--set", "eval.eps_l2=[15]", "--set", "name=toy",
          "--set", "optim.epochs=3", *common])
    for run, eps in (("digits", "1.0"), ("toy", "15")):
        assert main(["--quiet", "evaluate", str(root / run), "--version", "custom-fast", "--eps", eps]) == 0
    return root / "digits", root / "toy"


def test_pick_images_takes_the_first_image_of_each_new_class():
    y = torch.tensor([3, 3, 1, 3, 0, 1, 2])
    assert pick_images(y, 3).tolist() == [0, 2, 4]


def test_targeted_attack_reaches_most_targets_at_large_eps(runs):
    run = load_run(runs[0])
    data = run.dataset()
    x = data.x_test[:3]
    pushed = targeted_images(run, x, 3.0, range(10), data.bounds)
    assert pushed.shape == (3, 10, 1, 8, 8)
    reached = run.model(pushed.flatten(0, 1)).argmax(1).view(3, 10) == torch.arange(10)
    assert reached.float().mean() > 0.9
    assert (pushed - x[:, None]).flatten(2).norm(dim=2).max() <= 3.0 + 1e-4


def test_visualize_writes_every_picture_that_applies(runs, tmp_path, capsys):
    assert main(["visualize", str(runs[0]), str(runs[1]), "--out", str(tmp_path), "--images", "3"]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["digits_accuracy_vs_eps.png", "digits_gradients.png", "digits_targeted.png",
                     "toy2d_accuracy_vs_eps.png", "toy2d_boundaries.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in tmp_path.glob("*.png"))
    assert "Figure 1" in capsys.readouterr().out


def test_report_html_is_self_contained_and_carries_the_tables(runs, tmp_path):
    md = write_report(list(runs), tmp_path, "t", "notes here")
    html = (tmp_path / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "src=\"http" not in html and "<link" not in html  # nothing fetched when opened offline
    for text in ("autoattack [custom-fast] L2 1", "guards: gradient masking, collapse, learning", "images fooled by each component",
                 "alignment scores", "notes here", "How these numbers were made", "torchattacks"):
        assert text in html, text
    text = md.read_text()
    assert "autoattack [custom-fast] L2 1" in text and "digits_targeted.png" in text
    # The reader's first sight: the headline figure, then the summary; the details are folded.
    assert html.index("worst-case robust accuracy versus ε") < html.index("clean and worst-case robust accuracy")
    assert html.index("clean and worst-case robust accuracy") < html.index("<details>")
    assert "<summary>digits: each attack on its own</summary>" in html
    results = json.loads((runs[0] / "results.json").read_text())
    verdict = [e["verdict"] for e in results["robust_accuracy"] if e["attack"] == "autoattack"][0]
    assert f"<td class=\"{'good' if verdict == 'ok' else 'bad'}\">{verdict}</td>" in html


def test_report_summary_shows_one_worst_case_per_radius(runs, tmp_path):
    text = write_report(list(runs), tmp_path).read_text()
    assert "## toy2d: clean and worst-case robust accuracy" in text
    summary = text.split("## digits: clean and worst-case robust accuracy", 1)[1]
    table = "\n".join(line for line in summary.split("\n\n", 2)[1].splitlines() if line.startswith("|"))
    head = [line for line in table.splitlines() if line.startswith("| run")][0].split(" | ")
    assert head[3:6] == ["L2 0.5", "L2 1", "alignment"] and "train min" in head[-2]
    digits = json.loads((runs[0] / "results.json").read_text())
    at1 = [w for w in digits["worst_case"] if w["eps"] == 1.0][0]
    shown = [line for line in table.splitlines() if line.startswith("| digits")][0].split(" | ")[4]
    assert shown.split()[0] == f"{100 * at1['accuracy']:.1f}"
    assert at1["accuracy"] <= min(e["accuracy"] for e in digits["robust_accuracy"] if e["eps"] == 1.0)
    assert {a["component"] for a in at1["attacks"]} >= {"pgd", "apgd-ce"}  # training's PGD and AutoAttack


def _rows(verdicts: dict[str, str]) -> list[dict]:
    return [{"name": name, "method": "vanilla", "clean_accuracy": 0.9, "n_test": 10,
             "robust_accuracy": [{"attack": "pgd", "norm": "l2", "eps": 0.5, "n_examples": 10, "accuracy": 0.5,
                                  "verdict": v}]} for name, v in verdicts.items()]


def test_the_caption_warns_only_when_a_guard_failed_and_names_the_runs():
    _, note = summary_table(_rows({"a": "ok", "b": "ok"}))
    assert SUSPECT not in note and "Every guard passed" in note
    (_, body), note = summary_table(_rows({"a": "ok", "b": "suspect", "c": "suspect"}))
    assert f"{SUSPECT}: a guard failed for b, c" in note and "did not learn" not in note
    assert [row[-1] for row in body] == ["ok", "suspect", "suspect"]


def test_a_model_near_chance_is_reported_as_not_learned():
    """The reported case: 17.9 % clean on 10 classes, 16.2 % "robust": not learned, in the table and the caption."""
    rows = _rows({"a": "ok", "b": "not learned"})
    rows[1].update(clean_accuracy=0.179)
    rows[1]["robust_accuracy"][0].update(accuracy=0.162)
    (_, body), note = summary_table(rows)
    assert [row[-1] for row in body] == ["ok", "not learned"]
    assert body[1][3] == f"16.2 {SUSPECT}" and body[0][3] == "50.0"
    assert "b did not learn" in note and "a guard failed" not in note


def test_figures_skip_what_does_not_apply(runs, tmp_path):
    captions = [c for c, _ in make_figures([runs[1]], tmp_path)]
    assert captions == ["toy2d: decision regions", "toy2d: worst-case robust accuracy versus ε"]


def test_method_family_groups_what_a_compute_plot_compares():
    from pagrob.config import load_config
    from pagrob.visualize import method_family
    settings = ([], ["pag.source=cm"], ["pag.source=store:runs/s"], ["adv.method=pgd"],
                ["adv.method=trades", "adv.norm=linf"], ["adv.method=pgd", "pag.source=nn"])
    assert [method_family(load_config(None, s)) for s in settings] == ["vanilla", "pag", "pag", "at", "at", "at+pag"]


def test_robustness_against_compute_is_drawn_once_two_families_are_timed(runs, tmp_path):
    import shutil

    import yaml
    pag = tmp_path / "digits-pag"
    shutil.copytree(runs[0], pag)  # the same weights, labelled as a PAG run: the plot reads method and minutes
    cfg = yaml.safe_load((pag / "config.yaml").read_text())
    cfg["pag"]["source"], cfg["name"] = "cm", "digits-pag"
    (pag / "config.yaml").write_text(yaml.safe_dump(cfg))
    captions = dict(make_figures([runs[0], pag], tmp_path / "figs"))
    path = captions["digits: robustness against training compute"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert "digits: robustness against training compute" not in dict(make_figures([runs[0]], tmp_path / "one"))


def test_pareto_front_keeps_what_nothing_beats_on_both_counts():
    from pagrob.visualize import pareto_front
    points = [(60.0, 10.0), (50.0, 20.0), (55.0, 5.0), (40.0, 20.0), (30.0, 25.0)]
    assert pareto_front(points) == [(30.0, 25.0), (50.0, 20.0), (60.0, 10.0)]


def test_fine_tuned_runs_lead_the_report_with_robustness_per_minute(runs, tmp_path):
    """A run fine-tuned from another (results `init`): the per-minute figure is drawn and the report opens on it."""
    import shutil

    import yaml
    tuned = tmp_path / "digits-ft"
    shutil.copytree(runs[0], tuned)
    cfg = yaml.safe_load((tuned / "config.yaml").read_text())
    cfg["pag"]["source"], cfg["name"] = "cm", "digits-ft"
    (tuned / "config.yaml").write_text(yaml.safe_dump(cfg))
    results = json.loads((tuned / "results.json").read_text())
    results["init"] = {"run": str(runs[0].resolve()), "weights_sha256": "0" * 64}
    (tuned / "results.json").write_text(json.dumps(results))
    captions = dict(make_figures([runs[0], tuned], tmp_path / "figs"))
    path = captions["digits: robustness per minute, from scratch and fine-tuned"]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10000
    md = write_report([runs[0], tuned], tmp_path / "report").read_text()
    assert md.index("robustness per minute") < md.index("worst-case robust accuracy versus ε")
    assert "robustness per minute" not in "".join(dict(make_figures([runs[0]], tmp_path / "one")))
