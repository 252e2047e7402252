"""A small ResNet-style embedder with BatchNorm and residual additions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual addition, written in
    ``forward`` as in torchvision: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    The shortcut is a 1x1 conv + BatchNorm when the shape changes, else identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNetEmbedder(nn.Module):
    r"""ResNet-style embedder: conv stem, stages of :class:`BasicBlock`, GAP, linear.

    Args:
        in_channels (int, optional): Input channels.
            Default: 3
        widths (sequence of int, optional): Channels of each stage; every stage
            after the first halves the resolution.
            Default: (16, 32, 64)
        blocks_per_stage (int, optional): Blocks in each stage.
            Default: 1
        embedding_dim (int, optional): Output width.
            Default: 32

    Input ``(N, in_channels, H, W)``; output ``(N, embedding_dim)``. Stages are
    ``layer1``, ``layer2``, ...; the last stage is the natural Grad-CAM layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        embedding_dim: int = 32,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks = [
                BasicBlock(prev if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1)
                for j in range(blocks_per_stage)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            prev = width
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(prev, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.head(torch.flatten(self.pool(x), 1))
