"""Batched random geometric and photometric augmentation in torch."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def random_views(
    x: Tensor,
    generator: Optional[torch.Generator] = None,
    shift: float = 0.1,
    scale: tuple = (0.9, 1.1),
    rotation: float = 10.0,
    flip: bool = True,
    brightness: float = 0.2,
    contrast: float = 0.2,
) -> Tensor:
    r"""A random view of each image: affine warp plus brightness/contrast jitter.

    Args:
        x (Tensor): ``(N, C, H, W)`` images in [0, 1].
        generator (torch.Generator, optional): Source of randomness.
            Default: None (global RNG)
        shift (float, optional): Largest translation as a fraction of the size.
            Default: 0.1
        scale (tuple of float, optional): Range of zoom factors.
            Default: (0.9, 1.1)
        rotation (float, optional): Largest rotation in degrees.
            Default: 10.0
        flip (bool, optional): Mirror half of the images horizontally.
            Default: True
        brightness (float, optional): Largest additive brightness change.
            Default: 0.2
        contrast (float, optional): Largest relative contrast change.
            Default: 0.2

    Returns:
        Tensor: ``(N, C, H, W)`` views, clamped to [0, 1]; borders are filled
        by edge replication.
    """
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=generator, dtype=x.dtype).mul(hi - lo).add(lo).to(x.device)

    angle = uniform(-rotation, rotation) * math.pi / 180.0
    zoom = uniform(*scale)
    mirror = torch.ones(n, dtype=x.dtype, device=x.device)
    if flip:
        mirror = torch.where(uniform(0.0, 1.0) < 0.5, -mirror, mirror)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, uniform(-shift, shift) * 2], dim=1),
            torch.stack([sin * mirror, cos, uniform(-shift, shift) * 2], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    gain = uniform(1 - contrast, 1 + contrast).view(n, 1, 1, 1)
    offset = uniform(-brightness, brightness).view(n, 1, 1, 1)
    return ((out - mean) * gain + mean + offset).clamp(0.0, 1.0)
