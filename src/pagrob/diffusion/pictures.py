"""What SBG targets look like: for a few held-out images, g(x, t) for every class t, one grid per report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from pagrob.diffusion.compare import FOLDER as COMPARE_FOLDER  # noqa: E402
from pagrob.runs import load_run  # noqa: E402
from pagrob.targets import make_source  # noqa: E402



def class_mean_agreement(targets: Tensor, x: Tensor, x_train: Tensor, y_train: Tensor) -> float:
    """Mean cosine between g(x, t) and mean_t - x over the shown images and classes: "moves x towards class t"."""
    means = torch.stack([x_train[y_train == c].mean(0) for c in range(targets.shape[1])])
    toward = (means[None] - x[:, None]).flatten(2)
    return torch.nn.functional.cosine_similarity(targets.flatten(2), toward, dim=-1).mean().item()


def plot_targets(x: Tensor, y: Tensor, targets: Tensor, out: Path, title: str, step: float = 3.0) -> Path:
    """Two rows per image: its targets g(x, t) for every class t (red: brighten, blue: darken), and
    x + step * g / ||g|| clipped to [0, 1], the image moved `step` (L2) along each target."""
    num_classes = targets.shape[1]
    x, targets = x.cpu(), targets.cpu()
    unit = targets / targets.flatten(2).norm(dim=2).clamp_min(1e-12).view(*targets.shape[:2], *[1] * (x.dim() - 1))
    moved = (x.unsqueeze(1) + step * unit).clamp(0, 1)
    fig, axes = plt.subplots(2 * len(x), num_classes + 1, figsize=(1.0 * (num_classes + 1), 2.1 * len(x)),
                             squeeze=False)

    def show(ax, image: Tensor, **kw) -> None:
        image = image.permute(1, 2, 0)
        ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, **kw)

    for i in range(len(x)):
        show(axes[2 * i, 0], x[i], cmap="gray", vmin=0, vmax=1)
        axes[2 * i, 0].set_title(f"x (class {int(y[i])})", fontsize=7)
        axes[2 * i + 1, 0].set_axis_off()
        for t in range(num_classes):
            g = targets[i, t].mean(0, keepdim=True)  # channels averaged: one signed map for colour images too
            limit = float(g.abs().max()) or 1.0
            show(axes[2 * i, t + 1], g, cmap="seismic", vmin=-limit, vmax=limit)
            show(axes[2 * i + 1, t + 1], moved[i, t], cmap="gray", vmin=0, vmax=1)
            if i == 0:
                axes[0, t + 1].set_title(f"g(x, {t})", fontsize=7)
                axes[1, t + 1].set_title(f"x + {step:g} ĝ", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def comparison_figures(run_dirs: list[Path], out_dir: Path) -> list[tuple[str, Path]]:
    """(caption, PNG) per σ of the comparison a study wrote beside the score model its SBG runs use: the same
    images' SBG, smooth, CM and NN targets, captioned with the mean cosines between them."""
    pags = [load_run(d).config.pag for d in run_dirs]
    folders = {Path(pag.score_model) / COMPARE_FOLDER for pag in pags if pag.source == "sbg" and pag.score_model}
    figures = []
    for folder in sorted(f for f in folders if (f / "compare.json").is_file()):
        found = json.loads((folder / "compare.json").read_text())
        for sigma, entry in found["sigmas"].items():
            path = out_dir / f"{found['dataset']}_targets_compared_sigma{sigma}.png"
            shutil.copyfile(folder / entry["panel"], path)
            cosines = ", ".join(f"{pair} {entry[pair]['mean']:.2f}" for pair in entry if pair != "panel")
            figures.append((f"{found['dataset']}: SBG, smooth, CM and NN targets at σ = {sigma} for the same "
                            f"{found['split']} images and classes (mean cosine over {found['n_images']} images and "
                            f"every class: {cosines}; {folder / 'compare.md'} has them per class)", path))
    return figures


def sbg_figures(run_dirs: list[Path], out_dir: Path, images: int = 5) -> list[tuple[str, Path]]:
    """(caption, PNG) of the SBG targets of the first image run trained on SBG (directly or from a store), then
    the comparison panels of the score model its SBG runs use, where a study wrote them."""
    return _sbg_target_figure(run_dirs, out_dir, images) + comparison_figures(run_dirs, out_dir)


def _sbg_target_figure(run_dirs: list[Path], out_dir: Path, images: int) -> list[tuple[str, Path]]:
    for d in run_dirs:
        run = load_run(d)
        source_name = run.config.pag.source
        if source_name != "sbg" and not source_name.startswith("store:"):
            continue
        data = run.dataset()
        source = make_source(source_name, run.config.pag, data)
        if not data.is_image or "sbg" not in source.name:
            continue
        x, y = data.x_test[:images], data.y_test[:images]
        targets = source(x, torch.arange(data.num_classes).expand(len(x), -1))
        agreement = class_mean_agreement(targets, x, data.x_train, data.y_train)
        caption = (f"{data.name}: SBG targets g(x, t) of {run.config.name}; x moved along each should look like "
                   f"class t (cosine with mean_t - x: {agreement:.2f})")
        path = plot_targets(x, y, targets, out_dir / f"{data.name}_sbg_targets.png", f"{run.config.name}: SBG targets")
        return [(caption, path)]
    return []
