"""Metrics: retrieval quality of embedders and faithfulness of explanations."""

from .insertion_deletion import InsertionDeletion, gaussian_blur, insertion_deletion
from .retrieval import auroc, retrieval_metrics, verification_auroc

__all__ = [
    "auroc",
    "retrieval_metrics",
    "verification_auroc",
    "insertion_deletion",
    "InsertionDeletion",
    "gaussian_blur",
]
