"""Insertion and deletion curves of a saliency map for a similarity score (SANE).

The pixels of the explained image are ranked by attribution. Deletion replaces
the top fraction ``t`` of them with a baseline, insertion starts from the
baseline and puts the top fraction ``t`` back; each perturbed image is scored
against the *unperturbed* reference. A faithful map makes the deletion curve
fall fast (small area) and the insertion curve rise fast (large area).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._utils.batching import batch_slices
from .._utils.inputs import broadcast_baselines, check_finite, check_float_tensor, check_images
from .._utils.state import explaining
from ..siamese import SiameseSimilarity

__all__ = ["InsertionDeletion", "insertion_deletion", "gaussian_blur"]

CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs")


@dataclass(frozen=True)
class InsertionDeletion:
    r"""Insertion and deletion curves of a batch of explained images.

    Attributes:
        fractions (Tensor): ``(T,)`` fractions ``t`` of pixels inserted or
            deleted, ``0, 1/(T-1), ..., 1``.
        insertion_curve (Tensor): ``(N, T)`` scores with the top ``t`` pixels
            kept and the rest replaced by the baseline.
        deletion_curve (Tensor): ``(N, T)`` scores with the top ``t`` pixels
            replaced by the baseline.
        score (Tensor): ``(N,)`` score of the unperturbed pair (equal to
            ``insertion_curve[:, -1]`` and ``deletion_curve[:, 0]``).

    The areas (trapezoidal rule over ``t`` in [0, 1]) are properties:
    ``insertion_auc`` and ``deletion_auc`` in score units, and
    ``insertion_auc_normalized`` and ``deletion_auc_normalized``, the areas
    under each pair's curve min-max normalised to [0, 1] as SANE reports them
    (NaN for a constant curve). Higher insertion and lower deletion areas
    mean a more faithful map. SANE's reported number is the mean of the
    normalised areas over pairs, times 100.
    """

    fractions: Tensor
    insertion_curve: Tensor
    deletion_curve: Tensor
    score: Tensor

    @property
    def insertion_auc(self) -> Tensor:
        """``(N,)`` area under the insertion curve."""
        return torch.trapezoid(self.insertion_curve, self.fractions, dim=1)

    @property
    def deletion_auc(self) -> Tensor:
        """``(N,)`` area under the deletion curve."""
        return torch.trapezoid(self.deletion_curve, self.fractions, dim=1)

    @property
    def insertion_auc_normalized(self) -> Tensor:
        """``(N,)`` area under each min-max normalised insertion curve (SANE)."""
        return torch.trapezoid(min_max_normalize(self.insertion_curve), self.fractions, dim=1)

    @property
    def deletion_auc_normalized(self) -> Tensor:
        """``(N,)`` area under each min-max normalised deletion curve (SANE)."""
        return torch.trapezoid(min_max_normalize(self.deletion_curve), self.fractions, dim=1)


def min_max_normalize(curves: Tensor) -> Tensor:
    """Rescales each row of ``(N, T)`` to [0, 1]; a constant row becomes NaN."""
    low = curves.min(dim=1, keepdim=True).values
    span = curves.max(dim=1, keepdim=True).values - low
    return (curves - low) / torch.where(span > 0, span, torch.full_like(span, float("nan")))


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    r"""Separable Gaussian blur of images ``(N, C, H, W)``.

    The kernel is truncated at ``3 * sigma`` (at least one pixel) and the
    border is extended by replication.

    Args:
        x (Tensor): Images ``(N, C, H, W)``.
        sigma (float): Standard deviation in pixels, > 0.

    Returns:
        Tensor: blurred images, same shape and dtype.
    """
    if not sigma > 0:
        raise ValueError(f"blur sigma must be positive, got {sigma!r}")
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def pixel_scores(
    attributions: Tensor,
    size: tuple,
    channel_reduction: str = "sum",
    interpolate_mode: str = "bilinear",
) -> Tensor:
    r"""One score per pixel ``(N, H, W)`` from input-shaped or layer attributions.

    Channels are reduced first (``"sum"``: signed sum, Captum's convention for
    images, so positive evidence ranks first; ``"abs_sum"``: sum of absolute
    values; ``"max_abs"``: largest absolute value), then maps of another
    spatial size are resized to ``size`` with ``interpolate_mode``.

    Args:
        attributions (Tensor): ``(N, C', h, w)`` or ``(N, h, w)``.
        size (tuple of int): ``(H, W)`` of the explained images.
        channel_reduction (str, optional): ``"sum"``, ``"abs_sum"`` or ``"max_abs"``.
            Default: ``"sum"``
        interpolate_mode (str, optional): Mode of ``torch.nn.functional.interpolate``.
            Default: ``"bilinear"``

    Returns:
        Tensor: ``(N, H, W)``.
    """
    if attributions.dim() == 3:
        attributions = attributions[:, None]
    if attributions.dim() != 4:
        raise ValueError(
            "attributions must be (N, C, H, W), a layer map (N, C', h, w) or (N, h, w); "
            f"got shape {tuple(attributions.shape)}"
        )
    if channel_reduction == "sum":
        maps = attributions.sum(1, keepdim=True)
    elif channel_reduction == "abs_sum":
        maps = attributions.abs().sum(1, keepdim=True)
    elif channel_reduction == "max_abs":
        maps = attributions.abs().amax(1, keepdim=True)
    else:
        raise ValueError(
            f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}"
        )
    if tuple(maps.shape[-2:]) != tuple(size):
        kwargs = {} if interpolate_mode in ("nearest", "area") else {"align_corners": False}
        maps = F.interpolate(maps, size=tuple(size), mode=interpolate_mode, **kwargs)
    return maps[:, 0]


def insertion_deletion(
    forward_func: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    attributions: Tensor,
    references: Tensor,
    n_steps: int = 101,
    baselines: Union[float, Tensor, str] = 0.0,
    blur_sigma: float = 5.0,
    channel_reduction: str = "sum",
    interpolate_mode: str = "bilinear",
    max_examples_per_batch: Optional[int] = 128,
    show_progress: bool = False,
) -> InsertionDeletion:
    r"""Insertion and deletion curves of saliency maps for a similarity model.

    For each explained image ``x`` (row of ``inputs``) with map ``a`` and
    reference ``r``, pixels are ranked by ``a`` (largest first; ties in raster
    order). For ``t_k = k / (n_steps - 1)``, with ``P_k`` the top
    ``round(t_k * H * W)`` pixels and ``b`` the baseline image:

    - insertion: ``x`` on ``P_k``, ``b`` elsewhere; score ``s(., r)``
    - deletion: ``b`` on ``P_k``, ``x`` elsewhere; score ``s(., r)``

    The reference is never perturbed. All ``2 * n_steps`` perturbed copies of
    every image go through ``forward_func`` in batches of
    ``max_examples_per_batch``.

    Args:
        forward_func (SiameseSimilarity or Callable): ``forward_func(x, r) ->
            (B,)`` scores. A :class:`~captum_similarity.SiameseSimilarity`
            embeds image references once; any other callable gets the
            reference rows matching each batch.
        inputs (Tensor): Explained images ``(N, C, H, W)``.
        attributions (Tensor): Maps of ``inputs`` from any Captum method or
            ours: input-shaped ``(N, C, H, W)``, a layer map ``(N, C', h, w)``
            (e.g. Grad-CAM's ``(N, 1, h, w)``) or ``(N, h, w)``. Channels are
            reduced with ``channel_reduction`` and other spatial sizes are
            resized to ``(H, W)`` with ``interpolate_mode``.
        references (Tensor): The unperturbed references, one per image
            ``(N, ...)`` or one for all ``(1, ...)``: images, or for a
            SiameseSimilarity precomputed embeddings ``(N or 1, D)``.
        n_steps (int, optional): Number of fractions ``t``, >= 2.
            Default: 101 (SANE)
        baselines (float, Tensor or str, optional): What replaces removed
            pixels: a constant, a tensor broadcastable to ``inputs`` (batch 1
            or N), or ``"blur"`` for each image blurred with
            :func:`gaussian_blur`.
            Default: 0.0
        blur_sigma (float, optional): Blur standard deviation in pixels
            (only with ``baselines="blur"``).
            Default: 5.0
        channel_reduction (str, optional): ``"sum"`` (signed sum over
            channels), ``"abs_sum"`` or ``"max_abs"``.
            Default: ``"sum"``
        interpolate_mode (str, optional): How maps of another spatial size are
            resized (``torch.nn.functional.interpolate`` mode).
            Default: ``"bilinear"``
        max_examples_per_batch (int, optional): Perturbed images per forward
            call; None for one call.
            Default: 128
        show_progress (bool, optional): Show a progress bar over batches.
            Default: False

    Returns:
        InsertionDeletion: curves ``(N, n_steps)``, the unperturbed scores and
        the AUCs (raw and min-max normalised) as properties.

    The model runs in eval mode (its training flags are restored after), one
    call at a time per model (see ``docs/reliability.md``).

    Raises:
        ValueError: for inputs that are not ``(N, C, H, W)``, inputs,
            references or attributions containing NaN/inf, attributions with
            another batch size, references whose batch
            is neither ``N`` nor 1, an unknown baseline or channel reduction,
            or ``n_steps < 2``.

    Examples::

        >>> sim = SiameseSimilarity(model.eval())
        >>> attr = IntegratedGradients(sim).attribute(x, additional_forward_args=(ref,))
        >>> result = insertion_deletion(sim, x, attr, ref)
        >>> result.deletion_auc_normalized.mean() * 100    # SANE's deletion number
    """
    inputs = check_images(inputs, "inputs", "insertion_deletion", image_dim=4, reference_ok=False)
    attributions = check_float_tensor(attributions, "attributions")
    references = check_finite(check_float_tensor(references, "references"), "references")
    n, _, height, width = inputs.shape
    if attributions.shape[0] != n:
        raise ValueError(
            f"attributions have batch size {attributions.shape[0]}, inputs {n}: one map per "
            "image (split a two-branch layer map with split_branches first)"
        )
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions contain NaN or infinite values; they cannot rank pixels")
    if references.shape[0] not in (1, n):
        raise ValueError(
            f"references have batch size {references.shape[0]}; expected {n} (one per image) or 1"
        )
    if not isinstance(n_steps, int) or n_steps < 2:
        raise ValueError(f"n_steps must be an integer >= 2, got {n_steps!r}")

    scores = pixel_scores(
        attributions.detach(), (height, width), channel_reduction, interpolate_mode
    )
    rank = pixel_ranks(scores)
    fractions = torch.linspace(0, 1, n_steps, dtype=inputs.dtype, device=inputs.device)
    counts = torch.round(fractions.double() * height * width).long().to(inputs.device)
    fill = baseline_images(baselines, inputs, blur_sigma)

    def perturbed(flat: Tensor) -> Tuple[Tensor, Tensor]:
        image, deleting, step = flat // (2 * n_steps), (flat // n_steps) % 2 == 1, flat % n_steps
        top = rank[image] < counts[step][:, None]  # (B, H*W): pixels among the top t
        keep = torch.where(deleting[:, None], ~top, top).view(-1, 1, height, width)
        return torch.where(keep, inputs[image], batch_rows(fill, image)), image

    curves = score_in_batches(
        forward_func, references, 2 * n * n_steps, perturbed, max_examples_per_batch,
        "insertion/deletion", show_progress, inputs, "insertion_deletion",
    ).view(n, 2, n_steps)
    return InsertionDeletion(fractions, curves[:, 0], curves[:, 1], curves[:, 0, -1].clone())


def pixel_ranks(scores: Tensor) -> Tensor:
    """``(N, H*W)``: the rank of each pixel of ``(N, H, W)`` scores, 0 for the
    largest; ties are broken in raster order (row by row)."""
    n = scores.shape[0]
    order = torch.argsort(scores.flatten(1), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand(n, -1))
    return rank


def score_in_batches(
    forward_func: Callable[[Tensor, Tensor], Tensor],
    references: Tensor,
    total: int,
    perturbed: Callable[[Tensor], Tuple[Tensor, Tensor]],
    max_examples_per_batch: Optional[int],
    desc: str,
    show_progress: bool,
    like: Tensor,
    method: str,
) -> Tensor:
    """``(total,)`` scores of perturbed images against their unperturbed references.

    ``perturbed(flat)`` maps the flat indices of one batch to the perturbed
    images and, for each, the row of ``references`` it is scored against. A
    :class:`~captum_similarity.SiameseSimilarity` embeds image references
    once. Runs in batches of ``max_examples_per_batch`` inside
    :func:`~captum_similarity._utils.state.explaining` (no gradients, eval
    mode, one explanation at a time; ``method`` names the caller in
    messages); the indices and the scores have the dtype and device of
    ``like``. A non-finite score raises ``ValueError`` naming ``desc``.
    """
    with explaining(forward_func, gradients=False, method=method):
        if isinstance(forward_func, SiameseSimilarity):
            references = forward_func.embed(references)
        scores = like.new_empty(total)
        bar = tqdm(total=total, desc=desc, unit="img", disable=not show_progress)
        for index in batch_slices(total, max_examples_per_batch):
            flat = torch.arange(index.start, index.stop, device=like.device)
            images, rows = perturbed(flat)
            out = forward_func(images, batch_rows(references, rows))
            if out.shape != (images.shape[0],):
                raise ValueError(
                    f"forward_func must return one score per image, shape ({images.shape[0]},); "
                    f"got {tuple(out.shape)}"
                )
            check_finite(out, f"forward_func's scores of the perturbed images ({desc})")
            scores[index] = out.to(scores.dtype)
            bar.update(images.shape[0])
        bar.close()
    return scores


def baseline_images(
    baselines: Union[float, Tensor, str], inputs: Tensor, blur_sigma: float
) -> Tensor:
    """The baseline images ``(1 or N, C, H, W)`` of ``inputs``: a constant, a
    tensor broadcastable to them, or ``"blur"`` (:func:`gaussian_blur`)."""
    if isinstance(baselines, str):
        if baselines != "blur":
            raise ValueError(f"baselines must be a number, a tensor or 'blur', got {baselines!r}")
        return gaussian_blur(inputs, blur_sigma)
    return broadcast_baselines(baselines, inputs)


def batch_rows(t: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` of a batch tensor, or its single row expanded to ``len(index)``."""
    if t.shape[0] == 1:
        return t.expand(index.shape[0], *t.shape[1:])
    return t[index]
