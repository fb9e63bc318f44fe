"""Class-conditional noise-prediction models with a null label: one network, conditional and unconditional scores.

Every model works in its own "model space" u = (x - offset) / scale (images: u = 2x - 1) and is noised as
u_t = alpha_t * u + sigma_t * eps. `predict_eps(u_t, t, labels)` estimates eps; label `null_label` means
"no class" (trained by label dropout, as in classifier-free guidance), so
grad_{u_t} log p(u_t | y) = -eps_hat(u_t, t, y) / sigma_t for a class y and for the null label alike.

Two kinds share this interface and one training loop (`pagrob.diffusion.train`):
  - `UNetScore`: diffusers' UNet2DModel with class embeddings and a DDPM (variance-preserving) schedule;
    any diffusers-format folder (unet/ + scheduler/) with a class-embedded UNet loads as one.
  - `ToyScoreMLP`: a small MLP for 2-D points with a variance-exploding schedule, sigma_x(t) = (t + 1) / 10
    in data units, so timestep 49 is noise level 5 and timestep 199 is noise level 20.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pagrob.errors import ConfigError

META_FILE = "score_model.json"


class ScoreModelError(ConfigError):
    """A score-model folder that cannot be loaded or used as asked; the message names the fix."""


class ScoreModel(nn.Module):
    """Base class: data transform, noise schedule and the eps prediction every score query needs."""

    kind = "base"

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], offset: float, scale: float,
                 dataset: str = ""):
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.offset, self.scale = float(offset), float(scale)
        self.dataset = dataset

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def num_timesteps(self) -> int:
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Signal and noise scales of timesteps t (any shape), float32."""
        raise NotImplementedError

    def predict_eps(self, u_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def to_model_space(self, x: Tensor) -> Tensor:
        return (x - self.offset) / self.scale

    def noise_level(self, t: int) -> float:
        """The noise std of timestep t in data units: x_t / alpha_t ~ x + noise_level * eps (back in data space)."""
        alpha, sigma = self.alpha_sigma(torch.tensor([t]))
        return float(self.scale * sigma / alpha)

    def check_timestep(self, t: int) -> None:
        if not 0 <= t < self.num_timesteps:
            raise ScoreModelError(f"timestep {t} is outside this score model's schedule 0..{self.num_timesteps - 1}")

    def save(self, out: Path) -> None:
        raise NotImplementedError

    def meta(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "offset": self.offset, "scale": self.scale, "dataset": self.dataset}


def _sinusoidal(values: Tensor, dim: int) -> Tensor:
    """(N,) -> (N, dim) sin/cos features at geometric frequencies."""
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), dim // 2, device=values.device))
    angles = values[:, None].float() * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ToyScoreMLP(ScoreModel):
    """VE noise model for points: eps_hat = MLP([v, sin(v F), cos(v F), emb(log sigma), emb(label)]),
    v = u_t / sqrt(1 + sigma^2).

    v has about unit std at every noise level (the data is scaled to unit std); the fixed random Fourier
    features F let a small MLP fit the sharp changes of the score between nearby modes in few steps.
    """

    kind = "toy-mlp-ve"
    TIMESTEPS = 1000

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], offset: float, scale: float,
                 width: int = 128, dataset: str = ""):
        super().__init__(num_classes, input_shape, offset, scale, dataset)
        self.width = width
        dim = input_shape[0]
        self.emb = 32
        self.label_embedding = nn.Embedding(num_classes + 1, self.emb)
        self.register_buffer("frequencies", 3 * torch.randn(dim, self.emb, generator=torch.Generator().manual_seed(0)))
        self.net = nn.Sequential(nn.Linear(dim + 4 * self.emb, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))
        sigmas_x = (torch.arange(self.TIMESTEPS, dtype=torch.float64) + 1) / 10
        self.register_buffer("sigmas", (sigmas_x / self.scale).float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.TIMESTEPS

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigmas.to(t.device)[t]
        return torch.ones_like(sigma), sigma

    def predict_eps(self, u_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        sigma = self.sigmas[t]
        v = u_t / (1 + sigma[:, None] ** 2).sqrt()
        angles = v @ self.frequencies
        features = [v, angles.sin(), angles.cos(), _sinusoidal(sigma.log() / 4, self.emb), self.label_embedding(labels)]
        return self.net(torch.cat(features, dim=1))

    def meta(self) -> dict:
        return {**super().meta(), "width": self.width}

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(out / "model.safetensors"))
        (out / META_FILE).write_text(json.dumps(self.meta(), indent=2))

    @classmethod
    def from_meta(cls, meta: dict) -> "ToyScoreMLP":
        return cls(meta["num_classes"], tuple(meta["input_shape"]), meta["offset"], meta["scale"], meta["width"],
                   meta.get("dataset", ""))


class UNetScore(ScoreModel):
    """diffusers' UNet2DModel (num_class_embeds = classes + 1, the last one null) under a DDPM schedule."""

    kind = "unet-ddpm"

    def __init__(self, unet, scheduler, num_classes: int, input_shape: tuple[int, ...], offset: float = 0.5,
                 scale: float = 0.5, dataset: str = ""):
        super().__init__(num_classes, input_shape, offset, scale, dataset)
        self.unet = unet
        self.scheduler = scheduler
        prediction = scheduler.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            raise ScoreModelError(f"the scheduler predicts '{prediction}'; score queries need an 'epsilon' or "
                                  "'v_prediction' model")
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.float().clone(), persistent=False)

    @classmethod
    def create(cls, num_classes: int, input_shape: tuple[int, ...], width: int = 32, dataset: str = ""
               ) -> "UNetScore":
        """A small UNet sized to the images: two resolutions below 16 px, three (with attention) above."""
        from diffusers import DDPMScheduler, UNet2DModel  # heavy; only image score models need it

        channels, size = input_shape[0], input_shape[-1]
        if size <= 16:
            blocks = dict(down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                          block_out_channels=(width, 2 * width))
        else:
            blocks = dict(down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                          block_out_channels=(width, 2 * width, 2 * width))
        unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=2,
                           norm_num_groups=min(32, width // 4), num_class_embeds=num_classes + 1, **blocks)
        return cls(unet, DDPMScheduler(num_train_timesteps=1000), num_classes, input_shape, dataset=dataset)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alphas_cumprod.to(t.device)[t]
        return a.sqrt(), (1 - a).sqrt()

    def predict_eps(self, u_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        out = self.unet(u_t, t, class_labels=labels).sample
        if self.scheduler.config.prediction_type == "v_prediction":  # v = alpha eps - sigma u  =>  eps
            alpha, sigma = (s.view(-1, *[1] * (u_t.dim() - 1)) for s in self.alpha_sigma(t))
            out = alpha * out + sigma * u_t
        return out

    def save(self, out: Path) -> None:
        """diffusers layout (unet/, scheduler/) plus our metadata, so diffusers tools can open it too."""
        out.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(str(out / "unet"), safe_serialization=True)
        self.scheduler.save_pretrained(str(out / "scheduler"))
        (out / META_FILE).write_text(json.dumps(self.meta(), indent=2))

    @classmethod
    def load(cls, path: Path, meta: dict | None) -> "UNetScore":
        from diffusers import DDPMScheduler, UNet2DModel  # heavy; only image score models need it

        unet = UNet2DModel.from_pretrained(str(path / "unet"), use_safetensors=True, low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.from_pretrained(str(path / "scheduler"))
        embeds = unet.config.num_class_embeds
        if not embeds or unet.config.class_embed_type is not None:
            raise ScoreModelError(f"{path}/unet is not class-conditional with a label table (num_class_embeds); "
                                  "SBG needs class labels plus a null label")
        if meta is None:  # a foreign diffusers model: last label is null, images in [-1, 1]
            size = unet.config.sample_size
            size = size if isinstance(size, int) else size[0]
            meta = {"num_classes": embeds - 1, "input_shape": [unet.config.in_channels, size, size],
                    "offset": 0.5, "scale": 0.5}
        if embeds != meta["num_classes"] + 1:
            raise ScoreModelError(f"{path}: the UNet has {embeds} class embeddings, expected classes + 1 = "
                                  f"{meta['num_classes'] + 1}")
        return cls(unet, scheduler, meta["num_classes"], tuple(meta["input_shape"]), meta["offset"], meta["scale"],
                   meta.get("dataset", ""))


def load_score_model(path: str | Path) -> ScoreModel:
    """Open a folder written by `pagrob targets train-score-model`, or any diffusers folder with unet/ + scheduler/."""
    path = Path(path)
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and meta["kind"] == ToyScoreMLP.kind:
        model = ToyScoreMLP.from_meta(meta)
        try:
            model.load_state_dict(load_file(str(path / "model.safetensors")))
        except FileNotFoundError:
            raise ScoreModelError(f"{path}/model.safetensors is missing (did training finish?)") from None
        return model.eval()
    if (path / "unet" / "config.json").is_file() and (path / "scheduler").is_dir():
        return UNetScore.load(path, meta).eval()
    raise ScoreModelError(f"{path} holds no score model: expected {META_FILE} (pagrob targets train-score-model) "
                          "or a diffusers folder with unet/ and scheduler/")
