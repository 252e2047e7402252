"""Insertion and deletion curves of several methods' maps, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from matplotlib.figure import Figure

from ..metrics.insertion_deletion import min_max_normalize
from .annotate import finish, footnote, pair_label

__all__ = ["visualize_insertion_deletion"]


def visualize_insertion_deletion(
    curves: Mapping[str, Any],
    index: int = 0,
    fill: Optional[str] = None,
    score_label: str = "similarity score",
    suptitle: Optional[str] = None,
    path: Union[None, str, Path] = None,
    width: float = 7.0,
) -> Figure:
    r"""Draws the insertion and deletion curves of one explained image.

    Left: insertion (the top fraction of pixels by each method's map put
    back onto the baseline); right: deletion (the top fraction removed). One
    line per method, the raw score against the fraction of pixels, with the
    unperturbed score dashed. The legend gives each method's area under its
    min-max normalised curve, x 100 (SANE's number: higher is better for
    insertion, lower for deletion).

    Args:
        curves (mapping): ``{method: result}`` where each result is an
            :class:`~captum_similarity.metrics.InsertionDeletion` (or has its
            ``fractions``, ``insertion_curve`` and ``deletion_curve``).
        index (int, optional): Which explained image of the results.
            Default: 0
        fill (str, optional): What removed pixels become, for the caption.
            Default: None
        score_label (str, optional): The y axis label.
            Default: ``"similarity score"``
        suptitle (str, optional): Figure title.
            Default: None
        path (str or Path, optional): Where to save the figure.
            Default: None
        width (float, optional): Figure width in inches.
            Default: 7.0

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).

    Example::

        >>> result = insertion_deletion(sim, x1, a1, x2)
        >>> visualize_insertion_deletion({"Grad-CAM": result}, path="curves.png")
    """
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(width, width * 0.42 + 0.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    count = None
    for name, result in curves.items():
        fractions = _tensor(result.fractions)
        for ax, field in zip(axes, ("insertion_curve", "deletion_curve")):
            curve = _tensor(getattr(result, field))
            count = curve.shape[0]
            row = curve[index : index + 1]
            auc = float(torch.trapezoid(min_max_normalize(row), fractions, dim=1)[0]) * 100
            ax.plot(
                fractions.numpy(), row[0].numpy(), linewidth=1.4, label=f"{name}: AUC {auc:.1f}"
            )
    first = next(iter(curves.values()))
    score = float(_tensor(first.insertion_curve)[index, -1])
    for ax, what, better in ((axes[0], "inserted", "higher"), (axes[1], "deleted", "lower")):
        ax.axhline(score, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_xlabel(f"fraction of pixels {what} (top of each map first)", fontsize=8)
        ax.set_title(
            f"{'insertion' if what == 'inserted' else 'deletion'} ({better} AUC is better)",
            fontsize=9,
        )
        ax.legend(fontsize=7, title="normalised AUC x 100", title_fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel(score_label, fontsize=8)
    footnote(
        fig,
        f"{pair_label(index, count)}; raw scores against the unperturbed other image (dashed: the "
        "unperturbed score); AUC: area under each curve min-max normalised to [0, 1], x 100 (SANE)"
        + (f"; removed pixels become {fill}" if fill else ""),
        width=int(16 * width),
    )
    return finish(fig, suptitle, path)


def _tensor(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double()
    return torch.as_tensor(values, dtype=torch.float64)
