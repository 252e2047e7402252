"""Layer-wise relevance propagation for similarity models."""

from .rules import SimilarityHeadRule

__all__ = ["SimilarityHeadRule"]
