"""The registry's short names (the command line's --methods) and detailed results."""

import pytest
import torch

from captum_similarity import (
    EmbeddingGradCAM,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
)
from captum_similarity.explainers import (
    DISTANCE_SIMILARITIES,
    LRP_PATCHES,
    PAIRX_MATCHES,
    explain_pair,
    explain_pair_detailed,
    explainers,
    register,
    resolve_methods,
    short_names,
    white_box_model,
)
from captum_similarity.models import SimpleCNN
from conftest import make_reference_model


def test_every_explainer_has_one_short_name_and_a_cost():
    shorts = short_names()
    assert len(shorts) == len(explainers())  # one each, none shared
    assert set(shorts.values()) == set(explainers())
    for short in ("gradcam", "lrp", "pairx", "rise", "occlusion", "ig", "smoothgrad", "bilrp"):
        assert short in shorts, short
    assert all(spec.cost for spec in explainers().values())


def test_resolve_methods_forms():
    shorts = short_names()
    assert resolve_methods("gradcam, lrp") == [shorts["gradcam"], shorts["lrp"]]
    assert resolve_methods(["lrp", "LRPRelevancePairing (epsilon_plus)", "lrp"]) == [shorts["lrp"]]
    default = resolve_methods("default")
    assert default == [n for n, s in explainers().items() if s.default]
    assert set(short_names()[s] for s in ("gradcam", "lrp", "pairx")) <= set(default)
    assert shorts["rise"] not in default and shorts["occlusion"] not in default  # minutes on a CPU
    everything = resolve_methods("all")
    assert shorts["random"] not in everything  # a baseline, not an explanation
    assert set(everything) == {n for n, s in explainers().items() if not s.baseline}
    with pytest.raises(ValueError, match="unknown method 'nope'.*gradcam"):
        resolve_methods("gradcam,nope")
    with pytest.raises(ValueError, match="no method selected"):
        resolve_methods(" , ")


def test_register_rejects_taken_or_reserved_short_names():
    with pytest.raises(ValueError, match="already taken"):
        register("Another method", short="gradcam")(lambda *a: a)
    with pytest.raises(ValueError, match="must be letters"):
        register("Another method", short="all")
    assert "Another method" not in explainers()


@pytest.fixture
def cnn_pair(images):
    model = make_reference_model("cnn")
    return SiameseSimilarity(model, "cosine"), model.features[-1], images(2), images(2, seed=1)


def test_detailed_pairx_equals_its_maps_and_explain(cnn_pair):
    sim, layer, x1, x2 = cnn_pair
    a1, a2, matches = explain_pair_detailed(sim, x1, x2, layer, "pairx")
    b1, b2 = PairwiseIntermediateMatching(sim, layer).attribute((x1, x2), k=PAIRX_MATCHES)
    torch.testing.assert_close(a1, b1)
    torch.testing.assert_close(a2, b2)
    ((c1, c2),) = explain_pair(sim, x1, x2, layer, methods=[short_names()["pairx"]]).values()
    torch.testing.assert_close(a1, c1)
    assert len(matches) == 2 and all(len(m) > 0 for m in matches)


def test_detailed_bilrp_maps_are_the_marginals_of_the_patch_pairs(cnn_pair):
    sim, layer, x1, x2 = cnn_pair
    a1, a2, extra = explain_pair_detailed(sim, x1, x2, layer, "bilrp")
    side = extra["patch_size"]
    relevance = LRPRelevancePairing(sim).attribute_pairwise((x1, x2), patch_size=side)
    torch.testing.assert_close(extra["relevance"], relevance)
    torch.testing.assert_close(a1.flatten(1), relevance.sum(2))
    torch.testing.assert_close(a2.flatten(1), relevance.sum(1))
    torch.testing.assert_close(
        a1.sum((1, 2, 3)), a2.sum((1, 2, 3))
    )  # both total the pair relevance
    # a distance is not a dot product: a distance model's BiLRP is its cosine's
    far = SiameseSimilarity(sim.embedder, "euclidean")
    with pytest.raises(ValueError, match="dot product"):
        LRPRelevancePairing(far).attribute_pairwise((x1, x2), patch_size=side)
    _, _, extra_far = explain_pair_detailed(far, x1, x2, layer, "bilrp")
    torch.testing.assert_close(extra_far["relevance"], relevance)


def test_gradcam_short_name_is_relu_with_the_sign_safe_weighting(cnn_pair):
    sim, layer, x1, x2 = cnn_pair
    a1, a2, extra = explain_pair_detailed(sim, x1, x2, layer, "gradcam")
    b1, b2 = EmbeddingGradCAM(sim, layer).attribute(
        (x1, x2), weighting="pair", relu_attributions=True
    )
    torch.testing.assert_close(a1, b1)
    torch.testing.assert_close(a2, b2)
    assert extra is None and (a1 >= 0).all()
    # a distance model: the maps of the cosine of its embeddings, pair-weighted
    for distance in DISTANCE_SIMILARITIES:
        far = SiameseSimilarity(sim.embedder, distance)
        e1, e2, _ = explain_pair_detailed(far, x1, x2, layer, "gradcam")
        torch.testing.assert_close(e1, b1)
        torch.testing.assert_close(e2, b2)
        own, _ = EmbeddingGradCAM(far, layer).attribute(
            (x1, x2), weighting="similarity", relu_attributions=True
        )
        assert not torch.allclose(own, e1)
    signed, _, _ = explain_pair_detailed(sim, x1, x2, layer, "gradcam-signed")
    torch.testing.assert_close(signed, EmbeddingGradCAM(sim, layer).attribute((x1, x2))[0])
    with pytest.raises(ValueError, match="explains a layer"):
        explain_pair_detailed(sim, x1, x2, None, "gradcam")


def test_lrp_of_a_distance_model_explains_the_cosine_of_its_embeddings(cnn_pair):
    """The registered LRP pairing of a Euclidean model equals LRPRelevancePairing
    on the cosine of the same embedder, which seeds the cosine (not the negative
    distance); other models keep their own similarity."""
    sim, _, x1, x2 = cnn_pair
    far = SiameseSimilarity(sim.embedder, "euclidean")
    assert white_box_model(far).similarity.name == "cosine"
    assert white_box_model(far).embedder is sim.embedder
    assert white_box_model(sim) is sim
    a1, a2, _ = explain_pair_detailed(far, x1, x2, None, "lrp")
    b1, b2 = LRPRelevancePairing(SiameseSimilarity(sim.embedder, "cosine")).attribute((x1, x2))
    torch.testing.assert_close(a1, b1)
    torch.testing.assert_close(a2, b2)
    explainer = LRPRelevancePairing(white_box_model(far))
    explainer.attribute((x1, x2))
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(sim.embedder(x1), sim.embedder(x2))
        distance = far(x1, x2)
    # rows side by side: both images of each pair are seeded with the pair's cosine
    torch.testing.assert_close(explainer.conservation.explained, cosine.repeat(2))
    assert (distance < 0).all() and (cosine > 0).all()


def test_lrp_magnitude_is_the_absolute_epsilon_relevance_of_the_same_similarity(cnn_pair):
    sim, _, x1, x2 = cnn_pair
    for model in (sim, SiameseSimilarity(sim.embedder, "euclidean")):
        a1, a2, _ = explain_pair_detailed(model, x1, x2, None, "lrp-abs")
        b1, b2 = LRPRelevancePairing(sim, composite="epsilon").attribute((x1, x2))
        torch.testing.assert_close(a1, b1.abs())
        torch.testing.assert_close(a2, b2.abs())
        assert (b1 < 0).any()  # the signed map has both signs: the magnitude drops them


def test_lrp_patches_are_patch_sums_of_the_registered_lrp_maps():
    torch.manual_seed(0)
    sim = SiameseSimilarity(SimpleCNN().eval(), "euclidean")
    x1, x2 = torch.rand(2, 3, 2 * LRP_PATCHES + 3, 2 * LRP_PATCHES), torch.rand(2, 3, 53, 50)
    a1, a2, _ = explain_pair_detailed(sim, x1, x2, None, "lrp-patches")
    full1, full2, _ = explain_pair_detailed(sim, x1, x2, None, "lrp")
    assert a1.shape == (2, 1, 27, 25)  # 2-pixel patches; the last row of patches is 1 pixel high
    by_hand = full1.sum(1)[:, :52].reshape(2, 26, 2, 25, 2).sum((2, 4))
    torch.testing.assert_close(a1[:, 0, :26], by_hand)
    torch.testing.assert_close(a1[:, 0, 26], full1.sum(1)[:, 52].reshape(2, 25, 2).sum(2))
    torch.testing.assert_close(a2.sum((1, 2, 3)), full2.sum((1, 2, 3)))  # nothing lost


def test_captum_lrp_failing_midway_leaves_no_rules_for_the_next_method():
    """Captum's LRP raises on a layer without a rule (here the identity head)
    after giving rules to the layers before it; the registry removes them, so
    that LRP pairing run next on the model gives what it gives alone."""
    torch.manual_seed(0)
    model = SimpleCNN(head="identity").eval()
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    alone = explainers()["LRPRelevancePairing (epsilon_plus)"].fn(sim, x1, x2, None)
    with pytest.raises(TypeError, match="no rule"):
        explainers()["Captum LRP"].fn(sim, x1, x2, None)
    assert not [n for n, m in model.named_modules() if "rule" in vars(m)]
    after = explainers()["LRPRelevancePairing (epsilon_plus)"].fn(sim, x1, x2, None)
    for a, b in zip(alone, after):
        torch.testing.assert_close(a, b)
