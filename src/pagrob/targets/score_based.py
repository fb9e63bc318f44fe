"""Score-based gradients (SBG): g(x, t) = grad log p(x_s | t) - grad log p(x_s), from one class-conditional
noise-prediction model with a null label.

With u = (x - offset) / scale the model's input space and u_s = alpha u + sigma eps the noisy point,
grad_{u_s} log p(u_s | y) = -eps_hat(u_s, s, y) / sigma, so the score difference is
(eps_hat(u_s, s, null) - eps_hat(u_s, s, t)) / sigma. Returned in data units: the gradient with respect to
x_s = offset + scale * u_s / alpha (the noisy image, back on the data's scale), i.e. times alpha / scale.

Per image and noise draw, one batched call evaluates the k requested classes plus the null label (k + 1
labels, not 2k), all on the same noisy point. The noise of an image is seeded by its content, so an image
gets the same targets on every call, in every batch, on the fly or in a store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pagrob.diffusion.models import ScoreModel, ScoreModelError, load_score_model
from pagrob.errors import ConfigError
from pagrob.targets.base import TargetSource

from pagrob.data import Dataset

if TYPE_CHECKING:  # config.py validates against the source registry, so the config type is for annotations only
    from pagrob.config import PagConfig


def image_seeds(x: Tensor, seed: int) -> list[int]:
    """One 63-bit seed per image from its bytes and `seed`: the same image always draws the same noise."""
    flat = x.detach().float().cpu().contiguous().view(len(x), -1).numpy()
    key = seed.to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest(), "little") >> 1
            for row in flat]


class ScoreBased(TargetSource):
    """SBG targets at diffusion timestep `timestep`, averaged over `draws` noise draws shared by all classes.

    draws = 0 queries the noise-free point u_s = alpha u (the mean of the noisy image given x): the score
    difference of the noisy densities at x itself, which is what the closed form on toy2d gives.
    """

    name = "sbg"

    def __init__(self, model: ScoreModel, timestep: int, draws: int = 1, seed: int = 0, max_batch: int = 2048):
        model.check_timestep(timestep)
        if draws < 0:
            raise ValueError(f"draws must be >= 0 (0 = no noise), got {draws}")
        self.model = model.eval()
        self.timestep, self.draws, self.seed, self.max_batch = timestep, draws, seed, max_batch

    @property
    def noise_level(self) -> float:
        """The noise std of the query in data units."""
        return self.model.noise_level(self.timestep)

    def noise(self, x: Tensor) -> Tensor:
        """(B, draws, ...) standard normal noise, seeded per image by its content."""
        shape = (max(self.draws, 1), *x.shape[1:])
        if self.draws == 0:
            return torch.zeros(len(x), *shape, device=x.device)
        draws = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in image_seeds(x, self.seed)]
        return torch.stack(draws).to(x.device)

    def _eps(self, u_t: Tensor, labels: Tensor) -> Tensor:
        """The model's eps predictions in chunks of `max_batch` inputs."""
        out = []
        for i in range(0, len(u_t), self.max_batch):
            chunk = u_t[i:i + self.max_batch]
            t = torch.full((len(chunk),), self.timestep, dtype=torch.long, device=u_t.device)
            out.append(self.model.predict_eps(chunk, t, labels[i:i + self.max_batch]))
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, x: Tensor, classes: Tensor, index: Tensor | None = None) -> Tensor:
        b, k = classes.shape
        shape = x.shape[1:]
        null = torch.full((b, 1), self.model.null_label, dtype=torch.long, device=x.device)
        labels = torch.cat([classes.to(x.device), null], dim=1)  # (B, k + 1): the k classes, then null
        alpha, sigma = (float(s) for s in self.model.alpha_sigma(torch.tensor([self.timestep])))
        u = self.model.to_model_space(x.float())
        u_t = alpha * u.unsqueeze(1) + sigma * self.noise(x)  # (B, n, ...)
        n = u_t.shape[1]
        inputs = u_t.unsqueeze(2).expand(b, n, k + 1, *shape).reshape(-1, *shape)
        eps = self._eps(inputs, labels.unsqueeze(1).expand(b, n, k + 1).reshape(-1)).view(b, n, k + 1, *shape)
        diff = (eps[:, :, k:] - eps[:, :, :k]).mean(dim=1)  # eps(null) - eps(t), averaged over draws: (B, k, ...)
        return (diff * (alpha / (self.model.scale * sigma))).to(x.dtype)

    def to(self, device) -> "ScoreBased":
        self.model = self.model.to(device)
        return self


def open_score_source(cfg: PagConfig, dataset: Dataset) -> ScoreBased:
    """The `sbg` source of a config: its score model, checked against the dataset before any work."""
    try:
        model = load_score_model(cfg.score_model)
    except (ScoreModelError, OSError) as err:
        raise ConfigError(f"pag.score_model: {err}") from None
    if model.num_classes != dataset.num_classes or model.input_shape != dataset.input_shape:
        raise ConfigError(f"pag.score_model {cfg.score_model} models {model.num_classes} classes of shape "
                          f"{model.input_shape}, but {dataset.name} has {dataset.num_classes} of shape "
                          f"{dataset.input_shape}; train one with: pagrob targets train-score-model "
                          f"--dataset {dataset.name} --out DIR")
    key = "pag.sbg_sigma" if cfg.sbg_sigma else "pag.sbg_t"
    try:
        timestep = model.timestep_at(cfg.sbg_sigma) if cfg.sbg_sigma else cfg.sbg_t
        return ScoreBased(model, timestep, cfg.sbg_draws, cfg.seed)
    except ScoreModelError as err:
        raise ConfigError(f"{key}: {err}") from None


def _weights_sha256(folder: Path) -> str:
    """One checksum over a score model's weight files, so a store remembers exactly which model made it."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def score_model_settings(pag: PagConfig) -> dict:
    """The settings that change SBG targets, the score model's weights by checksum (sbg_sigma only when set, so
    stores built before it existed still match)."""
    folder = Path(pag.score_model).resolve()
    query = {"sbg_sigma": pag.sbg_sigma} if pag.sbg_sigma else {"sbg_t": pag.sbg_t}
    return {"score_model": str(folder), "score_model_sha256": _weights_sha256(folder), **query,
            "sbg_draws": pag.sbg_draws, "seed": pag.seed}
