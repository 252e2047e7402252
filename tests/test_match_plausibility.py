"""Plausibility of PAIR-X matches: robust affine fit, matched relevance, and
AUROC at equal similarity, against exact constructions and brute force."""

import pytest
import torch

from captum_similarity import PairMatches, PairwiseIntermediateMatching
from captum_similarity.metrics import auroc_at_equal_similarity, match_plausibility, ransac_affine
from conftest import make_reference_model

AFFINE = torch.tensor([[0.9, 0.2, 5.0], [-0.1, 1.1, -3.0]], dtype=torch.float64)


def _apply(points):
    return points @ AFFINE[:, :2].T + AFFINE[:, 2]


def test_ransac_recovers_an_affine_map_despite_outliers():
    g = torch.Generator().manual_seed(1)
    source = torch.rand(20, 2, generator=g, dtype=torch.float64) * 100
    target = _apply(source)
    target[:6] += torch.rand(6, 2, generator=g, dtype=torch.float64) * 50 + 10  # 30% outliers
    transform, inliers, residuals = ransac_affine(source, target, threshold=1.0)
    torch.testing.assert_close(transform, AFFINE, rtol=0, atol=1e-9)
    assert inliers.tolist() == [False] * 6 + [True] * 14
    assert residuals[6:].max() < 1e-9 and residuals[:6].min() > 10


def test_ransac_accepts_no_mirror_collapse_or_collinear_fit():
    g = torch.Generator().manual_seed(2)
    source = torch.rand(10, 2, generator=g, dtype=torch.float64) * 100
    mirrored = source * torch.tensor([-1.0, 1.0], dtype=torch.float64)
    collapsed = source * 0.1
    line = torch.stack([torch.arange(5.0), torch.zeros(5)], dim=1).double()
    for s, t in ((source, mirrored), (source, collapsed), (line, line * 2)):
        transform, inliers, residuals = ransac_affine(s, t, threshold=1.0)
        assert not inliers.any()
        assert residuals.max() < 1e-9  # the least-squares map of all points is returned
    _, inliers, _ = ransac_affine(source, collapsed, threshold=1.0, max_scale=20.0)
    assert inliers.all()
    with pytest.raises(ValueError, match="at least 3"):
        ransac_affine(line[:2], line[:2], threshold=1.0)
    with pytest.raises(ValueError, match="threshold"):
        ransac_affine(line, line, threshold=0.0)


def _matches(cells1, cells2, relevance1, relevance2, cell=4.0):
    points = [(c.flip(1).double() + 0.5) * cell for c in (cells1, cells2)]
    size = (int(relevance1.shape[0] * cell), int(relevance1.shape[1] * cell))
    r1 = relevance1[cells1[:, 0], cells1[:, 1]]
    r2 = relevance2[cells2[:, 0], cells2[:, 1]]
    return PairMatches(
        score=0.5, layer_relevance1=relevance1, layer_relevance2=relevance2,
        cells1=cells1, cells2=cells2, points1=points[0], points2=points[1],
        distance=torch.zeros(len(cells1)), relevance=r1 * r2,
        pixel_relevance1=torch.zeros(0, 1, *size), pixel_relevance2=torch.zeros(0, 1, *size),
    )  # fmt: skip


def test_a_shifted_grid_is_consistent_and_a_shuffled_one_is_not():
    g = torch.Generator().manual_seed(0)
    relevance1 = torch.rand(8, 8, generator=g, dtype=torch.float64)
    relevance2 = torch.rand(8, 8, generator=g, dtype=torch.float64)
    flat = torch.randperm(36, generator=g)[:12]  # 12 cells of the top-left 6 x 6
    cells1 = torch.stack([flat // 6, flat % 6], dim=1)
    shifted = _matches(cells1, cells1 + torch.tensor([1, 2]), relevance1, relevance2)
    shuffled = _matches(
        cells1, shifted.cells2[torch.randperm(12, generator=g)], relevance1, relevance2
    )
    out = match_plausibility([shifted, shuffled], top=12)
    assert out["inlier_ratio"][0] == 1.0 and out["residual"][0] < 1e-9
    assert out["inlier_ratio"][1] < 0.5 and out["residual"][1] > 4.0
    assert out["matches"].tolist() == [12.0, 12.0]
    expected = (
        relevance1[cells1[:, 0], cells1[:, 1]].sum()
        + relevance2[shifted.cells2[:, 0], shifted.cells2[:, 1]].sum()
    ) / (relevance1.sum() + relevance2.sum())
    torch.testing.assert_close(out["relevance_on_matches"][0], expected)
    # the fit uses the top matches only; fewer than 3 give NaN
    assert torch.isnan(
        match_plausibility(_matches(cells1[:2], cells1[:2], relevance1, relevance2))["residual"]
    ).all()
    with pytest.raises(ValueError, match="top"):
        match_plausibility(shifted, top=2)


def test_identical_pair_is_fully_plausible(images):
    model = make_reference_model("resnet")
    x = images(1)
    (result,) = PairwiseIntermediateMatching(model, "layer2").explain(x, x, k=0)
    out = match_plausibility(result)
    assert out["inlier_ratio"].item() == 1.0 and out["residual"].item() < 1e-9
    assert out["relevance_on_matches"].item() == pytest.approx(1.0)


def test_auroc_at_equal_similarity_is_the_within_bin_probability():
    g = torch.Generator().manual_seed(0)
    positive = torch.rand(300, generator=g) < 0.4
    similarity = torch.rand(300, generator=g, dtype=torch.float64) + 0.3 * positive
    scores = similarity + torch.randn(300, generator=g, dtype=torch.float64) * 0.2 + 0.1 * positive
    scores[5] = float("nan")
    out = auroc_at_equal_similarity(scores, positive, similarity, bins=4)
    assert out["bins"][0]["high"] - out["bins"][0]["low"] == pytest.approx(
        out["bins"][3]["high"] - out["bins"][3]["low"]
    )
    keep = ~torch.isnan(scores)
    wins, couples = 0.0, 0
    for b, entry in enumerate(out["bins"]):
        upper = similarity <= entry["high"] if b == 3 else similarity < entry["high"]
        inside = keep & (similarity >= entry["low"]) & upper
        pos, neg = scores[inside & positive], scores[inside & ~positive]
        assert (len(pos), len(neg)) == (entry["positives"], entry["negatives"])
        for s in pos:
            wins += float((s > neg).sum()) + 0.5 * float((s == neg).sum())
        couples += len(pos) * len(neg)
    assert out["auroc"] == pytest.approx(wins / couples) and out["couples"] == couples
    # pairs outside [lowest positive, highest negative] similarity are left out
    low, high = similarity[keep & positive].min(), similarity[keep & ~positive].max()
    assert out["pairs"] == int((keep & (similarity >= low) & (similarity <= high)).sum())
    # a score that is the similarity itself separates little within bins
    assert (
        abs(auroc_at_equal_similarity(similarity, positive, similarity, bins=8)["auroc"] - 0.5)
        < 0.15
    )
