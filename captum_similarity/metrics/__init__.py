"""Metrics: retrieval quality of embedders and faithfulness of explanations."""

from .retrieval import auroc, retrieval_metrics, verification_auroc

__all__ = ["auroc", "retrieval_metrics", "verification_auroc"]
