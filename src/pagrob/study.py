"""`pagrob study cifar10`: every method on one shared budget, then one evaluation, pictures and a report.

A preset (configs/study/cifar10_<preset>.yaml) holds the whole study in one place: a base config that every
run shares (network, optimiser, augmentation, budget), each run's own settings (only the objective differs:
vanilla, PAG with each target source, adversarial training, both), the evaluation after training and the
pictures. `smooth` targets are precomputed once into a target store under the study folder and read per batch.
A preset's `score_model` section is a score model the study trains once into DIR/score-model (before any run,
resuming like the runs): every run's pag.score_model points there unless it names another, so a `sbg` run
depends on it by its config alone.
A run may start from another run of the study (`init: OTHER`, fine-tuning through `Config.init`, as
`pagrob train --init` does); `--runs` trains and reports some runs only, with the runs and stores they need.

Resuming is the default: finished runs, stores and evaluations found in the study folder are kept, an unfinished
run continues from its checkpoint, so an interrupted study started again carries on where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import yaml

from pagrob import console
from pagrob.attacks.library import get_version
from pagrob.config import Config, EvalConfig, from_dict, set_key, to_dict, validate
from pagrob.data import Dataset, load_dataset
from pagrob.devices import resolve_device
from pagrob.diffusion.compare import FOLDER as COMPARE, Comparison, compare_targets
from pagrob.diffusion.train import PROGRESS, ScoreTrainConfig, train_score_model
from pagrob.dryrun import dry_run
from pagrob.errors import ConfigError, RunError
from pagrob.evaluate import ROBUSTBENCH_EPS, evaluate_run, summary_line
from pagrob.files import write_json
from pagrob.pipeline import train_and_evaluate
from pagrob.report import write_report
from pagrob.runs import load_run, read_results
from pagrob.targets import STORE_PREFIX, build_source, source_spec
from pagrob.targets.store import build_store
from pagrob.threats.profile import DEFAULT_VERSION, profile_run, read_profile
from pagrob.train import finished

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # presets ship with the source checkout
DATASETS = ("cifar10",)
PRESETS = ("cpu", "cpu_profile", "paper", "minutes", "minutes_tuning", "minutes_gpu")  # and `smoke`, the tests' pipeline in seconds
STORE_SOURCES = ("smooth",)  # sources the study precomputes into a store instead of computing per batch
PLAN = "study.json"
SCORE_MODEL = "score-model"  # the folder, under the study's, of the score model its `score_model` section trains


@dataclass
class StudyRun:
    name: str
    cfg: Config
    store: Path | None = None  # the store its targets are read from, built by the study
    score_model: Path | None = None  # the score model its targets come from, trained by the study
    init: str | None = None  # the run of the study it is fine-tuned from


@dataclass
class Study:
    preset: str
    description: str
    runs: list[StudyRun]
    attack: str  # the evaluation after training: an attack of `pagrob evaluate`
    version: str  # its AutoAttack budget
    n: int  # test images attacked
    alignment: list[str]  # target sources every run is scored against
    figure_images: int
    score_model: ScoreTrainConfig | None = None  # what the study trains into DIR/score-model first, if any
    survivors: bool = False  # the attack continues on what the evaluation PGD left (same worst case, less time)
    compare_images: int = 0  # test images its score model's targets are compared on with the exact ones (0: none)
    profile: int = 0  # test images every run's robustness profile is taken on (`evaluate --profile`; 0: none)


def preset_file(preset: str) -> Path:
    """The YAML of a preset name (PRESETS, or smoke), or `preset` itself when it is a file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"study preset file not found: {path}")
        return path
    path = CONFIGS / "study" / f"cifar10_{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown study preset '{preset}': use {' or '.join(PRESETS)}, or a preset YAML file "
                          f"(the named presets live in {CONFIGS / 'study'} of the source checkout)")
    return path


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


RUN_KEYS = ("recipe", "set", "init")  # what a run of a preset may hold besides being a list of settings


def _spec(name: str, spec: list | dict | None) -> dict:
    """A run's entry as a mapping: a bare list is its `set`."""
    spec = {"set": spec} if isinstance(spec, list) else dict(spec or {})
    unknown = set(spec) - set(RUN_KEYS)
    if unknown:
        raise ConfigError(f"study run {name}: unknown keys {sorted(unknown)}; a run holds {', '.join(RUN_KEYS)} or "
                          "is a list of key=value settings")
    return spec


def _run_config(name: str, spec: dict, base: dict, data: str | None, overrides: list[str],
                score_model: Path) -> Config:
    """One run's config: its recipe (if any), the base, the study's score model unless they name one, its own
    settings, then --data and --set."""
    tree: dict = {}
    if spec.get("recipe"):
        recipe = CONFIGS / spec["recipe"]
        if not recipe.is_file():
            raise ConfigError(f"study run {name}: recipe {recipe} not found")
        tree = yaml.safe_load(recipe.read_text()) or {}
    cfg = from_dict(_merge(tree, base))
    cfg.pag.score_model = cfg.pag.score_model or str(score_model)
    items = list(spec.get("set", [])) + ([f"data.data_dir={data}"] if data else []) + list(overrides)
    for item in items + [f"name={name}"]:
        if "=" not in item:
            raise ConfigError(f"study run {name}: setting '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        set_key(cfg, key.strip(), yaml.safe_load(raw))
    validate(cfg)
    if cfg.data.name not in DATASETS:
        raise ConfigError(f"study run {name} trains on {cfg.data.name}; the study is for {', '.join(DATASETS)}")
    return cfg


def _score_model_settings(path: Path, section: dict | None) -> ScoreTrainConfig | None:
    """The preset's `score_model` section as training settings (holdout and train_n come from the data section;
    its `compare` is the study's, read by `_compare_images`)."""
    if section is None:
        return None
    section = {k: v for k, v in section.items() if k != "compare"} if isinstance(section, dict) else section
    known = {f.name for f in fields(ScoreTrainConfig)} - {"holdout", "train_n"}
    if not isinstance(section, dict) or set(section) - known:
        raise ConfigError(f"study preset {path}: score_model knows only {', '.join(sorted(known))} (found "
                          f"{sorted(set(section) - known) if isinstance(section, dict) else section!r})")
    if not section.get("sigmas"):
        raise ConfigError(f"study preset {path}: score_model needs sigmas, the noise levels its runs query "
                          "(pag.sbg_sigma)")
    return ScoreTrainConfig(**section)


def _compare_images(path: Path, section: dict | None) -> int:
    """`score_model: {compare: N}`: after training, its SBG targets against the exact (smooth) ones and CM and NN on
    N test images (`pagrob targets compare`), in the report beside the SBG runs."""
    n = (section or {}).get("compare", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"study preset {path}: score_model.compare must be a whole number of images >= 0, got {n!r}")
    return n


def _attach_score_model(run: StudyRun, folder: Path, settings: ScoreTrainConfig | None) -> None:
    """Mark a run whose SBG targets come from the study's score model; refuse a σ it will not be trained at."""
    if run.cfg.pag.source != "sbg" or Path(run.cfg.pag.score_model) != folder:
        return
    if settings is None:
        raise ConfigError(f"study run {run.name}: pag.source=sbg needs a score model; give the preset a score_model "
                          "section or the run a pag.score_model=DIR")
    if run.cfg.pag.sbg_sigma not in settings.sigmas:
        raise ConfigError(f"study run {run.name}: pag.sbg_sigma={run.cfg.pag.sbg_sigma:g} is not among the score "
                          f"model's sigmas {settings.sigmas}; set it to one of them")
    run.score_model = folder


def load_study(preset: str, out: Path, data: str | None = None, overrides: list[str] = ()) -> Study:
    """Read a preset into validated run configs: every user error surfaces here, before any training."""
    path = preset_file(preset)
    tree = yaml.safe_load(path.read_text()) or {}
    unknown = set(tree) - {"description", "base", "runs", "evaluation", "figures", "score_model"}
    if unknown or not tree.get("runs"):
        raise ConfigError(f"study preset {path}: needs `runs` and knows only description, base, runs, evaluation, "
                          f"figures, score_model (found {sorted(unknown) or 'no runs'})")
    score_model = _score_model_settings(path, tree.get("score_model"))
    folder = out / SCORE_MODEL
    specs = {name: _spec(name, spec) for name, spec in tree["runs"].items()}
    runs = [StudyRun(name, _run_config(name, spec, tree.get("base") or {}, data, list(overrides), folder),
                     init=spec.get("init")) for name, spec in specs.items()]
    for i, run in enumerate(runs):
        if run.init is None:
            continue
        if run.init not in [r.name for r in runs[:i]]:
            raise ConfigError(f"study run {run.name}: init: {run.init} must name a run listed before it in the preset "
                              f"(its runs: {', '.join(specs)})")
        run.cfg.init = str(out / "runs" / run.init)
    for run in runs:
        _attach_score_model(run, folder, score_model)
        if run.cfg.pag.source in STORE_SOURCES:
            sigma = f"{run.cfg.pag.sigma:g}"
            run.store = out / "stores" / f"{run.cfg.pag.source}-sigma{sigma}"
    data_settings = {json.dumps(to_dict(r.cfg)["data"], sort_keys=True) for r in runs}
    if len(data_settings) != 1:
        raise ConfigError(f"study preset {path}: the runs must share one data section (only the objective may "
                          "differ between them)")
    ev = tree.get("evaluation") or {}
    if score_model is not None:  # trained on the runs' own training images
        score_model = replace(score_model, holdout=runs[0].cfg.data.holdout, train_n=runs[0].cfg.data.train_n)
    return Study(preset, tree.get("description", ""), runs, ev.get("attack", "autoattack"),
                 ev.get("version", "standard"), int(ev.get("n", 500)), list(ev.get("alignment", ["cm"])),
                 int((tree.get("figures") or {}).get("images", 4)), score_model, _survivors(path, ev),
                 _compare_images(path, tree.get("score_model")) if score_model is not None else 0,
                 _profile_images(path, ev))


def _profile_images(path: Path, evaluation: dict) -> int:
    """`evaluation: {profile: N}`: after its attacks, every run's robustness profile on its first N test images."""
    n = evaluation.get("profile", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"study preset {path}: evaluation.profile must be a whole number of images >= 0, got {n!r}")
    return n


def _survivors(path: Path, evaluation: dict) -> bool:
    value = evaluation.get("survivors", False)
    if not isinstance(value, bool):
        raise ConfigError(f"study preset {path}: evaluation.survivors must be true or false, got {value!r}")
    return value


def select_runs(study: Study, names: list[str]) -> Study:
    """The study with only the named runs and the runs they start from (`init`), in the preset's order; their
    stores come with them. An unknown name is refused with the preset's run names."""
    by_name = {r.name: r for r in study.runs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ConfigError(f"--runs: no run {', '.join(unknown)} in study preset {study.preset}; its runs are "
                          f"{', '.join(by_name)}")
    keep: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += [by_name[name].init] if by_name[name].init else []
    return dataclasses.replace(study, runs=[r for r in study.runs if r.name in keep])


def _planned_steps(earlier: Path) -> dict[str, int]:
    """Run name -> planned steps, from a study folder (each run's results.json) or a JSON file {"steps": {...}}
    such as configs/study/cifar10_minutes_steps.json, which keeps the steps behind a published table."""
    if earlier.is_file():
        try:
            steps = json.loads(earlier.read_text())["steps"]
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--steps-from {earlier}: not a JSON file with a 'steps' mapping ({err})") from err
        return {name: int(n) for name, n in steps.items()}
    return {path.parent.name: int(json.loads(path.read_text())["planned_steps"])
            for path in earlier.glob("runs/*/results.json")}


def steps_from(study: Study, earlier: Path) -> Study:
    """The study with every minutes-budgeted run fixed at the steps it planned in `earlier` (a study folder or a
    steps file): the same command then repeats those runs step for step, whatever this machine's speed today."""
    planned = _planned_steps(earlier)
    runs = []
    for run in study.runs:
        if not run.cfg.optim.minutes:
            runs.append(run)
            continue
        if run.name not in planned:
            raise ConfigError(f"--steps-from {earlier}: no planned steps for run {run.name} there (train it in that "
                              "study first, or leave --steps-from out to plan its steps from minutes)")
        cfg = copy.deepcopy(run.cfg)
        cfg.optim.steps = planned[run.name]
        runs.append(dataclasses.replace(run, cfg=cfg))
    return dataclasses.replace(study, runs=runs)


def _say(message: str) -> None:
    console.line(f"pagrob study: {message}")


def _check_plan(out: Path, study: Study) -> None:
    """A study folder holds one study: refuse to mix a different plan into an earlier one's runs."""
    plan = {"preset": study.preset, "runs": {r.name: to_dict(r.cfg) for r in study.runs},
            "evaluation": {"attack": study.attack, "version": study.version, "n": study.n,
                           **({"survivors": True} if study.survivors else {})},
            "score_model": study.score_model and asdict(study.score_model)}
    path = out / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        old["runs"] = {k: to_dict(from_dict(v)) for k, v in old["runs"].items()}  # keys added since: their defaults
        changed = sorted(k for k in old["runs"].keys() & plan["runs"].keys() if old["runs"][k] != plan["runs"][k])
        changed += ["evaluation"] if old.get("evaluation") != plan["evaluation"] else []
        changed += ["score_model"] if old.get("score_model") not in (None, plan["score_model"]) else []
        if changed:
            raise RunError(f"{out} holds a study planned differently ({', '.join(changed)} changed); "
                           "start it again with the same preset and settings, or use another --out")
        plan["runs"] = {**old["runs"], **plan["runs"]}  # a study trained in parts (--runs) keeps every part's plan
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def _with_store(run: StudyRun) -> Config:
    """The config the run trains with: its `smooth` targets read from the study's store."""
    cfg = copy.deepcopy(run.cfg)
    if run.store is not None:
        cfg.pag.source = f"{STORE_PREFIX}{run.store}"
    return cfg


def _train_score_model(study: Study, data: Dataset, progress: bool) -> None:
    """Train (or finish, or keep) the score model the study's runs depend on, on the runs' own training images."""
    users = [run for run in study.runs if run.score_model is not None]
    if not users or study.score_model is None:
        return
    folder = users[0].score_model
    progress_file = folder / PROGRESS
    state = "from the start"
    if progress_file.is_file():
        state = "done, kept" if json.loads(progress_file.read_text()).get("done") else "resuming where it stopped"
    _say(f"score model for {', '.join(r.name for r in users)}: training into {folder} ({state})")
    start = time.perf_counter()
    train_score_model(data, folder, study.score_model, resolve_device(users[0].cfg.device), progress)
    _say(f"score model done ({time.perf_counter() - start:.0f} s in this invocation): {progress_file}")
    _compare_score_model(study, data, folder, progress)


def _compare_score_model(study: Study, data: Dataset, folder: Path, progress: bool) -> None:
    """Its SBG targets against the exact ones on the first compare_images test images, once, into
    <score model>/compare (the report shows the panels beside the SBG runs)."""
    out = folder / COMPARE
    n = min(study.compare_images, len(data.x_test))
    done = out / "compare.json"
    if not n or not data.is_image or done.is_file() and json.loads(done.read_text())["n_images"] == n:
        return
    _say(f"score model against the exact targets on {n} {data.test_split} images: {out}")
    comparison = Comparison(data, data.x_test[:n], data.y_test[:n], data.test_split, study.score_model.holdout)
    compare_targets(comparison, folder, study.score_model.sigmas, out, progress)


def _build_stores(study: Study, data: Dataset, progress: bool) -> None:
    for run in study.runs:
        if run.store is None or (run.store / "manifest.json").is_file() and \
                json.loads((run.store / "manifest.json").read_text()).get("complete"):
            continue
        _say(f"precomputing {run.cfg.pag.source} targets into {run.store}")
        start = time.perf_counter()
        source = build_source(run.cfg.pag.source, run.cfg.pag, data)
        build_store(run.store, data, source, source_spec(run.cfg.pag.source, run.cfg.pag), ("train", "test"),
                    batch_size=256, progress=progress)
        _say(f"store {run.store.name} done in {time.perf_counter() - start:.0f} s")


def _evaluated(run_dir: Path, attack: str, version: str, norm: str, eps: float, n: int) -> bool:
    """results.json holds this attack's entry already (our PGD's entries carry no AutoAttack version)."""
    version = None if attack == "pgd" else version
    return any(e["attack"] == attack and e.get("version") == version and e["norm"] == norm
               and math.isclose(e["eps"], eps) and e["n_examples"] == n
               for e in read_results(run_dir).get("robust_accuracy", []))


def _evaluate(study: Study, run_dir: Path, progress: bool) -> None:
    """The study's attack at RobustBench's radii, skipping entries already in results.json.

    The first evaluation of a run also scores alignment; results.json receives both in one write.
    """
    run = load_run(run_dir)
    n = min(study.n, len(run.dataset().x_test))
    for norm, eps in ROBUSTBENCH_EPS.items():
        if _evaluated(run_dir, study.attack, study.version, norm, eps, n):
            continue
        align = [] if "alignment_scores" in run.results else study.alignment
        for entry in evaluate_run(run, attack=study.attack, norm=norm, eps=[eps], n=n, version=study.version,
                                  alignment=align, progress=progress, survivors=study.survivors):
            _say(f"{run.config.name}: {summary_line(entry)}")
    if not study.profile:
        return
    done = read_profile(run_dir) or {}
    if done.get("n") == min(study.profile, len(run.dataset().x_test)) and done.get("union") is not None:
        _say(f"{run.config.name}: robustness profile done earlier, kept")
        return
    _say(f"{run.config.name}: robustness profile on {study.profile} test images (resumes per image)")
    profile_run(run, n=study.profile, version=DEFAULT_VERSION, progress=progress)


def _notes(study: Study, data: Dataset, seconds: float) -> str:
    cfg = study.runs[0].cfg
    split = "held-out validation images from x_train" if data.test_split == "validation" else "test images"
    attack = study.attack if study.attack == "pgd" else f"{study.attack} ({study.version})"
    attack += " on the images it left standing" if study.survivors else ""
    pinned = any(r.cfg.optim.steps for r in study.runs)
    length = (f"a budget in minutes (each run's in the table; its steps "
              f"{'pinned to an earlier study’s plan' if pinned else 'planned from a timed step'})"
              if any(r.cfg.optim.minutes for r in study.runs) else f"{cfg.optim.epochs} epochs")
    then = f", then {attack}" if study.attack != "pgd" else ""
    return (f"Study preset `{study.preset}`: {study.description}. Every run: {cfg.model.arch} width {cfg.model.width}, "
            f"{len(data.x_train)} training images, {length} of batch {cfg.optim.batch_size}, "
            f"{cfg.optim.name} lr {cfg.optim.lr} ({cfg.optim.schedule} schedule; fine-tuned runs may set their own), "
            f"augmentation {cfg.data.augment}; PAG runs lam {cfg.pag.lam} (fine-tuned runs may set their own), "
            f"k {cfg.pag.k or data.num_classes}. Evaluated on the first {min(study.n, len(data.x_test))} {split}: "
            f"our guarded PGD-{cfg.eval.pgd_steps} x {cfg.eval.pgd_restarts} restarts{then}, at L2 0.5 and "
            "L∞ 8/255. "
            f"Wall time of this invocation: {seconds / 60:.1f} min (a resumed study counts only its last part).")


def run_study(study: Study, out: Path, progress: bool = True) -> Path:
    """Train every run, build the stores they need, evaluate, draw and report; returns DIR/report.md."""
    start = time.perf_counter()
    _check_plan(out, study)
    cfg = study.runs[0].cfg
    data = load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download, cfg.data.holdout, cfg.data.train_n)
    _train_score_model(study, data, progress)
    _build_stores(study, data, progress)
    run_dirs = []
    for i, run in enumerate(study.runs, 1):
        run_dir = out / "runs" / run.name
        run_dirs.append(run_dir)
        if finished(run_dir):
            _say(f"[{i}/{len(study.runs)}] {run.name}: trained earlier, kept")
        else:
            _say(f"[{i}/{len(study.runs)}] {run.name}: training ({run.cfg.method})")
            train_and_evaluate(_with_store(run), run_dir, progress=progress, data=data, resume=True)
        _evaluate(study, run_dir, progress)
    _say("pictures and report")
    notes = _notes(study, data, time.perf_counter() - start)
    report = write_report(run_dirs, out, f"pagrob study: {cfg.data.name}", notes, study.figure_images)
    _say(f"done in {(time.perf_counter() - start) / 60:.1f} min: {report}")
    return report


def _attack_passes(version: str, attack: str, ev: EvalConfig) -> int:
    """Forward+backward passes per attacked image, at most (every image standing to the end of every attack): the
    evaluation PGD after training, the study's attack, and Square as the guard of each."""
    v = get_version(version)
    per = {"apgd-ce": v.steps, "apgd-dlr": v.steps, "apgd-t": v.steps * v.targets, "fab-t": v.steps * v.targets,
           "square": v.queries // 3,  # Square: one forward per query, about a third of a forward+backward
           "pgd": ev.pgd_steps * ev.pgd_restarts * len(ev.pgd_losses)}
    names = set(v.components if attack == "autoattack" else (attack,)) | {"pgd"}
    guards = get_version(ev.version).queries // 3 + (0 if "square" in names else v.queries // 3)
    return sum(per.get(name, 0) for name in names) + guards


def _matmul_flops_per_second() -> float:
    a, b = torch.rand(256, 3072), torch.rand(3072, 4096)
    a @ b
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * 256 * 3072 * 4096 / (time.perf_counter() - start)


def _duration(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 60 else f"~{seconds / 60:.0f} min"


def dry_run_study(study: Study, out: Path) -> str:
    """Every run's config checked on one synthetic batch of its real size, the files needed, and the estimated cost.

    Each step is timed at the preset's batch size after a warm-up step: a 2-image step scaled linearly put the
    cpu preset's vanilla step at 1.29 s against 0.36 s measured at batch 128 (per-step costs do not grow with it).
    """
    lines = [f"study preset {study.preset}: {study.description}", f"output: {out}"]
    total = 0.0
    n_train = n_test = 0
    device = ""
    for run in study.runs:
        batch = run.cfg.optim.batch_size
        r = dry_run(run.cfg, batch=batch)
        n_train = min(run.cfg.data.train_n or r["n_train"], r["n_train"] - run.cfg.data.holdout)
        n_test, device = run.cfg.data.holdout or r["n_test"], r["device"]
        step = r["step_seconds"]
        o = run.cfg.optim
        steps = o.steps or (round(o.minutes * 60 / step) if o.minutes else math.ceil(n_train / batch) * o.epochs)
        seconds = step * steps
        n_eval = min(study.n, r["n_test"])
        passes = _attack_passes(study.version, study.attack, run.cfg.eval)
        attack = 2 * n_eval * passes * r["vanilla_step_seconds"] / batch
        total += seconds + attack
        needs = "; ".join(f"{'present' if ok else 'MISSING'}: {what}" for what, ok in r["needs"]) or "built in"
        length = (f"{o.minutes:g} min (~{steps} steps of {batch})" if o.minutes and not o.steps else
                  f"{steps} steps of {batch}" if o.steps else
                  f"{o.epochs} epochs x {math.ceil(n_train / batch)} steps of {batch}")
        lines.append(f"- {run.name} ({r['method']}): {r['arch']} {r['parameters'] / 1e6:.2f} M parameters, "
                     f"{length}{f', from {run.init}' if run.init else ''}; step "
                     f"{step:.2f} s (timed at that batch after a warm-up step) -> training {_duration(seconds)}; "
                     f"evaluation PGD + {study.attack} ({study.version}) at 2 radii on {n_eval} images: at most "
                     f"{_duration(attack)}; "
                     f"data: {needs}")
        if run.store is not None:
            lines.append(f"    targets: {run.cfg.pag.source} (sigma {run.cfg.pag.sigma:g}) precomputed into {run.store}")
    if any(run.score_model is not None for run in study.runs):  # load_study saw to study.score_model
        sm = study.score_model
        total += 60 * sm.minutes
        cost = f"{sm.minutes:g} min at most" if sm.minutes else "time not estimated: give it a minutes cap"
        lines.append(f"score model: EDM UNet width {sm.width or 32} at sigmas {sm.sigmas}, {sm.steps} steps of "
                     f"{sm.batch_size} ({cost}), into {out / SCORE_MODEL}; until it exists the SBG runs' steps above "
                     "are timed with stand-in targets (add one UNet pass per image and label)")
        if study.compare_images:
            lines.append(f"    then its SBG targets against the exact (smooth) ones, CM and NN on "
                         f"{study.compare_images} test images at each sigma, into {out / SCORE_MODEL / COMPARE}")
    stores = {run.store for run in study.runs if run.store is not None}
    if stores:
        n_all = n_train + n_test
        flops = 2 * 2 * n_train * n_all * 3072 * len(stores)
        store_seconds = flops / _matmul_flops_per_second()
        total += store_seconds
        lines.append(f"target stores: {len(stores)}, about {_duration(store_seconds)} of matrix products "
                     f"(at this machine's measured matmul speed) and "
                     f"{len(stores) * n_all * 10 * 3072 * 2 / 1e9:.1f} GB of fp16 targets")
    lines.append(f"estimated total on {device}: ~{total / 3600:.1f} h (training from steps timed at the real batch "
                 "size; attacks as upper bounds, every image standing to the end; a rough guide)")
    return "\n".join(lines)
