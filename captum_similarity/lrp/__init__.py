"""Layer-wise relevance propagation for similarity models."""

from .default_rule import DefaultRule
from .rules import SimilarityHeadRule

__all__ = ["SimilarityHeadRule", "DefaultRule"]
