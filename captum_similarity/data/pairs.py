"""Pairs worth explaining: a face pair that ships with scikit-image, and the
typical correct and the most confident wrong match of a labelled set."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from skimage import data, exposure, transform
from torch import Tensor

from ..similarity import SimilarityLike, resolve_similarity

#: The astronaut's face with some margin, in scikit-image's 512x512 photo.
ASTRONAUT_FACE = (slice(30, 230), slice(118, 318))


def astronaut_pair() -> Tuple[np.ndarray, np.ndarray]:
    """The astronaut's face (scikit-image), and the same face mirrored, rotated
    12 degrees and darkened (gamma 1.6): two uint8 RGB arrays of 200x200."""
    face = data.astronaut()[ASTRONAUT_FACE]
    other = transform.rotate(face[:, ::-1], -12, mode="edge")
    other = exposure.adjust_gamma(other, 1.6)
    return face, (other * 255).round().astype(np.uint8)


def notable_pairs(
    embeddings: Tensor, labels: Tensor, similarity: SimilarityLike = "euclidean"
) -> Dict[str, Tuple[int, int]]:
    r"""Indices of two pairs worth explaining in a labelled set.

    Args:
        embeddings (Tensor): ``(M, D)``.
        labels (Tensor): ``(M,)`` identities.
        similarity (str, Callable or Similarity, optional): Larger = more similar.
            Default: ``"euclidean"`` (negative distance)

    Returns:
        dict: ``"correct_match"``, the same-identity pair at the median
        similarity of all same-identity pairs (a typical correct match), and
        ``"wrong_match"``, the most similar pair of two different identities
        (the most confident wrong match). Each is ``(i, j)`` with ``i < j``.
    """
    with torch.no_grad():
        scores = resolve_similarity(similarity).pairs(embeddings, embeddings)
    iu = torch.triu_indices(len(labels), len(labels), offset=1)
    s = scores[iu[0], iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    if not same.any() or same.all():
        raise ValueError("need both same-identity and different-identity pairs")
    same_idx = torch.nonzero(same).flatten()
    median = same_idx[torch.argsort(s[same_idx])[len(same_idx) // 2]]
    diff_idx = torch.nonzero(~same).flatten()
    wrong = diff_idx[torch.argmax(s[diff_idx])]
    return {
        "correct_match": (int(iu[0][median]), int(iu[1][median])),
        "wrong_match": (int(iu[0][wrong]), int(iu[1][wrong])),
    }
