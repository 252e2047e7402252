"""What every figure of the library says on itself: warnings drawn on a panel,
a footnote (which pair, how maps were normalised), shared colour scales."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "DIVERGING",
    "SEQUENTIAL",
    "warn_on_axes",
    "footnote",
    "pair_label",
    "batch_count",
    "pair_scale",
    "finish",
]

#: Colormap of signed maps: blue (negative), white (0), red (positive).
DIVERGING = "RdBu_r"
#: Colormap of non-negative maps.
SEQUENTIAL = "Reds"


def warn_on_axes(ax: Axes, text: str, also_warn: bool = True) -> None:
    """Draws ``text`` as a red warning box across the middle of ``ax`` (and
    emits it as a ``UserWarning`` when ``also_warn``)."""
    ax.text(
        0.5,
        0.5,
        textwrap.fill(text, 22),
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=8,
        color="white",
        bbox={"boxstyle": "round", "facecolor": "tab:red", "alpha": 0.85, "edgecolor": "none"},
        zorder=10,
    )
    if also_warn:
        warnings.warn(text, UserWarning, stacklevel=3)


def footnote(fig: Figure, text: str, width: int = 110) -> None:
    """Writes ``text`` under the panels of ``fig`` (small, wrapped)."""
    fig.supxlabel(textwrap.fill(text, width), fontsize=7, color="0.25")


def pair_label(index: int, count: Optional[int]) -> str:
    """``"pair 3"`` or ``"pair 3 of 8"`` (indices as in the batch, from 0)."""
    return f"pair {index}" + (f" of {count} (index in the batch)" if count and count > 1 else "")


def batch_count(x: Any) -> Optional[int]:
    """The batch size of images ``(N, C, H, W)``; None for one image ``(C, H, W)``."""
    return int(x.shape[0]) if hasattr(x, "dim") and x.dim() == 4 else None


def finish(
    fig: Figure, suptitle: Optional[str], path: Union[None, str, Path], dpi: int = 110
) -> Figure:
    """Adds the title and saves the figure when asked; returns it."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def pair_scale(values: np.ndarray, outlier_perc: float) -> float:
    r"""The scale that maps ``values`` to [-1, 1]: the smallest ``|value|`` at
    which the sorted absolute values reach ``100 - outlier_perc`` percent of
    their sum (Captum's outlier rule, here over all the values given, e.g.
    both images of a pair). 0 when every value is 0."""
    flat = np.sort(np.abs(values[np.isfinite(values)]).ravel())
    if flat.size == 0 or flat[-1] == 0:
        return 0.0
    cumulative = np.cumsum(flat)
    reach = np.searchsorted(cumulative, cumulative[-1] * (100.0 - outlier_perc) / 100.0)
    return float(flat[min(int(reach), flat.size - 1)])
