"""The figure of a SANE attribute explanation: why two images match, and which attribute says so.

:func:`visualize_attributes` draws both images of a pair, each image's
similarity saliency map and the explaining attribute's heatmap on it (with
``captum.attr.visualization``), and the ranked attributes with their
combined scores split into the confidence part and the agreement part.
Headless: it builds a matplotlib ``Figure`` without pyplot.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from captum.attr import visualization as viz
from matplotlib.figure import Figure
from torch import Tensor

from .pair import to_visualizer_arrays

__all__ = ["visualize_attributes"]


def _draw(fig: Figure, ax: Any, attribution: Optional[Tensor], image: Tensor, index: int) -> str:
    """Draws ``attribution`` blended over ``image`` on ``ax``; the bare image
    (and a note) when there is no map or nothing to draw."""
    if attribution is None:
        _, img = to_visualizer_arrays(_blank(image), image, index)
        ax.imshow(img)
        ax.axis("off")
        return "(no map)"
    shown = attribution - attribution.min()  # maps may carry an offset (RISE) or be signed
    attr, img = to_visualizer_arrays(shown, image, index)
    if not np.abs(attr).max() > 0:
        ax.imshow(img)
        ax.axis("off")
        return "(constant map)"
    viz.visualize_image_attr(
        attr, img, method="blended_heat_map", sign="positive", plt_fig_axis=(fig, ax),
        use_pyplot=False, alpha_overlay=0.55,
    )
    return ""


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
    heatmap. The last panel ranks the best ``top_k`` attributes by combined
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
    fig = Figure(figsize=(panel_size * 5.2, panel_size * 2 + 0.8), layout="constrained")
    grid = fig.add_gridspec(2, 5)
    maps = ((e.saliency1, e.heatmap1), (e.saliency2, e.heatmap2))
    for row, (image, (saliency, heatmap)) in enumerate(zip((x1, x2), maps)):
        ax = fig.add_subplot(grid[row, 0])
        _, img = to_visualizer_arrays(_blank(image), image, index)
        ax.imshow(img)
        ax.axis("off")
        ax.set_title(titles[row], fontsize=9)
        ax = fig.add_subplot(grid[row, 1])
        note = _draw(fig, ax, None if saliency is None else saliency[None], image, index)
        ax.set_title(" ".join(t for t in ("similarity saliency", note) if t), fontsize=9)
        ax = fig.add_subplot(grid[row, 2])
        note = _draw(fig, ax, heatmap[None], image, index)
        ax.set_title(textwrap.fill(f"'{name}' heatmap {note}".strip(), 30), fontsize=9)
    _ranking(fig.add_subplot(grid[:, 3:]), e, top_k)
    agreement = _agreement(e, 0)
    fig.suptitle(
        f"Why these match (similarity {e.similarity:.3f}): '{name}'. Score {float(e.scores[0]):.2f} = "
        f"{e.attribute_weight:g} x confidence {_confidence_text(e)} + {1 - e.attribute_weight:g} x "
        f"map agreement {agreement:.2f}",
        fontsize=10,
    )
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _blank(image: Tensor) -> Tensor:
    """A zero map of the image's layout (to_visualizer_arrays needs one)."""
    return image[..., :1, :, :] * 0


def _agreement(e: Any, k: int) -> float:
    a1 = float(e.agreement1[k])
    return a1 if e.agreement2 is None else (a1 + float(e.agreement2[k])) / 2


def _confidence_text(e: Any) -> str:
    return f"{float(e.confidence1[0]):.2f} (image 1) / {float(e.confidence2[0]):.2f} (image 2)"


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
