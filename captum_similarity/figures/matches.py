"""The PAIR-X figure: matched cells joined by lines over the relevance overlay,
and the per-match pixel maps in distinct colours."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from .pair import side_by_side, to_visualizer_arrays

__all__ = ["visualize_matches"]

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
    found. The figure is created without pyplot (works headless).

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
    missing = [name for name in _FIELDS if not hasattr(matches, name)]
    if missing:
        raise TypeError(
            "matches must be a PairMatches (one item of PairwiseIntermediateMatching.explain), "
            f"got {type(matches).__name__} without {', '.join(missing)}"
        )
    if not isinstance(lines, int) or lines < 0:
        raise ValueError(f"lines must be a non-negative integer, got {lines!r}")
    heat1, img1 = to_visualizer_arrays(matches.layer_relevance1[None], x1, index)
    heat2, img2 = to_visualizer_arrays(matches.layer_relevance2[None], x2, index)
    for name, img, size in (("x1", img1, matches.image_size1), ("x2", img2, matches.image_size2)):
        if tuple(img.shape[:2]) != tuple(size):
            raise ValueError(
                f"{name} has size {tuple(img.shape[:2])} but the matches were computed on "
                f"{tuple(size)}: pass the images that were explained"
            )
    gap = max(1, int(round(_GAP_FRACTION * max(img1.shape[0], img2.shape[0]))))
    offset = img1.shape[1] + gap
    n_lines = min(lines, len(matches))
    n_maps = int(matches.pixel_relevance1.shape[0])
    colours = _colours(max(n_lines, n_maps))

    both = side_by_side(img1, img2, gap, 1.0)
    rows = 2 if n_maps else 1
    aspect = both.shape[0] / both.shape[1]
    fig = Figure(
        figsize=(width, width * aspect * rows + 0.6 + (0.3 if suptitle else 0)),
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(rows, 1))
    ax = axes[0]
    ax.imshow(both)
    if overlay:
        heat = side_by_side(heat1, heat2, gap, np.nan)[..., 0]
        finite = heat[np.isfinite(heat)]
        top = finite.max() if finite.size and finite.max() > 0 else 1.0
        ax.imshow(np.ma.masked_invalid(heat / top), cmap="jet", alpha=0.45, vmin=0, vmax=1)
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
    if n_maps:
        painted = side_by_side(
            _per_match_layer(img1, _pixel_maps(matches.pixel_relevance1), colours[:n_maps]),
            _per_match_layer(img2, _pixel_maps(matches.pixel_relevance2), colours[:n_maps]),
            gap,
            1.0,
        )
        axes[1].imshow(np.clip(painted, 0, 1))
        axes[1].set_title(f"pixel relevance of the top {n_maps} matches", fontsize=9)
        axes[1].axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


def _colours(count: int) -> np.ndarray:
    """``(count, 3)`` RGB colours of the matches, best ranked first."""
    palette = np.asarray(colormaps["tab10"].colors)
    return palette[np.arange(count) % len(palette)]
