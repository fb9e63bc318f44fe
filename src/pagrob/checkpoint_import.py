"""`pagrob import-checkpoint`: a classifier's weights as a pagrob run folder that every verb accepts.

Two kinds of file:
- any network: `--model PATH.py:FACTORY` builds the user's `nn.Module` (`pagrob.models.user`; `--model
  torchvision:NAME` or `timm:NAME` a library's, `pagrob.models.library`) and the weights are
  a safetensors file or a `.pt`/`.pth`/`.ckpt` state dict, read with `weights_only=True` (a pickle that would run
  code is refused; nothing is executed) and unwrapped from the usual containers (`state_dict`, `model`, `net`
  keys; `module.` and `model.` prefixes). The import measures clean accuracy on the test split.
- the PAG authors' released CIFAR checkpoints (github.com/royg27/PAG-ROB, `--format pag-rob --arch resnet18|vit`):
  `torch.save(model.state_dict())` of a `DataParallel` model. Their ResNet-18 and ViT use the module names of
  ours (`models/nets.py`), their ViT flattens a patch as (row, column, channel) as ours does, and both expect
  inputs normalised with mean 0.5 and std 0.5 per channel, which our `Normalize` layer supplies.

Either way the folder is written whole or not at all: a refusal leaves nothing in RUN_DIR.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from pagrob.accuracy import predict
from pagrob.config import Config, load_config, save_config, set_key, validate
from pagrob.data import load_dataset
from pagrob.errors import RunError
from pagrob.files import write_json
from pagrob.models import arch_route, build_model
from pagrob.models.user import PREFIX, check_output
from pagrob.parts import build_classifier
from pagrob.runs import load_weights, model_spec, save_model

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
WRAPPERS = ("state_dict", "model_state_dict", "model", "net")  # keys that hold the state dict in a training save
PREFIXES = ("module.", "model.")  # DataParallel's, and a Lightning module's or a wrapper's attribute
FORMATS = ("pag-rob",)
ARCHS = ("resnet18", "vit")
VIT_DEPTH, VIT_PATCH = 7, 4  # what models.nets.vit builds


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from the usual containers, loaded without unpickling code."""
    if not path.is_file():
        raise RunError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return strip_prefixes(load_file(str(path)))
        except Exception as err:  # safetensors raises its own error type for a file that is not one
            raise RunError(f"{path} is not a readable safetensors file: {str(err).splitlines()[0]}") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise RunError(f"{path}: weights must be a .safetensors file or a PyTorch state dict "
                       f"({', '.join(TORCH_SUFFIXES)})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        raise RunError(f"{path} is not a plain PyTorch state dict that loads with weights_only=True (refused, "
                       f"nothing was executed): {str(err).strip().splitlines()[0]}") from None
    return strip_prefixes(unwrap(saved, path))


def unwrap(saved: object, path: Path) -> dict[str, Tensor]:
    """The state dict inside a training save: the object itself, or under a `state_dict`/`model`/`net` key."""
    while isinstance(saved, dict) and saved and not all(isinstance(v, Tensor) for v in saved.values()):
        inner = next((saved[k] for k in WRAPPERS if isinstance(saved.get(k), dict)), None)
        if inner is None:
            raise RunError(f"{path} holds a dict with keys {sorted(map(str, saved))[:8]} but no state dict of tensors "
                           f"under any of {', '.join(WRAPPERS)}")
        saved = inner
    if not isinstance(saved, dict) or not saved:
        raise RunError(f"{path} holds a {type(saved).__name__}, not a state dict of tensors "
                       "(save one with torch.save(model.state_dict()))")
    return saved


def strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop a prefix every key shares (`module.` of DataParallel, `model.` of a wrapper), as often as it repeats."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state, stripped = {k[len(prefix):]: v for k, v in state.items()}, True
    return state


def _write_folder(out: Path, fill: Callable[[Path], None]) -> Path:
    """Write a run folder whole or not at all: `fill` writes into a hidden sibling, renamed to `out` at the end."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} already exists and is not empty; import into a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        fill(partial)
        if out.exists():
            out.rmdir()
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_model(weights: str | Path, model: str, out: str | Path, dataset: str, model_args: dict | None = None,
                 normalize: str | None = None, overrides: list[str] = ()) -> Path:
    """A user's network (`model` = PATH.py:FACTORY, or any model.arch route: torchvision:NAME, timm:NAME) with its
    weights as a run folder; clean accuracy measured.

    Without `normalize` the network receives pixels in [0, 1], pagrob's convention; give the per-channel
    MEAN/STD it was trained with otherwise. `overrides` are `pagrob train`'s KEY=VALUE settings (data.data_dir, ...).
    """
    weights, out = Path(weights), Path(out)
    arch = model if arch_route(model) is not None else f"{PREFIX}:{model}"
    cfg = load_config(None, [f"data.name={dataset}", f"model.arch={arch}",
                             f"model.normalize={normalize or 'none'}", f"name={out.name}", *overrides])
    if model_args is not None:
        set_key(cfg, "model.args", model_args)
        validate(cfg)
    cfg.eval.norms = ["l2", "linf"]
    data = load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download, cfg.data.holdout, cfg.data.train_n)
    net, arch = build_classifier(cfg, data)
    load_weights(net.net, read_weights(weights), f"the weights in {weights}")
    net.eval()
    check_output(net, data.x_test[:8], data.num_classes, "test images")
    clean_ok = predict(net, data.x_test) == data.y_test

    def fill(folder: Path) -> None:
        save_config(cfg, folder / "config.yaml")
        save_model(net, folder, model_spec(arch, data.input_shape, data.num_classes, cfg.model.width, cfg.model.args))
        write_json(folder / "results.json", {
            "dataset": data.name, "test_split": data.test_split, "method": "imported", "name": cfg.name,
            "clean_accuracy": clean_ok.float().mean().item(), "n_test": len(data.x_test), "robust_accuracy": [],
            "imported_from": {"file": str(weights.resolve()), "sha256": _digest(weights), "model": cfg.model.arch}})

    return _write_folder(out, fill)


def _spec(state: dict[str, Tensor], arch: str) -> tuple[tuple[int, int, int], int, int]:
    """(input shape, classes, width) read off the tensors, checked against what our builder makes."""
    def need(key: str) -> Tensor:
        if key not in state:
            raise RunError(f"the checkpoint has no '{key}': it is not a PAG-ROB {arch} (keys start with "
                           f"{sorted(state)[:3]}); try the other --arch")
        return state[key]

    if arch == "resnet18":
        conv = need("conv1.weight")
        return (conv.shape[1], 32, 32), need("linear.weight").shape[0], conv.shape[0]
    emb, tokens = need("emb.weight"), need("pos_emb").shape[1] - 1
    width, channels = emb.shape[0], 3
    patch = math.isqrt(emb.shape[1] // channels)
    grid = math.isqrt(tokens)
    depth = len({k.split(".")[1] for k in state if k.startswith("enc.")})
    mlp = need("enc.0.mlp.0.weight").shape[0]
    if patch != VIT_PATCH or grid * grid != tokens or depth != VIT_DEPTH or mlp != width:
        raise RunError(f"this ViT has {patch}x{patch} patches, {tokens} tokens, {depth} layers and MLP width {mlp}; "
                       f"our ViT for the released checkpoints has {VIT_PATCH}x{VIT_PATCH} patches, a square grid, "
                       f"{VIT_DEPTH} layers and MLP width = width")
    return (channels, grid * patch, grid * patch), need("fc.1.weight").shape[0], width


def import_checkpoint(path: str | Path, arch: str, out: str | Path, fmt: str = "pag-rob",
                      dataset: str | None = None, name: str | None = None) -> Path:
    """Write a run folder (config.yaml, model.json, model.safetensors, results.json) for an authors' checkpoint;
    clean accuracy follows at its first evaluation (the import needs no data)."""
    if fmt not in FORMATS:
        raise RunError(f"unknown checkpoint format '{fmt}': use {', '.join(FORMATS)}")
    if arch not in ARCHS:
        raise RunError(f"unknown arch '{arch}' for a pag-rob checkpoint: use {' or '.join(ARCHS)}")
    path, out = Path(path), Path(out)
    state = read_weights(path)
    shape, classes, width = _spec(state, arch)
    model = build_model(arch, shape, classes, width, mean=[0.5] * shape[0], std=[0.5] * shape[0])
    load_weights(model.net, state, f"{path} (a PAG-ROB {arch})")
    dataset = dataset or ("cifar100" if classes == 100 else "cifar10")
    cfg = Config(name=name or out.name)
    cfg.data.name, cfg.model.arch, cfg.model.width = dataset, arch, width
    cfg.eval.norms, cfg.eval.eps_l2, cfg.eval.eps_linf = ["l2", "linf"], [0.5], [8 / 255]

    def fill(folder: Path) -> None:
        save_config(cfg, folder / "config.yaml")
        save_model(model.eval(), folder, model_spec(arch, shape, classes, width))
        write_json(folder / "results.json", {"dataset": dataset, "method": f"imported-{fmt}", "name": cfg.name,
                                             "robust_accuracy": [], "imported_from": {
                                                 "file": str(path), "sha256": _digest(path), "format": fmt}})

    return _write_folder(out, fill)
