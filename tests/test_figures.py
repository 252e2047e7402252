"""What every figure says on itself: legends, pair index, normalisation, warnings,
and that the numbers it draws are the metrics' numbers."""

import re

import numpy as np
import pytest
import torch

from captum_similarity import PairwiseIntermediateMatching
from captum_similarity.figures import (
    visualize_insertion_deletion,
    visualize_links,
    visualize_match_consistency,
    visualize_ranking,
)
from captum_similarity.metrics import insertion_deletion, match_plausibility
from captum_similarity.siamese import SiameseSimilarity
from conftest import make_reference_model


def test_links_figure_has_a_legend_the_pair_and_warns_on_zeros():
    relevance = torch.zeros(2, 4, 4)
    relevance[1, 0, 3], relevance[1, 2, 1] = 2.0, -1.0
    x = torch.rand(2, 3, 16, 16)
    fig = visualize_links(x, x, relevance, 8, k=2, index=1)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("positive link")
    caption = " ".join(t.get_text() for t in ax.texts)
    assert "pair 1 of 2" in caption and "largest drawn (2)" in caption
    every = visualize_links(x, x, relevance, 8, k=16, index=1).axes[0]
    colours = [line.get_color() for line in every.lines]
    assert colours[0] == "tab:red" and colours[-1] == "tab:blue"  # largest first, the negative last
    with pytest.warns(UserWarning, match="all-zero BiLRP"):
        empty = visualize_links(x, x, relevance, 8, k=2, index=0)
    assert any("all-zero" in t.get_text() for t in empty.axes[0].texts)


@pytest.fixture(scope="module")
def pair_matches():
    torch.manual_seed(0)
    model = make_reference_model("resnet")
    x1 = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    x2 = torch.roll(x1, shifts=(2, 3), dims=(2, 3))  # a shifted copy: an affine view change
    (result,) = PairwiseIntermediateMatching(model, "layer2").explain(x1, x2, k=2)
    return x1, x2, result


def test_consistency_figure_counts_what_match_plausibility_counts(pair_matches):
    x1, x2, result = pair_matches
    fig = visualize_match_consistency(x1, x2, result, top=10)
    title = fig.axes[1].get_title().replace("\n", " ")
    m = min(10, len(result))
    expected = round(float(match_plausibility(result, top=10)["inlier_ratio"][0]) * m)
    assert re.search(rf"top {m} matches: {expected} agree with one affine map", title), title
    greens = sum(1 for line in fig.axes[1].lines if line.get_color() == "tab:green")
    assert greens == expected  # one residual line per match, inliers in green
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0].startswith("inlier") and labels[1] == "outlier"
    assert fig.get_supxlabel().startswith("pair 0")
    with pytest.raises(ValueError, match="top must be"):
        visualize_match_consistency(x1, x2, result, top=2)


def test_curves_figure_legend_gives_the_metric_areas():
    model = make_reference_model("cnn", dtype=torch.float32)
    sim = SiameseSimilarity(model, "cosine")
    x, ref = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    good = insertion_deletion(sim, x, torch.rand(2, 1, 32, 32), ref, n_steps=11)
    fig = visualize_insertion_deletion({"m": good}, index=1, fill="zeros")
    inserted, deleted = (ax.get_legend().get_texts()[0].get_text() for ax in fig.axes[:2])
    assert inserted == f"m: AUC {100 * float(good.insertion_auc_normalized[1]):.1f}"
    assert deleted == f"m: AUC {100 * float(good.deletion_auc_normalized[1]):.1f}"
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), good.insertion_curve[1].numpy())
    assert "pair 1 of 2" in fig.get_supxlabel() and "zeros" in fig.get_supxlabel()


def test_ranking_strip_labels_ranks_and_the_decision():
    hits = torch.rand(3, 3, 8, 8)
    fig = visualize_ranking(
        torch.rand(3, 8, 8),
        hits,
        [0.9, 0.5, 0.1],
        names=["a", "b", "c"],
        accepted=[True, False, False],
        decision_labels=("same", "other"),
    )
    titles = [ax.get_title() for ax in fig.axes[1:]]
    assert titles[0].startswith("rank 1\ns = 0.900\na") and titles[2].startswith("rank 3")
    assert [s.get_edgecolor() for s in fig.axes[1].spines.values()][0][:3] == pytest.approx(
        (0.172, 0.627, 0.172), abs=0.01
    )  # tab:green
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["same", "other"]
    with pytest.raises(ValueError, match="one entry per hit"):
        visualize_ranking(torch.rand(3, 8, 8), hits, [0.9])
