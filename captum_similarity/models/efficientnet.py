"""A small EfficientNet-style embedder: MBConv blocks with squeeze-excitation."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor, nn


class SqueezeExcitation(nn.Module):
    """Channel gate ``x * sigmoid(fc2(silu(fc1(avgpool(x)))))`` with 1x1 convs."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, squeeze-excitation, 1x1
    project, each conv followed by BatchNorm; a residual addition when the
    input and output shapes agree."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
        )
        self.se = SqueezeExcitation(hidden, max(1, in_channels // 4))
        self.project = nn.Sequential(
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.use_residual:
            out = out + x
        return out


class EfficientNetEmbedder(nn.Module):
    r"""EfficientNet-style embedder: stem, MBConv stages, 1x1 head conv, GAP, linear.

    Args:
        in_channels (int, optional): Input channels.
            Default: 3
        stages (sequence of (channels, stride, blocks), optional): One MBConv
            stage per entry; the first block of a stage has the given stride.
            Default: ((16, 1, 1), (24, 2, 2), (40, 2, 2))
        head_channels (int, optional): Width of the 1x1 head conv.
            Default: 64
        embedding_dim (int, optional): Output width.
            Default: 32

    Input ``(N, in_channels, H, W)``; output ``(N, embedding_dim)``.
    ``blocks`` holds the MBConv blocks in order; ``conv_head`` is the natural
    Grad-CAM layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        stages: Sequence[Tuple[int, int, int]] = ((16, 1, 1), (24, 2, 2), (40, 2, 2)),
        head_channels: int = 64,
        embedding_dim: int = 32,
    ) -> None:
        super().__init__()
        stem_channels = stages[0][0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.SiLU(),
        )
        blocks: list[nn.Module] = []
        prev = stem_channels
        for channels, stride, count in stages:
            for j in range(count):
                blocks.append(MBConv(prev, channels, stride if j == 0 else 1))
                prev = channels
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Sequential(
            nn.Conv2d(prev, head_channels, 1, bias=False), nn.BatchNorm2d(head_channels), nn.SiLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(head_channels, embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_head(self.blocks(self.stem(x)))
        return self.head(torch.flatten(self.pool(x), 1))
