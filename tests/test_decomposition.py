"""SimilarityDecomposition: exact sums, bias terms, marginals, errors."""

import pytest
import torch

from captum_similarity import EmbeddingGradCAM, SiameseSimilarity, SimilarityDecomposition
from captum_similarity.models import SimpleCNN
from conftest import assert_unchanged, make_reference_model, snapshot


def _cnn(**kwargs):
    torch.manual_seed(0)
    return SimpleCNN(widths=(8, 16), **kwargs).double().eval()


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("head", ["linear", "identity"])
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_matrix_sums_exactly_to_the_similarity(images, pool, head, similarity):
    model = _cnn(pool=pool, head=head)
    x1, x2 = images(2), images(2, seed=1)
    before = snapshot(model)
    dec = SimilarityDecomposition(model, model.features[-1], similarity)
    matrix, (m1, m2), delta = dec.attribute((x1, x2), return_marginals=True, return_convergence_delta=True)
    assert_unchanged(model, before)
    s = SiameseSimilarity(model, similarity)(x1, x2)
    assert matrix.shape == (2, 16 * 16, 16 * 16) and m1.shape == (2, 1, 16, 16)
    torch.testing.assert_close(matrix.sum((1, 2)), s, rtol=0, atol=1e-12)
    torch.testing.assert_close(delta, torch.zeros_like(s), rtol=0, atol=1e-12)
    torch.testing.assert_close(m1.flatten(1), matrix.sum(2))
    torch.testing.assert_close(m2.flatten(1), matrix.sum(1))
    # the score is symmetric, so is the matrix
    torch.testing.assert_close(dec.attribute((x2, x1)), matrix.transpose(1, 2))
    if pool == "max":
        # each channel is credited to one cell: without the bias, at most C cells of an image
        bare = dec.attribute((x1, x2), include_bias=False)
        assert int((bare[0].abs().sum(1) > 0).sum()) <= 16


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_bias_terms_are_accounted_for_explicitly(images, similarity):
    model = _cnn()
    x1, x2 = images(2), images(2, seed=1)
    dec = SimilarityDecomposition(model, "features.4", similarity)
    _, delta = dec.attribute((x1, x2), include_bias=False, return_convergence_delta=True)
    f1, f2, b = model(x1), model(x2), model.head.bias
    terms = f1 @ b + f2 @ b - b @ b
    if similarity == "cosine":
        terms = terms / (f1.norm(dim=1) * f2.norm(dim=1))
    assert terms.abs().amin() > 1e-3
    torch.testing.assert_close(delta, terms.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["cnn_nobias", "resnet"])
def test_gradcam_of_the_dot_product_equals_the_marginals(images, kind):
    """No ReLU, GAP + linear + dot: Grad-CAM with the similarity weighting is the
    decomposition's marginal, with factor 1 (the 1/n of the pooling is in both)."""
    model = make_reference_model(kind)
    if kind == "resnet":
        model.head.bias.data.zero_()
    layer = model.features[-1] if kind == "cnn_nobias" else model.layer3
    x1, x2 = images(2), images(2, seed=1)
    _, (m1, m2) = SimilarityDecomposition(model, layer, "dot").attribute((x1, x2), return_marginals=True)
    g1, g2 = EmbeddingGradCAM(model, layer, "dot").attribute((x1, x2), weighting="similarity")
    assert m1.abs().amax() > 0
    torch.testing.assert_close(g1, m1, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(g2, m2, rtol=1e-9, atol=1e-14)


def test_point_matches_is_the_matrix_row(images):
    model = _cnn()
    x1, x2 = images(1), images(3, seed=1)  # the batch-1 side broadcasts
    dec = SimilarityDecomposition(model, model.features[-1], "cosine")
    matrix = dec.attribute((x1, x2))
    where = dec.point_matches((x1, x2), point=(3, 5))
    assert where.shape == (3, 1, 16, 16)
    torch.testing.assert_close(where.flatten(1), matrix[:, 3 * 16 + 5])
    with pytest.raises(ValueError, match="outside the layer's 16x16 grid"):
        dec.point_matches((x1, x2), point=(16, 0))


def test_explicit_structure_and_clear_errors(images):
    x = images(2)
    model = _cnn()
    dec = SimilarityDecomposition(model, "features.4", pooling="avg", projection="head")
    assert dec.attribute((x, x)).shape == (2, 256, 256)
    with pytest.raises(ValueError, match="cannot decompose"):
        SimilarityDecomposition(model, "features.4", pooling="max").attribute((x, x))
    with pytest.raises(ValueError, match="cannot decompose"):
        SimilarityDecomposition(model, "features.1").attribute((x, x))  # not the pooled layer
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        SimilarityDecomposition(make_reference_model("vit"), "blocks.1").attribute((x, x))
    with pytest.raises(ValueError, match="not bilinear"):
        SimilarityDecomposition(model, "features.4", "euclidean")
    with pytest.raises(ValueError, match="pooling must be"):
        SimilarityDecomposition(model, "features.4", pooling="sum")
    with pytest.raises(TypeError, match="nn.Linear"):
        SimilarityDecomposition(model, "features.4", projection="features.3")
    with pytest.raises(ValueError, match="both sides must be images"):
        dec.attribute((x, model(x)))
    with pytest.raises(TypeError, match="needs a reference"):
        dec.attribute(x)
    with pytest.raises(ValueError, match="both sides must be images"):
        dec.attribute(x, additional_forward_args=(model(x),))
    # a SiameseSimilarity brings its similarity
    sim = SiameseSimilarity(model, "cosine")
    cos = SimilarityDecomposition(sim, "features.4")
    torch.testing.assert_close(cos.attribute((x, x.flip(0))).sum((1, 2)), sim(x, x.flip(0)))
