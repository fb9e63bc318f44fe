"""Class-conditional noise-prediction models with a null label: one network, conditional and unconditional scores.

Every model works in its own "model space" u = (x - offset) / scale (images: u = 2x - 1) and is noised as
u_t = alpha_t * u + sigma_t * eps. `predict_eps(u_t, t, labels)` estimates eps; label `null_label` means
"no class" (trained by label dropout, as in classifier-free guidance), so
grad_{u_t} log p(u_t | y) = -eps_hat(u_t, t, y) / sigma_t for a class y and for the null label alike.

Three kinds share this interface and one training loop (`pagrob.diffusion.train`):
  - `UNetScore`: diffusers' UNet2DModel with class embeddings and a DDPM (variance-preserving) schedule;
    any diffusers-format folder (unet/ + scheduler/) with a class-embedded UNet loads as one.
  - `EDMScore`: a small noise-level-conditioned UNet of our own (EDM preconditioning, variance exploding),
    trained at a few noise levels only, its "timesteps"; sized for a CPU (see its docstring).
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

    def timestep_at(self, level: float) -> int:
        """The timestep whose noise level (data units, as pag.sigma) is `level` within 0.1 %: SBG asked by σ."""
        alpha, sigma = self.alpha_sigma(torch.arange(self.num_timesteps))
        levels = (self.scale * sigma / alpha).double()
        nearest = int((levels - level).abs().argmin())
        if abs(float(levels[nearest]) - level) > 1e-3 * level:
            known = (", ".join(f"{v:g}" for v in levels.tolist()) if len(levels) <= 10
                     else f"{float(levels.min()):.3g} to {float(levels.max()):.3g} by timestep")
            raise ScoreModelError(f"noise level {level:g} is not one this score model was trained at ({known}); "
                                  f"train one with: pagrob targets train-score-model --sigmas {level:g}")
        return nearest

    def check_timestep(self, t: int) -> None:
        if not 0 <= t < self.num_timesteps:
            raise ScoreModelError(f"timestep {t} is outside this score model's schedule 0..{self.num_timesteps - 1}")

    def save(self, out: Path) -> None:
        raise NotImplementedError

    def meta(self) -> dict:
        return {"kind": self.kind, "num_classes": self.num_classes, "input_shape": list(self.input_shape),
                "offset": self.offset, "scale": self.scale, "dataset": self.dataset}


def _save_weights(model: ScoreModel, out: Path) -> None:
    """Our own kinds: weights as safetensors beside the metadata that rebuilds the module."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / META_FILE).write_text(json.dumps(model.meta(), indent=2))


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
        _save_weights(self, out)

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


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding added between; group norm, not batch norm: a denoiser's output
    must not depend on which other images share its batch."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in // 4), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out // 4), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h))) + self.emb(emb)[:, :, None, None]
        return self.skip(h) + self.conv2(nn.functional.silu(self.norm2(out)))


class NoiseLevelUNet(nn.Module):
    """F(u, c_noise, label): a three-level UNet (w, 2w, 2w channels) behind a 2x2 space-to-depth stem.

    The stem runs the whole network at half the image's side (16 px for CIFAR), a quarter of the cost: at the
    noise levels SBG uses on photos (σ >= 1 in pixel units, twice the pixel range) the input's fine detail is all
    noise, and the denoiser's output is a weighted mean of a few dozen training images, which the pixel-shuffle
    head can draw at full size. Width 32 gives 0.59 M parameters and 62 MFLOP per 32x32 image.
    """

    def __init__(self, channels: int, labels: int, width: int = 32):
        super().__init__()
        emb, w = 4 * width, width
        self.emb_width = width
        self.noise_mlp = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_embedding = nn.Embedding(labels, emb)
        self.stem = nn.Conv2d(4 * channels, w, 3, padding=1)
        self.enc = nn.ModuleList([_ResBlock(w, w, emb), _ResBlock(w, 2 * w, emb), _ResBlock(2 * w, 2 * w, emb)])
        self.down = nn.ModuleList([nn.Conv2d(w, w, 3, stride=2, padding=1),
                                   nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)])
        self.mid = _ResBlock(2 * w, 2 * w, emb)
        self.dec = nn.ModuleList([_ResBlock(4 * w, 2 * w, emb), _ResBlock(4 * w, w, emb), _ResBlock(2 * w, w, emb)])
        self.up = nn.ModuleList([nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)])
        self.head = nn.Sequential(nn.GroupNorm(min(8, w // 4), w), nn.SiLU(), nn.Conv2d(w, 4 * channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, u: Tensor, c_noise: Tensor, labels: Tensor) -> Tensor:
        emb = nn.functional.silu(self.noise_mlp(_sinusoidal(c_noise, self.emb_width)) + self.label_embedding(labels))
        h = self.stem(nn.functional.pixel_unshuffle(u, 2))
        skips = []
        for i, block in enumerate(self.enc):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.down):
                h = self.down[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.dec):
            h = block(torch.cat([h, skips.pop()], 1), emb)
            if i < len(self.up):
                h = self.up[i](nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        return nn.functional.pixel_shuffle(self.head(h), 2)


class EDMScore(ScoreModel):
    """A class-conditional denoiser D(u; σ, y) = c_skip u + c_out F(c_in u; log σ / 4, y) (Karras et al. 2022),
    variance exploding (u_σ = u + σ ε), trained at a few noise levels `sigmas` (data units) only.

    Why this and not the DDPM UNet on a CPU: SBG and the smooth source query one noise level, so training on a
    thousand-step schedule spends almost all of a 30-minute budget where no target is ever taken; EDM's
    preconditioning keeps F's input and target at unit variance at any σ, so one small network learns
    several far-apart levels without re-weighting. Timestep i is noise level sigmas[i]; the score is
    (D - u_σ) / σ², i.e. eps = (u_σ - D) / σ.
    """

    kind = "edm-unet"
    SIGMA_DATA = 0.5  # std of images in model space [-1, 1], EDM's value

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], sigmas: list[float], width: int = 32,
                 dataset: str = ""):
        super().__init__(num_classes, input_shape, offset=0.5, scale=0.5, dataset=dataset)
        if len(input_shape) != 3 or input_shape[1] % 4 or input_shape[2] % 4:
            raise ScoreModelError(f"the EDM UNet needs images with sides divisible by 4, got shape {input_shape}")
        self.sigmas, self.width = [float(s) for s in sigmas], width
        self.net = NoiseLevelUNet(input_shape[0], num_classes + 1, width)
        self.register_buffer("sigma_u", torch.tensor(self.sigmas) / self.scale, persistent=False)

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma_u.to(t.device)[t]
        return torch.ones_like(sigma), sigma

    def denoise(self, u_t: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """D(u_t; σ, y): the model's estimate of E[u | u_t, y] (y = null: over all classes), in model space."""
        s, sd = sigma.view(-1, *[1] * (u_t.dim() - 1)), self.SIGMA_DATA
        total = (s ** 2 + sd ** 2).sqrt()
        return sd ** 2 / total ** 2 * u_t + s * sd / total * self.net(u_t / total, sigma.log() / 4, labels)

    def predict_eps(self, u_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        sigma = self.sigma_u[t]
        return (u_t - self.denoise(u_t, sigma, labels)) / sigma.view(-1, *[1] * (u_t.dim() - 1))

    def meta(self) -> dict:
        return {**super().meta(), "sigmas": self.sigmas, "width": self.width}

    def save(self, out: Path) -> None:
        _save_weights(self, out)

    @classmethod
    def from_meta(cls, meta: dict) -> "EDMScore":
        return cls(meta["num_classes"], tuple(meta["input_shape"]), meta["sigmas"], meta["width"],
                   meta.get("dataset", ""))


OWN_KINDS = {ToyScoreMLP.kind: ToyScoreMLP, EDMScore.kind: EDMScore}  # saved as model.safetensors + META_FILE


def load_score_model(path: str | Path) -> ScoreModel:
    """Open a folder written by `pagrob targets train-score-model`, or any diffusers folder with unet/ + scheduler/."""
    path = Path(path)
    meta_path = path / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is not None and meta["kind"] in OWN_KINDS:
        model = OWN_KINDS[meta["kind"]].from_meta(meta)
        try:
            model.load_state_dict(load_file(str(path / "model.safetensors")))
        except FileNotFoundError:
            raise ScoreModelError(f"{path}/model.safetensors is missing (did training finish?)") from None
        return model.eval()
    if (path / "unet" / "config.json").is_file() and (path / "scheduler").is_dir():
        return UNetScore.load(path, meta).eval()
    raise ScoreModelError(f"{path} holds no score model: expected {META_FILE} (pagrob targets train-score-model) "
                          "or a diffusers folder with unet/ and scheduler/")
