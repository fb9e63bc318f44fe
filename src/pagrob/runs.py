"""The run folder: one layout for every kind of run, read back by evaluation, pictures and reports.

    config.yaml        the full configuration
    model.json         what rebuilds the network (arch, input shape, classes, width)
    model.safetensors  weights (never pickled)
    metrics.jsonl      one JSON line per epoch
    results.json       final numbers, one schema for every run
    events.out.tfevents.*  TensorBoard
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pagrob.config import Config, load_config
from pagrob.data import Dataset, load_dataset
from pagrob.errors import ConfigError, RunError
from pagrob.files import write_json
from pagrob.models import build_model


def save_model(model: nn.Module, out: Path, arch: str, input_shape: tuple[int, ...], num_classes: int,
               width: int) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    write_json(out / "model.json", {"arch": arch, "input_shape": list(input_shape), "num_classes": num_classes,
                                    "width": width})


def load_model(run_dir: Path) -> nn.Module:
    try:
        spec = json.loads((run_dir / "model.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a pagrob run folder: model.json is missing") from None
    model = build_model(spec["arch"], spec["input_shape"], spec["num_classes"], spec["width"])
    try:
        state = load_file(str(run_dir / "model.safetensors"))
    except FileNotFoundError:
        raise RunError(f"{run_dir}: model.safetensors is missing (did training finish?)") from None
    except Exception as err:  # safetensors raises its own error type for a truncated or corrupt file
        raise RunError(f"{run_dir}/model.safetensors is damaged and cannot be read: {err}") from None
    model.load_state_dict(state)
    return model.eval()


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class Run:
    """A finished run: `.model` (eval mode, raw inputs -> logits), `.config`, `.path`, `.results`."""

    path: Path
    config: Config
    model: nn.Module

    @property
    def results(self) -> dict:
        return read_results(self.path)

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
