"""The trainable similarity-attention constraint of Zheng et al. (similarity mining)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution
from torch import Tensor, nn

from .._utils.layers import LayerSpec
from .._utils.state import frozen_batchnorm_statistics
from ..embedding_gradcam import EmbeddingGradCAM

__all__ = ["SimilarityAttentionLoss"]


class SimilarityAttentionLoss(nn.Module):
    r"""Similarity-mining loss on triplets, differentiable end to end.

    Zheng, Karanam, Chen, Radke and Wu (2019/2020), as read by a third party
    (the paper's own text was not available; this module follows that
    reading, and normalises the maps, which it does not mention). For a
    triplet of images (anchor, positive, negative):

    1. the triplet's :class:`~captum_similarity.EmbeddingGradCAM` maps
       ``M`` (``weighting="triplet"``, ReLU), computed with
       ``create_graph=True`` so that they depend differentiably on the
       weights;
    2. each map is divided by its maximum and upsampled to the image, and the
       soft mask ``T(M) = sigmoid(scale * (M - threshold))`` marks the
       attended region;
    3. the attended region is removed, ``I* = I * (1 - T(M))``, and the three
       masked images are embedded again (``f*``, L2-normalised when
       ``normalize``);
    4. ``L_sm = | ||f*_a - f*_p|| - ||f*_a - f*_n|| |``, averaged over the
       triplets.

    Once the regions that the attention explains are removed, the rest
    should no longer tell the positive from the negative: the attention must
    cover the evidence the embedding uses. The paper trains on ``metric loss
    + 0.5 L_sm``. ``scale`` and ``threshold`` are fixed, not learned: with
    a learnable threshold the loss has the trivial minimum of masking
    everything (all three masked images equal).

    The maps are computed as every method of the library computes them, in
    eval mode (BatchNorm with its running statistics, Dropout off; the
    training flags are restored right after, see ``docs/reliability.md``).
    The masked forward pass runs in the embedder's current mode (train mode
    during training) with BatchNorm running statistics left unchanged, so
    masked images do not shift the statistics used at test time.

    Args:
        layer (nn.Module or str): The explained layer of the embedder (module
            or dotted name), e.g. the last convolutional stage.
        scale (float, optional): Steepness ``a`` of the soft mask.
            Default: 10.0
        threshold (float, optional): Level ``b`` of the soft mask, relative
            to each map's maximum.
            Default: 0.5
        normalize (bool, optional): L2-normalise the masked embeddings
            before measuring distances (as the metric loss does).
            Default: True
        reshape_transform (Callable, optional): Passed to EmbeddingGradCAM
            (transformer token layers).
            Default: None

    Example::

        >>> from captum_similarity.training import (SimilarityAttentionLoss,
        ...     batch_hard_triplet_loss, batch_hard_triplets)
        >>> constraint = SimilarityAttentionLoss("layer3")
        >>> z = model(batch)
        >>> a, p, n = batch_hard_triplets(z, labels)
        >>> loss = batch_hard_triplet_loss(z, labels) + 0.5 * constraint(
        ...     model, batch[a], batch[p], batch[n])
        >>> loss.backward()
    """

    def __init__(
        self,
        layer: LayerSpec,
        scale: float = 10.0,
        threshold: float = 0.5,
        normalize: bool = True,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.layer = layer
        self.scale = float(scale)
        self.threshold = float(threshold)
        self.normalize = normalize
        self.reshape_transform = reshape_transform

    def extra_repr(self) -> str:
        return f"scale={self.scale}, threshold={self.threshold}, normalize={self.normalize}"

    def soft_mask(self, maps: Tensor, size: tuple) -> Tensor:
        r"""``T(M) = sigmoid(scale * (M / max M - threshold))``, upsampled.

        Args:
            maps (Tensor): Non-negative maps ``(N, 1, h, w)``.
            size (tuple of int): ``(H, W)`` of the images.

        Returns:
            Tensor: masks ``(N, 1, H, W)`` in (0, 1).
        """
        peak = maps.amax((2, 3), keepdim=True).clamp_min(torch.finfo(maps.dtype).tiny)
        relative = LayerAttribution.interpolate(maps / peak, tuple(size), "bilinear")
        return torch.sigmoid(self.scale * (relative - self.threshold))

    def forward(
        self, embedder: nn.Module, anchors: Tensor, positives: Tensor, negatives: Tensor
    ) -> Tensor:
        r"""``L_sm`` of the triplets ``(anchors[i], positives[i], negatives[i])``.

        Args:
            embedder (nn.Module): The embedder being trained.
            anchors (Tensor): ``(T, C, H, W)``.
            positives (Tensor): ``(T, C, H, W)``, same identity as the anchors.
            negatives (Tensor): ``(T, C, H, W)``, other identities.

        Returns:
            Tensor: scalar loss, differentiable with respect to the
            embedder's parameters (through the maps and the masked images).
        """
        cam = EmbeddingGradCAM(embedder, self.layer, reshape_transform=self.reshape_transform)
        images = (anchors, positives, negatives)
        with frozen_batchnorm_statistics(embedder):
            maps = cam.attribute(
                images, weighting="triplet", relu_attributions=True,
                grad_kwargs={"create_graph": True},
            )
            masked = [x * (1 - self.soft_mask(m, x.shape[-2:])) for x, m in zip(images, maps)]
            f = embedder(torch.stack(masked, dim=1).flatten(0, 1))
        if self.normalize:
            f = F.normalize(f, dim=1)
        fa, fp, fn = f[0::3], f[1::3], f[2::3]
        return ((fa - fp).norm(dim=1) - (fa - fn).norm(dim=1)).abs().mean()
