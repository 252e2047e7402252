"""Metrics: retrieval quality of embedders, faithfulness of explanations and
plausibility of PAIR-X matches."""

from .insertion_deletion import InsertionDeletion, gaussian_blur, insertion_deletion
from .match_plausibility import auroc_at_equal_similarity, match_plausibility, ransac_affine
from .retrieval import auroc, retrieval_metrics, verification_auroc

__all__ = [
    "auroc",
    "retrieval_metrics",
    "verification_auroc",
    "insertion_deletion",
    "InsertionDeletion",
    "gaussian_blur",
    "match_plausibility",
    "ransac_affine",
    "auroc_at_equal_similarity",
]
