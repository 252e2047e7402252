"""The similarity head as a module, so hook-based methods (LRP) can address it."""

from __future__ import annotations

from torch import Tensor, nn

from .captum_lrp import DefaultRule, SimilarityHeadRule
from .similarity import Similarity


class SimilarityHead(nn.Module):
    r"""Scores two ``(N, D)`` embedding batches row by row: ``(N,)``.

    It is the last module of :class:`~captum_similarity.SiameseSimilarity`.
    It carries a default Captum LRP rule, :class:`SimilarityHeadRule`, as its
    ``rule`` attribute; Captum's ``LRP`` deletes rules after each call, and
    the default comes back on deletion so that the next call finds it. Set
    ``head.rule`` to use another rule.

    Args:
        similarity (Similarity): The resolved similarity.
    """

    rule = DefaultRule(SimilarityHeadRule)

    def __init__(self, similarity: Similarity) -> None:
        super().__init__()
        self.similarity = similarity

    def extra_repr(self) -> str:
        return f"similarity={self.similarity.name!r}"

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        return self.similarity(f1, f2)
