"""Clean and robust accuracy, alignment scores; every adversarial example is checked before it counts.

`robust_accuracy` is the one entry point for a robust number: it runs the attack (our evaluation PGD, one
AutoAttack component, or AutoAttack's components in sequence on the images still standing), records which
component fooled which image, and runs the guards (`pagrob.guards`) on the result. An entry that fails a guard
carries `verdict: "suspect"` (or "not learned", for a model near chance) and the reasons.

Every component's per-image outcome goes to the run folder as it is found (`pagrob.outcomes`): a killed
evaluation continues batch by batch with the same numbers, and the worst case at each (norm, eps), per image
over every attack that ever ran there, is the robust accuracy the report shows.
"""

from __future__ import annotations

import functools
import math
import importlib.metadata
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import pagrob
from pagrob import console, guards
from pagrob.accuracy import predict
from pagrob.alignment import ALIGNMENT_IMAGES, alignment_score, alignment_scores
from pagrob.attacks.adversaries import ADVERSARIES, NONE
from pagrob.attacks.library import MIN_CLASSES, LibraryAttack, components_for, get_version
from pagrob.attacks.own import OWN_NORMS
from pagrob.attacks.pgd import EvalPGD
from pagrob.attacks.settings import AttackSettings
from pagrob.config import AdvConfig, Config, EvalConfig
from pagrob.data import Dataset
from pagrob.devices import resolve_device
from pagrob.outcomes import FOLDER, FOOLED, INVALID, SURVIVED, OutcomeStore, model_hash, pending, worst_case
from pagrob.files import write_json
from pagrob.targets import TargetSource, make_source, reference_source_name

Attack = Callable[[Tensor, Tensor], Tensor]
# RobustBench's CIFAR-10 radii, the defaults wherever the inputs are images in [0, 1].
ROBUSTBENCH_EPS = {"l2": 0.5, "linf": 8 / 255}


@dataclass(frozen=True)
class Victim:
    """The model and the images under attack, and the valid input range (None: unbounded, e.g. toy2d points)."""

    model: nn.Module
    x: Tensor
    y: Tensor
    bounds: tuple[float, float] | None
    num_classes: int
    adversary: str = NONE  # the adv.method it was trained with: a single-step one brings the collapse guard


def batch_seed(seed: int, first_image: int) -> int:
    """Each batch's randomness depends only on where it starts: a resumed run draws what an uninterrupted one did."""
    return seed * 1_000_003 + first_image


def _make_attack(name: str, v: Victim, s: AttackSettings, seed: int, on_forward: Callable[[int], None]) -> Attack:
    if name == "pgd":
        return EvalPGD(v.model, s.norm, s.eps, s.pgd_steps, s.pgd_restarts, s.pgd_losses, v.bounds,
                       torch.Generator().manual_seed(seed))
    if s.norm in OWN_NORMS:  # torchattacks attacks L2 and L-inf only
        return OWN_NORMS[s.norm].make(name, v.model, s.eps, v.num_classes, v.bounds, get_version(s.version), seed)
    return LibraryAttack(v.model, name, s.norm, s.eps, v.num_classes, v.bounds, s.version, seed, on_forward)


def run_component(v: Victim, name: str, s: AttackSettings, robust: Tensor, store: OutcomeStore,
                  progress: bool = True) -> Tensor:
    """One attack on the images `robust` marks, batch by batch, each batch's outcome saved before the next.

    Images whose outcome the store already holds are not attacked again. Returns the outcome codes of all images
    (NOT_ATTACKED where `robust` is False and nothing was stored).
    """
    outcomes = store.open(name, s, len(v.x))
    idx = robust.nonzero().squeeze(1).cpu()
    codes = torch.tensor(outcomes.codes, dtype=torch.long)
    batches = pending(outcomes, robust, s.batch_size)
    todo = sum(len(b) for b in batches)
    start = time.perf_counter()
    bar = console.bar(total=len(idx), initial=len(idx) - todo, desc=f"{name} {s.norm} eps={s.eps:g}",
                      unit="img", leave=False, enabled=progress)
    forwards = [0]

    def on_forward(_: int) -> None:
        forwards[0] += 1
        bar.set_postfix_str(f"{forwards[0]} forward passes", refresh=False)
        bar.update(0)

    for batch in batches:
        b = batch.to(v.x.device)
        xb, yb = v.x[b], v.y[b]
        x_adv = _make_attack(name, v, s, batch_seed(s.seed, int(batch[0])), on_forward)(xb, yb)
        bad, message = guards.outside_ball(xb, x_adv, s.norm, s.eps, v.bounds)
        with torch.no_grad():
            ok = v.model(x_adv).argmax(1) == yb
        new = torch.where(bad, INVALID, torch.where(ok, SURVIVED, FOOLED)).cpu()
        outcomes.update(batch, new, message)
        codes[batch] = new
        bar.update(len(batch))
    bar.close()
    mine = codes[idx]
    console.line(f"{name} ({s.budget(name)}) {s.norm} eps={s.eps:g}: fooled {int((mine == FOOLED).sum())} of "
                 f"{len(idx)} images ({len(idx) - todo} from earlier), {time.perf_counter() - start:.1f} s",
                 progress)
    return codes


@dataclass
class SequenceResult:
    """What a sequence of attacks left: per-image robustness, who fooled whom, invalid examples, seconds."""

    robust: Tensor
    broken_by: dict[str, list[int]]
    seconds: dict[str, float]
    invalid: int
    message: str | None


def run_sequence(v: Victim, names: list[str], s: AttackSettings, robust: Tensor, store: OutcomeStore,
                 progress: bool = True) -> SequenceResult:
    """Attacks in order, each on the images all before it left standing (starting from `robust`)."""
    robust = robust.clone()
    result = SequenceResult(robust, {}, {}, 0, None)
    for name in names:
        start = time.perf_counter()
        idx = robust.nonzero().squeeze(1).cpu()
        codes = run_component(v, name, s, robust, store, progress)[idx]
        fooled = idx[codes == FOOLED]
        robust[fooled.to(robust.device)] = False
        result.broken_by[name] = fooled.tolist()
        result.invalid += int((codes == INVALID).sum())
        result.message = result.message or store.open(name, s, len(v.x)).message
        result.seconds[name] = time.perf_counter() - start
    return result


def _blackbox_guard(v: Victim, names: list[str], s: AttackSettings, seq: SequenceResult, clean_ok: Tensor,
                    store: OutcomeStore, progress: bool, attacked: Tensor | None = None) -> dict:
    """Guard (c): how many images Square fools that the white-box attacks could not. `attacked`: the images the
    white-box attacks ran on, when not all (a curve's radius): the limit is then a share of those."""
    queries = get_version(s.version).queries
    robust = seq.robust
    if names == ["square"]:  # the attack is black-box: compare it with APGD-CE on the same images
        wb = run_sequence(v, ["apgd-ce"], s, clean_ok, store, progress)
        seq.invalid, seq.message = seq.invalid + wb.invalid, seq.message or wb.message
        return guards.blackbox(int(wb.robust.sum()), int((wb.robust & ~robust).sum()), len(v.x), queries)
    if "square" in names:  # Square ran last, on the white-box survivors
        extra = len(seq.broken_by["square"])
        return guards.blackbox(int(robust.sum()) + extra, extra, len(v.x), queries)
    guarded = min(get_version(s.version).guard_images or len(v.x), len(v.x))
    robust = robust & (torch.arange(len(v.x), device=robust.device) < guarded)  # the version's guard images
    after = run_sequence(v, ["square"], s, robust, store, progress)
    seq.invalid, seq.message = seq.invalid + after.invalid, seq.message or after.message
    pool = guarded if attacked is None else int(attacked[:guarded].sum())
    return guards.blackbox(int(robust.sum()), int((robust & ~after.robust).sum()), pool, queries)


def _collapse_guard(v: Victim, s: AttackSettings, fooled: Tensor) -> dict:
    """Guard (e): the run's own single-step training attack, at the evaluated radius, on the images the evaluation
    attack fooled; seeded, so a re-evaluation draws the same noise. Not under L1: no single-step adversary steps
    there."""
    idx = fooled.nonzero().squeeze(1)
    attack = ADVERSARIES[v.adversary].make(v.model, AdvConfig(method=v.adversary, norm=s.norm, eps=s.eps), v.bounds,
                                           torch.Generator().manual_seed(s.seed))
    standing = 0
    for i in range(0, len(idx), s.batch_size):
        b = idx[i:i + s.batch_size]
        x_adv = attack(v.x[b], v.y[b])
        with torch.no_grad():
            standing += int((v.model(x_adv).argmax(1) == v.y[b]).sum())
    return guards.collapse(len(idx), standing, v.adversary)


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit pagrob runs from when it runs from its own checkout (with "-dirty" for local changes), else None."""
    package = Path(pagrob.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() / "src" / "pagrob" != package:
            return None  # installed inside someone else's repository
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(s: AttackSettings, device: torch.device | str) -> dict:
    """How a number was made: code and library versions, the device, and every attack setting."""
    return {"pagrob": pagrob.__version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "torchattacks": _version_of("torchattacks"), "device": str(device), "settings": s.as_dict()}


def robust_accuracy(v: Victim, s: AttackSettings, store: OutcomeStore | None = None, progress: bool = True,
                    sweep: dict | None = None, survivors: bool = False, candidates: Tensor | None = None,
                    then: tuple[str, ...] = ()) -> dict:
    """One `robust_accuracy` entry for results.json, with its per-attack breakdown and guard verdicts.

    `store` keeps per-image outcomes (default: in memory only); `sweep` reuses an eps-sweep guard already computed
    for this model, norm and images. `survivors`: attack only the images no attack in `store` has fooled at this
    radius, as AutoAttack chains its own components; the worst case is the same, the cost a fraction, and the
    entry's accuracy is then that of the whole chain (its `after` lists the attacks that came first).
    `candidates`: attack only these images (a robustness curve leaves out those another radius decided; its
    accuracy is then that of the candidates still standing). `then`: attacks that continue the chain (e.g. pgd).
    """
    need = MIN_CLASSES.get(s.attack, 2)
    if v.num_classes < need:
        raise ValueError(f"{s.attack} needs at least {need} classes, the data has {v.num_classes}: "
                         "use apgd-ce, fab-t, square, pgd or autoattack")
    start = time.perf_counter()
    v.model.eval()
    store = store or OutcomeStore(None, model_hash(v.model))
    clean_ok = predict(v.model, v.x) == v.y
    names, skipped = (components_for(s.version, v.num_classes) if s.attack == "autoattack" else ([s.attack], []))
    names, skipped = _available(names, skipped, s.norm)
    names += [name for name in then if name not in names]
    if not names:
        raise ValueError(f"{s.attack} has no {s.norm} version here: under {s.norm} use "
                         f"{', '.join(OWN_NORMS[s.norm].components)} or autoattack")
    standing, fooled_before = clean_ok.clone() if candidates is None else clean_ok & candidates, {}
    for name, fooled in (_stored_before(store, s, len(v.x), names) if survivors else {}).items():
        newly = fooled.to(standing.device) & standing
        fooled_before[name] = int(newly.sum())
        standing &= ~newly
    attacked = standing.clone()
    seq = run_sequence(v, names, s, standing, store, progress)
    checks = {"eps_sweep": sweep or guards.eps_sweep(v.model, v.x, v.y, s.norm, s.eps, v.bounds)}
    if s.norm not in OWN_NORMS or "square" in OWN_NORMS[s.norm].components:  # else no black-box attack: not run
        checks["blackbox"] = _blackbox_guard(v, names, s, seq, clean_ok, store, progress,
                                             None if candidates is None else attacked)
    checks["loss_rise"] = guards.loss_rise(v.model, v.x, v.y, s.norm, s.eps, v.bounds)
    checks = {"in_ball": guards.in_ball(seq.invalid, len(v.x), seq.message), **checks}
    if v.adversary in ADVERSARIES and ADVERSARIES[v.adversary].single_step and s.norm not in OWN_NORMS:
        checks["collapse"] = _collapse_guard(v, s, attacked & ~seq.robust)
    checks["learned"] = guards.learned(clean_ok.float().mean().item(), v.num_classes)
    status, reasons = guards.verdict(checks)
    entry = {"attack": s.attack, "norm": s.norm, "eps": s.eps, "n_examples": len(v.x),
             "accuracy": seq.robust.float().mean().item(), "clean_accuracy": clean_ok.float().mean().item()}
    if s.attack == "pgd":
        entry.update(steps=s.pgd_steps, restarts=s.pgd_restarts, losses=list(s.pgd_losses))
    else:
        entry["version"] = s.version
    if survivors:
        entry["after"] = fooled_before  # the attacks this one continued, with the images each fooled first
    entry.update(breakdown={"clean": int((~clean_ok).sum()), **fooled_before,
                            **{k: len(x) for k, x in seq.broken_by.items()}},
                 broken_by=seq.broken_by, skipped=skipped, guards=checks, verdict=status, suspect_reasons=reasons,
                 seconds_by_attack=seq.seconds, seconds=time.perf_counter() - start,
                 provenance=provenance(s, v.x.device))
    return entry


def _available(names: list[str], skipped: list[str], norm: str) -> tuple[list[str], list[str]]:
    """The components that exist for `norm` (ours at L1: no FAB), the others added to the skipped reasons."""
    if norm not in OWN_NORMS:
        return list(names), skipped
    have = OWN_NORMS[norm].components
    return [n for n in names if n in have], skipped + [f"{n} has no {norm} version here" for n in names
                                                       if n not in have]


def _stored_before(store: OutcomeStore, s: AttackSettings, n: int, names: list[str]) -> dict[str, Tensor]:
    """'component budget' -> images it fooled, for every stored attack at the radius of `s` on the same n images,
    in file-name order, except the components about to run and the Square of this version's black-box guard: the
    images only Square fooled stay standing for the white-box attacks, so the guard can still see them."""
    found = {}
    for o in store.all_at(s.norm, s.eps):
        label = f"{o.component} {o.key['budget']}"
        again = o.key["budget"] == s.budget(o.component) and (o.component in names or o.component == "square")
        if len(o.codes) == n and not again:
            found[label] = torch.tensor(o.codes) == FOOLED
    return found


def _stored_sweep(results: dict, norm: str, n: int) -> dict | None:
    """The eps-sweep guard an earlier entry of this run computed at `norm` on the same first n images: it depends
    on the model, the norm and the images only, so one serves every radius (as in `pgd_results`)."""
    return next((e["guards"]["eps_sweep"] for e in results.get("robust_accuracy", [])
                 if e["norm"] == norm and e["n_examples"] == n and "eps_sweep" in e.get("guards", {})), None)


def eval_settings(cfg: EvalConfig, **changes) -> AttackSettings:
    """The run's evaluation settings (PGD budget, batch size) as one value, with `changes` applied."""
    return AttackSettings(**{"pgd_steps": cfg.pgd_steps, "pgd_restarts": cfg.pgd_restarts,
                             "pgd_losses": tuple(cfg.pgd_losses), "batch_size": cfg.batch_size, **changes})


def pgd_results(v: Victim, cfg: EvalConfig, store: OutcomeStore, progress: bool = True) -> list[dict]:
    """Robust accuracy under the evaluation PGD for every norm and eps in the eval config, guarded.

    The guards' black-box check uses the Square budget of `cfg.version`: this runs after every training.
    """
    rows = []
    for norm in cfg.norms:
        eps_list = [e for e in (cfg.eps_l2 if norm == "l2" else cfg.eps_linf) if e > 0]
        sweep = guards.eps_sweep(v.model, v.x, v.y, norm, max(eps_list), v.bounds) if eps_list else None
        for eps in eps_list:
            s = eval_settings(cfg, attack="pgd", norm=norm, eps=eps, version=cfg.version)
            rows.append(robust_accuracy(v, s, store, progress, sweep))
    return rows


def worst_cases(store: OutcomeStore, clean_ok: Tensor, entries: list[dict]) -> list[dict]:
    """One robust accuracy per (norm, eps) of `entries`: per image, over every attack that ran there.

    `clean_ok`: the clean correctness of the test images in order (at least as many as any attack saw). The verdict
    is the worst of the entries' at that radius (`guards.worst_verdict`). An entry on the same images whose outcomes
    are not stored (results written before outcomes were kept) counts with its own accuracy.
    """
    out = []
    for norm, eps in dict.fromkeys((e["norm"], float(e["eps"])) for e in entries):
        here = [e for e in entries if e["norm"] == norm and float(e["eps"]) == eps]
        n = max(e["n_examples"] for e in here)
        found = worst_case(store, clean_ok, norm, eps) or {
            "norm": norm, "eps": eps, "accuracy": 1.0, "attacks": [], "n_examples": n,
            "clean_accuracy": clean_ok[:n].float().mean().item()}
        # No shown number on the same images may be lower (e.g. an entry whose outcome file a later run replaced).
        found["accuracy"] = min([found["accuracy"]] + [e["accuracy"] for e in here
                                                       if e["n_examples"] == found["n_examples"]])
        suspects = [e for e in here if e.get("verdict", "ok") != "ok"]
        found.update(verdict=guards.worst_verdict(e["verdict"] for e in suspects),
                     suspect_attacks=[e["attack"] + (f" [{e['version']}]" if "version" in e else "") for e in suspects])
        out.append(found)
    return out


def evaluate_and_write(model: nn.Module, data: Dataset, cfg: Config, out: Path, align_source: TargetSource,
                       train_seconds: float, progress: bool = True, facts: dict | None = None) -> dict:
    """The end-of-training evaluation: clean accuracy on the whole test split, the evaluation PGD on the first
    eval.n test images (per-image outcomes kept in `out`), the worst case per radius, alignment; results.json,
    with `facts` about the training (e.g. the run it was fine-tuned from) beside them."""
    model.eval()
    n = cfg.eval.n or len(data.x_test)
    clean_ok = predict(model, data.x_test) == data.y_test
    store = OutcomeStore(out / FOLDER, model_hash(model))
    entries = pgd_results(Victim(model, data.x_test[:n], data.y_test[:n], data.bounds, data.num_classes,
                                 cfg.adv.method), cfg.eval, store, progress)
    results = {
        "dataset": data.name,
        "test_split": data.test_split,
        "method": cfg.method,
        "name": cfg.name,
        "clean_accuracy": clean_ok.float().mean().item(),
        "n_test": len(data.x_test),
        "robust_accuracy": entries,
        "worst_case": worst_cases(store, clean_ok, entries),
        "alignment": {"source": align_source.name,
                      "cosine": alignment_score(model, data.x_test[:ALIGNMENT_IMAGES], align_source, data.num_classes)},
        "train_seconds": train_seconds,
        **(facts or {}),
    }
    write_json(out / "results.json", results)
    return results


def summary_line(entry: dict) -> str:
    """One line for the screen: attack, radius, accuracy, and the guards' verdict with reasons."""
    what = entry["attack"] + (f" ({entry['version']})" if "version" in entry else "")
    what += f" after {' + '.join(entry['after'])}" if entry.get("after") else ""
    head = (f"{what} {entry['norm']} eps={entry['eps']:g}: robust {100 * entry['accuracy']:.1f}% "
            f"(clean {100 * entry.get('clean_accuracy', float('nan')):.1f}%, n={entry['n_examples']})")
    parts = ", ".join(f"{k} {v}" for k, v in entry.get("breakdown", {}).items())
    status = entry.get("verdict", "unguarded")
    tail = "" if status in ("ok", "unguarded") else " -- " + "; ".join(entry["suspect_reasons"])
    return f"{head} [fooled by: {parts}] guards: {status if status in ('ok', 'unguarded') else status.upper()}{tail}"


def merge_entries(old: list[dict], new: list[dict]) -> list[dict]:
    """Append `new`, replacing earlier entries of the same attack, version, norm, eps and image count."""
    def key(e: dict) -> tuple:
        return e["attack"], e.get("version"), e["norm"], float(e["eps"]), e["n_examples"]

    fresh = {key(e) for e in new}
    return [e for e in old if key(e) not in fresh] + new


def l1_beside_l2(l2: float, dims: int) -> float:
    """The L1 radius that sits beside an L2 radius: 24 x L2 for CIFAR-10's 3,072 dimensions (L1 12 beside L2 0.5,
    Croce & Hein 2021), scaled by sqrt(d / 3072) for other inputs (the L1 size of a change spread over k
    coordinates grows like sqrt(k) times its L2 size), rounded to two significant digits."""
    return float(f"{24.0 * l2 * math.sqrt(dims / 3072):.2g}")


def default_eps(run, norm: str) -> list[float]:
    """RobustBench's radius for images in [0, 1]; the run's configured radii for unbounded inputs (toy2d); for
    L1 the radius beside the first L2 one (`l1_beside_l2`)."""
    data = run.dataset()
    if norm == "l1":
        return [l1_beside_l2(default_eps(run, "l2")[0], math.prod(data.input_shape))]
    if data.bounds is not None:
        return [ROBUSTBENCH_EPS[norm]]
    return list(run.config.eval.eps_l2 if norm == "l2" else run.config.eval.eps_linf)


def default_alignment_sources(run) -> list[str]:
    """The run's own target source (when it trained with one) and the dataset's reference source."""
    own = [] if run.config.pag.source == "none" else [run.config.pag.source]
    return list(dict.fromkeys(own + [reference_source_name(run.config.data.name)]))


def evaluate_run(run, attack: str = "autoattack", norm: str = "l2", eps: list[float] | None = None,
                 n: int | None = None, version: str = "standard", alignment: list[str] | None = None,
                 device: str | torch.device | None = None, progress: bool = True,
                 survivors: bool = False) -> list[dict]:
    """Attack the first n test images of a run (`pagrob.runs.Run`), score alignment, update its results.json.

    Per-image outcomes go to the run folder as they are found: run the same command again after a kill and it
    continues. `survivors`: attack only what the run's earlier attacks left standing (`robust_accuracy`).
    Returns the new robust_accuracy entries (`summary_line` gives each one line for the screen).
    """
    # Every setting is checked (the AttackSettings) before any attack starts.
    settings = [eval_settings(run.config.eval, attack=attack, norm=norm, eps=e, version=version)
                for e in eps or default_eps(run, norm)]
    data = run.dataset()
    n = run.config.eval.n if n is None else n
    n = min(n, len(data.x_test)) if n > 0 else len(data.x_test)
    device = device or resolve_device(run.config.device)
    model = run.model.to(device).eval()
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    victim = Victim(model, x_test[:n], y_test[:n], data.bounds, data.num_classes, run.config.adv.method)
    store = OutcomeStore(run.path / FOLDER, model_hash(model))
    sweep = _stored_sweep(run.results, norm, n) or guards.eps_sweep(model, victim.x, victim.y, norm,
                                                                      max(s.eps for s in settings), data.bounds)
    entries = [robust_accuracy(victim, s, store, progress, sweep, survivors) for s in settings]
    sources = {}
    for name in alignment if alignment is not None else default_alignment_sources(run):
        sources[name] = make_source(name, run.config.pag, data).to(device)
    clean_ok = predict(model, x_test) == y_test
    results = run.results
    if "clean_accuracy" not in results:  # an imported checkpoint's first evaluation
        results.update(clean_accuracy=clean_ok.float().mean().item(), n_test=len(data.x_test))
    results["robust_accuracy"] = merge_entries(results.get("robust_accuracy", []), entries)
    results["worst_case"] = worst_cases(store, clean_ok, results["robust_accuracy"])
    results["alignment_scores"] = {**results.get("alignment_scores", {}),
                                   **alignment_scores(model, x_test[:ALIGNMENT_IMAGES], sources, data.num_classes)}
    write_json(run.path / "results.json", results)
    return entries
