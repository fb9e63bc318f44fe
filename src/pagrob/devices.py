"""Which torch device a run uses: one home for the choice, so training, evaluation and the CLI agree."""

from __future__ import annotations

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
