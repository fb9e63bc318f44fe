"""Which torch device a run uses, and how training computes on it: one home for the choice, so training,
evaluation and the CLI agree."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from pagrob.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` means the GPU when PyTorch sees one; asking for CUDA without one is a user error, said before work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but no GPU is visible to PyTorch; use --set device=cpu "
                          "(or device=auto)")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """bf16: bfloat16 autocast for the device's type (CPUs have it too, so the GPU's path runs in CPU tests);
    fp32: no autocast. Only training steps enter it: attacks and evaluation stay float32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(name: str) -> torch.memory_format:
    """optim.memory_format's torch value: channels_last lets GPUs use their fastest convolution kernels."""
    return torch.channels_last if name == "channels_last" else torch.contiguous_format
