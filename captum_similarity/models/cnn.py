"""A plain CNN embedder: conv/ReLU stages, global pooling, linear head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class SimpleCNN(nn.Module):
    r"""Plain CNN embedder: ``head(pool(features(x)))``.

    ``features`` is a stack of 3x3 conv + ReLU stages, each after the first
    halving the resolution with a 2x2 max pool; ``pool`` is global average or
    max pooling; ``head`` is a linear projection or the identity. With
    ``bias=False`` the network is a bias-free ReLU network (positively
    homogeneous), the setting where LRP-0 equals gradient x input and the
    similarity decomposes exactly.

    Args:
        in_channels (int, optional): Input channels.
            Default: 3
        widths (sequence of int, optional): Channels of each conv stage.
            Default: (16, 32, 64)
        embedding_dim (int, optional): Output width of the linear head
            (ignored when ``head="identity"``: the width is ``widths[-1]``).
            Default: 32
        pool (str, optional): ``"avg"`` or ``"max"`` global pooling.
            Default: ``"avg"``
        head (str, optional): ``"linear"`` or ``"identity"``.
            Default: ``"linear"``
        bias (bool, optional): Biases in convs and the head.
            Default: True

    Input ``(N, in_channels, H, W)``; output ``(N, embedding_dim)``. The last
    conv stage's ReLU, ``features[-1]``, is the natural Grad-CAM layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        embedding_dim: int = 32,
        pool: str = "avg",
        head: str = "linear",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        if head not in ("linear", "identity"):
            raise ValueError(f"head must be 'linear' or 'identity', got {head!r}")
        layers: list[nn.Module] = []
        prev = in_channels
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=bias), nn.ReLU()]
            prev = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        if head == "linear":
            self.head: nn.Module = nn.Linear(prev, embedding_dim, bias=bias)
            self.embedding_dim = embedding_dim
        else:
            self.head = nn.Identity()
            self.embedding_dim = prev

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))
