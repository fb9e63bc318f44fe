"""Per-image attack outcomes kept in the run folder: what makes an evaluation resumable and the worst case exact.

One JSON file per (attack component, budget, norm, eps, n) under `<run>/attack_outcomes/`, holding one code per
test image: not attacked yet, fooled, survived, or survived because the attack returned an invalid example.
It is rewritten atomically after every batch, so a killed evaluation continues where it stopped; the file
also names the model's weights (a hash), the seed and the batch size, and one that does not match them is
started afresh rather than mixed in.

The worst case at (norm, eps) reads every file of the current model at that radius: an image counts as robust
only if it was classified correctly and no attack that ran on it fooled it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from pagrob.attacks.settings import AttackSettings
from pagrob.files import write_json

FOLDER = "attack_outcomes"
NOT_ATTACKED, FOOLED, SURVIVED, INVALID = -1, 0, 1, 2  # INVALID: an example outside its ball, counted as survived


def model_hash(model: nn.Module) -> str:
    """sha256 of the weights and buffers: outcomes of other weights never mix with this model's."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class Outcomes:
    """One component's per-image codes at one (norm, eps, n), and the file that keeps them (None: in memory)."""

    component: str
    key: dict
    codes: list[int]
    path: Path | None = None
    message: str | None = None  # the first invalid example's description, for the in-ball guard
    values: list[float | None] | None = None  # a number per image where the outcome has one (a minimum norm)

    def save(self) -> None:
        if self.path is not None:
            extra = {} if self.values is None else {"values": self.values}
            write_json(self.path, {**self.key, "message": self.message, "codes": self.codes, **extra})

    def update(self, idx: Tensor, codes: Tensor, message: str | None, values: Tensor | None = None) -> None:
        for i, c in zip(idx.tolist(), codes.tolist()):
            self.codes[i] = c
        if values is not None:  # inf (nothing found) is kept as null: JSON has no infinity
            for i, value in zip(idx.tolist(), values.tolist()):
                self.values[i] = value if value != float("inf") else None
        self.message = self.message or message
        self.save()


@dataclass
class OutcomeStore:
    """The run folder's outcome files for one model (folder None: nothing is kept between calls)."""

    folder: Path | None
    model: str
    _memory: dict = field(default_factory=dict)

    def _key(self, component: str, s: AttackSettings, n: int) -> dict:
        return {"model": self.model, "component": component, "budget": s.budget(component), "norm": s.norm,
                "eps": float(s.eps), "n": n, "seed": s.seed, "batch_size": s.batch_size}

    def open(self, component: str, s: AttackSettings, n: int) -> Outcomes:
        """The outcomes so far of `component` under `s` on the first n images (all NOT_ATTACKED when new)."""
        key = self._key(component, s, n)
        return self.open_named(f"{component}-{key['budget']}-{s.norm}-eps{s.eps:g}-n{n}", key, n)

    def open_named(self, name: str, key: dict, n: int, values: bool = False) -> Outcomes:
        """The outcomes so far in the file `name` whose key (with this model's hash) is `key`; a file whose key
        differs is started afresh. `values`: it also keeps a number per image."""
        key = {"model": self.model, **key, "n": n}
        fresh = Outcomes(key["component"], key, [NOT_ATTACKED] * n, values=[None] * n if values else None)
        if self.folder is None:
            return self._memory.setdefault(name, fresh)
        fresh.path = self.folder / f"{name}.json"
        if fresh.path.is_file():
            saved = json.loads(fresh.path.read_text())
            if {k: saved.get(k) for k in key} == key and len(saved["codes"]) == n:
                return Outcomes(key["component"], key, saved["codes"], fresh.path, saved.get("message"),
                                saved.get("values"))
        self.folder.mkdir(parents=True, exist_ok=True)
        return fresh

    def all_at(self, norm: str, eps: float) -> list[Outcomes]:
        """Every outcome file of this model at (norm, eps), whatever the attack, budget or image count."""
        return [o for o in self.all_of(norm) if abs(o.key["eps"] - eps) <= 1e-12 * max(1.0, eps)]

    def all_of(self, norm: str) -> list[Outcomes]:
        """Every outcome file of this model under `norm`, at any radius."""
        if self.folder is None:
            found = list(self._memory.values())
        else:
            found = []
            for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
                saved = json.loads(path.read_text())
                found.append(Outcomes(saved["component"], {k: v for k, v in saved.items() if k != "codes"},
                                      saved["codes"], path))
        return [o for o in found if o.key["model"] == self.model and o.key.get("norm") == norm]


def pending(outcomes: Outcomes, among: Tensor | None, batch_size: int) -> list[Tensor]:
    """The images (of `among`, a mask; default all) whose outcome is not stored yet, in batches: what a resumed
    evaluation still has to do."""
    codes = torch.tensor(outcomes.codes, dtype=torch.long)
    mask = codes == NOT_ATTACKED
    if among is not None:
        mask &= among.cpu()
    todo = mask.nonzero().squeeze(1)
    return [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]


def worst_case(store: OutcomeStore, clean_ok: Tensor, norm: str, eps: float) -> dict | None:
    """Robust accuracy at (norm, eps) over every attack that ran: per image, correct and never fooled.

    Over the largest attacked image count n; `attacks` lists each contribution (component, budget, images
    attacked, images it fooled). None when no attack ran at this radius.
    """
    found = [o for o in store.all_at(norm, eps) if any(c != NOT_ATTACKED for c in o.codes)]
    if not found:
        return None
    n = max(len(o.codes) for o in found)
    robust = clean_ok[:n].cpu().clone()
    attacks = []
    for o in found:
        codes = torch.tensor(o.codes)
        robust[:len(codes)] &= codes != FOOLED
        attacks.append({"component": o.component, "budget": o.key["budget"], "n": len(codes),
                        "attacked": int((codes != NOT_ATTACKED).sum()), "fooled": int((codes == FOOLED).sum())})
    return {"norm": norm, "eps": eps, "n_examples": n, "accuracy": robust.float().mean().item(),
            "clean_accuracy": clean_ok[:n].float().mean().item(), "attacks": attacks}


NORM_LABELS = {"l1": "L1", "l2": "L2", "linf": "L∞"}


def radius_label(norm: str, eps: float) -> str:
    """'L1 12', 'L2 0.5', 'L∞ 8/255': radii as papers write them."""
    if norm == "linf" and eps < 1 and abs(eps * 255 - round(eps * 255)) < 1e-6:  # 8/255 and friends
        return f"L∞ {round(eps * 255)}/255"
    return f"{NORM_LABELS[norm]} {eps:g}"


def worst_by_radius(results: dict) -> dict[tuple[str, float], dict]:
    """A results.json's (norm, eps) -> worst case; results without one (older runs) fall back to the lowest entry."""
    found = {(w["norm"], float(w["eps"])): w for w in results.get("worst_case", [])}
    for e in results.get("robust_accuracy", []):
        key = (e["norm"], float(e["eps"]))
        if key not in found or ("attacks" not in found[key] and e["accuracy"] < found[key]["accuracy"]):
            found[key] = {"norm": e["norm"], "eps": e["eps"], "accuracy": e["accuracy"], "n_examples": e["n_examples"],
                          "verdict": e.get("verdict", "ok"), **({"clean_accuracy": e["clean_accuracy"]}
                                                               if "clean_accuracy" in e else {})}
    return found
