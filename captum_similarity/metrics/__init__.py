"""Metrics: retrieval quality of embedders, faithfulness of explanations,
plausibility of PAIR-X matches and SANE's removal oracle for attribute
explanations."""

from .attribute_removal import AttributeRemoval, attribute_removal
from .insertion_deletion import InsertionDeletion, gaussian_blur, insertion_deletion
from .match_plausibility import auroc_at_equal_similarity, match_plausibility, ransac_affine
from .retrieval import auroc, average_precision, retrieval_metrics, verification_auroc

__all__ = [
    "auroc",
    "average_precision",
    "retrieval_metrics",
    "verification_auroc",
    "insertion_deletion",
    "attribute_removal",
    "AttributeRemoval",
    "InsertionDeletion",
    "gaussian_blur",
    "match_plausibility",
    "ransac_affine",
    "auroc_at_equal_similarity",
]
