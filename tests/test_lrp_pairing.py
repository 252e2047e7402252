"""LRPRelevancePairing: conservation, closed forms, 1-vs-N reuse, errors, model state."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    REFERENCE_KINDS,
    assert_unchanged,
    make_reference_model,
    snapshot,
    zero_additive_constants,
)
from torch import nn

from captum_similarity import LRPRelevancePairing, SiameseSimilarity, Similarity
from captum_similarity.lrp import Epsilon
from captum_similarity.models import SimpleCNN
from captum_similarity.relevance_pairing import patch_centers

DT = torch.float64


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_relevance_conserves_end_to_end(kind, similarity, images):
    model = zero_additive_constants(make_reference_model(kind))
    x1, x2 = images(2, seed=1), images(2, seed=2)
    lrp = LRPRelevancePairing(model, similarity, composite="lrp0")
    (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    scores = SiameseSimilarity(model, similarity)(x1, x2)
    torch.testing.assert_close(r1.sum((1, 2, 3)), scores, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(r2.sum((1, 2, 3)), scores, rtol=1e-8, atol=1e-10)
    assert delta.shape == (2, 2) and delta.abs().max() < 1e-8


def test_reference_models_are_explained(reference_model, images):
    x1, x2 = images(2, seed=1), images(2, seed=2)
    before = snapshot(reference_model)
    lrp = LRPRelevancePairing(reference_model, "cosine")
    (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    pairwise, delta_pairwise = lrp.attribute_pairwise(
        (x1, x2), projection_dim=4, return_convergence_delta=True
    )
    assert r1.shape == x1.shape and r2.shape == x2.shape and pairwise.shape == (2, 16, 16)
    assert torch.isfinite(r1).all() and torch.isfinite(pairwise).all()
    scores = SiameseSimilarity(reference_model, "cosine")(x1, x2)
    torch.testing.assert_close(delta[:, 0], scores - r1.sum((1, 2, 3)))
    torch.testing.assert_close(delta_pairwise, scores - pairwise.sum((1, 2)))
    assert_unchanged(reference_model, before)


def _patch_maps(model: nn.Module, x: torch.Tensor, patch: int, projection=None) -> torch.Tensor:
    """(D, P) closed form of the per-dimension LRP-0 maps of one image on a
    bias-free ReLU network: patch sums of x * d phi_m / d x."""

    def embed(t):
        f = model(t[None])[0]
        return f if projection is None else projection @ f

    jac = torch.autograd.functional.jacobian(embed, x)  # (D, C, H, W)
    maps = (jac * x).sum(1)
    d, h, w = maps.shape
    return maps.reshape(d, h // patch, patch, w // patch, patch).sum((2, 4)).reshape(d, -1)


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_bilrp_matches_its_closed_form(similarity, images):
    torch.manual_seed(0)
    model = SimpleCNN(widths=(4, 8), embedding_dim=6, bias=False).to(DT).eval()
    x1, x2 = images(2, seed=1, size=16), images(2, seed=2, size=16)
    lrp = LRPRelevancePairing(model, similarity, composite="lrp0")
    got, delta = lrp.attribute_pairwise((x1, x2), patch_size=4, return_convergence_delta=True)
    for i in range(2):
        a1, a2 = _patch_maps(model, x1[i], 4), _patch_maps(model, x2[i], 4)
        if similarity == "cosine":
            a1, a2 = a1 / model(x1[i : i + 1]).norm(), a2 / model(x2[i : i + 1]).norm()
        torch.testing.assert_close(got[i], a1.T @ a2, rtol=1e-9, atol=1e-13)
    assert delta.abs().max() < 1e-10  # sums to s over both patch axes


def test_bilrp_projection_decomposes_the_projected_score(images):
    torch.manual_seed(0)
    model = SimpleCNN(widths=(4, 8), embedding_dim=6, bias=False).to(DT).eval()
    x1, x2 = images(1, seed=1, size=16), images(1, seed=2, size=16)
    lrp = LRPRelevancePairing(model, "dot", composite="lrp0")
    got = lrp.attribute_pairwise((x1, x2), patch_size=8, projection_dim=3, projection_seed=5)
    g = torch.Generator().manual_seed(5)
    projection = torch.randn(3, 6, generator=g, dtype=DT) / 3**0.5
    want = _patch_maps(model, x1[0], 8, projection).T @ _patch_maps(model, x2[0], 8, projection)
    torch.testing.assert_close(got[0], want)
    f1, f2 = projection @ model(x1)[0], projection @ model(x2)[0]
    torch.testing.assert_close(got.sum(), f1 @ f2)


def test_internal_batch_size_does_not_change_the_result(images):
    model = make_reference_model("cnn")
    x1, x2 = images(2, seed=1), images(2, seed=2)
    lrp = LRPRelevancePairing(model, "dot")
    whole = lrp.attribute_pairwise((x1, x2), patch_size=16, projection_dim=6)
    # 4 maps per backward: images one at a time, seeds in chunks of 4
    chunked = lrp.attribute_pairwise(
        (x1, x2), patch_size=16, projection_dim=6, internal_batch_size=4
    )
    torch.testing.assert_close(chunked, whole)


def test_one_vs_n_reuses_the_query_and_equals_pair_by_pair(images):
    model = make_reference_model("resnet")
    query, gallery = images(1, seed=1), images(3, seed=2)
    lrp = LRPRelevancePairing(model, "cosine", composite="epsilon_plus")
    r1, r2 = lrp.attribute((query, gallery))
    pairwise = lrp.attribute_pairwise((query, gallery), patch_size=16, projection_dim=4)
    assert r1.shape == gallery.shape
    for i in range(3):
        s1, s2 = lrp.attribute((query, gallery[i : i + 1]))
        torch.testing.assert_close(r1[i : i + 1], s1)
        torch.testing.assert_close(r2[i : i + 1], s2)
        one = lrp.attribute_pairwise((query, gallery[i : i + 1]), patch_size=16, projection_dim=4)
        torch.testing.assert_close(pairwise[i : i + 1], one)


def test_single_tensor_input_explains_the_first_image(images):
    model = make_reference_model("cnn")
    x1, x2 = images(2, seed=1), images(2, seed=2)
    lrp = LRPRelevancePairing(model, "dot")
    r1, _ = lrp.attribute((x1, x2))
    alone, delta = lrp.attribute(x1, additional_forward_args=(x2,), return_convergence_delta=True)
    torch.testing.assert_close(alone, r1)
    assert delta.shape == (2,)
    with torch.no_grad():
        f2 = model(x2)
    torch.testing.assert_close(lrp.attribute(x1, additional_forward_args=f2), r1)


def test_user_rules_persist_across_calls(images):
    model = make_reference_model("cnn")
    x1, x2 = images(1, seed=1), images(1, seed=2)
    lrp = LRPRelevancePairing(model, "dot", composite="lrp0")
    lrp.set_rule("head", Epsilon(5.0))
    first = lrp.attribute((x1, x2))
    second = lrp.attribute((x1, x2))
    by_constructor = LRPRelevancePairing(
        model, "dot", composite="lrp0", rules={"head": Epsilon(5.0)}
    )
    default = LRPRelevancePairing(model, "dot", composite="lrp0").attribute((x1, x2))
    for a, b, c, d in zip(first, second, by_constructor.attribute((x1, x2)), default):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
        assert not torch.allclose(a, d)


def test_siamese_model_and_input_bounds(images):
    model = make_reference_model("cnn")
    sim = SiameseSimilarity(model, "cosine")
    lrp = LRPRelevancePairing(sim, input_bounds=(0.0, 1.0))
    assert lrp.similarity.name == "cosine"
    x1, x2 = images(1, seed=1), images(1, seed=2)
    (r1, _), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    assert torch.isfinite(r1).all() and torch.isfinite(delta).all()


def test_errors_are_clear(images):
    model = make_reference_model("cnn")
    x = images(2)
    lrp = LRPRelevancePairing(model, "dot")
    with pytest.raises(TypeError, match="tuple"):
        lrp.attribute([x, x])
    with pytest.raises(ValueError, match="precomputed embedding"):
        lrp.attribute((x, torch.rand(2, 32, dtype=DT)))
    with pytest.raises(TypeError, match="reference"):
        lrp.attribute(x)
    with pytest.raises(ValueError, match="cannot broadcast"):
        lrp.attribute((x, images(3)))
    with pytest.raises(ValueError, match="patch_size"):
        lrp.attribute_pairwise((x, x), patch_size=0)
    with pytest.raises(ValueError, match="not supported"):
        LRPRelevancePairing(model, "euclidean").attribute_pairwise((x, x))
    with pytest.raises(ValueError, match="contributions"):
        LRPRelevancePairing(model, Similarity("mine", lambda a, b: (a * b).sum(1)))
    with pytest.raises(TypeError, match="input_bounds"):
        LRPRelevancePairing(model, input_bounds=0.5)
    with pytest.raises(ValueError, match="projection_dim"):
        lrp.attribute_pairwise((x, x), projection_dim=0)


def test_patch_centers():
    centers = patch_centers((10, 8), 4)
    assert centers.shape == (6, 2)
    torch.testing.assert_close(centers[0], torch.tensor([1.5, 1.5]))
    # pixel coordinates (x, y): the partial last row of patches is centred on its 2 rows
    torch.testing.assert_close(centers[-1], torch.tensor([5.5, 8.5]))


def test_strongest_links_and_figure(tmp_path):
    from captum_similarity.figures import strongest_links, visualize_links

    relevance = torch.zeros(1, 4, 6, dtype=DT)
    relevance[0, 3, 1] = 2.0
    relevance[0, 0, 5] = 1.0
    points1, points2, values = strongest_links(relevance, (16, 16), (16, 24), 8, k=2)
    torch.testing.assert_close(values, torch.tensor([[2.0, 1.0]], dtype=DT))
    torch.testing.assert_close(points1[0], torch.tensor([[11.5, 11.5], [3.5, 3.5]]))
    torch.testing.assert_close(points2[0], torch.tensor([[11.5, 3.5], [19.5, 11.5]]))  # (x, y)
    with pytest.raises(ValueError, match="patches"):
        strongest_links(relevance, (16, 16), (16, 16), 8)
    x1, x2 = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 24)
    visualize_links(x1, x2, relevance, 8, k=2, path=tmp_path / "links.png")
    assert (tmp_path / "links.png").stat().st_size > 0


def test_dlib_face_resnet_is_explained_and_conserves():
    # dlib's architecture (random weights): per-channel Affine layers and
    # zero-padding residual additions carrying Captum rules (DefaultRule), which
    # the engine reads as user rules
    from captum_similarity.models.dlib_resnet import DlibFaceResNet

    torch.manual_seed(0)
    model = zero_additive_constants(DlibFaceResNet().eval())
    before = snapshot(model)
    x1, x2 = torch.rand(1, 3, 150, 150), torch.rand(1, 3, 150, 150)
    lrp = LRPRelevancePairing(model, "dot", composite="lrp0")
    (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    scores = SiameseSimilarity(model, "dot")(x1, x2)
    # what the model's own Epsilon(1e-9) rules absorb, in float32
    assert (delta.abs() <= 1e-5 * scores.abs()[:, None] + 1e-6).all()
    assert_unchanged(model, before)
