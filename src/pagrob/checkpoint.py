"""Crash-safe checkpoints: tensors in safetensors, everything else in JSON, written atomically, checked on load.

A checkpoint is two files in a folder: `step-00000120.safetensors` and `step-00000120.json`. The JSON is
written last and holds the SHA-256 of the tensor file and of its own content, so a checkpoint exists only
once both files are whole, and a truncated or altered file is detected rather than loaded. The newest
`KEEP` checkpoints are kept, so a damaged newest one leaves an older good one to resume from.
Nothing here unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from pagrob.errors import RunError
from pagrob.files import atomic_write

KEEP = 2
FORMAT = "pagrob-checkpoint/1"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(obj: Any, tensors: dict[str, Tensor], key: str) -> Any:
    """A state dict as JSON values; its tensors move into `tensors` under dotted keys.

    Dicts with non-string keys (optimizer state by parameter index) and Counters (scheduler milestones)
    become tagged pairs, so `decode` can rebuild them exactly, with no pickle.
    """
    if isinstance(obj, Tensor):
        tensors[key] = obj.detach().cpu().contiguous()
        return {"$tensor": key}
    if isinstance(obj, dict):
        items = [[k, encode(v, tensors, f"{key}.{k}")] for k, v in obj.items()]
        if isinstance(obj, Counter):
            return {"$counter": items}
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return dict(items)
        return {"$items": items}
    if isinstance(obj, (list, tuple)):
        return [encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {key} in a checkpoint")


def decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$tensor" in obj:
        return tensors[obj["$tensor"]]
    if "$counter" in obj:
        return Counter({k: decode(v, tensors) for k, v in obj["$counter"]})
    if "$items" in obj:
        return {k: decode(v, tensors) for k, v in obj["$items"]}
    return {k: decode(v, tensors) for k, v in obj.items()}


def _name(step: int) -> str:
    return f"step-{step:08d}"


def _digest(meta: dict) -> str:
    return sha256_bytes(json.dumps(meta, sort_keys=True).encode())


def save(folder: Path, step: int, tensors: dict[str, Tensor], state: dict, keep: int = KEEP) -> Path:
    """Write checkpoint `step` (tensor file first, JSON record last), then drop all but the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write(folder / f"{_name(step)}.safetensors", blob)
    meta = {"format": FORMAT, "step": step, "tensors_sha256": sha256_bytes(blob), "state": state}
    record = folder / f"{_name(step)}.json"
    atomic_write(record, json.dumps({**meta, "sha256": _digest(meta)}, indent=1).encode())
    for old in records(folder)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return record


def records(folder: Path) -> list[Path]:
    """Checkpoint records in `folder`, newest first."""
    return sorted(folder.glob("step-*.json"), reverse=True) if folder.is_dir() else []


def load(record: Path) -> tuple[dict[str, Tensor], dict]:
    """(tensors, state) of one checkpoint; RunError if either file is missing, truncated or altered."""
    try:
        meta = json.loads(record.read_text())
        digest = meta.pop("sha256")
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise RunError(f"checkpoint {record} is damaged (unreadable record: {err})") from None
    if meta.get("format") != FORMAT or _digest(meta) != digest:
        raise RunError(f"checkpoint {record} is damaged (its record fails its checksum)")
    tensor_file = record.with_suffix(".safetensors")
    try:
        blob = tensor_file.read_bytes()
    except OSError as err:
        raise RunError(f"checkpoint {tensor_file} is missing ({err.strerror})") from None
    if sha256_bytes(blob) != meta["tensors_sha256"]:
        raise RunError(f"checkpoint {tensor_file} is damaged ({len(blob)} bytes fail the checksum in "
                       f"{record.name}: truncated or altered)")
    try:
        return load_safetensors(blob), meta["state"]
    except Exception as err:  # safetensors has its own error type; a pickle or other format lands here
        raise RunError(f"checkpoint {tensor_file} is not a safetensors file ({err}); refusing to load it") from None


def latest(folder: Path) -> tuple[dict[str, Tensor], dict, list[str]] | None:
    """The newest good checkpoint's (tensors, state, warnings about newer damaged ones); None if there is none.

    RunError when checkpoints exist but every one is damaged.
    """
    problems: list[str] = []
    for record in records(folder):
        try:
            tensors, state = load(record)
        except RunError as err:
            problems.append(str(err))
            continue
        return tensors, state, [f"{p}; resuming from the older good {record.name}" for p in problems]
    if problems:
        raise RunError(f"no usable checkpoint in {folder}: {'; '.join(problems)}. Start the run again "
                       "without --resume (after moving the folder aside)")
    return None


def discard_after(folder: Path, step: int) -> None:
    """Delete checkpoints newer than `step`: resuming from an older one replays (and rewrites) those steps."""
    for record in records(folder):
        if int(record.stem.split("-")[1]) > step:
            record.with_suffix(".safetensors").unlink(missing_ok=True)
            record.unlink(missing_ok=True)


def remove(folder: Path) -> None:
    """Delete a finished run's checkpoints (the model is in model.safetensors)."""
    for record in records(folder):
        record.with_suffix(".safetensors").unlink(missing_ok=True)
        record.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        tmp.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()

