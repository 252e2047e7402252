"""Cutting images into patches (BiLRP's patch-to-patch relevance and its figures).

Points follow the library's one convention: pixel coordinates are ``(x, y)``
(column, then row, as matplotlib and OpenCV take them); cells of a grid are
indexed ``(row, col)``, as tensors are.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PatchSize", "patch_pair", "patch_sums", "patch_centers"]

PatchSize = Union[int, Tuple[int, int]]


def patch_pair(patch_size: PatchSize) -> Tuple[int, int]:
    """``(height, width)`` of a patch given as an int or a pair.

    Raises:
        ValueError: not a positive int or a pair of them.
    """
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if not all(isinstance(v, int) and v >= 1 for v in (ph, pw)):
        raise ValueError(f"patch_size must be a positive int or a pair of them, got {patch_size!r}")
    return ph, pw


def patch_sums(maps: Tensor, patch: Tuple[int, int]) -> Tensor:
    """Sums ``(..., H, W)`` maps over patches: ``(..., P)``, patches row by row
    from the top left, a last partial row or column of patches padded with zeros."""
    ph, pw = patch
    h, w = maps.shape[-2:]
    gh, gw = -(-h // ph), -(-w // pw)
    maps = F.pad(maps, (0, gw * pw - w, 0, gh * ph - h))
    maps = maps.reshape(*maps.shape[:-2], gh, ph, gw, pw).sum((-3, -1))
    return maps.flatten(-2)


def patch_centers(image_size: Tuple[int, int], patch_size: PatchSize) -> Tensor:
    r"""Pixel coordinates ``(x, y)`` of the centres of the patches BiLRP uses.

    Args:
        image_size (tuple of int): ``(H, W)``.
        patch_size (int or tuple of int): As given to
            :meth:`~captum_similarity.LRPRelevancePairing.attribute_pairwise`
            (``(height, width)`` for a pair).

    Returns:
        Tensor: ``(P, 2)`` float coordinates ``(x, y)``, patches in row-major
        order (partial patches at the border are centred on their visible
        part).
    """
    ph, pw = patch_pair(patch_size)
    h, w = int(image_size[0]), int(image_size[1])
    ys = torch.tensor([(min(i + ph, h) + i) / 2 - 0.5 for i in range(0, h, ph)])
    xs = torch.tensor([(min(j + pw, w) + j) / 2 - 0.5 for j in range(0, w, pw)])
    return torch.cartesian_prod(ys, xs).flip(1)
