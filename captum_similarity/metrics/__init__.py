"""Metrics: retrieval quality of embedders, faithfulness of explanations,
sanity checks (do the maps depend on the model?), plausibility of PAIR-X
matches, and the statistics that compare methods."""

from .insertion_deletion import InsertionDeletion, gaussian_blur, insertion_deletion
from .match_plausibility import auroc_at_equal_similarity, match_plausibility, ransac_affine
from .randomization import (
    SURVIVAL_THRESHOLD,
    RandomizationCheck,
    map_similarity,
    model_randomization_check,
)
from .retrieval import auroc, retrieval_metrics, verification_auroc
from .statistics import Estimate, mean_and_standard_error, paired_difference

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
    "model_randomization_check",
    "RandomizationCheck",
    "map_similarity",
    "SURVIVAL_THRESHOLD",
    "mean_and_standard_error",
    "paired_difference",
    "Estimate",
]
