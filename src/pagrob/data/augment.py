"""Batched augmentation as tensor ops (no DataLoader workers), applied identically to images and targets.

Stored PAG targets are images' gradients; a crop or flip of the image moves its target the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resolve_mode(mode: str, dataset_name: str, is_image: bool) -> str:
    """`auto` -> crop_flip for photographs, crop for digits (a flipped digit is another digit), none for points."""
    if not is_image:
        return "none"
    if mode != "auto":
        return mode
    return "crop" if dataset_name == "digits" else "crop_flip"


def augment(x: Tensor, mode: str, generator: torch.Generator | None = None, extra: Tensor | None = None
            ) -> tuple[Tensor, Tensor | None]:
    """Random crop with zero padding (1/8 of the side) and optional horizontal flip.

    `extra` is (B, k, C, H, W) and receives the same crop and flip as its image.
    """
    if mode == "none":
        return x, extra
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    dev = x.device
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device="cpu").to(dev)
    flips = (torch.rand(b, generator=generator, device="cpu") < 0.5).to(dev) if mode == "crop_flip" else None

    def apply(t: Tensor) -> Tensor:  # (B, M, H, W) -> (B, M, H, W)
        padded = F.pad(t, (pad, pad, pad, pad))
        rows = shifts[:, 0, None] + torch.arange(h, device=dev)  # (B, H)
        cols = shifts[:, 1, None] + torch.arange(w, device=dev)  # (B, W)
        batch = torch.arange(b, device=dev)[:, None, None, None]
        chans = torch.arange(t.shape[1], device=dev)[None, :, None, None]
        out = padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]
        if flips is not None:
            out = torch.where(flips[:, None, None, None], out.flip(-1), out)
        return out

    x_aug = apply(x)
    extra_aug = None
    if extra is not None:
        extra_aug = apply(extra.reshape(b, -1, h, w)).reshape(extra.shape)
    return x_aug, extra_aug
