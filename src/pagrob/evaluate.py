"""Clean and robust accuracy, alignment scores; every adversarial example is checked before it counts.

`robust_accuracy` is the one entry point for a robust number: it runs the attack (our PGD, one
AutoAttack component, or AutoAttack's components in sequence on the images still standing), records
which component fooled which image, and runs the gradient-masking guards (`pagrob.guards`) on the
result. An entry that fails a guard carries `verdict: "suspect"` and the reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pagrob import console, guards
from pagrob.accuracy import clean_accuracy, predict
from pagrob.attacks import PGD
from pagrob.attacks.library import COMPONENTS, LibraryAttack, components_for, get_version
from pagrob.config import Config, EvalConfig
from pagrob.data import Dataset
from pagrob.alignment import ALIGNMENT_IMAGES, alignment_score, alignment_scores
from pagrob.devices import resolve_device
from pagrob.files import write_json
from pagrob.targets import TargetSource, make_source, reference_source_name

Attack = Callable[[Tensor, Tensor], Tensor]
ATTACKS = ("autoattack", "pgd") + COMPONENTS
# RobustBench's CIFAR-10 radii, the defaults wherever the inputs are images in [0, 1].
ROBUSTBENCH_EPS = {"l2": 0.5, "linf": 8 / 255}


class _Tally:
    """Invalid adversarial examples seen while attacking (guard a)."""

    def __init__(self) -> None:
        self.violations, self.message = 0, None

    def add(self, bad: Tensor, message: str | None) -> None:
        self.violations += int(bad.sum())
        self.message = self.message or message


def _still_correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack, norm: str, eps: float,
                   bounds: tuple[float, float] | None, batch_size: int, tally: _Tally, bar: tqdm) -> Tensor:
    """Per image: the attack did not fool it. An example outside its ball or range counts as not fooled."""
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = attack(xb, yb)
        bad, message = guards.outside_ball(xb, x_adv, norm, eps, bounds)
        tally.add(bad, message)
        with torch.no_grad():
            out.append((model(x_adv).argmax(1) == yb) | bad)
        bar.update(len(xb))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def _make_attack(name: str, model: nn.Module, norm: str, eps: float, bounds: tuple[float, float] | None,
                 num_classes: int, version: str, pgd_steps: int, pgd_restarts: int,
                 on_forward: Callable[[int], None] | None) -> Attack:
    if name == "pgd":
        return PGD(model, norm, eps, pgd_steps, restarts=pgd_restarts, bounds=bounds,
                   generator=torch.Generator().manual_seed(0))
    return LibraryAttack(model, name, norm, eps, num_classes, bounds, version, on_forward=on_forward)


def run_sequence(model: nn.Module, x: Tensor, y: Tensor, names: list[str], norm: str, eps: float,
                 bounds: tuple[float, float] | None, num_classes: int, version: str = "standard",
                 pgd_steps: int = 20, pgd_restarts: int = 1, batch_size: int = 256, progress: bool = True,
                 robust: Tensor | None = None, tally: _Tally | None = None
                 ) -> tuple[Tensor, dict[str, list[int]], dict[str, float]]:
    """Attacks in order, each on the images all before it left standing.

    Returns the per-image "still correct" mask and, per attack, the indices (into x) it fooled and its seconds.
    `robust` is the starting mask (default: the clean predictions' correctness).
    """
    robust = (predict(model, x) == y) if robust is None else robust.clone()
    tally = tally or _Tally()
    broken_by: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        idx = robust.nonzero().squeeze(1)
        bar = console.bar(total=len(idx), desc=f"{name} {norm} eps={eps:g}", unit="img", enabled=progress,
                          leave=False)
        forwards = [0]

        def on_forward(_: int) -> None:
            forwards[0] += 1
            bar.set_postfix_str(f"{forwards[0]} forward passes", refresh=False)
            bar.update(0)

        attack = _make_attack(name, model, norm, eps, bounds, num_classes, version, pgd_steps, pgd_restarts,
                              on_forward)
        ok = _still_correct(model, x[idx], y[idx], attack, norm, eps, bounds, batch_size, tally, bar)
        bar.close()
        fooled = idx[~ok]
        robust[fooled] = False
        broken_by[name] = fooled.tolist()
        seconds[name] = time.perf_counter() - start
    return robust, broken_by, seconds


def _blackbox_guard(model: nn.Module, x: Tensor, y: Tensor, names: list[str], robust: Tensor,
                    broken_by: dict[str, list[int]], clean_ok: Tensor, norm: str, eps: float,
                    bounds: tuple[float, float] | None, num_classes: int, version: str, batch_size: int,
                    progress: bool, tally: _Tally) -> dict:
    """Guard (c): how many images Square fools that the white-box attacks could not."""
    run = dict(norm=norm, eps=eps, bounds=bounds, num_classes=num_classes, version=version, batch_size=batch_size,
               progress=progress, tally=tally)
    queries = get_version(version).queries
    if names == ["square"]:  # the attack is black-box: compare it with APGD-CE on the same images
        wb_robust, _, _ = run_sequence(model, x, y, ["apgd-ce"], robust=clean_ok, **run)
        return guards.blackbox(int(wb_robust.sum()), int((wb_robust & ~robust).sum()), len(x), queries)
    if "square" in names:  # Square ran last, on the white-box survivors
        extra = len(broken_by["square"])
        return guards.blackbox(int(robust.sum()) + extra, extra, len(x), queries)
    after, _, _ = run_sequence(model, x, y, ["square"], robust=robust, **run)
    return guards.blackbox(int(robust.sum()), int((robust & ~after).sum()), len(x), queries)


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, attack: str, norm: str, eps: float,
                    bounds: tuple[float, float] | None, num_classes: int | None = None, version: str = "standard",
                    pgd_steps: int = 20, pgd_restarts: int = 1, batch_size: int = 256, progress: bool = True,
                    sweep: dict | None = None) -> dict:
    """One `robust_accuracy` entry for results.json, with its per-attack breakdown and guard verdicts.

    `sweep` reuses an eps-sweep guard already computed for this model, norm and images.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack '{attack}': use {', '.join(ATTACKS)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps} (eps 0 is the clean accuracy)")
    get_version(version)
    start = time.perf_counter()
    model.eval()
    clean_ok = predict(model, x) == y
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
    names, skipped = (components_for(version, num_classes) if attack == "autoattack" else ([attack], []))
    tally = _Tally()
    robust, broken_by, seconds = run_sequence(model, x, y, names, norm, eps, bounds, num_classes, version, pgd_steps,
                                     pgd_restarts, batch_size, progress, clean_ok, tally)
    checks = {
        "eps_sweep": sweep or guards.eps_sweep(model, x, y, norm, eps, bounds),
        "blackbox": _blackbox_guard(model, x, y, names, robust, broken_by, clean_ok, norm, eps, bounds, num_classes,
                                    version, batch_size, progress, tally),
        "loss_rise": guards.loss_rise(model, x, y, norm, eps, bounds),
    }
    checks = {"in_ball": guards.in_ball(tally.violations, len(x), tally.message), **checks}
    status, reasons = guards.verdict(checks)
    entry = {"attack": attack, "norm": norm, "eps": eps, "n_examples": len(x),
             "accuracy": robust.float().mean().item(), "clean_accuracy": clean_ok.float().mean().item()}
    if attack == "pgd":
        entry.update(steps=pgd_steps, restarts=pgd_restarts)
    else:
        entry["version"] = version
    entry.update(breakdown={"clean": int((~clean_ok).sum()), **{k: len(v) for k, v in broken_by.items()}},
                 broken_by=broken_by, skipped=skipped, guards=checks, verdict=status, suspect_reasons=reasons,
                 seconds_by_attack=seconds, seconds=time.perf_counter() - start)
    return entry


def pgd_results(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, bounds: tuple[float, float] | None,
                progress: bool = True) -> list[dict]:
    """Robust accuracy under our PGD for every norm and eps in the eval config, guarded.

    The guards' black-box check uses the "custom-fast" Square budget here: this runs after every training.
    """
    rows = []
    for norm in cfg.norms:
        eps_list = [e for e in (cfg.eps_l2 if norm == "l2" else cfg.eps_linf) if e > 0]
        sweep = guards.eps_sweep(model, x, y, norm, max(eps_list), bounds) if eps_list else None
        for eps in eps_list:
            rows.append(robust_accuracy(model, x, y, "pgd", norm, eps, bounds, version="custom-fast",
                                        pgd_steps=cfg.pgd_steps, pgd_restarts=cfg.pgd_restarts,
                                        batch_size=cfg.batch_size, progress=progress, sweep=sweep))
    return rows


def summary_line(entry: dict) -> str:
    """One line for the screen: attack, radius, accuracy, and the guards' verdict with reasons."""
    what = entry["attack"] + (f" ({entry['version']})" if "version" in entry else "")
    head = (f"{what} {entry['norm']} eps={entry['eps']:g}: robust {100 * entry['accuracy']:.1f}% "
            f"(clean {100 * entry.get('clean_accuracy', float('nan')):.1f}%, n={entry['n_examples']})")
    parts = ", ".join(f"{k} {v}" for k, v in entry.get("breakdown", {}).items())
    status = entry.get("verdict", "unguarded")
    tail = "" if status != "suspect" else " -- " + "; ".join(entry["suspect_reasons"])
    return f"{head} [fooled by: {parts}] guards: {status.upper() if status == 'suspect' else status}{tail}"


def merge_entries(old: list[dict], new: list[dict]) -> list[dict]:
    """Append `new`, replacing earlier entries of the same attack, version, norm, eps and image count."""
    def key(e: dict) -> tuple:
        return e["attack"], e.get("version"), e["norm"], float(e["eps"]), e["n_examples"]

    fresh = {key(e) for e in new}
    return [e for e in old if key(e) not in fresh] + new


def default_eps(run, norm: str) -> list[float]:
    """RobustBench's radius for images in [0, 1]; the run's configured radii for unbounded inputs (toy2d)."""
    if run.dataset().bounds is not None:
        return [ROBUSTBENCH_EPS[norm]]
    return list(run.config.eval.eps_l2 if norm == "l2" else run.config.eval.eps_linf)


def default_alignment_sources(run) -> list[str]:
    """The run's own target source (when it trained with one) and the dataset's reference source."""
    own = [] if run.config.pag.source == "none" else [run.config.pag.source]
    return list(dict.fromkeys(own + [reference_source_name(run.config.data.name)]))


def evaluate_run(run, attack: str = "autoattack", norm: str = "l2", eps: list[float] | None = None,
                 n: int | None = None, version: str = "standard", alignment: list[str] | None = None,
                 device: str | torch.device | None = None, progress: bool = True) -> list[dict]:
    """Attack the first n test images of a run (`pagrob.runs.Run`), score alignment, update its results.json.

    Returns the new robust_accuracy entries (`summary_line` gives each one line for the screen).
    """
    if norm not in ROBUSTBENCH_EPS:
        raise ValueError(f"norm must be l2 or linf, got '{norm}'")
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack '{attack}': use {', '.join(ATTACKS)}")
    get_version(version)
    data = run.dataset()
    n = run.config.eval.n if n is None else n
    n = min(n, len(data.x_test)) if n > 0 else len(data.x_test)
    device = device or resolve_device(run.config.device)
    model = run.model.to(device).eval()
    x, y = data.x_test[:n].to(device), data.y_test[:n].to(device)
    entries = []
    for e in eps or default_eps(run, norm):
        entry = robust_accuracy(model, x, y, attack, norm, e, data.bounds, data.num_classes, version,
                                run.config.eval.pgd_steps, run.config.eval.pgd_restarts, run.config.eval.batch_size,
                                progress)
        entries.append(entry)
    sources = {}
    for name in alignment if alignment is not None else default_alignment_sources(run):
        sources[name] = make_source(name, run.config.pag, data).to(device)
    x_align = data.x_test[:ALIGNMENT_IMAGES].to(device)
    results = run.results
    if "clean_accuracy" not in results:  # an imported checkpoint's first evaluation
        results.update(clean_accuracy=clean_accuracy(model, data.x_test.to(device), data.y_test.to(device)),
                       n_test=len(data.x_test))
    results["robust_accuracy"] = merge_entries(results.get("robust_accuracy", []), entries)
    results["alignment_scores"] = {**results.get("alignment_scores", {}),
                                   **alignment_scores(model, x_align, sources, data.num_classes)}
    write_json(run.path / "results.json", results)
    return entries


def evaluate_and_write(model: nn.Module, data: Dataset, cfg: Config, out: Path, align_source: TargetSource,
                       train_seconds: float, progress: bool = True) -> dict:
    """Clean accuracy on the whole test split, PGD on the first eval.n test images, alignment; results.json."""
    n = cfg.eval.n or len(data.x_test)
    x, y = data.x_test[:n], data.y_test[:n]
    results = {
        "dataset": data.name,
        "test_split": data.test_split,
        "method": cfg.method,
        "name": cfg.name,
        "clean_accuracy": clean_accuracy(model, data.x_test, data.y_test),
        "n_test": len(data.x_test),
        "robust_accuracy": pgd_results(model, x, y, cfg.eval, data.bounds, progress),
        "alignment": {"source": align_source.name,
                      "cosine": alignment_score(model, x[:ALIGNMENT_IMAGES], align_source, data.num_classes)},
        "train_seconds": train_seconds,
    }
    write_json(out / "results.json", results)
    return results
