"""The networks: an MLP for toy points, a small CNN for digits, ResNet-18 (CIFAR stem) and a small ViT.

ResNet-18 and ViT use the module names of the PAG authors' released checkpoints (`conv1`, `layer1`,
`linear`; `emb`, `enc`, `la1`, `msa`, `fc`), so their state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Three layers with SiLU: smooth, so input-gradients vary smoothly, which PAG's targets do."""

    def __init__(self, in_features: int, num_classes: int, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                    nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """Three 3x3 conv layers and a linear head; no batch norm, so every image is computed on its own."""

    def __init__(self, channels: int, num_classes: int, width: int, height: int, breadth: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with the CIFAR stem (3x3 conv, no max-pool)."""

    def __init__(self, blocks: tuple[int, ...], channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, layers = width, []
        for i, n in enumerate(blocks):
            out = width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(BasicBlock(planes, out, 2 if (i > 0 and j == 0) else 1))
                planes = out
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(channels: int, num_classes: int, width: int = 64) -> ResNet:
    return ResNet((2, 2, 2, 2), channels, num_classes, width)


class SelfAttention(nn.Module):
    """Multi-head self-attention. Scores are divided by sqrt(width), not sqrt(width / heads), as in the
    released PAG ViT: the same weights give the same function only with the same scale."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) / d ** 0.5, dim=-1)
        return self.dropout(self.o((attn @ v).transpose(1, 2).reshape(b, n, d)))


class EncoderLayer(nn.Module):
    """Pre-norm block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, mlp_dim: int, heads: int, dropout: float):
        super().__init__()
        self.la1 = nn.LayerNorm(dim)
        self.msa = SelfAttention(dim, heads, dropout)
        self.la2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.msa(self.la1(x))
        return x + self.mlp(self.la2(x))


class ViT(nn.Module):
    """Vision transformer on a grid of patches with a class token and learned position embeddings."""

    def __init__(self, channels: int, num_classes: int, image_size: int = 32, patch: int = 4, dim: int = 384,
                 depth: int = 7, heads: int = 12, mlp_dim: int = 384, dropout: float = 0.0):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
        self.patch = patch
        n = (image_size // patch) ** 2
        self.emb = nn.Linear(channels * patch * patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_emb = nn.Parameter(torch.randn(1, n + 1, dim))
        self.enc = nn.Sequential(*[EncoderLayer(dim, mlp_dim, heads, dropout) for _ in range(depth)])
        self.fc = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def patches(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, p*p*C): row-major grid of patches, each flattened as (row, column, channel),
        the layout the released checkpoints' `emb` expects."""
        b, c, h, w = x.shape
        p = self.patch
        grid = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return grid.reshape(b, (h // p) * (w // p), p * p * c)

    def forward(self, x: Tensor) -> Tensor:
        out = self.emb(self.patches(x))
        out = torch.cat([self.cls_token.expand(len(x), -1, -1), out], dim=1) + self.pos_emb
        return self.fc(self.enc(out)[:, 0])


def vit(channels: int, num_classes: int, image_size: int, width: int = 384) -> ViT:
    """The authors' CIFAR ViT at width 384 (12 heads, 7 layers); narrower widths keep 64 dims per head."""
    heads = 12 if width == 384 else max(1, width // 64)
    return ViT(channels, num_classes, image_size, patch=4, dim=width, heads=heads, mlp_dim=width)
