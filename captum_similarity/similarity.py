"""Similarity functions between embeddings.

Every method of the library scores a pair of embeddings through one
:class:`Similarity` object, resolved once from a name, a callable or an
instance by :func:`resolve_similarity`. Each similarity has a pairwise form,
``(N, D), (N, D) -> (N,)``, and a matrix form, ``(N, D), (G, D) -> (N, G)``,
which agree entry by entry.

Distances are returned negated, so that larger always means more similar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Similarity",
    "SimilarityLike",
    "resolve_similarity",
    "SIMILARITIES",
]

PairwiseFn = Callable[[Tensor, Tensor], Tensor]

#: Norm floor used by the cosine similarity, as in ``torch.nn.functional.normalize``.
COSINE_EPS = 1e-12


@dataclass(frozen=True)
class Similarity:
    r"""A similarity between embeddings with a pairwise and a matrix form.

    Args:
        name (str): Name used in messages and figure titles.
        pairwise (Callable): Maps two ``(N, D)`` tensors to ``(N,)`` scores.
        matrix (Callable, optional): Maps ``(N, D)`` and ``(G, D)`` tensors to
            ``(N, G)`` scores. When None, it is computed from ``pairwise`` on
            all ``N * G`` pairs.
            Default: None
        symmetric (bool, optional): Whether ``s(a, b) == s(b, a)``. Methods use
            it to decide whether the second image may be explained by swapping
            the arguments.
            Default: False
        contributions (Callable, optional): Maps two ``(N, D)`` tensors to the
            ``(N, D)`` per-dimension contributions whose row sums equal the
            pairwise scores. Relevance methods (LRP, pair-weighted Grad-CAM)
            split the score over embedding dimensions with it; they raise for a
            similarity without one.
            Default: None
    """

    name: str
    pairwise: PairwiseFn
    matrix: Optional[PairwiseFn] = None
    symmetric: bool = False
    contributions: Optional[PairwiseFn] = None

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """Scores ``(N, D)`` against ``(N, D)`` row by row; returns ``(N,)``."""
        _check_embedding_pair(a, b, same_batch=True)
        scores = self.pairwise(a, b)
        if scores.shape != (a.shape[0],):
            raise ValueError(
                f"similarity {self.name!r} returned shape {tuple(scores.shape)}; "
                f"expected ({a.shape[0]},), one score per pair"
            )
        return scores

    def contribution(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-dimension contributions ``(N, D)`` of each pair; rows sum to the scores.

        Raises:
            ValueError: the similarity defines no contributions.
        """
        if self.contributions is None:
            raise ValueError(
                f"similarity {self.name!r} defines no per-dimension contributions; "
                "give the Similarity a `contributions` function or use one of "
                + ", ".join(repr(k) for k in SIMILARITIES)
            )
        _check_embedding_pair(a, b, same_batch=True)
        return self.contributions(a, b)

    def pairs(self, a: Tensor, b: Tensor) -> Tensor:
        """Scores every row of ``a`` (N, D) against every row of ``b`` (G, D).

        Returns:
            Tensor of shape ``(N, G)``.
        """
        _check_embedding_pair(a, b, same_batch=False)
        if self.matrix is not None:
            return self.matrix(a, b)
        n, g = a.shape[0], b.shape[0]
        left = a.repeat_interleave(g, dim=0)
        right = b.repeat(n, 1)
        return self(left, right).reshape(n, g)


SimilarityLike = Union[str, Similarity, PairwiseFn]


def _check_embedding_pair(a: Tensor, b: Tensor, same_batch: bool) -> None:
    for label, t in (("first", a), ("second", b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"the {label} embedding must be a Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"the {label} embedding must be 2-D (N, D), got shape {tuple(t.shape)}"
            )
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"embedding widths differ: {a.shape[1]} and {b.shape[1]}; both sides "
            "must come from the same embedding space"
        )
    if same_batch and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"embedding batch sizes differ: {a.shape[0]} and {b.shape[0]}"
        )


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return (F.normalize(a, dim=1, eps=COSINE_EPS) * F.normalize(b, dim=1, eps=COSINE_EPS)).sum(1)


def _cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    return F.normalize(a, dim=1, eps=COSINE_EPS) @ F.normalize(b, dim=1, eps=COSINE_EPS).T


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(1)


def _dot_matrix(a: Tensor, b: Tensor) -> Tensor:
    return a @ b.T


def _dot_contributions(a: Tensor, b: Tensor) -> Tensor:
    return a * b


def _cosine_contributions(a: Tensor, b: Tensor) -> Tensor:
    # the norms are held constant: dimension j contributes a_j b_j / (|a| |b|)
    return F.normalize(a, dim=1, eps=COSINE_EPS) * F.normalize(b, dim=1, eps=COSINE_EPS)


def _neg_euclidean_contributions(a: Tensor, b: Tensor) -> Tensor:
    sq = (a - b).pow(2)
    dist = sq.sum(1, keepdim=True).sqrt()
    return -sq / dist.clamp_min(torch.finfo(a.dtype).tiny)


def _neg_squared_euclidean_contributions(a: Tensor, b: Tensor) -> Tensor:
    return -(a - b).pow(2)


# vector_norm has a zero (not NaN) gradient at distance zero, so s(x, x) stays
# differentiable.
def _neg_euclidean(a: Tensor, b: Tensor) -> Tensor:
    return -torch.linalg.vector_norm(a - b, dim=1)


def _neg_euclidean_matrix(a: Tensor, b: Tensor) -> Tensor:
    return -torch.linalg.vector_norm(a[:, None, :] - b[None, :, :], dim=2)


def _neg_squared_euclidean(a: Tensor, b: Tensor) -> Tensor:
    return -(a - b).pow(2).sum(1)


def _neg_squared_euclidean_matrix(a: Tensor, b: Tensor) -> Tensor:
    return -(a[:, None, :] - b[None, :, :]).pow(2).sum(2)


#: The built-in similarities by name.
SIMILARITIES = {
    "cosine": Similarity("cosine", _cosine, _cosine_matrix, True, _cosine_contributions),
    "dot": Similarity("dot", _dot, _dot_matrix, True, _dot_contributions),
    "euclidean": Similarity(
        "euclidean", _neg_euclidean, _neg_euclidean_matrix, True, _neg_euclidean_contributions
    ),
    "squared_euclidean": Similarity(
        "squared_euclidean",
        _neg_squared_euclidean,
        _neg_squared_euclidean_matrix,
        True,
        _neg_squared_euclidean_contributions,
    ),
}


def resolve_similarity(similarity: SimilarityLike) -> Similarity:
    r"""Turns a name, a callable or a :class:`Similarity` into a :class:`Similarity`.

    Args:
        similarity (str, Callable or Similarity): One of ``"cosine"``, ``"dot"``,
            ``"euclidean"`` (negative L2 distance) and ``"squared_euclidean"``
            (negative squared L2 distance); a callable mapping two ``(N, D)``
            tensors to ``(N,)`` scores (treated as not symmetric); or a
            :class:`Similarity`.

    Returns:
        Similarity: the resolved similarity.

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything that is neither a string nor callable.
    """
    if isinstance(similarity, Similarity):
        return similarity
    if isinstance(similarity, str):
        try:
            return SIMILARITIES[similarity]
        except KeyError:
            known = ", ".join(repr(k) for k in SIMILARITIES)
            raise ValueError(
                f"unknown similarity {similarity!r}; expected one of {known} or a callable"
            ) from None
    if callable(similarity):
        name = getattr(similarity, "__name__", type(similarity).__name__)
        return Similarity(name, similarity)
    raise TypeError(
        "similarity must be a name, a callable (a, b) -> (N,) or a Similarity, "
        f"got {type(similarity).__name__}"
    )
