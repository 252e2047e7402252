"""Retrieval and verification quality of an embedding."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .._utils.inputs import check_finite
from ..similarity import SimilarityLike, resolve_similarity


def auroc(scores: Tensor, positive: Tensor) -> float:
    r"""Area under the ROC curve: the probability that a random positive scores
    above a random negative (ties count one half).

    Args:
        scores (Tensor): ``(M,)`` scores, larger meaning "positive".
        positive (Tensor): ``(M,)`` booleans.

    Returns:
        float: AUROC in [0, 1].

    Raises:
        ValueError: when there are no positives or no negatives.
    """
    scores = scores.detach().double().flatten()
    positive = positive.flatten().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # average the ranks of tied scores
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(scores.dtype)
    mean_rank = ends - (counts.to(scores.dtype) - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _pair_scores(embeddings: Tensor, similarity: SimilarityLike) -> Tensor:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (M, D), got shape {tuple(embeddings.shape)}")
    check_finite(embeddings, "embeddings")
    return resolve_similarity(similarity).pairs(embeddings, embeddings)


def retrieval_metrics(
    embeddings: Tensor, labels: Tensor, similarity: SimilarityLike = "cosine"
) -> Dict[str, float]:
    r"""Leave-one-out retrieval: each item queries all the others.

    Args:
        embeddings (Tensor): ``(M, D)``.
        labels (Tensor): ``(M,)`` identities; queries without another item of
            their identity are skipped.
        similarity (str, Callable or Similarity, optional): How to rank.
            Default: ``"cosine"``

    Returns:
        dict: ``recall_at_1`` (fraction of queries whose nearest other item
        has their identity) and ``mean_average_precision``.
    """
    with torch.no_grad():
        scores = _pair_scores(embeddings, similarity).double()
    m = scores.shape[0]
    scores.fill_diagonal_(float("-inf"))
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    has_match = same.any(1)
    if not has_match.any():
        raise ValueError("no identity has two items; retrieval is undefined")
    order = torch.argsort(scores, dim=1, descending=True)[:, : m - 1]
    hits = torch.gather(same, 1, order).double()[has_match]
    recall_1 = hits[:, 0].mean()
    precision_at_k = torch.cumsum(hits, 1) / torch.arange(1, m, dtype=torch.float64)
    ap = (precision_at_k * hits).sum(1) / hits.sum(1)
    return {"recall_at_1": float(recall_1), "mean_average_precision": float(ap.mean())}


def verification_auroc(
    embeddings: Tensor, labels: Tensor, similarity: SimilarityLike = "cosine"
) -> float:
    """AUROC of same-identity versus different-identity pairs (all unordered pairs)."""
    with torch.no_grad():
        scores = _pair_scores(embeddings, similarity)
    iu = torch.triu_indices(len(labels), len(labels), offset=1)
    same = labels[iu[0]] == labels[iu[1]]
    return auroc(scores[iu[0], iu[1]], same)
