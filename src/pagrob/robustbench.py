"""`pagrob report RUN --robustbench-json FILE`: what pagrob measured, in the model-info JSON RobustBench's
leaderboard takes (its `model_info/<dataset>/<threat model>/<Name>.json`).

Only a number RobustBench would accept is written: AutoAttack's standard version, at its CIFAR-10 radius (L2 0.5
or L-inf 8/255), on CIFAR-10's test images, with every gradient-masking guard passed. Anything else is refused
with the reason. The fields a tool cannot know (paper link, name, authors, venue) are left empty to fill in;
what pagrob adds (images attacked, the attack's components and implementation, the worst case over every attack
pagrob ran) sits under "pagrob".
"""

from __future__ import annotations

import math
from pathlib import Path

from pagrob.config import Config
from pagrob.errors import RunError
from pagrob.evaluate import ROBUSTBENCH_EPS
from pagrob.files import write_json
from pagrob.runs import load_run

THREAT_MODELS = {"L2": "l2", "Linf": "linf"}  # RobustBench's names -> ours
EPS_TEXT = {"l2": "0.5", "linf": "8/255"}
TO_FILL = ("link", "name", "authors", "venue", "reported")


def _standard_entries(results: dict) -> dict[str, dict]:
    """norm -> the AutoAttack standard entry at RobustBench's radius on the most images."""
    found: dict[str, dict] = {}
    for e in results.get("robust_accuracy", []):
        if e["attack"] == "autoattack" and e.get("version") == "standard" and not e.get("after") \
                and math.isclose(float(e["eps"]), ROBUSTBENCH_EPS[e["norm"]]):  # AutoAttack alone, not a chain
            if e["n_examples"] > found.get(e["norm"], {}).get("n_examples", 0):
                found[e["norm"]] = e
    return found


def _architecture(cfg: Config) -> str:
    if cfg.model.arch.startswith("file:"):
        args = ", ".join(f"{k}={v}" for k, v in cfg.model.args.items())
        return f"{cfg.model.arch.rsplit(':', 1)[1]}({args})"
    return f"{cfg.model.arch} (width {cfg.model.width})"


def model_info(results: dict, cfg: Config, threat_model: str | None = None) -> dict:
    """RobustBench's model-info fields for one run's results, or RunError saying why they cannot be given."""
    if results.get("dataset") != "cifar10":
        raise RunError(f"RobustBench's leaderboard here is CIFAR-10's; this run was evaluated on "
                       f"{results.get('dataset')}")
    if results.get("test_split", "test") != "test":
        raise RunError("this run was evaluated on a validation split carved from the training images, not on "
                       "CIFAR-10's test set; evaluate a run trained without data.holdout")
    entries = _standard_entries(results)
    if threat_model is not None:
        if threat_model not in THREAT_MODELS:
            raise RunError(f"--threat-model must be {' or '.join(THREAT_MODELS)}, got {threat_model}")
        entries = {k: v for k, v in entries.items() if k == THREAT_MODELS[threat_model]}
    if not entries:
        others = sorted({f"{e['attack']}" + (f" [{e['version']}]" if "version" in e else "") + f" {e['norm']} "
                         f"eps={float(e['eps']):.4g}" for e in results.get("robust_accuracy", [])})
        raise RunError("RobustBench takes AutoAttack's standard version at L2 0.5 or L-inf 8/255; this run has "
                       f"{', '.join(others) or 'no robust evaluation'} (run: pagrob evaluate RUN --attack autoattack "
                       "--version standard --norm linf)")
    if len(entries) > 1:
        raise RunError("this run has AutoAttack standard results at both L2 0.5 and L-inf 8/255; choose one with "
                       "--threat-model L2 or --threat-model Linf (RobustBench keeps one file per threat model)")
    norm, entry = next(iter(entries.items()))
    if entry.get("verdict", "ok") != "ok":
        raise RunError(f"a guard failed for this number ({'; '.join(entry['suspect_reasons'])}): "
                       "it would not be a trustworthy leaderboard entry")
    worst = next((w for w in results.get("worst_case", []) if w["norm"] == norm
                  and math.isclose(float(w["eps"]), float(entry["eps"]))), None)
    provenance = entry.get("provenance", {})
    info = {key: "" for key in TO_FILL}
    info.update({
        "additional_data": False if results.get("method") != "imported" else None,
        "number_forward_passes": 1,
        "dataset": "cifar10",
        "architecture": _architecture(cfg),
        "eps": EPS_TEXT[norm],
        "clean_acc": f"{100 * entry['clean_accuracy']:.2f}",
        "autoattack_acc": f"{100 * entry['accuracy']:.2f}",
        "footnote": (f"Evaluated by pagrob on the first {entry['n_examples']} CIFAR-10 test images "
                     "(RobustBench's leaderboard uses all 10,000)." if entry["n_examples"] < 10_000 else ""),
        "pagrob": {
            "threat_model": next(k for k, v in THREAT_MODELS.items() if v == norm),
            "n_examples": entry["n_examples"],
            "attack": {"name": "autoattack", "version": entry["version"],
                       "components": [k for k in entry.get("breakdown", {}) if k != "clean"],
                       "skipped": entry.get("skipped", []),
                       "implementation": f"torchattacks {provenance.get('torchattacks')}",
                       "pagrob": provenance.get("pagrob"), "git_commit": provenance.get("git_commit")},
            "worst_case_acc": f"{100 * worst['accuracy']:.2f}" if worst else None,
            "worst_case_attacks": [a["component"] for a in worst.get("attacks", [])] if worst else [],
            "guards": entry.get("verdict"),
        },
    })
    return info


def write_robustbench_json(run_dir: str | Path, path: str | Path, threat_model: str | None = None) -> Path:
    """Write the run's model-info JSON to `path`; refuse (RunError) a run RobustBench would not accept."""
    run = load_run(run_dir)
    info = model_info(run.results, run.config, threat_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, info)
    return path
