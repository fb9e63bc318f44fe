"""`pagrob import-checkpoint`: the PAG authors' released CIFAR checkpoints as pagrob run folders, to audit them.

Their files (github.com/royg27/PAG-ROB) are `torch.save(model.state_dict())` of a `DataParallel` model, so
every key starts with `module.`. Their ResNet-18 and ViT use the module names of ours (`models/nets.py`),
their ViT flattens a patch as (row, column, channel) as ours does, and both expect inputs normalised with
mean 0.5 and std 0.5 per channel, which our `Normalize` layer supplies. The file is read with
`weights_only=True`: a pickle that would run code is refused.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from pathlib import Path

import torch
from torch import Tensor

from pagrob.config import Config, save_config
from pagrob.models import build_model
from pagrob.errors import RunError
from pagrob.files import write_json
from pagrob.runs import save_model

FORMATS = ("pag-rob",)
ARCHS = ("resnet18", "vit")
VIT_DEPTH, VIT_PATCH = 7, 4  # what models.nets.vit builds


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a plain (optionally DataParallel-prefixed) state dict, loaded without unpickling code."""
    if not path.is_file():
        raise RunError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise RunError(f"{path} is not a plain PyTorch state dict that loads with weights_only=True (refused, "
                       f"nothing was executed): {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise RunError(f"{path} holds a {type(state).__name__}, not a state dict of tensors as the PAG-ROB "
                       "checkpoints are (torch.save(model.state_dict()))")
    return {k.removeprefix("module."): v for k, v in state.items()}


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
    """Write a run folder (config.yaml, model.json, model.safetensors, results.json) for an authors' checkpoint."""
    if fmt not in FORMATS:
        raise RunError(f"unknown checkpoint format '{fmt}': use {', '.join(FORMATS)}")
    if arch not in ARCHS:
        raise RunError(f"unknown arch '{arch}' for a pag-rob checkpoint: use {' or '.join(ARCHS)}")
    path, out = Path(path), Path(out)
    state = read_state_dict(path)
    shape, classes, width = _spec(state, arch)
    model = build_model(arch, shape, classes, width, mean=[0.5] * shape[0], std=[0.5] * shape[0])
    missing, unexpected = model.net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # a counter, not used in eval mode
    if missing or unexpected:
        raise RunError(f"{path} does not fit our {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    dataset = dataset or ("cifar100" if classes == 100 else "cifar10")
    cfg = Config(name=name or out.name)
    cfg.data.name, cfg.model.arch, cfg.model.width = dataset, arch, width
    cfg.eval.norms, cfg.eval.eps_l2, cfg.eval.eps_linf = ["l2", "linf"], [0.5], [8 / 255]
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    save_model(model.eval(), out, arch, shape, classes, width)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    write_json(out / "results.json", {"dataset": dataset, "method": f"imported-{fmt}", "name": cfg.name,
                                      "robust_accuracy": [],
                                      "imported_from": {"file": str(path), "sha256": digest, "format": fmt}})
    return out
