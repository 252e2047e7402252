"""Figures of pair explanations, drawn with ``captum.attr.visualization``.

:func:`to_visualizer_arrays` turns an attribution and its image, as torch
tensors in ``(C, H, W)`` layout, into the ``(H, W, C)`` numpy arrays that
:func:`captum.attr.visualization.visualize_image_attr` expects (layer maps are
upsampled to the image, grey images made RGB, pixel values scaled to [0, 1]).
:func:`visualize_pair` draws both images of a pair with their maps, one row
per method, headless.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from captum.attr import LayerAttribution
from captum.attr import visualization as viz
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["to_visualizer_arrays", "visualize_pair", "side_by_side"]

PairAttributions = Tuple[Tensor, Tensor]


def _select(t: Tensor, index: int, name: str, max_dim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    t = t.detach()
    if t.dim() == max_dim + 1:
        if isinstance(index, bool) or not isinstance(index, int) or not -len(t) <= index < len(t):
            raise ValueError(
                f"index {index!r} is not a sample of {name}, a batch of {len(t)} "
                f"(use 0 to {len(t) - 1})"
            )
        t = t[index]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(
            f"{name} must be (C, H, W), (H, W) or batched (N, C, H, W), got shape {tuple(t.shape)}"
        )
    return t.float().cpu()


def to_visualizer_arrays(
    attribution: Tensor, image: Tensor, index: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    r"""Converts an attribution and its image to Captum's visualizer layout.

    Args:
        attribution (Tensor): ``(C, H, W)`` input attribution, ``(1, h, w)`` or
            ``(h, w)`` layer map (upsampled bilinearly to the image size), or a
            batch of either with a leading ``N`` dimension (``index`` selects).
        image (Tensor): ``(C, H, W)`` with ``C`` in {1, 3}, or a batch
            ``(N, C, H, W)``. Float images outside [0, 1] are min-max scaled
            for display; grey images are repeated to three channels.
        index (int, optional): Which sample of a batch to convert.
            Default: 0

    Returns:
        tuple: ``(attribution, image)`` as numpy arrays of shape ``(H, W, C_a)``
        and ``(H, W, 3)``, ready for
        ``captum.attr.visualization.visualize_image_attr(attr, image, ...)``.

    Example::

        >>> from captum.attr import visualization as viz
        >>> a, img = to_visualizer_arrays(gradcam_maps, images, index=0)
        >>> fig, ax = viz.visualize_image_attr(a, img, "blended_heat_map", use_pyplot=False)
    """
    img = _select(image, index, "image", 3)
    if img.shape[0] not in (1, 3):
        raise ValueError(f"image must have 1 or 3 channels, got {img.shape[0]}")
    attr = _select(attribution, index, "attribution", 3)
    if attr.shape[-2:] != img.shape[-2:]:
        attr = LayerAttribution.interpolate(attr[None], tuple(img.shape[-2:]), "bilinear")[0]
    if attr.shape[0] not in (1, img.shape[0]):
        raise ValueError(
            f"attribution has {attr.shape[0]} channels; expected 1 or the image's {img.shape[0]}"
        )
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        img = (img - lo) / max(hi - lo, 1e-12)
    return attr.permute(1, 2, 0).numpy(), img.permute(1, 2, 0).numpy()


def _draws_something(attr: np.ndarray, sign: str) -> bool:
    total = attr.sum(axis=2)
    if sign == "positive":
        return bool((total > 0).any())
    if sign == "negative":
        return bool((total < 0).any())
    return bool(np.abs(total).max() > 0)


def visualize_pair(
    x1: Tensor,
    x2: Tensor,
    attributions: Union[PairAttributions, Mapping[str, PairAttributions]],
    index: int = 0,
    method: str = "blended_heat_map",
    sign: str = "absolute_value",
    titles: Sequence[str] = ("image 1", "image 2"),
    suptitle: Optional[str] = None,
    show_images: bool = True,
    path: Union[None, str, Path] = None,
    panel_size: float = 2.4,
) -> Figure:
    r"""Draws both images of a pair with their attribution maps.

    The first row shows image 1, the second image 2; each column after the
    bare images shows one method's map over the image. Maps are drawn by
    :func:`captum.attr.visualization.visualize_image_attr`, so ``method`` and
    ``sign`` take Captum's values. A map with nothing to draw for ``sign``
    (e.g. all zeros) shows the bare image with a note instead of failing.
    The figure is created without pyplot, so it works headless.

    Args:
        x1 (Tensor): First images, ``(N, C, H, W)`` or ``(C, H, W)``.
        x2 (Tensor): Second images, same layout.
        attributions (tuple or mapping): ``(a1, a2)`` for one method, or
            ``{method name: (a1, a2)}`` for one column per method. Each map is
            an input attribution or a layer map (see
            :func:`to_visualizer_arrays`).
        index (int, optional): Which pair of a batch to draw.
            Default: 0
        method (str, optional): Captum visualization method for the maps.
            Default: ``"blended_heat_map"``
        sign (str, optional): ``"absolute_value"``, ``"positive"``,
            ``"negative"`` or ``"all"``.
            Default: ``"absolute_value"``
        titles (sequence of str, optional): Names of the two images.
            Default: ``("image 1", "image 2")``
        suptitle (str, optional): Figure title, e.g. the similarity score.
            Default: None
        show_images (bool, optional): Include a column with the bare images.
            Default: True
        path (str or Path, optional): Where to save the figure (format from
            the suffix).
            Default: None
        panel_size (float, optional): Side of each panel in inches.
            Default: 2.4

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).

    Example::

        >>> a1, a2 = IntegratedGradients(sim).attribute((x1, x2))
        >>> visualize_pair(x1, x2, {"IG": (a1, a2)}, path="pair.png")
    """
    columns = dict(attributions) if isinstance(attributions, Mapping) else {"": attributions}
    if not columns:
        raise ValueError("attributions is empty")
    for arg, value, known in (
        ("method", method, viz.ImageVisualizationMethod.__members__),
        ("sign", sign, viz.VisualizeSign.__members__),
    ):
        if value not in known:
            raise ValueError(
                f"{arg} must be one of Captum's {', '.join(map(repr, known))}, got {value!r}"
            )
    for name, pair in columns.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"attributions for {name or 'the pair'} must be a pair (a1, a2)")
    offset = 1 if show_images else 0
    ncols = offset + len(columns)
    fig = Figure(
        figsize=(panel_size * ncols, panel_size * 2 + (0.5 if suptitle else 0.3)), layout="constrained"
    )
    axes = np.asarray(fig.subplots(2, ncols, squeeze=False))
    images = (x1, x2)
    for c, (name, pair) in enumerate(columns.items()):
        for side in (0, 1):
            attr_np, img_np = to_visualizer_arrays(pair[side], images[side], index)
            if show_images and c == 0:
                axes[side, 0].imshow(img_np)
                axes[side, 0].set_title(titles[side], fontsize=9)
                axes[side, 0].axis("off")
            ax = axes[side, offset + c]
            if _draws_something(attr_np, sign):
                viz.visualize_image_attr(
                    attr_np, img_np, method=method, sign=sign,
                    plt_fig_axis=(fig, ax), use_pyplot=False,
                )
                note = ""
            else:
                ax.imshow(img_np)
                ax.axis("off")
                note = "(empty map)"
            # the method's name heads its column; an unnamed pair is labelled per image
            label = (name if side == 0 else "") if name else titles[side]
            title = " ".join(t for t in (label, note) if t)
            ax.set_title(textwrap.fill(title, 28, break_long_words=False), fontsize=9)  # wrap long names
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int, fill: float) -> np.ndarray:
    """Two ``(H, W, C)`` arrays next to each other, top-aligned, ``gap`` columns
    apart, on a canvas of value ``fill``."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], left.shape[2]), fill)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + gap :] = right
    return canvas
