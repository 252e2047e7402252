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
    PAIRX_MATCHES,
    explain_pair,
    explain_pair_detailed,
    explainers,
    register,
    resolve_methods,
    short_names,
)
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


def test_gradcam_short_name_is_relu_with_the_sign_safe_weighting(cnn_pair):
    sim, layer, x1, x2 = cnn_pair
    a1, a2, extra = explain_pair_detailed(sim, x1, x2, layer, "gradcam")
    b1, b2 = EmbeddingGradCAM(sim, layer).attribute(
        (x1, x2), weighting="pair", relu_attributions=True
    )
    torch.testing.assert_close(a1, b1)
    torch.testing.assert_close(a2, b2)
    assert extra is None and (a1 >= 0).all()
    euclid = SiameseSimilarity(sim.embedder, "euclidean")
    e1, _, _ = explain_pair_detailed(euclid, x1, x2, layer, "gradcam")
    f1, _ = EmbeddingGradCAM(euclid, layer).attribute(
        (x1, x2), weighting="similarity", relu_attributions=True
    )
    torch.testing.assert_close(e1, f1)
    signed, _, _ = explain_pair_detailed(sim, x1, x2, layer, "gradcam-signed")
    torch.testing.assert_close(signed, EmbeddingGradCAM(sim, layer).attribute((x1, x2))[0])
    with pytest.raises(ValueError, match="explains a layer"):
        explain_pair_detailed(sim, x1, x2, None, "gradcam")
