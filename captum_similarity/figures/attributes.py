"""The figure of a SANE attribute explanation: why two images match, and which attribute says so.

:func:`visualize_attributes` draws both images of a pair, each image's
similarity saliency map and the explaining attribute's heatmap on it (one
colour scale per kind of map, shared by the two images, with a colorbar), and
the ranked attributes with their
combined scores split into the confidence part and the agreement part.
Headless: it builds a matplotlib ``Figure`` without pyplot.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from .annotate import SEQUENTIAL, batch_count, finish, footnote, pair_label, warn_on_axes
from .pair import to_visualizer_arrays

__all__ = ["visualize_attributes"]


def _overlay(ax: Any, image: np.ndarray, shown: Optional[np.ndarray], what: str) -> None:
    """The image in grey with ``shown`` (values in [0, 1]) over it on the
    sequential colour scale; the bare image and a drawn warning when there is
    no map or a constant one."""
    ax.axis("off")
    if shown is None:
        ax.imshow(image)
        return
    if not np.isfinite(shown).all():
        ax.imshow(image)
        warn_on_axes(ax, f"{what}: map has NaN or infinite values")
        return
    if not shown.max() > 0:
        ax.imshow(image)
        warn_on_axes(ax, f"{what}: constant map, nothing to draw")
        return
    ax.imshow(image.mean(axis=2), cmap="gray", vmin=0, vmax=1)
    ax.imshow(shown, cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, alpha=0.6)


def _pair_arrays(
    maps: Sequence[Optional[Tensor]], images: Sequence[Tensor], index: int
) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]], float]:
    """The two images, the two maps (upsampled, shifted to a minimum of 0 and
    divided by the larger maximum of the two) and that maximum."""
    pictures, shifted = [], []
    for m, image in zip(maps, images):
        blank = image[..., :1, :, :] * 0
        attr, img = to_visualizer_arrays(blank if m is None else m[None], image, index)
        pictures.append(img)
        shifted.append(None if m is None else attr[..., 0] - attr[..., 0].min())
    finite = [v for v in shifted if v is not None and np.isfinite(v).all()]
    scale = max((float(v.max()) for v in finite), default=0.0)
    return pictures, [v if v is None or scale == 0 else v / scale for v in shifted], scale


def visualize_attributes(
    x1: Tensor,
    x2: Tensor,
    explanation: Any,
    index: int = 0,
    titles: Sequence[str] = ("image 1", "image 2"),
    top_k: int = 5,
    path: Union[None, str, Path] = None,
    panel_size: float = 2.4,
) -> Figure:
    r"""Draws a pair, its saliency maps and the attribute that explains the match.

    Rows: image 1 and image 2. Columns: the image; its similarity saliency
    map (shifted to a minimum of 0, since RISE maps carry an offset and
    Grad-CAM maps a sign); the spatial softmax of the explaining attribute's
    heatmap. Each kind of map is divided by the larger maximum of the two
    images (one colorbar, 0 to 1); a constant or non-finite map is drawn as
    the bare image with a warning on its panel (and a ``UserWarning``). A
    footnote says which pair of the batch is drawn and how the maps were
    normalised. The last panel ranks the best ``top_k`` attributes by combined
    score, each bar split into ``w * confidence`` and
    ``(1 - w) * agreement``. The title names the explaining attribute with
    its scores and the pair's similarity.

    Args:
        x1 (Tensor): First image ``(C, H, W)``, or a batch ``(N, C, H, W)``
            (``index`` selects).
        x2 (Tensor): Second image, same layout.
        explanation (AttributeExplanation): One pair's result of
            :meth:`~captum_similarity.SalientAttributes.explain` (for the pair
            ``index`` of a batch, ``explain(...)[index]``).
        index (int, optional): Which pair of a batch of images to draw.
            Default: 0
        titles (sequence of str, optional): Names of the two images.
            Default: ``("image 1", "image 2")``
        top_k (int, optional): Attributes listed in the ranking panel (at
            most those the explanation lists).
            Default: 5
        path (str or Path, optional): Where to save the figure (format from
            the suffix).
            Default: None
        panel_size (float, optional): Side of each image panel in inches.
            Default: 2.4

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).

    Example::

        >>> result = SalientAttributes(model, layer, head).explain(x1, x2)[0]
        >>> visualize_attributes(x1, x2, result, path="why_they_match.png")
    """
    required = ("ranking", "names", "scores", "confidence1", "confidence2", "agreement1",
                "agreement2", "attribute_weight", "similarity", "saliency1", "saliency2",
                "heatmap1", "heatmap2")
    missing = [name for name in required if not hasattr(explanation, name)]
    if missing:
        raise TypeError(
            "explanation must be one result of SalientAttributes.explain (an "
            f"AttributeExplanation); missing {missing}"
        )
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    e = explanation
    name = e.names[0]
    fig = Figure(figsize=(panel_size * 5.6, panel_size * 2 + 1.2), layout="constrained")
    grid = fig.add_gridspec(2, 5)
    images, saliency, saliency_scale = _pair_arrays((e.saliency1, e.saliency2), (x1, x2), index)
    _, heat, heat_scale = _pair_arrays((e.heatmap1, e.heatmap2), (x1, x2), index)
    map_axes = []
    for row in (0, 1):
        ax = fig.add_subplot(grid[row, 0])
        ax.imshow(images[row])
        ax.axis("off")
        ax.set_title(titles[row], fontsize=9)
        ax = fig.add_subplot(grid[row, 1])
        _overlay(ax, images[row], saliency[row], f"{titles[row]} saliency")
        ax.set_title("similarity saliency" + (" (none given)" if saliency[row] is None else ""),
                     fontsize=9)
        map_axes.append(ax)
        ax = fig.add_subplot(grid[row, 2])
        _overlay(ax, images[row], heat[row], f"'{name}' heatmap")
        ax.set_title(textwrap.fill(f"'{name}' heatmap", 30), fontsize=9)
        map_axes.append(ax)
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), SEQUENTIAL), ax=map_axes,
                       shrink=0.8, pad=0.02)
    bar.set_label("map / the pair's largest value (0: lowest)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    _ranking(fig.add_subplot(grid[:, 3:]), e, top_k)
    agreement = _agreement(e, 0)
    footnote(
        fig,
        f"{pair_label(index, batch_count(x1))}. Saliency maps: channels summed, upsampled to the "
        f"image, each shifted to a minimum of 0, both divided by the pair's largest value "
        f"({saliency_scale:.3g}). Heatmaps: spatial softmax of the attribute's heatmap, "
        f"upsampled, shifted and divided the same way ({heat_scale:.3g}). Score = "
        f"{e.attribute_weight:g} x confidence + {1 - e.attribute_weight:g} x agreement of the "
        "heatmap with the saliency map (mean of the two images).",
        width=150,
    )
    return finish(
        fig,
        f"Why these match (similarity {e.similarity:.3f}): '{name}'. Score "
        f"{float(e.scores[0]):.2f} = {e.attribute_weight:g} x confidence {_confidence_text(e)} + "
        f"{1 - e.attribute_weight:g} x map agreement {agreement:.2f}",
        path,
    )


def _agreement(e: Any, k: int) -> float:
    a1 = float(e.agreement1[k])
    return a1 if e.agreement2 is None else (a1 + float(e.agreement2[k])) / 2


def _confidence_text(e: Any) -> str:
    """The chosen attribute's confidence as the score used it, and each image's."""
    parts = f"image 1: {float(e.confidence1[0]):.2f}, image 2: {float(e.confidence2[0]):.2f}"
    w = e.attribute_weight
    if w <= 0:
        return f"({parts})"
    used = (float(e.scores[0]) - (1 - w) * _agreement(e, 0)) / w
    return f"{used:.2f} ({parts})"


def _ranking(ax: Any, e: Any, top_k: int) -> None:
    """Horizontal bars of the best attributes: confidence part, then agreement part."""
    k = min(top_k, len(e.ranking))
    w = e.attribute_weight
    totals = [float(s) for s in e.scores[:k]]
    agreement = [(1 - w) * _agreement(e, i) for i in range(k)]
    confidence = [t - a for t, a in zip(totals, agreement)]
    rows = np.arange(k)[::-1]
    ax.barh(rows, confidence, color="#4c72b0", label=f"{w:g} x confidence")
    ax.barh(rows, agreement, left=confidence, color="#dd8452", label=f"{1 - w:g} x agreement")
    for row, total in zip(rows, totals):
        ax.text(total, row, f" {total:.2f}", va="center", fontsize=8)
    ax.set_yticks(rows)
    ax.set_yticklabels([textwrap.shorten(n, 28) for n in e.names[:k]], fontsize=9)
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.set_xlim(0, max(1.0, max(totals) * 1.15))
    ax.set_xlabel("combined score", fontsize=9)
    ax.set_title("attributes, best first", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
