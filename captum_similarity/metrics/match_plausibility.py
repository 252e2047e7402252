"""Plausibility of PAIR-X matches: geometric consistency and matched relevance.

A similarity model that compares the right parts of two views of one object
should produce matches that agree with one geometric transformation between
the views, and put its relevance on matched parts. :func:`match_plausibility`
measures both for :class:`~captum_similarity.PairMatches`:

- **geometric consistency** of the top matches: an affine map from image 1's
  match points to image 2's is fitted robustly (RANSAC on minimal samples of
  three matches, then least squares on the inliers, :func:`ransac_affine`);
  reported are the inlier ratio and the mean residual of the top matches;
- **relevance on matches**: the fraction of the layer relevance of both
  images that lies on matched cells (PAIR-X's "proportion of relevance
  matched").

:func:`auroc_at_equal_similarity` asks whether such a score tells correct
from incorrect pairs *that the model finds equally similar*: AUROC within
similarity bins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import math

import torch
from torch import Tensor

from .._utils.affine import ransac_affine
from .._utils.inputs import check_finite
from .retrieval import auroc

if TYPE_CHECKING:  # the metric reads results; it does not need the method
    from ..pairwise_matching import PairMatches

__all__ = ["match_plausibility", "ransac_affine", "auroc_at_equal_similarity"]


def match_plausibility(
    matches: Union["PairMatches", Sequence["PairMatches"]],
    top: int = 10,
    residual_threshold: Optional[float] = None,
    trials: int = 256,
    seed: int = 0,
    max_scale: float = 4.0,
) -> Dict[str, Tensor]:
    r"""Geometric consistency of the top matches and relevance on matched cells.

    Args:
        matches (PairMatches or sequence of PairMatches): Results of
            :meth:`~captum_similarity.PairwiseIntermediateMatching.explain`.
        top (int, optional): How many of the best ranked matches the affine
            fit uses (all when a pair has fewer).
            Default: 10
        residual_threshold (float, optional): RANSAC inlier bound in pixels
            of image 2.
            Default: None (the size of one cell of image 2's layer grid,
            ``max(H / h, W / w)``: match points are cell centres, so a
            correct match can be off by up to about a cell)
        trials (int, optional): RANSAC samples per pair.
            Default: 256
        seed (int, optional): Seed of the RANSAC samples (one generator for
            all pairs).
            Default: 0
        max_scale (float, optional): Largest scaling between the views the
            fit accepts (see :func:`ransac_affine`).
            Default: 4.0

    Returns:
        dict of Tensor: each value ``(N,)`` float64, one entry per pair.
        ``inlier_ratio``: the fraction of the top matches within the
        threshold of the robust affine fit (NaN with fewer than 3 matches).
        ``residual``: the mean residual, in pixels of image 2, of the top
        matches under that fit (NaN with fewer than 3 matches).
        ``relevance_on_matches``: ``(sum of r1 over matched cells + sum of
        r2 over matched cells) / (sum r1 + sum r2)``, with ``r`` the cell
        relevance ``|sum_c R|`` at the layer, over all matches.
        ``matches``: the number of matches.
    """
    results = [matches] if hasattr(matches, "points1") else list(matches)
    if not results:
        raise ValueError("matches is empty")
    if residual_threshold is not None and not (
        not isinstance(residual_threshold, bool)
        and isinstance(residual_threshold, (int, float, Tensor))
        and 0 < float(residual_threshold) < math.inf
    ):
        raise ValueError(
            f"residual_threshold must be a positive number of pixels or None (one cell), "
            f"got {residual_threshold!r}"
        )
    for i, r in enumerate(results):
        _check_matches(r, f"matches[{i}]" if len(results) > 1 else "matches")
    if not isinstance(top, int) or top < 3:
        raise ValueError(
            f"top must be an integer >= 3 (an affine fit needs 3 matches), got {top!r}"
        )
    generator = torch.Generator().manual_seed(seed)
    keys = ("inlier_ratio", "residual", "relevance_on_matches", "matches")
    out: Dict[str, List[float]] = {k: [] for k in keys}
    for r in results:
        m = min(top, len(r))
        grid, size = r.layer_relevance2.shape, r.image_size2
        threshold = (
            max(size[0] / grid[0], size[1] / grid[1])
            if residual_threshold is None
            else float(residual_threshold)
        )
        if m >= 3:
            _, inliers, residuals = ransac_affine(
                r.points1[:m], r.points2[:m], threshold, trials, generator, max_scale
            )
            out["inlier_ratio"].append(float(inliers.double().mean()))
            out["residual"].append(float(residuals.mean()))
        else:
            out["inlier_ratio"].append(float("nan"))
            out["residual"].append(float("nan"))
        out["relevance_on_matches"].append(_relevance_on_matches(r))
        out["matches"].append(float(len(r)))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def _check_matches(r: "PairMatches", name: str) -> None:
    """Raises for a PAIR-X result holding a NaN or infinite score, point or relevance."""
    if not math.isfinite(r.score):
        raise ValueError(f"{name} has a non-finite score ({r.score}); its matches mean nothing")
    for field in ("points1", "points2", "relevance", "layer_relevance1", "layer_relevance2"):
        value = getattr(r, field)
        check_finite(value.reshape(1, -1), f"{name}.{field}")


def _relevance_on_matches(r: "PairMatches") -> float:
    r1, r2 = r.layer_relevance1.detach().double(), r.layer_relevance2.detach().double()
    matched = r1[r.cells1[:, 0], r.cells1[:, 1]].sum() + r2[r.cells2[:, 0], r.cells2[:, 1]].sum()
    total = r1.sum() + r2.sum()
    return float(matched / total) if float(total) > 0 else float("nan")


def auroc_at_equal_similarity(
    scores: Tensor, positive: Tensor, similarity: Tensor, bins: int = 50
) -> Dict[str, object]:
    r"""How well ``scores`` separate positives from negatives of equal similarity.

    Only pairs whose similarity lies where positives and negatives overlap
    (between the lowest positive and the highest negative similarity) are
    compared; outside it the similarity alone separates them. That range is
    cut into ``bins`` bins of equal width and the AUROC of ``scores`` is
    computed within each; the overall value weighs each bin by its number of
    (positive, negative) couples: it is the probability that a positive
    scores above a negative of the same bin (ties count one half). Pairs with
    a NaN score are left out.

    Bins must be narrow for the similarity to be held constant: scoring the
    pairs by the similarity itself measures what is left of it (0.5 when
    nothing is). On the held-out ORL pairs of ``benchmarks/methods/pairx_plausibility.py``
    it gives 0.52 with 50 equal-width bins, but 0.71 with 10 bins at quantiles of
    the pairs (wide where pairs are few), which is why the bins have equal
    width.

    Args:
        scores (Tensor): ``(M,)`` scores, larger meaning "positive" (negate a
            residual first).
        positive (Tensor): ``(M,)`` booleans (e.g. same identity).
        similarity (Tensor): ``(M,)`` the model's similarity of each pair.
        bins (int, optional): Number of equal-width similarity bins.
            Default: 50

    Returns:
        dict: ``auroc`` (float, NaN when no bin holds both classes),
        ``bins`` (list of dicts with ``low``, ``high``, ``positives``,
        ``negatives``, ``auroc``), ``pairs`` (pairs in the overlap) and
        ``couples`` (the (positive, negative) couples compared).
    """
    scores, similarity = scores.detach().double().flatten(), similarity.detach().double().flatten()
    positive = positive.flatten().bool()
    if not scores.shape == positive.shape == similarity.shape:
        raise ValueError("scores, positive and similarity must have the same length")
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    keep = ~torch.isnan(scores)
    scores, positive, similarity = scores[keep], positive[keep], similarity[keep]
    if not bool(positive.any()) or not bool((~positive).any()):
        raise ValueError("auroc_at_equal_similarity needs positives and negatives")
    low, high = float(similarity[positive].min()), float(similarity[~positive].max())
    overlap = (similarity >= low) & (similarity <= high)
    table = []
    weighted, weight = 0.0, 0
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64) if low <= high else None
    for b in range(bins if edges is not None else 0):
        lo, hi = float(edges[b]), float(edges[b + 1])
        upper = (similarity < hi) if b < bins - 1 else (similarity <= high)
        inside = overlap & (similarity >= lo) & upper
        n_pos, n_neg = int((inside & positive).sum()), int((inside & ~positive).sum())
        value = auroc(scores[inside], positive[inside]) if n_pos and n_neg else float("nan")
        table.append(
            {"low": lo, "high": hi, "positives": n_pos, "negatives": n_neg, "auroc": value}
        )
        if n_pos and n_neg:
            weighted += value * n_pos * n_neg
            weight += n_pos * n_neg
    return {
        "auroc": weighted / weight if weight else float("nan"),
        "bins": table,
        "pairs": int(overlap.sum()),
        "couples": weight,
    }
