"""The PAIR-X figures: matched cells joined by lines over the relevance
overlay with the per-match pixel maps in distinct colours
(:func:`visualize_matches`), and how well the top matches agree with one
affine map between the views (:func:`visualize_match_consistency`)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from .._utils.affine import ransac_affine
from .annotate import batch_count, finish, footnote, pair_label, warn_on_axes
from .pair import side_by_side, to_visualizer_arrays

__all__ = ["visualize_matches", "visualize_match_consistency"]

#: Colormap of the layer relevance overlay.
RELEVANCE_CMAP = "jet"

#: What the figure reads of a :class:`~captum_similarity.PairMatches`.
_FIELDS = (
    "layer_relevance1",
    "layer_relevance2",
    "image_size1",
    "image_size2",
    "points1",
    "points2",
    "pixel_relevance1",
    "pixel_relevance2",
)

#: Gap between the two images, in pixels of the taller image.
_GAP_FRACTION = 0.04


def _arrays(
    x1: Tensor, x2: Tensor, matches: Any, index: int
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``[(layer relevance, image)]`` of both sides as display arrays, after
    checking that ``matches`` is a PairMatches of these images."""
    missing = [name for name in _FIELDS if not hasattr(matches, name)]
    if missing:
        raise TypeError(
            "matches must be a PairMatches (one item of PairwiseIntermediateMatching.explain), "
            f"got {type(matches).__name__} without {', '.join(missing)}"
        )
    out = []
    for name, x, relevance, size in (
        ("x1", x1, matches.layer_relevance1, matches.image_size1),
        ("x2", x2, matches.layer_relevance2, matches.image_size2),
    ):
        heat, img = to_visualizer_arrays(relevance[None], x, index)
        if tuple(img.shape[:2]) != tuple(size):
            raise ValueError(
                f"{name} has size {tuple(img.shape[:2])} but the matches were computed on "
                f"{tuple(size)}: pass the images that were explained"
            )
        out.append((heat, img))
    return out


def _per_match_layer(image: np.ndarray, maps: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The image faded to grey with each map (``(K, H, W)`` in [0, 1]) painted in
    its colour; the best ranked match is painted last, on top."""
    grey = image.mean(axis=2, keepdims=True)
    out = np.repeat(0.55 + 0.45 * grey, 3, axis=2)
    for m, colour in zip(maps[::-1], colours[::-1]):
        alpha = 0.9 * m[..., None]
        out = out * (1 - alpha) + colour[None, None, :] * alpha
    return out


def _pixel_maps(maps: Tensor) -> np.ndarray:
    """``(K, C, H, W)`` relevance -> ``(K, H, W)`` ``|sum_c R|``, each scaled to [0, 1]."""
    m = maps.detach().double().sum(1).abs().cpu().numpy()
    peak = m.reshape(len(m), -1).max(axis=1) if len(m) else np.zeros(0)
    return m / np.where(peak > 0, peak, 1.0)[:, None, None]


def visualize_matches(
    x1: Tensor,
    x2: Tensor,
    matches: Any,
    index: int = 0,
    lines: int = 10,
    overlay: bool = True,
    titles: Sequence[str] = ("image 1", "image 2"),
    suptitle: Optional[str] = None,
    path: Union[None, str, Path] = None,
    width: float = 7.0,
) -> Figure:
    r"""Draws a PAIR-X explanation of one pair.

    Top panel: both images side by side with the layer relevance as a heat
    map overlay (``overlay=True``) and the ``lines`` best ranked matches
    joined by lines, each match in its own colour (best first: blue, orange,
    green, ... of matplotlib's ``tab10``). Bottom panel: the per-match pixel
    maps (``|sum_c R|`` of each, scaled to its own maximum) painted in the
    same colours over the faded images, so that each line's pixels can be
    found. A colorbar gives the overlay's scale (the layer relevance divided
    by its maximum over both images), a legend the ranks of the first
    colours, a footnote the pair index; a layer relevance or per-match map
    that is all zeros gets a red warning on the figure. The figure is
    created without pyplot (works headless).

    Args:
        x1 (Tensor): First images ``(N, C, H, W)`` or one image ``(C, H, W)``.
        x2 (Tensor): Second images, same layout.
        matches (PairMatches): The explanation of pair ``index``, from
            :meth:`~captum_similarity.PairwiseIntermediateMatching.explain`.
        index (int, optional): Which pair of the batches ``x1``, ``x2``.
            Default: 0
        lines (int, optional): Matches drawn as lines (the best ranked).
            Default: 10
        overlay (bool, optional): Draw the layer relevance over the images;
            False shows the raw images under the lines.
            Default: True
        titles (sequence of str, optional): Names of the two images.
            Default: ``("image 1", "image 2")``
        suptitle (str, optional): Figure title.
            Default: None
        path (str or Path, optional): Where to save the figure.
            Default: None
        width (float, optional): Figure width in inches.
            Default: 7.0

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).

    Example::

        >>> result = pairx.explain(x1, x2, k=10)[0]
        >>> visualize_matches(x1, x2, result, path="pairx.png")
    """
    if not isinstance(lines, int) or lines < 0:
        raise ValueError(f"lines must be a non-negative integer, got {lines!r}")
    (heat1, img1), (heat2, img2) = _arrays(x1, x2, matches, index)
    gap = max(1, int(round(_GAP_FRACTION * max(img1.shape[0], img2.shape[0]))))
    offset = img1.shape[1] + gap
    n_lines = min(lines, len(matches))
    n_maps = int(matches.pixel_relevance1.shape[0])
    colours = _colours(max(n_lines, n_maps))

    both = side_by_side(img1, img2, gap, 1.0)
    rows = 2 if n_maps else 1
    aspect = both.shape[0] / both.shape[1]
    fig = Figure(
        figsize=(width, width * aspect * rows + 1.2 + (0.3 if suptitle else 0)),
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(rows, 1))
    ax = axes[0]
    ax.imshow(both)
    if overlay:
        heat = side_by_side(heat1, heat2, gap, np.nan)[..., 0]
        finite = heat[np.isfinite(heat)]
        top = finite.max() if finite.size and finite.max() > 0 else 1.0
        ax.imshow(np.ma.masked_invalid(heat / top), cmap=RELEVANCE_CMAP, alpha=0.45, vmin=0, vmax=1)
        bar = fig.colorbar(
            ScalarMappable(Normalize(0, 1), RELEVANCE_CMAP), ax=ax, shrink=0.8, pad=0.01
        )
        bar.set_label("layer relevance / max of both", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        if not (finite.size and np.abs(finite).max() > 0):
            warn_on_axes(ax, "all-zero layer relevance: nothing to overlay")
    p1 = matches.points1[:n_lines].detach().cpu().numpy()
    p2 = matches.points2[:n_lines].detach().cpu().numpy()
    for j in range(n_lines):
        # cell centres are at half-integer pixel coordinates; imshow puts pixel
        # centres at integers
        (xa, ya), (xb, yb) = p1[j] - 0.5, p2[j] - 0.5
        ax.plot([xa, xb + offset], [ya, yb], color=colours[j], linewidth=1.4)
        ax.scatter(
            [xa, xb + offset],
            [ya, yb],
            s=18,
            color=colours[j],
            edgecolors="white",
            linewidths=0.5,
            zorder=3,
        )
    ax.set_title(
        f"{titles[0]}  |  {titles[1]}: top {n_lines} of {len(matches)} matches"
        + (", layer relevance" if overlay else ""),
        fontsize=9,
    )
    ax.axis("off")
    if n_lines:
        shown = min(n_lines, 5)
        handles = [Line2D([], [], color=colours[j], linewidth=2) for j in range(shown)]
        labels = [f"rank {j + 1}" for j in range(shown)]
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=shown,
            fontsize=7,
            frameon=False,
            title="matches (best first; colours repeat after 10)",
            title_fontsize=7,
        )
    elif len(matches) == 0:
        warn_on_axes(ax, "no mutual matches between the two images")
    if n_maps:
        maps1, maps2 = _pixel_maps(matches.pixel_relevance1), _pixel_maps(matches.pixel_relevance2)
        painted = side_by_side(
            _per_match_layer(img1, maps1, colours[:n_maps]),
            _per_match_layer(img2, maps2, colours[:n_maps]),
            gap,
            1.0,
        )
        axes[1].imshow(np.clip(painted, 0, 1))
        axes[1].set_title(
            textwrap.fill(
                f"pixel relevance of the top {n_maps} matches (|sum over channels|, each map "
                "scaled to its own maximum; colours as above)",
                int(14 * width),
            ),
            fontsize=8,
        )
        axes[1].axis("off")
        empty = [j + 1 for j in range(n_maps) if not (maps1[j].max() > 0 or maps2[j].max() > 0)]
        if empty:
            warn_on_axes(axes[1], f"all-zero pixel maps for match ranks {empty}")
    footnote(
        fig, pair_label(index, batch_count(x1)) + "; points are cell centres of the explained layer"
    )
    return finish(fig, suptitle, path, dpi=130)


def visualize_match_consistency(
    x1: Tensor,
    x2: Tensor,
    matches: Any,
    index: int = 0,
    top: int = 10,
    residual_threshold: Optional[float] = None,
    titles: Sequence[str] = ("image 1", "image 2"),
    suptitle: Optional[str] = None,
    path: Union[None, str, Path] = None,
    width: float = 7.0,
    seed: int = 0,
) -> Figure:
    r"""Draws how well PAIR-X's top matches agree with one affine map.

    The affine map from image 1's match points to image 2's is fitted as
    :func:`~captum_similarity.metrics.match_plausibility` fits it (RANSAC on
    the ``top`` best ranked matches, :func:`~captum_similarity.metrics.ransac_affine`,
    the same seed). Left: image 1 with the points, numbered by rank. Right:
    image 2 with each matched point (circle) joined to where the fitted map
    sends its partner from image 1 (cross): inliers (residual under the
    threshold) in green, outliers in red, as the legend says. The title
    gives the inlier ratio, the residual threshold and the mean residual.

    Args:
        x1 (Tensor): First images ``(N, C, H, W)`` or one image ``(C, H, W)``.
        x2 (Tensor): Second images, same layout.
        matches (PairMatches): The explanation of pair ``index``.
        index (int, optional): Which pair of the batches ``x1``, ``x2``.
            Default: 0
        top (int, optional): How many of the best ranked matches are fitted.
            Default: 10
        residual_threshold (float, optional): Inlier bound in pixels of image 2.
            Default: None (one cell of image 2's layer grid, as
            ``match_plausibility`` uses)
        titles (sequence of str, optional): Names of the two images.
            Default: ``("image 1", "image 2")``
        suptitle (str, optional): Figure title.
            Default: None
        path (str or Path, optional): Where to save the figure.
            Default: None
        width (float, optional): Figure width in inches.
            Default: 7.0
        seed (int, optional): Seed of the RANSAC samples.
            Default: 0

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).

    Example::

        >>> result = pairx.explain(x1, x2, k=10)[0]
        >>> visualize_match_consistency(x1, x2, result, path="affine.png")
    """
    if not isinstance(top, int) or top < 3:
        raise ValueError(
            f"top must be an integer >= 3 (an affine fit needs 3 matches), got {top!r}"
        )
    (_, img1), (_, img2) = _arrays(x1, x2, matches, index)
    fig = Figure(
        figsize=(width, width * 0.5 * img1.shape[0] / img1.shape[1] + 1.3), layout="constrained"
    )
    ax1, ax2 = fig.subplots(1, 2)
    ax1.imshow(img1)
    ax2.imshow(img2)
    for ax, name in ((ax1, titles[0]), (ax2, titles[1])):
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    m = min(top, len(matches))
    grid, size = matches.layer_relevance2.shape[-2:], matches.image_size2
    threshold = residual_threshold or max(size[0] / grid[0], size[1] / grid[1])
    if m < 3:
        warn_on_axes(ax2, f"{m} matches: an affine fit needs at least 3")
        title = f"{m} matches: no affine fit"
    else:
        p1 = matches.points1[:m].detach().double().cpu()
        p2 = matches.points2[:m].detach().double().cpu()
        affine, inliers, residuals = ransac_affine(
            p1, p2, threshold, generator=torch.Generator().manual_seed(seed)
        )
        predicted = torch.cat([p1, torch.ones(m, 1, dtype=p1.dtype)], 1) @ affine.T
        for j in range(m):
            colour = "tab:green" if bool(inliers[j]) else "tab:red"
            # cell centres are at half-integer pixel coordinates; imshow puts pixel centres at integers
            (xa, ya), (xb, yb), (xp, yp) = ((p[j] - 0.5).tolist() for p in (p1, p2, predicted))
            ax1.scatter(
                [xa], [ya], s=40, color=colour, edgecolors="white", linewidths=0.6, zorder=3
            )
            ax1.annotate(
                str(j + 1), (xa, ya), color="white", fontsize=6, ha="center", va="center", zorder=4
            )
            ax2.plot([xb, xp], [yb, yp], color=colour, linewidth=1.2)
            ax2.scatter(
                [xb], [yb], s=40, color=colour, edgecolors="white", linewidths=0.6, zorder=3
            )
            ax2.annotate(
                str(j + 1), (xb, yb), color="white", fontsize=6, ha="center", va="center", zorder=4
            )
            ax2.scatter([xp], [yp], s=30, marker="x", color=colour, zorder=3)
        ax2.set_xlim(-0.5, img2.shape[1] - 0.5)
        ax2.set_ylim(img2.shape[0] - 0.5, -0.5)
        handles = [
            Line2D([], [], color="tab:green", marker="o", linewidth=1.2),
            Line2D([], [], color="tab:red", marker="o", linewidth=1.2),
            Line2D([], [], color="0.3", marker="x", linestyle="none"),
        ]
        labels = [
            f"inlier (residual < {threshold:.1f} px)",
            "outlier",
            "where the affine map sends the point of image 1",
        ]
        fig.legend(handles, labels, loc="outside upper center", ncol=3, fontsize=7, frameon=False)
        title = (
            f"top {m} matches: {int(inliers.sum())} agree with one affine map "
            f"({float(inliers.double().mean()):.0%}); mean residual {float(residuals.mean()):.1f} px"
        )
    ax2.set_title(f"{titles[1]}\n{textwrap.fill(title, int(7 * width))}", fontsize=8)
    footnote(
        fig,
        pair_label(index, batch_count(x1)) + "; numbers are match ranks; RANSAC affine fit of "
        "image 1's points onto image 2's (mirror images and scalings beyond 4x rejected)",
    )
    return finish(fig, suptitle, path, dpi=130)


def _colours(count: int) -> np.ndarray:
    """``(count, 3)`` RGB colours of the matches, best ranked first."""
    palette = np.asarray(colormaps["tab10"].colors)
    return palette[np.arange(count) % len(palette)]
