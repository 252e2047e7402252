"""Robust affine fits between two sets of points (the geometric consistency
of matches: :mod:`captum_similarity.metrics.match_plausibility` scores it,
:mod:`captum_similarity.figures.matches` draws it)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["ransac_affine", "acceptable_affine", "as_points"]


def ransac_affine(
    source: Tensor,
    target: Tensor,
    threshold: float,
    trials: int = 256,
    generator: Optional[torch.Generator] = None,
    max_scale: float = 4.0,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Robust affine fit ``target ~ A [source; 1]`` (RANSAC + least squares).

    ``trials`` random triples of correspondences each give an exact affine
    map; maps that two views of one object cannot be related by are
    discarded: mirror images (negative determinant) and maps scaling any
    direction by more than ``max_scale`` or less than ``1 / max_scale``
    (without this, a map collapsing all points near the targets' centre
    counts many random matches as inliers). The map with most inliers
    (residual below ``threshold``; ties to the smaller inlier residual sum) is
    refined by least squares on its inliers, and inliers are recounted under
    the refined map. With no acceptable triple (e.g. all points collinear) the
    least-squares map of all points is returned, and if that map is not
    acceptable either, no point counts as an inlier.

    Args:
        source (Tensor): ``(M, 2)`` points, ``M >= 3``.
        target (Tensor): ``(M, 2)`` corresponding points.
        threshold (float): Inlier residual bound, in the units of the points.
        trials (int, optional): Random minimal samples.
            Default: 256
        generator (torch.Generator, optional): Source of the samples.
            Default: None (a generator seeded with 0)
        max_scale (float, optional): Largest scaling accepted in any direction.
            Default: 4.0

    Returns:
        tuple: ``(A, inliers, residuals)``: the ``(2, 3)`` map, an ``(M,)``
        bool mask and the ``(M,)`` residuals ``|A [p; 1] - q|`` under it.
    """
    src, dst = as_points(source, "source"), as_points(target, "target")
    if src.shape != dst.shape:
        raise ValueError(
            f"source and target must match, got {tuple(src.shape)} and {tuple(dst.shape)}"
        )
    m = src.shape[0]
    if m < 3:
        raise ValueError(f"an affine fit needs at least 3 correspondences, got {m}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got {trials!r}")
    if not max_scale >= 1:
        raise ValueError(f"max_scale must be at least 1, got {max_scale}")
    generator = generator or torch.Generator().manual_seed(0)
    homogeneous = torch.cat([src, torch.ones(m, 1, dtype=src.dtype)], dim=1)  # (M, 3)
    triples = torch.rand(trials, m, generator=generator).argsort(dim=1)[:, :3]
    basis = homogeneous[triples]  # (T, 3, 3)
    scale = max(1.0, float(src.abs().max())) ** 2
    usable = torch.linalg.det(basis).abs() > 1e-9 * scale
    best: Optional[Tensor] = None
    maps = torch.linalg.solve(basis[usable], dst[triples[usable]])  # (T', 3, 2)
    maps = maps[acceptable_affine(maps, max_scale)]
    if len(maps):
        residuals = (homogeneous @ maps - dst).norm(dim=2)  # (T', M)
        inside = residuals < threshold
        count = inside.sum(1).double()
        spread = torch.where(inside, residuals, torch.zeros_like(residuals)).sum(1)
        # most inliers first, then the smaller inlier residual sum
        best = inside[int(torch.argmax(count - spread / (spread.max() + 1.0)))]
    fit_rows = torch.ones(m, dtype=torch.bool) if best is None else best
    # minimum-norm least squares (pinv copes with collinear points)
    solution = torch.linalg.pinv(homogeneous[fit_rows]) @ dst[fit_rows]  # (3, 2)
    residuals = (homogeneous @ solution - dst).norm(dim=1)
    inliers = residuals < threshold
    if not bool(acceptable_affine(solution[None], max_scale)[0]):
        inliers = torch.zeros_like(inliers)  # no view change explains the matches
    return solution.T, inliers, residuals


def acceptable_affine(maps: Tensor, max_scale: float) -> Tensor:
    """Which ``(T, 3, 2)`` affine maps (``[x, y, 1] @ map``) neither mirror nor
    scale any direction beyond ``[1 / max_scale, max_scale]``."""
    linear = maps[:, :2, :]
    stretch = torch.linalg.svdvals(linear)  # descending
    return (
        (torch.linalg.det(linear) > 0)
        & (stretch[:, 0] <= max_scale)
        & (stretch[:, 1] >= 1 / max_scale)
    )


def as_points(t: Tensor, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] != 2:
        raise ValueError(f"{name} must be (M, 2) points, got shape {tuple(t.shape)}")
    return t.detach().double().cpu()
