"""Predictions and clean accuracy in batches: what training logs per epoch and evaluation reports."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    return (predict(model, x, batch_size) == y).float().mean().item()
