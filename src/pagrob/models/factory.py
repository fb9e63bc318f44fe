"""`build_model(arch, ...)`: the name -> module dispatch and the normalising wrapper."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """(x - mean) / std per channel (or per coordinate), as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class Classifier(nn.Module):
    """Normalisation followed by a network: raw inputs in, logits out."""

    def __init__(self, normalize: Normalize, net: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


def default_arch(input_shape: Sequence[int]) -> str:
    """mlp for vectors, cnn for small images (<= 16 px), resnet18 otherwise."""
    if len(input_shape) == 1:
        return "mlp"
    return "cnn" if input_shape[-1] <= 16 else "resnet18"


def build_model(arch: str, input_shape: Sequence[int], num_classes: int, width: int = 64,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Classifier:
    """Build a classifier for inputs of `input_shape` (without batch). mean/std default to 0.5/0.5 per channel."""
    from pagrob.models.nets import MLP, SmallCNN, resnet18, vit

    arch = default_arch(input_shape) if arch == "auto" else arch
    channels = input_shape[0]
    mean = list(mean) if mean is not None else [0.5] * channels
    std = list(std) if std is not None else [0.5] * channels
    if arch == "mlp":
        if len(input_shape) != 1:
            raise ValueError(f"mlp takes flat vectors; inputs have shape {tuple(input_shape)} (use cnn, resnet18 or vit)")
        net: nn.Module = MLP(input_shape[0], num_classes, width)
    elif len(input_shape) != 3:
        raise ValueError(f"{arch} takes images (C, H, W); inputs have shape {tuple(input_shape)} (use mlp)")
    elif arch == "cnn":
        net = SmallCNN(channels, num_classes, width, input_shape[1], input_shape[2])
    elif arch == "resnet18":
        net = resnet18(channels, num_classes, width)
    elif arch == "vit":
        net = vit(channels, num_classes, input_shape[1], width)
    else:
        raise ValueError(f"unknown model arch '{arch}': use mlp, cnn, resnet18 or vit")
    return Classifier(Normalize(mean, std), net)
