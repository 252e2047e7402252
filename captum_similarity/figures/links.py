"""Patch-to-patch links between two images: the strongest BiLRP relevances, drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from .._utils.patches import PatchSize, patch_centers
from .annotate import pair_label, warn_on_axes
from .pair import side_by_side, to_visualizer_arrays

__all__ = ["strongest_links", "visualize_links"]


def strongest_links(
    relevance: Tensor,
    image_size1: Tuple[int, int],
    image_size2: Tuple[int, int],
    patch_size: PatchSize,
    k: int = 10,
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The ``k`` patch pairs with the largest relevance, as pixel coordinates.

    Args:
        relevance (Tensor): ``(N, P1, P2)`` from
            :meth:`~captum_similarity.LRPRelevancePairing.attribute_pairwise`.
        image_size1 (tuple of int): ``(H1, W1)`` of the first images.
        image_size2 (tuple of int): ``(H2, W2)`` of the second images.
        patch_size (int or tuple of int): The patch size used.
        k (int, optional): How many links per pair.
            Default: 10

    Returns:
        tuple: ``(points1, points2, values)``: ``(N, k, 2)`` patch centres
        ``(x, y)`` (pixel coordinates) in each image and ``(N, k)``
        relevances, strongest first.
    """
    c1 = patch_centers(image_size1, patch_size)
    c2 = patch_centers(image_size2, patch_size)
    n, p1, p2 = relevance.shape
    if (p1, p2) != (c1.shape[0], c2.shape[0]):
        raise ValueError(
            f"relevance has {p1} x {p2} patches, but the image sizes and patch size give "
            f"{c1.shape[0]} x {c2.shape[0]}"
        )
    k = min(int(k), p1 * p2)
    values, flat = relevance.detach().reshape(n, -1).topk(k, dim=1)
    flat = flat.cpu()
    return c1[flat // p2], c2[flat % p2], values


def visualize_links(
    x1: Tensor,
    x2: Tensor,
    relevance: Tensor,
    patch_size: PatchSize,
    k: int = 10,
    index: int = 0,
    ax: Optional[Axes] = None,
    path: Union[None, str, Path] = None,
) -> Figure:
    r"""Draws the two images side by side with their ``k`` strongest links.

    Line width and opacity grow with the link's ``|relevance|`` divided by
    the largest one drawn; red links are positive (they raise the score),
    blue ones negative, as the legend says. The caption under the images
    gives the pair index and that normalisation; a pair whose relevance is
    all zeros gets a red warning on the figure.

    Args:
        x1 (Tensor): First images ``(N, C, H, W)``.
        x2 (Tensor): Second images ``(N, C, H, W)``.
        relevance (Tensor): ``(N, P1, P2)`` BiLRP relevance.
        patch_size (int or tuple of int): The patch size used.
        k (int, optional): Links to draw.
            Default: 10
        index (int, optional): Which pair of the batch.
            Default: 0
        ax (matplotlib Axes, optional): Draw into this axes.
            Default: None (a new figure)
        path (str or Path, optional): Save the figure there.
            Default: None

    Returns:
        matplotlib.figure.Figure: the figure drawn into.
    """
    _, img1 = to_visualizer_arrays(x1, x1, index)  # only the display image is used
    _, img2 = to_visualizer_arrays(x2, x2, index)
    points1, points2, values = strongest_links(
        relevance[index : index + 1], img1.shape[:2], img2.shape[:2], patch_size, k
    )
    gap = max(4, img1.shape[1] // 10)
    canvas = side_by_side(img1, img2, gap, 1.0)
    if ax is None:
        fig = Figure(figsize=(canvas.shape[1] / 40, canvas.shape[0] / 40))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    ax.imshow(canvas)
    top = float(values.abs().max()) or 1.0
    for (x1_, y1_), (x2_, y2_), v in zip(
        points1[0].tolist(), points2[0].tolist(), values[0].tolist()
    ):
        strength = abs(v) / top
        colour = "tab:red" if v >= 0 else "tab:blue"
        ax.plot(
            [x1_, x2_ + img1.shape[1] + gap],
            [y1_, y2_],
            color=colour,
            linewidth=0.5 + 2.5 * strength,
            alpha=0.3 + 0.7 * strength,
        )
    ax.set_axis_off()
    ax.set_title(f"{len(values[0])} strongest BiLRP links", fontsize=9)
    if not float(relevance[index].abs().max()) > 0:
        warn_on_axes(ax, "all-zero BiLRP relevance: no link to draw")
    handles = [
        Line2D([], [], color="tab:red", linewidth=2),
        Line2D([], [], color="tab:blue", linewidth=2),
    ]
    ax.legend(
        handles,
        ["positive link (raises the score)", "negative link (lowers it)"],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    ax.text(
        0.5,
        -0.12,
        f"{pair_label(index, int(relevance.shape[0]))}; width and opacity: |relevance| / "
        f"largest drawn ({top:.2g}); patches of {patch_size} px",
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=7,
        color="0.25",
    )
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
