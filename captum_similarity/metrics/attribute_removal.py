"""SANE's removal oracle for attribute explanations.

An attribute explains why ``x1`` matches ``x2`` when removing its region from
``x1`` lowers the similarity most. For each candidate attribute, the top
fraction of ``x1``'s pixels under that attribute's heatmap is replaced by a
baseline (a constant or a blurred copy) and the perturbed image is scored
against the unperturbed ``x2``; the attribute with the largest drop is the
oracle's answer (Plummer et al., SANE, ECCV 2020).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .._utils.inputs import check_float_tensor
from .._utils.state import explaining
from ..siamese import SiameseSimilarity
from .insertion_deletion import baseline_images, batch_rows, pixel_ranks, score_in_batches

__all__ = ["AttributeRemoval", "attribute_removal"]

_METHOD = "attribute_removal"


@dataclass(frozen=True)
class AttributeRemoval:
    """The similarity after removing each candidate attribute's region.

    Attributes:
        attributes (Tensor): ``(N, K)`` the candidate attribute indices of each pair.
        score (Tensor): ``(N,)`` the unperturbed similarity ``s(x1, x2)``.
        removed_score (Tensor): ``(N, K)`` the similarity with the top
            ``fraction`` of x1's pixels under each candidate's heatmap removed.
    """

    attributes: Tensor
    score: Tensor
    removed_score: Tensor

    @property
    def drop(self) -> Tensor:
        """``(N, K)`` how much removing each candidate's region lowers the similarity."""
        return self.score[:, None] - self.removed_score

    @property
    def ranking(self) -> Tensor:
        """``(N, K)`` the candidates ordered by drop, largest first (ties in candidate order)."""
        order = torch.argsort(self.drop, dim=1, descending=True, stable=True)
        return torch.gather(self.attributes, 1, order)

    @property
    def oracle(self) -> Tensor:
        """``(N,)`` the oracle's answer: the candidate whose removal drops the similarity most."""
        return self.ranking[:, 0]


def attribute_removal(
    forward_func: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    references: Tensor,
    heatmaps: Tensor,
    attributes: Optional[Tensor] = None,
    fraction: float = 0.1,
    baselines: Union[float, Tensor, str] = 0.0,
    blur_sigma: float = 5.0,
    max_examples_per_batch: Optional[int] = 128,
    show_progress: bool = False,
) -> AttributeRemoval:
    r"""SANE's removal oracle: which attribute's region, removed, lowers the similarity most.

    For pair ``i`` (``x = inputs[i]``, ``r = references[i]``) and candidate
    attribute ``a``, the heatmap ``heatmaps[i, a]`` is upsampled bilinearly to
    ``x``'s size, its top ``round(fraction * H * W)`` pixels (ties in raster
    order) are replaced by the baseline ``b`` and the result is scored
    against the unperturbed reference:
    ``removed_score[i, k] = s(x with b on P_{i,a}, r)``. The oracle's answer
    is the candidate with the largest ``s(x, r) - removed_score``. All
    ``N x K`` perturbed images go through ``forward_func`` in batches of
    ``max_examples_per_batch``, without gradients.

    Args:
        forward_func (SiameseSimilarity or Callable): ``forward_func(x, r) ->
            (B,)`` scores; a :class:`~captum_similarity.SiameseSimilarity`
            embeds image references once.
        inputs (Tensor): The images whose regions are removed, ``x1``
            ``(N, C, H, W)``.
        references (Tensor): The unperturbed references ``(N or 1, ...)``:
            images, or for a SiameseSimilarity precomputed embeddings.
        heatmaps (Tensor): ``(N, A, h, w)`` one map per attribute of each
            input (e.g. :class:`~captum_similarity.attributes.AttributeHeatmapHead`'s
            heatmaps, or ground-truth masks); any ``h x w``.
        attributes (Tensor, optional): The candidates: ``(K,)`` indices for
            every pair, or ``(N, K)`` per pair.
            Default: None (all ``A`` attributes)
        fraction (float, optional): The share of pixels removed, in (0, 1].
            Default: 0.1
        baselines (float, Tensor or str, optional): What removed pixels
            become: a constant, a tensor broadcastable to ``inputs`` (batch 1
            or N), or ``"blur"`` (each image blurred, see
            :func:`~captum_similarity.metrics.gaussian_blur`).
            Default: 0.0
        blur_sigma (float, optional): Blur standard deviation in pixels (only
            with ``baselines="blur"``).
            Default: 5.0
        max_examples_per_batch (int, optional): Perturbed images per forward
            call; None for one call.
            Default: 128
        show_progress (bool, optional): Show a progress bar.
            Default: False

    Returns:
        AttributeRemoval: the candidates, the unperturbed and the removed
        scores; ``drop``, ``ranking`` and ``oracle`` as properties.

    Raises:
        ValueError: inputs that are not ``(N, C, H, W)``, heatmaps that are
            not ``(N, A, h, w)`` or contain NaN/inf, candidate indices out of
            range, references whose batch is neither ``N`` nor 1, or a
            fraction outside (0, 1].

    Example::

        >>> maps = head(features).heatmaps                   # (N, A, h, w)
        >>> removal = attribute_removal(sim, x1, x2, maps)
        >>> removal.oracle                                    # (N,) attribute indices
    """
    inputs = check_float_tensor(inputs, "inputs")
    if inputs.dim() != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(inputs.shape)}")
    references = check_float_tensor(references, "references")
    heatmaps = check_float_tensor(heatmaps, "heatmaps").detach()
    n, _, height, width = inputs.shape
    if heatmaps.dim() != 4 or heatmaps.shape[0] != n:
        raise ValueError(
            f"heatmaps must be (N, A, h, w) with N = {n}, one map per attribute of each input; "
            f"got shape {tuple(heatmaps.shape)}"
        )
    if not torch.isfinite(heatmaps).all():
        raise ValueError("heatmaps contain NaN or infinite values; they cannot rank pixels")
    if references.shape[0] not in (1, n):
        raise ValueError(
            f"references have batch size {references.shape[0]}; expected {n} (one per input) or 1"
        )
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    candidates = _candidates(attributes, n, heatmaps.shape[1], inputs.device)
    k = candidates.shape[1]
    count = max(1, int(round(fraction * height * width)))
    fill = baseline_images(baselines, inputs, blur_sigma)

    def perturbed(flat: Tensor) -> Tuple[Tensor, Tensor]:
        pair, attribute = flat // k, candidates[flat // k, flat % k]
        maps = heatmaps[pair, attribute][:, None].to(inputs.dtype)
        if tuple(maps.shape[-2:]) != (height, width):
            maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        removed = (pixel_ranks(maps[:, 0]) < count).view(-1, 1, height, width)
        return torch.where(removed, batch_rows(fill, pair), inputs[pair]), pair

    with explaining(forward_func, gradients=False, method=_METHOD):
        if isinstance(forward_func, SiameseSimilarity):
            references = forward_func.embed(references)  # once for both passes
        score = _unperturbed(forward_func, inputs, references, max_examples_per_batch)
        removed_score = score_in_batches(
            forward_func, references, n * k, perturbed, max_examples_per_batch,
            "attribute removal", show_progress, inputs, _METHOD,
        ).view(n, k)
    return AttributeRemoval(candidates, score, removed_score)


def _candidates(attributes: Optional[Tensor], n: int, count: int, device: torch.device) -> Tensor:
    if attributes is None:
        return torch.arange(count, device=device).expand(n, count)
    candidates = torch.as_tensor(attributes, device=device)
    if candidates.dtype not in (torch.int32, torch.int64) or candidates.dim() not in (1, 2):
        raise ValueError(
            f"attributes must be integer indices (K,) or (N, K), got {candidates.dtype} of shape "
            f"{tuple(candidates.shape)}"
        )
    if candidates.dim() == 1:
        candidates = candidates.expand(n, -1)
    if candidates.shape[0] != n or candidates.shape[1] == 0:
        raise ValueError(f"attributes must have one row of candidates per input ({n}), got shape "
                         f"{tuple(candidates.shape)}")
    if ((candidates < 0) | (candidates >= count)).any():
        raise ValueError(f"attribute indices must be in [0, {count}), the heatmaps' attributes")
    return candidates.long()


def _unperturbed(
    forward_func: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    references: Tensor,
    max_examples_per_batch: Optional[int],
) -> Tensor:
    """``(N,)`` scores of the unperturbed inputs against their references."""
    return score_in_batches(
        forward_func, references, inputs.shape[0], lambda flat: (inputs[flat], flat),
        max_examples_per_batch, "unperturbed", False, inputs, _METHOD,
    )
