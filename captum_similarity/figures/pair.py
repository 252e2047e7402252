"""Figures of pair explanations, drawn with ``captum.attr.visualization``.

:func:`to_visualizer_arrays` turns an attribution and its image, as torch
tensors in ``(C, H, W)`` layout, into the ``(H, W, C)`` numpy arrays that
:func:`captum.attr.visualization.visualize_image_attr` expects (layer maps are
upsampled to the image, grey images made RGB, pixel values scaled to [0, 1]).
:func:`visualize_pair` draws both images of a pair with their maps, one
column per method, on one colour scale per method, with a colorbar, headless.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from captum.attr import LayerAttribution
from captum.attr import visualization as viz
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from .annotate import (
    DIVERGING,
    SEQUENTIAL,
    batch_count,
    finish,
    footnote,
    pair_label,
    pair_scale,
    warn_on_axes,
)

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


#: Normalisations of :func:`visualize_pair`.
NORMALIZATIONS = ("pair", "image")

#: What signed maps mean, as the colorbar says it.
SIGNED_MEANING = ("lowers the score", "raises the score")


def _channel_sum(attr: np.ndarray, sign: str) -> np.ndarray:
    """``(H, W, C)`` -> ``(H, W)``: the channel sum, transformed for ``sign``."""
    total = attr.sum(axis=2)
    if sign == "positive":
        return np.maximum(total, 0)
    if sign == "negative":
        return np.minimum(total, 0)
    if sign == "absolute_value":
        return np.abs(total)
    return total


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
    normalize: str = "pair",
    outlier_perc: float = 2.0,
    colorbar_label: Optional[str] = None,
) -> Figure:
    r"""Draws both images of a pair with their attribution maps.

    The first row shows image 1, the second image 2; each column after the
    bare images shows one method's map over the image. Each map is summed
    over its channels (layer maps are upsampled bilinearly), transformed for
    ``sign`` and divided by a scale (``normalize``); values beyond the scale
    saturate. Signed maps (``sign="all"``) share one diverging colormap
    centred at 0 (red raises the score, blue lowers it), non-negative ones a
    sequential colormap, and one colorbar says so. The column titles give
    each scale; a footnote says which pair of the batch is drawn and how the
    maps were normalised. A map that is all zeros (or has nothing to draw
    for ``sign``) or contains NaN is drawn as the bare image with a red
    warning on its panel (and a ``UserWarning``). The figure is created
    without pyplot, so it works headless.

    Args:
        x1 (Tensor): First images, ``(N, C, H, W)`` or ``(C, H, W)``.
        x2 (Tensor): Second images, same layout.
        attributions (tuple or mapping): ``(a1, a2)`` for one method, or
            ``{method name: (a1, a2)}`` for one column per method. Each map is
            an input attribution or a layer map (see
            :func:`to_visualizer_arrays`).
        index (int, optional): Which pair of a batch to draw.
            Default: 0
        method (str, optional): ``"blended_heat_map"`` (the map over the
            image in grey) or ``"heat_map"`` (the map alone); any other of
            Captum's methods (``"masked_image"``, ``"alpha_scaling"``, ...)
            is drawn by :func:`captum.attr.visualization.visualize_image_attr`,
            which normalises each panel itself.
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
        normalize (str, optional): ``"pair"``: a method's two maps share one
            scale, so that their colours compare; ``"image"``: each map has
            its own (Captum's behaviour). The scale is the value at which the
            sorted ``|values|`` reach ``100 - outlier_perc`` percent of their
            sum (Captum's outlier rule), over both images or over one.
            Default: ``"pair"``
        outlier_perc (float, optional): Percentage of the total ``|value|``
            left to saturate.
            Default: 2.0
        colorbar_label (str, optional): The colorbar's label.
            Default: None (what the colours mean for ``sign``)

    Returns:
        matplotlib.figure.Figure: the figure (also saved to ``path`` if given).

    Example::

        >>> a1, a2 = IntegratedGradients(sim).attribute((x1, x2))
        >>> visualize_pair(x1, x2, {"IG": (a1, a2)}, sign="all", path="pair.png")
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
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if sign not in ("all", "positive", "negative", "absolute_value"):
        raise ValueError(
            f"sign must be 'all', 'positive', 'negative' or 'absolute_value', got {sign!r}"
        )
    own = method in ("blended_heat_map", "heat_map")
    offset = 1 if show_images else 0
    ncols = offset + len(columns)
    fig = Figure(
        figsize=(panel_size * ncols + (0.9 if own else 0.0), panel_size * 2 + 1.0),
        layout="constrained",
    )
    axes = np.asarray(fig.subplots(2, ncols, squeeze=False))
    images = (x1, x2)
    cmap = DIVERGING if sign == "all" else SEQUENTIAL
    low = -1.0 if sign == "all" else 0.0
    for c, (name, pair) in enumerate(columns.items()):
        arrays = [to_visualizer_arrays(pair[side], images[side], index) for side in (0, 1)]
        maps = [_channel_sum(a, sign) for a, _ in arrays]
        if sign == "negative":
            maps = [-m for m in maps]  # drawn as magnitudes of the negative part
        if normalize == "pair":
            shared = pair_scale(np.concatenate([m.ravel() for m in maps]), outlier_perc)
            scales = [shared, shared]
        else:
            scales = [pair_scale(m, outlier_perc) for m in maps]
        for side in (0, 1):
            attr_np, img_np = arrays[side]
            if show_images and c == 0:
                axes[side, 0].imshow(img_np)
                axes[side, 0].set_title(titles[side], fontsize=9)
                axes[side, 0].axis("off")
            ax = axes[side, offset + c]
            label = (name if side == 0 else "") if name else titles[side]
            finite = bool(np.isfinite(attr_np).all())
            if not finite:
                ax.imshow(img_np)
                ax.axis("off")
                warn_on_axes(ax, f"{name or titles[side]}: map has NaN or infinite values")
                title = label
            elif scales[side] == 0.0 or not np.abs(maps[side]).max() > 0:
                ax.imshow(img_np)
                ax.axis("off")
                what = "all-zero map" if not np.abs(attr_np).max() > 0 else f"no {sign} values"
                warn_on_axes(ax, f"{name or titles[side]}: {what}, nothing to draw")
                title = " ".join(t for t in (label, "(empty map)") if t)
            elif own:
                if method == "blended_heat_map":
                    ax.imshow(img_np.mean(axis=2), cmap="gray", vmin=0, vmax=1)
                ax.imshow(
                    np.clip(maps[side] / scales[side], low, 1.0),
                    cmap=cmap,
                    vmin=low,
                    vmax=1.0,
                    alpha=0.6 if method == "blended_heat_map" else 1.0,
                )
                ax.axis("off")
                scale_text = (
                    f"scale {scales[side]:.2g}" if side == 0 or normalize == "image" else ""
                )
                title = "\n".join(t for t in (label, scale_text) if t)
            else:
                viz.visualize_image_attr(
                    attr_np,
                    img_np,
                    method=method,
                    sign=sign,
                    outlier_perc=outlier_perc,
                    plt_fig_axis=(fig, ax),
                    use_pyplot=False,
                )
                title = label
            ax.set_title(_wrap(title), fontsize=9)
    if own:
        if colorbar_label is None:
            colorbar_label = (
                f"map / scale: red {SIGNED_MEANING[1]}, blue {SIGNED_MEANING[0]}"
                if sign == "all"
                else {
                    "positive": "positive part",
                    "negative": "negative part (magnitude)",
                    "absolute_value": "|map|",
                }[sign]
                + " / scale (0: none)"
            )
        mappable = ScalarMappable(Normalize(low, 1.0), cmap)
        bar = fig.colorbar(mappable, ax=axes[:, offset:].ravel().tolist(), shrink=0.8, pad=0.02)
        bar.set_label(colorbar_label, fontsize=8)
        bar.set_ticks([low, (low + 1.0) / 2, 1.0])
        bar.ax.tick_params(labelsize=7)
    rule = f"the value at which the sorted |values| reach {100 - outlier_perc:g}% of their sum"
    how = (
        f"each method's two maps share one scale ({rule}, over both images)"
        if normalize == "pair"
        else f"each map has its own scale ({rule})"
    )
    if not own:
        how = f"Captum's {method}, normalised per map"
    footnote(
        fig,
        f"{pair_label(index, batch_count(x1))}; maps summed over channels, layer maps upsampled; "
        f"{how}; values beyond the scale saturate.",
        width=int(40 * ncols),
    )
    return finish(fig, suptitle, path)


def _wrap(title: str) -> str:
    # wrap long method names, keep the scale on its own line
    return "\n".join(textwrap.fill(line, 28, break_long_words=False) for line in title.split("\n"))


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int, fill: float) -> np.ndarray:
    """Two ``(H, W, C)`` arrays next to each other, top-aligned, ``gap`` columns
    apart, on a canvas of value ``fill``."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], left.shape[2]), fill)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + gap :] = right
    return canvas
