"""EmbeddingGradCAM against Captum's own Grad-CAM and the weighting formulas."""

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation, LayerGradCam, LayerGradientXActivation

from captum_similarity import BranchLayerAttribution, EmbeddingGradCAM, SiameseSimilarity
from captum_similarity.explainers import explain_pair
from captum_similarity.models import SimpleCNN
from conftest import assert_unchanged, make_reference_model, snapshot

#: The explained layer of each reference model; the ViT explains its first
#: block (with class-token pooling, the last block's patch tokens do not
#: reach the embedding).
LAYERS = {"SimpleCNN": "features.7", "ResNetEmbedder": "layer3",
          "EfficientNetEmbedder": "conv_head", "ViTEmbedder": "blocks.0"}


def _cam(model, similarity="cosine"):
    kind = type(model).__name__
    reshape = model.token_grid if kind == "ViTEmbedder" else None
    return EmbeddingGradCAM(model, LAYERS[kind], similarity, reshape_transform=reshape)


def _gradcam_oracle(forward, layer, x, reshape=None):
    """Captum's Grad-CAM of ``forward`` at ``layer``; for token layers, Captum's
    layer gradients and activations put on the token grid."""
    if reshape is None:
        return LayerGradCam(forward, layer).attribute(x)
    grad = reshape(LayerGradientXActivation(forward, layer, multiply_by_inputs=False).attribute(x))
    act = reshape(LayerActivation(forward, layer).attribute(x))
    return (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)


def test_similarity_weighting_equals_captum_gradcam_per_branch(reference_model, images):
    model = reference_model
    cam = _cam(model)
    x1, x2 = images(3), images(3, seed=1)
    before = snapshot(model)
    m1, m2 = cam.attribute((x1, x2), weighting="similarity")
    assert_unchanged(model, before)
    sim = SiameseSimilarity(model, "cosine")
    if cam.reshape_transform is None:
        o1, o2 = BranchLayerAttribution(LayerGradCam, sim, cam.layer).attribute((x1, x2))
    else:
        f1, f2 = model(x1).detach(), model(x2).detach()
        o1 = _gradcam_oracle(lambda x: sim(x, f2), cam.layer, x1, cam.reshape_transform)
        o2 = _gradcam_oracle(lambda x: sim(f1, x), cam.layer, x2, cam.reshape_transform)
    assert m1.shape == o1.shape and m1.shape[:2] == (3, 1)
    assert m1.abs().amax() > 0
    torch.testing.assert_close(m1, o1)
    torch.testing.assert_close(m2, o2)


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_pair_weighting_is_gradcam_of_the_contribution_weighted_sample_score(images, similarity):
    model = make_reference_model("resnet")
    x1, x2 = images(2), images(2, seed=1)
    m1, m2 = EmbeddingGradCAM(model, "layer3", similarity).attribute((x1, x2), weighting="pair")
    f1, f2 = model(x1).detach(), model(x2).detach()
    w = SiameseSimilarity(model, similarity).similarity.contribution(f1, f2)
    oracle1 = LayerGradCam(lambda x: (model(x) * w).sum(1), model.layer3).attribute(x1)
    oracle2 = LayerGradCam(lambda x: (model(x) * w).sum(1), model.layer3).attribute(x2)
    torch.testing.assert_close(m1, oracle1)
    torch.testing.assert_close(m2, oracle2)


def test_default_weighting_is_similarity_with_a_reference_and_pair_alone(images):
    """The default measured most faithful ('similarity'); alone, an image is its
    own reference and only the pair weighting has a gradient to explain."""
    cam = EmbeddingGradCAM(make_reference_model("resnet"), "layer3")
    x1, x2 = images(2), images(2, seed=1)
    for got, want in zip(cam.attribute((x1, x2)), cam.attribute((x1, x2), weighting="similarity")):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(cam.attribute(x1, x2), cam.attribute(x1, x2, weighting="similarity"))
    torch.testing.assert_close(cam.attribute(x1), cam.attribute(x1, weighting="pair"))
    q_default, r_default = cam.attribute_gallery(x1[:1], x2)
    q_sim, r_sim = cam.attribute_gallery(x1[:1], x2, weighting="similarity")
    torch.testing.assert_close(q_default, q_sim)
    torch.testing.assert_close(r_default, r_sim)


def test_triplet_weighting_gives_three_maps_of_the_formula(images):
    model = make_reference_model("cnn")
    xa, xp, xn = images(2), images(2, seed=1), images(2, seed=2)
    before = snapshot(model)
    maps = EmbeddingGradCAM(model, model.features[-1]).attribute((xa, xp, xn), weighting="triplet")
    assert_unchanged(model, before)
    a, p, n = (F.normalize(model(x), dim=1).detach() for x in (xa, xp, xn))
    w = (1 - (a - p).abs()) * (a - n).abs()
    for m, x in zip(maps, (xa, xp, xn)):
        oracle = LayerGradCam(lambda z: (model(z) * w).sum(1), model.features[-1]).attribute(x)
        torch.testing.assert_close(m, oracle)


def test_cosine_on_pooled_features_zero_sum_pitfall_and_pair_weighting(images):
    """Identity head after GAP of the explained layer: the cosine's gradient is
    orthogonal to f, so the un-ReLU'd similarity map sums to zero; the pair map
    sums to <w, f>."""
    torch.manual_seed(0)
    model = SimpleCNN(head="identity").double().eval()
    x1, x2 = images(2), images(2, seed=1)
    cam = EmbeddingGradCAM(model, model.features[-1], "cosine")
    s1, _ = cam.attribute((x1, x2), weighting="similarity")
    p1, _ = cam.attribute((x1, x2), weighting="pair")
    f1, f2 = model(x1).detach(), model(x2).detach()
    w = F.normalize(f1, dim=1) * F.normalize(f2, dim=1)
    assert s1.abs().amax() > 1e-4
    torch.testing.assert_close(s1.sum((1, 2, 3)), torch.zeros(2, dtype=s1.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(p1.sum((1, 2, 3)), (w * f1).sum(1), rtol=1e-10, atol=0)


def test_single_image_and_reference_modes(images):
    model = make_reference_model("efficientnet")
    cam = EmbeddingGradCAM(model, "conv_head", "dot")
    x1, x2 = images(3), images(3, seed=1)
    pair1, _ = cam.attribute((x1, x2), weighting="similarity")
    torch.testing.assert_close(cam.attribute(x1, (x2,), weighting="similarity"), pair1)
    f2 = model(x2).detach()
    torch.testing.assert_close(cam.attribute(x1, f2, weighting="similarity"), pair1)
    # a batch-1 reference, as image or embedding, is broadcast
    one, _ = cam.attribute((x1, x2[:1]))
    torch.testing.assert_close(cam.attribute(x1, (x2[:1],)), one)
    torch.testing.assert_close(cam.attribute(x1, (f2[:1],)), one)
    # no reference: the embedding explains itself, w = c(f, f)
    f1 = model(x1).detach()
    alone = cam.attribute(x1)
    oracle = LayerGradCam(lambda z: (model(z) * f1 * f1).sum(1), cam.layer).attribute(x1)
    torch.testing.assert_close(alone, oracle)
    with pytest.raises(ValueError, match="needs a reference"):
        cam.attribute(x1, weighting="similarity")


@pytest.mark.parametrize("weighting", ["pair", "similarity"])
def test_gallery_equals_loop_of_pairs(reference_model, images, weighting):
    model = reference_model
    cam = _cam(model)
    query, refs = images(1), images(4, seed=1)
    before = snapshot(model)
    q_maps, r_maps = cam.attribute_gallery(query, refs, weighting=weighting, relu_attributions=True,
                                           batch_size=3)  # chunks of 3 and 1
    q_emb, none = cam.attribute_gallery(query, model(refs).detach(), weighting=weighting,
                                        relu_attributions=True)
    assert_unchanged(model, before)
    assert none is None and q_maps.shape[0] == 4
    for r in range(4):
        m_q, m_r = cam.attribute((query, refs[r : r + 1]), weighting=weighting, relu_attributions=True)
        torch.testing.assert_close(q_maps[r : r + 1], m_q)
        torch.testing.assert_close(r_maps[r : r + 1], m_r)
    torch.testing.assert_close(q_emb, q_maps)
    assert q_maps.amax() > 0


def test_relu_layer_input_and_create_graph(images):
    model = make_reference_model("cnn")
    x1, x2 = images(2), images(2, seed=1)
    cam = EmbeddingGradCAM(model, model.features[7])
    raw = cam.attribute((x1, x2))
    relu = cam.attribute((x1, x2), relu_attributions=True)
    for a, b in zip(raw, relu):
        torch.testing.assert_close(b, F.relu(a))
        assert not a.requires_grad
    # the ReLU's input is the conv's output
    at_input = cam.attribute((x1, x2), attribute_to_layer_input=True)
    at_conv = EmbeddingGradCAM(model, model.features[6]).attribute((x1, x2))
    torch.testing.assert_close(at_input[0], at_conv[0])
    graph = cam.attribute((x1, x2), grad_kwargs={"create_graph": True})
    assert graph[0].requires_grad
    torch.testing.assert_close(graph[0].detach(), raw[0])
    sim_graph = cam.attribute(x1, x2, weighting="similarity", grad_kwargs={"create_graph": True})
    assert sim_graph.requires_grad
    torch.testing.assert_close(sim_graph.detach(), cam.attribute(x1, x2, weighting="similarity"))
    # works under no_grad, as Captum's gradient methods do
    with torch.no_grad():
        torch.testing.assert_close(cam.attribute((x1, x2))[1], raw[1])


def test_registered_explainer_runs_on_pairs(images):
    model = make_reference_model("cnn")
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = images(2), images(2, seed=1)
    maps = explain_pair(sim, x1, x2, layer=model.features[-1], methods=["EmbeddingGradCAM"])
    expected = EmbeddingGradCAM(sim, model.features[-1]).attribute((x1, x2))
    torch.testing.assert_close(maps["EmbeddingGradCAM"][0], expected[0])


def test_clear_errors_and_model_left_as_found(images):
    model = make_reference_model("vit")
    x = images(2)
    before = snapshot(model)
    with pytest.raises(ValueError, match="no layer named"):
        EmbeddingGradCAM(model, "blocks.7")
    with pytest.raises(ValueError, match="not a submodule"):
        EmbeddingGradCAM(model, torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="reshape_transform must be callable"):
        EmbeddingGradCAM(model, "blocks.0", reshape_transform=3)
    with pytest.raises(ValueError, match="pass reshape_transform"):
        EmbeddingGradCAM(model, "blocks.0").attribute((x, x))  # fails after the forward pass
    cam = EmbeddingGradCAM(model, "blocks.0", reshape_transform=model.token_grid)
    with pytest.raises(ValueError, match="unknown weighting"):
        cam.attribute((x, x), weighting="quadruplet")
    with pytest.raises(ValueError, match="tuple of 3"):
        cam.attribute((x, x), weighting="triplet")
    with pytest.raises(ValueError, match="tuple of 2"):
        cam.attribute((x, x, x))
    with pytest.raises(ValueError, match="same shape"):
        cam.attribute((x, x, x[:, :, :16]), weighting="triplet")
    with pytest.raises(ValueError, match="precomputed embedding"):
        cam.attribute((x, model(x).detach()))
    with pytest.raises(ValueError, match="batch 3"):
        cam.attribute(x, images(3))
    with pytest.raises(ValueError, match="one image"):
        cam.attribute_gallery(x, x)
    with pytest.raises(ValueError, match="gallery mode"):
        cam.attribute_gallery(x[:1], x, weighting="triplet")
    with pytest.raises(TypeError, match="floating-point"):
        cam.attribute((x, x.long()))
    with pytest.raises(ValueError, match="do not pass similarity"):
        EmbeddingGradCAM(SiameseSimilarity(model), "blocks.0", "dot")
    with pytest.raises(ValueError, match="ran 2 time"):
        EmbeddingGradCAM(_TwiceCNN(), "conv").attribute((x.float(), x.float()))
    assert_unchanged(model, before)


class _TwiceCNN(torch.nn.Module):
    """Runs one conv twice in its forward pass."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x)).mean((2, 3))
