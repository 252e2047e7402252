"""Training small embedders: augmentation, metric-learning losses, a fitting loop."""

from .attention_loss import SimilarityAttentionLoss
from .augment import random_views
from .fit import FitResult, fit, fit_contrastive, fit_metric
from .losses import batch_hard_triplet_loss, batch_hard_triplets, info_nce_loss

__all__ = [
    "random_views",
    "batch_hard_triplet_loss",
    "batch_hard_triplets",
    "SimilarityAttentionLoss",
    "info_nce_loss",
    "fit",
    "fit_metric",
    "fit_contrastive",
    "FitResult",
]
