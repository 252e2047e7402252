"""A query and its best ranked gallery items, as a strip."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from .pair import to_visualizer_arrays

__all__ = ["visualize_ranking"]


def visualize_ranking(
    query: Tensor,
    hits: Tensor,
    scores: Sequence[float],
    names: Optional[Sequence[str]] = None,
    accepted: Optional[Sequence[bool]] = None,
    decision_labels: Sequence[str] = ("accepted", "rejected"),
    query_name: str = "query",
    score_name: str = "s",
    gallery_size: Optional[int] = None,
    suptitle: Optional[str] = None,
    path: Union[None, str, Path] = None,
    panel_size: float = 1.8,
) -> Figure:
    r"""Draws a query and its best ranked gallery items, labelled by rank.

    Args:
        query (Tensor): The query image ``(C, H, W)`` or ``(1, C, H, W)``.
        hits (Tensor): The ranked items ``(K, C, H, W)``, best first.
        scores (sequence of float): Their ``K`` scores.
        names (sequence of str, optional): Their names (e.g. file names).
            Default: None
        accepted (sequence of bool, optional): Per item, whether the model's
            decision rule accepts the match (e.g. a verification threshold);
            accepted items get a green frame, others a red one, and a
            legend says so.
            Default: None (no frames)
        decision_labels (sequence of str, optional): What an accepted and a
            rejected match mean, for the legend (e.g. ``("same person (d <
            0.6)", "different people")``).
            Default: ``("accepted", "rejected")``
        query_name (str, optional): The query's label.
            Default: ``"query"``
        score_name (str, optional): How the score is written in labels.
            Default: ``"s"``
        gallery_size (int, optional): How many items were ranked, for the
            caption.
            Default: None
        suptitle (str, optional): Figure title.
            Default: None
        path (str or Path, optional): Where to save the figure.
            Default: None
        panel_size (float, optional): Side of each panel in inches.
            Default: 1.8

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).
    """
    if hits.dim() != 4 or hits.shape[0] == 0:
        raise ValueError(
            f"hits must be a non-empty batch (K, C, H, W), got shape {tuple(hits.shape)}"
        )
    k = hits.shape[0]
    if (
        len(scores) != k
        or (names is not None and len(names) != k)
        or (accepted is not None and len(accepted) != k)
    ):
        raise ValueError(f"scores, names and accepted must have one entry per hit ({k})")
    fig = Figure(figsize=(panel_size * (k + 1), panel_size + 1.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, k + 1))
    q = query[0] if query.dim() == 4 else query
    axes[0].imshow(to_visualizer_arrays(q[:1], q)[1])
    axes[0].set_title(textwrap.fill(query_name, 20), fontsize=8)
    for j in range(k):
        ax = axes[j + 1]
        ax.imshow(to_visualizer_arrays(hits[j, :1], hits[j])[1])
        label = f"rank {j + 1}\n{score_name} = {float(scores[j]):.3f}"
        if names is not None:
            label += f"\n{_short(names[j])}"
        ax.set_title(label, fontsize=8)
        if accepted is not None:
            colour = "tab:green" if accepted[j] else "tab:red"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].axis("off")
    if accepted is not None:
        fig.legend(
            [
                Patch(edgecolor="tab:green", facecolor="none", linewidth=2),
                Patch(edgecolor="tab:red", facecolor="none", linewidth=2),
            ],
            list(decision_labels[:2]),
            loc="outside lower center",
            ncol=2,
            fontsize=7,
            frameon=False,
        )
    total = f" of {gallery_size}" if gallery_size else ""
    caption = f"the {k} best ranked items{total}, best first (rank 1 = highest score)"
    fig.suptitle(f"{suptitle}\n{caption}" if suptitle else caption, fontsize=9)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]
