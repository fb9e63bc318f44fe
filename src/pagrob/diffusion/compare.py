"""`pagrob targets compare`: a score model's SBG targets against the exact ones, per class, on held-out images.

The `smooth` source computes, without a network, the very quantity SBG estimates with one: the score difference
of the training set smoothed with noise σ. So on images the score model never saw, at each σ it was trained at,
the cosine between the two says how well the network learned it; the cosines of each to the CM and NN
heuristics say which one it resembles. Every source sees the same training images the score model trained on
(its recorded holdout and train_n), and SBG is queried at the image itself (no noise draw), as smooth is.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from pagrob import console  # noqa: E402
from pagrob.config import PagConfig  # noqa: E402
from pagrob.data import Dataset, load_dataset  # noqa: E402
from pagrob.data.split import first_training_images, hold_out  # noqa: E402
from pagrob.diffusion.models import ScoreModel, load_score_model  # noqa: E402
from pagrob.diffusion.train import TRAIN_CONFIG, small_model_threads  # noqa: E402
from pagrob.errors import ConfigError  # noqa: E402
from pagrob.files import atomic_write, write_json  # noqa: E402
from pagrob.targets import TargetSource, build_source  # noqa: E402
from pagrob.targets.score_based import ScoreBased  # noqa: E402

FOLDER = "compare"  # under a score model's folder: the comparison a study runs after training it
SOURCES = ("sbg", "smooth", "cm", "nn")  # the panel's rows, in order
PAIRS = (("sbg", "smooth"), ("sbg", "cm"), ("sbg", "nn"), ("smooth", "cm"), ("smooth", "nn"))
SHOWN = 6  # (image, class) columns of the panel
BATCH = 50  # images per source call: SBG evaluates classes + 1 labels per image


@dataclass
class Comparison:
    """Where the targets are taken: the sources' training set and the query images (never among it)."""

    train: Dataset
    x: Tensor
    y: Tensor
    split: str
    holdout: int


def comparison_data(dataset: str, data_path: str, holdout: int, split: str, n: int, score_model: Path
                    ) -> Comparison:
    """The score model's own training images and the first n images of `split`, refused where they could overlap."""
    settings_path = score_model / TRAIN_CONFIG
    if not settings_path.is_file():
        raise ConfigError(f"{score_model} has no {TRAIN_CONFIG}, so the images it trained on are unknown; compare a "
                          "model trained by pagrob targets train-score-model")
    settings = json.loads(settings_path.read_text())
    trained = settings.get("holdout", 0)
    if trained != holdout:
        raise ConfigError(f"{score_model} was trained with --holdout {trained}, not {holdout}: compare with "
                          f"--holdout {trained} so that no compared image was trained on")
    if split == "validation" and not holdout:
        raise ConfigError("--split validation needs --holdout N (the images held out of the score model's training)")
    full = load_dataset(dataset, data_path)
    train = hold_out(full, holdout) if holdout else full
    x, y = (train.x_test, train.y_test) if split == "validation" else (full.x_test, full.y_test)
    if settings.get("train_n", 0):
        train = first_training_images(train, settings["train_n"])
    return Comparison(train, x[:n], y[:n], split, holdout)


def all_class_targets(source: TargetSource, x: Tensor, num_classes: int, what: str, progress: bool) -> Tensor:
    """(n, C, D) targets of every image for every class, in batches, with a progress line per tenth."""
    classes = torch.arange(num_classes)
    starts = range(0, len(x), BATCH)
    out = [source(x[i:i + BATCH], classes.expand(len(x[i:i + BATCH]), -1)).flatten(2).float()
           for i in console.lines(starts, max(1, len(starts) // 10), f"compare: {what} {{done}}/{{total}} batches",
                                  progress)]
    return torch.cat(out)


def cosines(a: Tensor, b: Tensor) -> Tensor:
    """(n, C) cosine of each pair of flattened targets; 0 where either is zero."""
    dot = (a * b).sum(-1)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, dot / norms.clamp_min(1e-30), torch.zeros_like(dot))


def per_class(c: Tensor) -> dict:
    """Mean cosine per target class and over all of them."""
    return {"per_class": [round(v, 4) for v in c.mean(0).tolist()], "mean": round(c.mean().item(), 4)}


def targets_at_sigma(model: ScoreModel, comp: Comparison, sigma: float, progress: bool) -> dict[str, Tensor]:
    """Every source's (n, C, D) targets at noise level sigma (CM and NN do not depend on it)."""
    data = comp.train
    pag = PagConfig(sigma=sigma)
    sources = {"sbg": ScoreBased(model, model.timestep_at(sigma), draws=0),
               **{name: build_source(name, pag, data) for name in SOURCES[1:]}}
    out = {}
    for name, source in sources.items():
        with small_model_threads(model, "cpu") if name == "sbg" else nullcontext():
            out[name] = all_class_targets(source, comp.x, data.num_classes, f"{name} at sigma {sigma:g}", progress)
    return out


def for_display(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A signed target as an HWC picture: 0.5 + g / (2 max |g|), so grey is zero and the extremes fill the range."""
    limit = g.abs().max().clamp_min(1e-12)
    return (0.5 + g.view(shape) / (2 * limit)).clamp(0, 1).permute(1, 2, 0)


def plot_panel(comp: Comparison, targets: dict[str, Tensor], sigma: float, names: list[str], out: Path) -> Path:
    """Rows: the image, then its SBG, smooth, CM and NN targets toward one other class; one column per image."""
    shape, count = comp.train.input_shape, min(SHOWN, len(comp.x))
    fig, axes = plt.subplots(1 + len(SOURCES), count, figsize=(1.3 * count, 1.4 * (1 + len(SOURCES))), squeeze=False)
    for j in range(count):
        y = int(comp.y[j])
        t = (y + 1) % comp.train.num_classes
        axes[0, j].imshow(comp.x[j].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"{names[y]} → {names[t]}", fontsize=6)
        for r, name in enumerate(SOURCES, 1):
            picture = for_display(targets[name][j, t], shape).squeeze(-1).numpy()
            axes[r, j].imshow(picture, cmap="gray", vmin=0, vmax=1)
            if j == 0:
                axes[r, 0].set_ylabel(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"targets g(x, t) at σ = {sigma:g} (grey = 0, each rescaled to its range)", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def markdown(results: dict, names: list[str]) -> str:
    """One table per σ: mean cosine per target class (rows) for each pair of sources (columns)."""
    lines = [f"# SBG targets against the exact ones ({results['dataset']}, {results['n_images']} {results['split']} "
             f"images, score model {results['score_model']})", ""]
    pairs = [f"{a}~{b}" for a, b in PAIRS]
    for sigma, entry in results["sigmas"].items():
        lines += [f"## σ = {sigma}", "", "| class | " + " | ".join(pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
        for c, name in enumerate(names):
            lines.append(f"| {name} | " + " | ".join(f"{entry[p]['per_class'][c]:.3f}" for p in pairs) + " |")
        lines += ["| all | " + " | ".join(f"{entry[p]['mean']:.3f}" for p in pairs) + " |", "",
                  f"![targets at σ = {sigma}]({entry['panel']})", ""]
    return "\n".join(lines)


def compare_targets(comp: Comparison, score_model: Path, sigmas: list[float], out: Path, progress: bool = True
                    ) -> Path:
    """Write compare.json, compare.md and one panel PNG per σ into `out`; returns compare.md."""
    model = load_score_model(score_model)
    for sigma in sigmas:  # refuse an untrained σ before any work
        model.timestep_at(sigma)
    out.mkdir(parents=True, exist_ok=True)
    names = list(comp.train.classes) or [str(c) for c in range(comp.train.num_classes)]
    results = {"dataset": comp.train.name, "split": comp.split, "holdout": comp.holdout, "n_images": len(comp.x),
               "score_model": str(score_model), "classes": names, "sigmas": {}}
    for sigma in sigmas:
        targets = targets_at_sigma(model, comp, sigma, progress)
        entry = {f"{a}~{b}": per_class(cosines(targets[a], targets[b])) for a, b in PAIRS}
        entry["panel"] = plot_panel(comp, targets, sigma, names, out / f"targets_sigma{sigma:g}.png").name
        results["sigmas"][f"{sigma:g}"] = entry
        console.line(f"compare: sigma {sigma:g}: cosine sbg~smooth {entry['sbg~smooth']['mean']:.3f}", progress)
    write_json(out / "compare.json", results)
    atomic_write(out / "compare.md", markdown(results, names).encode())
    return out / "compare.md"
