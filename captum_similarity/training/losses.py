"""Metric-learning losses."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _hardest(z: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Distances between the rows of ``z``, which anchors have a positive and a
    negative, and each anchor's hardest positive and negative (indices)."""
    dist = torch.cdist(z, z).clamp_min(1e-12)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    valid = pos.any(1) & (~same).any(1)
    if not valid.any():
        raise ValueError("the batch has no anchor with both a positive and a negative")
    hardest_pos = torch.where(pos, dist, torch.zeros_like(dist)).argmax(1)
    hardest_neg = torch.where(same, torch.full_like(dist, float("inf")), dist).argmin(1)
    return dist, valid, hardest_pos, hardest_neg


def batch_hard_triplets(embeddings: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The triplets :func:`batch_hard_triplet_loss` trains on, as indices.

    For each anchor with a positive and a negative in the batch: its hardest
    positive (largest distance between L2-normalised embeddings, same label)
    and hardest negative (smallest distance, other label). Use it to run an
    extra loss on the same triplets (e.g.
    :class:`~captum_similarity.training.SimilarityAttentionLoss`).

    Args:
        embeddings (Tensor): ``(B, D)``.
        labels (Tensor): ``(B,)`` integer identities.

    Returns:
        tuple: index tensors ``(anchors, positives, negatives)``, each ``(T,)``
        with ``T`` the number of anchors that have both.

    Raises:
        ValueError: no anchor has both a positive and a negative.
    """
    _, valid, hardest_pos, hardest_neg = _hardest(F.normalize(embeddings.detach(), dim=1), labels)
    anchors = torch.nonzero(valid).flatten()
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    r"""Batch-hard triplet loss on L2-normalised embeddings (Hermans et al. 2017).

    For each anchor, the hardest positive (largest distance, same label) and
    the hardest negative (smallest distance, other label) in the batch give
    ``relu(d(a, p) - d(a, n) + margin)``; the loss is the mean over anchors
    that have a positive and a negative (see :func:`batch_hard_triplets`).

    Args:
        embeddings (Tensor): ``(B, D)``.
        labels (Tensor): ``(B,)`` integer identities.
        margin (float, optional): Margin in Euclidean distance of unit vectors.
            Default: 0.2

    Returns:
        Tensor: scalar loss.
    """
    dist, valid, hardest_pos, hardest_neg = _hardest(F.normalize(embeddings, dim=1), labels)
    rows = torch.arange(len(labels), device=labels.device)
    return F.relu(dist[rows, hardest_pos] - dist[rows, hardest_neg] + margin)[valid].mean()


def info_nce_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    r"""Symmetric InfoNCE (NT-Xent) loss for two views of the same ``B`` items.

    Row ``i`` of ``z1`` and ``z2`` are positives; every other row of the other
    view is a negative. Cosine similarities are divided by ``temperature``.

    Returns:
        Tensor: scalar loss.
    """
    a, b = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
