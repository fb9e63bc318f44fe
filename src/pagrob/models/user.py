"""A user's own network: `model.arch=file:PATH.py:FACTORY` builds `FACTORY(**model.args)` from their file.

This is how a model pagrob did not write (a WideResNet from a paper's release, a torchvision ResNet, last week's
checkpoint's class) becomes one more architecture: training, import, evaluation and pictures all build it through
`build_model` like ours. Running the user's file is the point (it is their code, like `--model-from-file` in
TextAttack); nothing is ever unpickled. A run records the file's sha256, and a later verb refuses a changed file,
since the same weights in a different network would give numbers about a model nobody trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pagrob.errors import ConfigError, RunError

PREFIX = "file"
FORM = "file:PATH.py:FACTORY"


@dataclass(frozen=True)
class ModelFile:
    """Where a user's network comes from: a Python file and the name of the function (or class) that builds it."""

    path: Path
    factory: str

    @property
    def arch(self) -> str:
        return f"{PREFIX}:{self.path}:{self.factory}"


def parse(spec: str) -> ModelFile:
    """`PATH.py:FACTORY` (the text after `file:`) -> ModelFile; the path may itself hold ':' (e.g. C:\\...)."""
    path, sep, factory = spec.rpartition(":")
    if not sep or not path or not factory.isidentifier():
        raise ConfigError(f"model.arch={PREFIX}:{spec} must look like {FORM}, e.g. file:nets.py:make_model "
                          "(FACTORY is a function or class in that file returning a torch.nn.Module)")
    return ModelFile(Path(path), factory)


def absolute(spec: str) -> str:
    """The same `PATH.py:FACTORY` with an absolute path, so a run folder still finds the file from elsewhere."""
    ref = parse(spec)
    return f"{ref.path.expanduser().resolve()}:{ref.factory}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def identity(spec: str) -> dict[str, str]:
    """What a run records of the file: its path and sha256 (checked again by every later verb)."""
    ref = parse(spec)
    _need_file(ref)
    return {"file": str(ref.path), "sha256": sha256(ref.path)}


def check_unchanged(spec: str, recorded: dict[str, str], run_dir: Path) -> None:
    """Refuse a run whose model file is gone or differs from the one it was written with."""
    ref = parse(spec)
    if not ref.path.is_file():
        raise RunError(f"{run_dir} was built from the model file {ref.path}, which no longer exists: put it back, "
                       "or import the weights again with --model")
    now = sha256(ref.path)
    if now != recorded["sha256"]:
        raise RunError(f"the model file {ref.path} has changed since {run_dir} was written (sha256 "
                       f"{recorded['sha256'][:12]}... then, {now[:12]}... now): restore it, or import the weights "
                       "again into a new run folder")


def _need_file(ref: ModelFile) -> None:
    if ref.path.suffix != ".py":
        raise ConfigError(f"model file {ref.path} must be a Python file (.py) defining {ref.factory}")
    if not ref.path.is_file():
        raise ConfigError(f"model file not found: {ref.path} (model.arch={FORM})")


def _load_module(ref: ModelFile) -> Any:
    """Execute the user's file as a fresh module; its folder is importable meanwhile, for its own helpers."""
    name = f"pagrob_user_model_{sha256(ref.path)[:16]}"
    spec = importlib.util.spec_from_file_location(name, ref.path)
    module = importlib.util.module_from_spec(spec)
    folder = str(ref.path.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any error it raises is theirs to fix, said in one line
        raise ConfigError(f"running the model file {ref.path} failed: {type(err).__name__}: {_first_line(err)}") \
            from None
    finally:
        sys.path.remove(folder)
    return module


def build(spec: str, args: dict[str, Any], input_shape: tuple[int, ...] = (), num_classes: int = 0) -> nn.Module:
    """`FACTORY(**args)` from the file, checked to be an nn.Module. The input shape and the number of classes (the
    route interface's) are not passed on: the factory takes what model.args gives it, and the network's output is
    checked against the classes once built (`check_output`)."""
    ref = parse(spec)
    _need_file(ref)
    module = _load_module(ref)
    factory = getattr(module, ref.factory, None)
    if not callable(factory):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise ConfigError(f"the model file {ref.path} defines no function or class '{ref.factory}' "
                          f"(it defines: {', '.join(defined) or 'nothing callable'})")
    try:
        net = factory(**args)
    except Exception as err:  # as above: the user's factory, the user's error
        raise ConfigError(f"{ref.factory}(**{args}) from {ref.path} raised {type(err).__name__}: {_first_line(err)}"
                          " (model.args is passed to it as keyword arguments)") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{ref.factory}(**{args}) from {ref.path} returned a {type(net).__name__}, not a "
                          "torch.nn.Module")
    return net


def check_output(model: nn.Module, x: Tensor, num_classes: int, what: str) -> None:
    """A classifier's output on a batch must be logits of shape (B, classes); say so in one sentence if not."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # the network itself fails on these inputs (wrong size, channels, dtype)
        raise ConfigError(f"the model fails on a batch of {what} of shape {tuple(x.shape)} (pixels in [0, 1]): "
                          f"{type(err).__name__}: {_first_line(err)}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (len(x), num_classes):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"the model's output on {len(x)} {what} is {got}; pagrob needs logits of shape "
                          f"({len(x)}, {num_classes}), one per class")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"
