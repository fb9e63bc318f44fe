"""The target store: precomputed g(x, t) for every image and class, as fp16 shards read row by row.

    STORE/manifest.json           dataset, classes, shape, source and parameters, per split: image count,
                                  fingerprints of the images and labels, and per shard its rows and checksum
    STORE/<split>-NNNNN.npy       (images, classes, *shape) float16: each (image, class) row divided by its scale
    STORE/<split>-NNNNN.scale.npy (images, classes) float32: max |g| of each row, so fp16 neither under- nor
                                  overflows whatever the targets' magnitude

Shards are written to a `.partial` file, fsynced, renamed, and only then entered in the manifest, so a build
stopped at any point reruns only the shards it had not finished. Reading maps the shards a batch needs, copies
out just its (image, class) rows and unmaps them again: memory holds one batch, however large the store.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pagrob import console
from pagrob.errors import ConfigError
from pagrob.data import Dataset
from pagrob.files import write_json
from pagrob.targets.base import TargetSource

FORMAT, VERSION = "pagrob-target-store", 1
MANIFEST = "manifest.json"


class StoreError(ConfigError):
    """A target store that cannot be used for this dataset or run; the message says what differs and the fix."""


def fingerprint(t: Tensor, chunk: int = 4096) -> str:
    """sha256 of a tensor's shape, dtype and values, hashed in chunks (no full copy of a large dataset)."""
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    for i in range(0, len(t), chunk):
        h.update(t[i:i + chunk].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _split_tensors(data: Dataset, split: str) -> tuple[Tensor, Tensor]:
    if split not in ("train", "test"):
        raise StoreError(f"unknown split '{split}': use train and/or test")
    return (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)


def _split_entry(data: Dataset, split: str) -> dict:
    x, y = _split_tensors(data, split)
    return {"n_images": len(x), "images_fingerprint": fingerprint(x), "labels_fingerprint": fingerprint(y)}


def _file_sha256(paths: list[Path], block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(block):
                h.update(chunk)
    return h.hexdigest()


def _shard_paths(root: Path, split: str, i: int) -> tuple[Path, Path]:
    return root / f"{split}-{i:05d}.npy", root / f"{split}-{i:05d}.scale.npy"


def _fsync_write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _write_shard(root: Path, split: str, i: int, x: Tensor, index: Tensor | None, source: TargetSource,
                 num_classes: int, batch_size: int, device: torch.device | str) -> str:
    """Compute targets of images x (all classes), write the shard atomically, return its checksum."""
    values_path, scale_path = _shard_paths(root, split, i)
    partial = values_path.with_name(values_path.name + ".partial")
    shape = (len(x), num_classes, *x.shape[1:])
    scales = np.empty(shape[:2], dtype=np.float32)
    with open(partial, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                                                 "fortran_order": False, "shape": shape})
        for s in range(0, len(x), batch_size):
            xb = x[s:s + batch_size].to(device)
            classes = torch.arange(num_classes, device=device).expand(len(xb), -1)
            ib = None if index is None else index[s:s + batch_size].to(device)
            g = source(xb, classes, ib).float().cpu()
            scale = torch.linalg.vector_norm(g.flatten(2), ord=float("inf"), dim=2)  # max |g| per row, (b, C)
            if not torch.isfinite(scale).all():
                raise StoreError(f"the {source.name} source gave non-finite targets for {split} images "
                                 f"{s}..{s + len(xb) - 1} of shard {i}; check the source's settings")
            values = (g / torch.where(scale > 0, scale, 1.0).view(*scale.shape, *[1] * (g.dim() - 2))).half()
            del g
            f.write(values.numpy().data)
            scales[s:s + len(xb)] = scale.numpy()
        f.flush()
        os.fsync(f.fileno())
    _fsync_write_npy(scale_path, scales)
    partial.replace(values_path)
    return _file_sha256([values_path, scale_path])


def _compare(saved: dict, wanted: dict, keys: list[str]) -> list[str]:
    return [f"{k}: {saved.get(k)!r} in the store vs {wanted.get(k)!r} here" for k in keys if saved.get(k) != wanted.get(k)]


def _split_differences(split: str, saved: dict, wanted: dict) -> list[str]:
    """How a split recorded in a store differs from the dataset's, in words (no hashes)."""
    if saved["n_images"] != wanted["n_images"]:
        return [f"{split} images: {saved['n_images']} in the store vs {wanted['n_images']} here"]
    differs = []
    if saved["images_fingerprint"] != wanted["images_fingerprint"]:
        differs.append(f"{split} images: same count, different pixels (changed or reordered images)")
    if saved["labels_fingerprint"] != wanted["labels_fingerprint"]:
        differs.append(f"{split} labels differ")
    return differs


def build_store(out: Path, data: Dataset, source: TargetSource, source_spec: dict,
                splits: tuple[str, ...] = ("train", "test"), batch_size: int = 64, shard_mb: float = 64,
                device: torch.device | str = "cpu", progress: bool = True) -> Path:
    """Write (or finish) the store of `source`'s targets for every image of `splits` and every class.

    `source_spec` ({"name": ..., "params": {...}}) is recorded; rerunning with the same dataset and spec
    verifies the finished shards' checksums and computes only the missing or damaged ones.
    """
    out.mkdir(parents=True, exist_ok=True)
    row_bytes = data.num_classes * int(np.prod(data.input_shape)) * 2
    header = {"format": FORMAT, "version": VERSION, "dataset": data.name, "num_classes": data.num_classes,
              "shape": list(data.input_shape), "dtype": "float16", "source": source_spec,
              "images_per_shard": max(1, int(shard_mb * 2 ** 20) // row_bytes)}
    wanted_splits = {s: _split_entry(data, s) for s in splits}
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        differs = _compare(manifest, header, list(header))
        for s, entry in wanted_splits.items():
            have = manifest["splits"].get(s)
            if have is not None:
                differs += _split_differences(s, have, entry)
        if differs:
            raise StoreError(f"{out} holds a store built differently ({'; '.join(differs)}); use another --out, "
                             "or delete it to rebuild")
        for s, entry in wanted_splits.items():
            manifest["splits"].setdefault(s, {**entry, "shards": {}})
    else:
        manifest = {**header, "complete": False, "splits": {s: {**e, "shards": {}} for s, e in wanted_splits.items()}}
    manifest["complete"] = False
    write_json(manifest_path, manifest)
    per = header["images_per_shard"]
    jobs = [(s, i) for s in splits for i in range(-(-manifest["splits"][s]["n_images"] // per))]
    name = source_spec["name"]
    bar = console.bar(total=len(jobs), enabled=progress, desc=f"target store {name}")
    for split, i in console.lines(jobs, max(1, len(jobs) // 10), f"target store {name}: {{done}}/{{total}} shards",
                                  progress):
        bar.update(1)
        entry = manifest["splits"][split]
        done = entry["shards"].get(str(i))
        paths = list(_shard_paths(out, split, i))
        if done is not None and all(p.is_file() for p in paths) and _file_sha256(paths) == done["sha256"]:
            continue
        x, _ = _split_tensors(data, split)
        start, stop = i * per, min((i + 1) * per, len(x))
        index = torch.arange(start, stop) if split == "train" else None  # positions only mean the training set
        digest = _write_shard(out, split, i, x[start:stop], index, source, data.num_classes, batch_size, device)
        entry["shards"][str(i)] = {"file": paths[0].name, "scale_file": paths[1].name, "start": start, "stop": stop,
                                   "sha256": digest}
        write_json(manifest_path, manifest)
    bar.close()
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    return out


def read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"no target store at {path} ({MANIFEST} is missing): build one with "
                         "pagrob targets build --dataset D --source S --out PATH")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise StoreError(f"{path} is not a pagrob target store of version {VERSION}")
    return manifest


class StoreSource(TargetSource):
    """Targets read from a store: `index` names the training images; without it, images are found by content."""

    def __init__(self, path: Path, manifest: dict, data: Dataset):
        self.path, self.manifest, self.data = path, manifest, data
        self.name = f"store:{manifest['source']['name']}"
        self.per = manifest["images_per_shard"]
        self._where: dict[bytes, tuple[str, int]] | None = None

    def _rows(self, split: str, index: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, k, D) fp16 values and (B, k) scales of the given images (split positions) and classes."""
        d = int(np.prod(self.manifest["shape"]))
        values = np.empty((*classes.shape, d), dtype=np.float16)
        scales = np.empty(classes.shape, dtype=np.float32)
        shard = index // self.per
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            rows = (index[sel] - s * self.per)[:, None]
            values_path, scale_path = _shard_paths(self.path, split, int(s))
            mapped = np.load(values_path, mmap_mode="r")  # unmapped when it goes out of scope
            values[sel] = mapped.reshape(*mapped.shape[:2], d)[rows, classes[sel]]
            scales[sel] = np.load(scale_path, mmap_mode="r")[rows, classes[sel]]
            del mapped
        return values, scales

    def _locate(self, x: Tensor) -> tuple[str, np.ndarray]:
        """Split and positions of images given without an index (held-out images scored for alignment)."""
        if self._where is None:
            self._where = {}
            for split in self.manifest["splits"]:
                xs, _ = _split_tensors(self.data, split)
                for pos, row in enumerate(xs.cpu().contiguous().view(len(xs), -1).numpy()):
                    self._where.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), (split, pos))
        found = [self._where.get(hashlib.blake2b(r.tobytes(), digest_size=16).digest())
                 for r in x.detach().float().cpu().contiguous().view(len(x), -1).numpy()]
        if any(f is None for f in found) or len({f[0] for f in found}) != 1:
            raise StoreError(f"{self.path} holds targets only for the {', '.join(self.manifest['splits'])} images "
                             f"of {self.manifest['dataset']}; these images are not among them (pass index= for "
                             "training positions)")
        return found[0][0], np.array([f[1] for f in found])

    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        if index is not None:
            split, positions = "train", index.cpu().numpy()
        else:
            split, positions = self._locate(x)
        values, scales = self._rows(split, positions, classes.cpu().numpy())
        g = torch.from_numpy(values).to(x.device, torch.float32)
        g.mul_(torch.from_numpy(scales).to(x.device)[..., None])
        return g.view(*classes.shape, *x.shape[1:]).to(x.dtype)


def check_store(path: Path, manifest: dict, data: Dataset) -> None:
    """Refuse a store made for other data, or unfinished, with one message listing every difference."""
    differs = _compare(manifest, {"dataset": data.name, "num_classes": data.num_classes,
                                  "shape": list(data.input_shape)}, ["dataset", "num_classes", "shape"])
    if "train" not in manifest["splits"]:
        differs.append("the store has no train split")
    for split, entry in manifest["splits"].items():
        differs += _split_differences(split, entry, _split_entry(data, split))
    if differs:
        raise StoreError(f"target store {path} does not match dataset {data.name}: {'; '.join(differs)}. Rebuild it: "
                         f"pagrob targets build --dataset {data.name} --source {manifest['source']['name']} "
                         "--out NEW_STORE")
    if not manifest.get("complete"):
        raise StoreError(f"target store {path} is unfinished; rerun the same pagrob targets build command to "
                         "complete it (it resumes where it stopped)")
    for split, entry in manifest["splits"].items():
        missing = [n for i in range(-(-entry["n_images"] // manifest["images_per_shard"]))
                   for n in _shard_paths(path, split, i) if not n.is_file()]
        if missing:
            raise StoreError(f"target store {path} is missing {missing[0].name} (and {len(missing) - 1} more); "
                             "rerun its build command to restore them")
    _check_shard_sizes(path, manifest)


def _check_shard_sizes(path: Path, manifest: dict) -> None:
    """Each shard's header and length (cheap, unlike the build's checksums): a truncated copy fails here, by name."""
    per = manifest["images_per_shard"]
    for split, entry in manifest["splits"].items():
        for i in range(-(-entry["n_images"] // per)):
            rows = min(per, entry["n_images"] - i * per)
            for shard in _shard_paths(path, split, i):
                try:
                    length = len(np.load(shard, mmap_mode="r"))
                except (ValueError, OSError) as err:
                    raise StoreError(f"target store {path}: {shard.name} is damaged ({err}); rerun its build "
                                     "command, which rebuilds shards that fail their checksum") from None
                if length != rows:
                    raise StoreError(f"target store {path}: {shard.name} holds {length} images, not {rows}; rerun "
                                     "its build command, which rebuilds shards that fail their checksum")


def open_store(path: str | Path, data: Dataset) -> StoreSource:
    """Open the store at `path` as the target source for `data`, after checking they belong together."""
    path = Path(path)
    manifest = read_manifest(path)
    check_store(path, manifest, data)
    return StoreSource(path, manifest, data)
