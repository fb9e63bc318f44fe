"""The run folder: one layout for every kind of run, read back by evaluation, pictures and reports.

    config.yaml        the full configuration
    model.json         what rebuilds the network (arch, input shape, classes, width; a user's file: its args,
                       path and sha256)
    model.safetensors  weights (never pickled)
    metrics.jsonl      one JSON line per epoch
    results.json       final numbers, one schema for every run
    events.out.tfevents.*  TensorBoard
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pagrob.config import Config, load_config
from pagrob.data import Dataset, load_dataset
from pagrob.errors import ConfigError, RunError
from pagrob.files import write_json
from pagrob.models import arch_route, build_model


def model_spec(arch: str, input_shape: tuple[int, ...], num_classes: int, width: int, args: dict | None = None) -> dict:
    """What model.json holds to rebuild the network; for a route (a user's file) also its args and source."""
    spec = {"arch": arch, "input_shape": list(input_shape), "num_classes": num_classes, "width": width}
    route = arch_route(arch)
    if route is not None:
        spec.update(args=dict(args or {}), source=route[0].identity(route[1]))
    return spec


def save_model(model: nn.Module, out: Path, spec: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    write_json(out / "model.json", spec)


def load_model(run_dir: Path) -> nn.Module:
    """The run's network with its weights, in eval mode; a user's model file must be the one the run recorded."""
    try:
        spec = json.loads((run_dir / "model.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a pagrob run folder: model.json is missing") from None
    route = arch_route(spec["arch"])
    if route is not None:
        route[0].check_unchanged(route[1], spec["source"], run_dir)
    try:
        model = build_model(spec["arch"], spec["input_shape"], spec["num_classes"], spec["width"],
                            args=spec.get("args"))
    except ConfigError as err:
        raise RunError(f"{run_dir}: {err}") from None
    try:
        state = load_file(str(run_dir / "model.safetensors"))
    except FileNotFoundError:
        raise RunError(f"{run_dir}: model.safetensors is missing (did training finish?)") from None
    except Exception as err:  # safetensors raises its own error type for a truncated or corrupt file
        raise RunError(f"{run_dir}/model.safetensors is damaged and cannot be read: {err}") from None
    load_weights(model, state, f"{run_dir}/model.safetensors")
    return model.eval()


def fit_problems(expected: dict[str, Tensor], given: dict[str, Tensor]) -> str | None:
    """Why `given` weights do not fit a network whose state dict is `expected` (None when they do): missing and
    unexpected keys (ten of each at most) and shape mismatches, named. Batch norm's counter may be missing."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in given and given[k].shape != v.shape]
    problems = [f"{what} ({len(keys)}): {', '.join(keys[:10])}{', ...' if len(keys) > 10 else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches, weights vs network", shapes)) if keys]
    return "; ".join(problems) or None


def load_weights(net: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Load `state` into `net` exactly, or raise one sentence naming every misfit."""
    expected = net.state_dict()
    problem = fit_problems(expected, state)
    if problem:
        raise RunError(f"{what} do not fit the network: {problem}")
    net.load_state_dict({**{k: v for k, v in expected.items() if k not in state}, **state})


def inherited_settings(run_dir: str | Path) -> dict[str, object]:
    """A run's model and data sections as dotted keys (model.arch, data.name, ...): what a run fine-tuned from it
    uses wherever its own config is silent (the same network, on the same data unless told otherwise)."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise RunError(f"--init {path} is not a pagrob run folder (no config.yaml); import a checkpoint first with "
                       "pagrob import-checkpoint")
    try:
        cfg = load_config(path / "config.yaml")
    except ConfigError as err:
        raise RunError(f"{path}: {err}") from None
    return {f"{section}.{k}": v for section in ("model", "data") for k, v in vars(getattr(cfg, section)).items()}


def starting_point(run_dir: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The weights of a run folder to fine-tune from, and what the new run records of them (folder, sha256)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"--init: run folder not found: {path}")
    state = load_model(path).state_dict()
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    return state, {"run": str(path.resolve()), "weights_sha256": digest}


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class Run:
    """A finished run: `.model` (eval mode, raw inputs -> logits), `.config`, `.path`, `.results`, `.method`."""

    path: Path
    config: Config
    model: nn.Module

    @property
    def results(self) -> dict:
        return read_results(self.path)

    @property
    def method(self) -> str:
        """The results' name for it (`imported` for weights trained elsewhere), else the config's label."""
        return self.results.get("method", self.config.method)

    def dataset(self) -> Dataset:
        return load_dataset(self.config.data.name, self.config.data.data_dir, self.config.data.download,
                            self.config.data.holdout, self.config.data.train_n)

    def test_set(self) -> tuple[Tensor, Tensor]:
        """The (x, y) test tensors this run is evaluated on, in order: the first eval.n (all when 0)."""
        data = self.dataset()
        n = self.config.eval.n or len(data.x_test)
        return data.x_test[:n], data.y_test[:n]


def load_run(path: str | Path) -> Run:
    """Open a run folder written by `pagrob train` (or `pagrob demo`)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder not found: {path}")
    try:
        config = load_config(path / "config.yaml")
    except ConfigError as err:
        raise RunError(f"{path}: {err}") from None
    return Run(path, config, load_model(path))
