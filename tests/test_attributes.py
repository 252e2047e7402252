"""SANE's attribute explanations: the head, its training, the ranking, the removal
oracle, the attribute world and the figure.

Oracles: the head's pooling (logits = mean heatmap), the combined score's
formula and its two ends (confidence ranking at w = 1, agreement ranking at
w = 0), a hand-built model where one attribute's region alone decides the
similarity (that attribute is chosen and the removal oracle agrees), finite
differences of the KL term, a one-at-a-time loop for the removal oracle, and
the definition of average precision.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from captum_similarity import (
    AttributeHeatmapHead,
    SalientAttributes,
    SiameseSimilarity,
    SimilarityRISE,
    fit_attribute_head,
    to_visualizer_arrays,
    visualize_attributes,
)
from captum_similarity.attributes import (
    heatmap_agreement,
    saliency_distribution,
    saliency_matching_loss,
)
from captum_similarity.data import (
    ATTRIBUTE_NAMES,
    IDENTITIES,
    RELEVANT,
    attribute_world,
    attribute_world_pairs,
)
from captum_similarity.metrics import attribute_removal, average_precision, gaussian_blur
from captum_similarity.models import ResNetEmbedder, SimpleCNN, ViTEmbedder
from conftest import assert_unchanged, snapshot

A = len(ATTRIBUTE_NAMES)


@pytest.fixture(scope="module")
def world():
    return attribute_world(48, seed=3, size=32)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SimpleCNN(widths=(8, 16), embedding_dim=8).eval()  # features.4: (N, 16, 16, 16) at 32 px


def head_for(model_width: int = 16, seed: int = 0, **kwargs) -> AttributeHeatmapHead:
    torch.manual_seed(seed)
    return AttributeHeatmapHead(model_width, A, attribute_names=ATTRIBUTE_NAMES, **kwargs)


# ---------------------------------------------------------------- the head


def test_logits_are_the_spatial_mean_of_the_heatmaps():
    head = head_for(6).double()
    maps = head(torch.randn(3, 6, 5, 7, dtype=torch.float64))
    assert maps.heatmaps.shape == (3, A, 5, 7)
    assert torch.allclose(maps.logits, maps.heatmaps.mean((2, 3)), atol=1e-14, rtol=0)
    # the heatmap is the head's convolution of the features, nothing else
    features = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    assert torch.allclose(head(features).heatmaps, head.conv(features), atol=0)


def test_head_checks_its_arguments_and_the_layer_width():
    with pytest.raises(ValueError, match="odd"):
        AttributeHeatmapHead(4, 3, kernel_size=2)
    with pytest.raises(ValueError, match="names"):
        AttributeHeatmapHead(4, 3, attribute_names=["a", "b"])
    with pytest.raises(ValueError, match="the layer gives 5 channels but the attribute head takes 4"):
        AttributeHeatmapHead(4, 3)(torch.rand(1, 5, 3, 3))


# ---------------------------------------------------------------- saliency and agreement


def test_saliency_distribution_removes_offset_and_scale_and_averages_blocks():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    q = saliency_distribution(maps, (4, 4))
    assert torch.allclose(q.sum((1, 2)), torch.ones(2, dtype=torch.float64))
    # an offset (RISE's mean score) and a positive scale do not change it
    assert torch.allclose(saliency_distribution(3 * maps + 7, (4, 4)), q)
    # block means of the channel sum, minus the minimum, normalised
    blocks = maps.sum(1).view(2, 4, 2, 4, 2).mean((2, 4))
    blocks = blocks - blocks.amin((1, 2), keepdim=True)
    assert torch.allclose(q, blocks / blocks.sum((1, 2), keepdim=True))
    # a constant map is uniform
    assert torch.allclose(saliency_distribution(torch.ones(1, 1, 4, 4), (2, 2)), torch.full((1, 2, 2), 0.25))
    with pytest.raises(ValueError, match="NaN"):
        saliency_distribution(torch.full((1, 1, 4, 4), float("nan")), (2, 2))


def test_agreement_measures_at_their_ends():
    q = torch.zeros(1, 2, 2, dtype=torch.float64)
    q[0, 0, 0] = 1.0
    same = torch.log(q + 1e-300)[:, None]  # softmax gives back q
    other = torch.full((1, 1, 2, 2), -1e3, dtype=torch.float64)
    other[0, 0, 1, 1] = 0.0  # all mass on another cell
    heat = torch.cat([same, other], 1)
    assert torch.allclose(heatmap_agreement(heat, q, "overlap"), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    corr = heatmap_agreement(heat, q, "correlation")
    assert corr[0, 0] == pytest.approx(1.0) and corr[0, 1] < 0.5
    with pytest.raises(ValueError, match="agreement"):
        heatmap_agreement(heat, q, "cosine")


# ---------------------------------------------------------------- the KL term


def test_saliency_matching_loss_value_and_finite_differences():
    g = torch.Generator().manual_seed(1)
    heat = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = saliency_distribution(torch.rand(3, 1, 3, 3, generator=g, dtype=torch.float64), (3, 3))
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]], dtype=torch.float64)
    # the documented value: KL(Q || softmax(H)) averaged over the present attributes
    log_p = F.log_softmax(heat.flatten(2), 2)
    kl = F.kl_div(log_p, q.flatten(1)[:, None].expand_as(log_p), reduction="none").sum(2)
    expected = (kl * labels).sum() / labels.sum()
    assert saliency_matching_loss(heat, q, labels).item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.autograd.gradcheck(lambda h: saliency_matching_loss(h, q, labels), (heat,))
    # zero where the heatmap's softmax is the saliency map; absent attributes do not count
    matched = torch.log(q)[:, None].expand(3, 4, 3, 3)
    assert saliency_matching_loss(matched, q, labels).item() == pytest.approx(0.0, abs=1e-12)
    assert saliency_matching_loss(heat, q, torch.zeros_like(labels)).item() == 0.0


# ---------------------------------------------------------------- training


def test_fit_is_deterministic_for_a_seed_and_learns(world):
    model = small_cnn()
    start = head_for()
    fits = []
    for seed in (0, 0, 1):
        head = copy.deepcopy(start)
        fits.append(fit_attribute_head(model, "features.4", head, world.images, world.labels,
                                       epochs=4, batch_size=16, seed=seed))
    assert fits[0].losses == fits[1].losses
    for p0, p1 in zip(fits[0].head.parameters(), fits[1].head.parameters()):
        assert torch.equal(p0, p1)
    assert fits[0].losses != fits[2].losses  # another seed, another split and order
    assert fits[0].losses[-1] < fits[0].losses[0]
    assert fits[0].average_precision.shape == (A,)
    assert not fits[0].head.training


def test_validation_ap_and_thresholds_are_those_of_the_fitted_head(world):
    model = small_cnn()
    val = attribute_world(24, seed=4, size=32)
    fit = fit_attribute_head(model, "features.4", head_for(), world.images, world.labels,
                             validation=(val.images, val.labels), epochs=2, batch_size=16)
    with torch.no_grad():
        rec = {}
        handle = model.features[4].register_forward_hook(lambda m, i, o: rec.setdefault("f", o))
        model(val.images)
        handle.remove()
        probs = torch.sigmoid(fit.head(rec["f"]).logits)
    for a in range(A):
        positive = val.labels[:, a] > 0
        if positive.any():
            assert fit.average_precision[a].item() == pytest.approx(average_precision(probs[:, a], positive))
            assert fit.thresholds[a].item() == pytest.approx(float(probs[positive, a].median()))
        else:
            assert torch.isnan(fit.average_precision[a])
    assert fit.mean_average_precision == pytest.approx(float(fit.average_precision[~torch.isnan(fit.average_precision)].mean()))


def test_the_saliency_term_pulls_present_heatmaps_towards_the_saliency():
    model = small_cnn()
    world = attribute_world(48, seed=3, size=32, masks=True)
    # every image's saliency: the pixels of its identity objects
    saliency = world.masks[:, torch.tensor(RELEVANT)].any(1, keepdim=True).float()
    kwargs = dict(epochs=10, batch_size=16, validation_fraction=0.0)
    plain = fit_attribute_head(model, "features.4", head_for(), world.images, world.labels, **kwargs)
    matched = fit_attribute_head(model, "features.4", head_for(), world.images, world.labels,
                                 saliency=saliency, heatmap_weight=1.0, **kwargs)
    rec = {}
    handle = model.features[4].register_forward_hook(lambda m, i, o: rec.setdefault("f", o))
    with torch.no_grad():
        model(world.images)
    handle.remove()
    q = saliency_distribution(saliency, (16, 16))
    with torch.no_grad():
        losses = [saliency_matching_loss(f.head(rec["f"]).heatmaps, q, world.labels).item()
                  for f in (plain, matched)]
    assert losses[1] < 0.9 * losses[0], losses


def test_bad_labels_and_layers_get_clear_errors(world):
    model = small_cnn()
    x, y = world.images[:8], world.labels[:8]
    cases = [
        (y[:, :5], "head predicts 13"),
        (y[:7], r"\(N, A\) = \(8, 13\)"),
        (y.flatten(), r"\(N, A\)"),
        (y * 2, "must be 0 or 1"),
        (y - 0.5, "must be 0 or 1"),
    ]
    for labels, message in cases:
        with pytest.raises(ValueError, match=message):
            fit_attribute_head(model, "features.4", head_for(), x, labels, epochs=1)
    with pytest.raises(ValueError, match="the layer gives 8 channels but the attribute head takes 16"):
        fit_attribute_head(model, "features.1", head_for(), x, y, epochs=1)
    with pytest.raises(ValueError, match="no layer named"):
        fit_attribute_head(model, "features.99", head_for(), x, y, epochs=1)
    with pytest.raises(ValueError, match="one map per image"):
        fit_attribute_head(model, "features.4", head_for(), x, y, saliency=torch.rand(3, 1, 32, 32))
    explainer = SalientAttributes(model, "features.1", head_for())
    with pytest.raises(ValueError, match="the layer gives 8 channels"):
        explainer.explain(x[:2], x[2:4])


def test_the_embedder_is_left_exactly_as_found(world):
    torch.manual_seed(0)
    model = ResNetEmbedder(widths=(8, 16), embedding_dim=8).train()  # BatchNorm in train mode
    model.layer1[0].conv1.weight.requires_grad_(False)
    model.head.weight.grad = torch.ones_like(model.head.weight)
    before = snapshot(model)
    fit = fit_attribute_head(model, "layer2", head_for(), world.images[:16], world.labels[:16], epochs=1)
    assert_unchanged(model, before)
    explainer = SalientAttributes(model, "layer2", fit.head)
    explainer.explain(world.images[:2], world.images[2:4])
    explainer.attribute((world.images[:2], world.images[2:4]))
    assert_unchanged(model, before)
    with pytest.raises(ValueError):  # raised after the forward pass
        SalientAttributes(model, "layer1", fit.head).explain(world.images[:2], world.images[2:4])
    assert_unchanged(model, before)


def test_vit_token_grid_layer():
    torch.manual_seed(0)
    vit = ViTEmbedder(image_size=32, patch_size=8, dim=32, depth=2, num_heads=2).eval()
    x = torch.rand(6, 3, 32, 32)
    labels = (torch.rand(6, 3) > 0.5).float()
    head = AttributeHeatmapHead(32, 3)
    fit = fit_attribute_head(vit, vit.blocks[-1], head, x, labels, epochs=2, batch_size=3,
                             reshape_transform=vit.token_grid, validation_fraction=0.0)
    explainer = SalientAttributes(vit, vit.blocks[-1], fit.head, reshape_transform=vit.token_grid)
    scores = explainer.scores(x[:2], x[2:4])
    assert scores["heatmaps1"].shape == (2, 3, 4, 4)
    assert torch.allclose(torch.sigmoid(scores["heatmaps1"].mean((2, 3))), scores["confidence1"])


# ---------------------------------------------------------------- the ranking


@pytest.fixture(scope="module")
def explained(world):
    model = small_cnn()
    fit = fit_attribute_head(model, "features.4", head_for(), world.images, world.labels,
                             epochs=3, batch_size=16)
    g = torch.Generator().manual_seed(5)
    saliency = (torch.rand(4, 1, 32, 32, generator=g), torch.rand(4, 1, 32, 32, generator=g))
    return SalientAttributes(model, "features.4", fit.head), world.images[:4], world.images[4:8], saliency


@pytest.mark.parametrize("confidence", ["pair", "query"])
def test_attribute_weight_at_both_ends_and_in_between(explained, confidence):
    explainer, x1, x2, saliency = explained
    s = explainer.scores(x1, x2, saliency=saliency, attribute_weight=0.3, confidence=confidence)
    expected_conf = s["confidence1"] if confidence == "query" else (s["confidence1"] * s["confidence2"]).sqrt()
    assert torch.allclose(s["confidence"], expected_conf)
    assert torch.allclose(s["agreement"], (s["agreement1"] + s["agreement2"]) / 2)
    assert torch.allclose(s["score"], 0.3 * s["confidence"] + 0.7 * s["agreement"])
    for weight, key in ((1.0, "confidence"), (0.0, "agreement")):
        results = explainer.explain(x1, x2, saliency=saliency, top_k=None,
                                    attribute_weight=weight, confidence=confidence)
        expected = torch.argsort(s[key], dim=1, descending=True, stable=True)
        assert [r.ranking for r in results] == expected.tolist()
    # the two ends really differ here, so the weight is not ignored
    ends = [explainer.explain(x1, x2, saliency=saliency, top_k=None, attribute_weight=w,
                              confidence=confidence) for w in (0.0, 1.0)]
    assert [r.ranking for r in ends[0]] != [r.ranking for r in ends[1]]


def test_explanation_fields_and_names(explained):
    explainer, x1, x2, saliency = explained
    results = explainer.explain(x1, x2, saliency=saliency, top_k=3)
    s = explainer.scores(x1, x2, saliency=saliency)
    for i, r in enumerate(results):
        assert len(r.ranking) == 3 and r.names == [ATTRIBUTE_NAMES[a] for a in r.ranking]
        assert r.name == r.names[0] and r.attribute == r.ranking[0]
        assert torch.allclose(r.scores, s["score"][i, r.ranking])
        assert torch.allclose(r.confidence2, s["confidence2"][i, r.ranking])
        assert torch.allclose(r.agreement1, s["agreement1"][i, r.ranking])
        assert r.heatmap1.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert r.similarity == pytest.approx(float(s["similarity"][i]))
    renamed = SalientAttributes(explainer.model, explainer.layer, explainer.head,
                                attribute_names=[f"a{i}" for i in range(A)])
    assert renamed.explain(x1, x2, saliency=saliency)[0].names[0] == f"a{results[0].ranking[0]}"
    # x1's map only: the agreement is x1's
    one = explainer.scores(x1, x2, saliency=saliency[0])
    assert one["agreement2"] is None and torch.allclose(one["agreement"], s["agreement1"])
    for bad, message in ((2.0, "attribute_weight"), (-0.1, "attribute_weight")):
        with pytest.raises(ValueError, match=message):
            explainer.explain(x1, x2, saliency=saliency, attribute_weight=bad)
    with pytest.raises(ValueError, match="batch size"):
        explainer.explain(x1, x2, saliency=saliency[0][:2])
    with pytest.raises(ValueError, match="confidence"):
        explainer.explain(x1, x2, saliency=saliency, confidence="both")


def test_attribute_is_captum_shaped(explained):
    explainer, x1, x2, saliency = explained
    a1, a2 = explainer.attribute((x1, x2), saliency=saliency)
    assert a1.shape == x1.shape and a2.shape == x2.shape
    chosen = [r.attribute for r in explainer.explain(x1, x2, saliency=saliency)]
    heat = explainer.scores(x1, x2, saliency=saliency)["heatmaps1"]
    for i, a in enumerate(chosen):
        soft = F.softmax(heat[i, a].flatten(), 0).view(1, 1, *heat.shape[-2:])
        expected = F.interpolate(soft, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(a1[i], expected[0].expand(3, -1, -1), atol=1e-7)
    single = explainer.attribute(x1, additional_forward_args=(x2,), saliency=saliency)
    assert torch.allclose(single, a1)
    (one,) = explainer.attribute((x1,), additional_forward_args=x2, saliency=saliency)
    assert torch.allclose(one, a1)
    t1, _ = explainer.attribute((x1, x2), target=ATTRIBUTE_NAMES.index("grey bar"))
    soft = F.softmax(heat[0, ATTRIBUTE_NAMES.index("grey bar")].flatten(), 0).view(1, 1, *heat.shape[-2:])
    assert torch.allclose(t1[0, :1], F.interpolate(soft, size=(32, 32), mode="bilinear"), atol=1e-7)
    attr_np, img_np = to_visualizer_arrays(a1, x1)  # Captum's visualizer layout
    assert attr_np.shape == (32, 32, 3) and img_np.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="target"):
        explainer.attribute((x1, x2), target=A)


# ---------------------------------------------------------------- one attribute decides


SIDE, BLOB = 16, 4


class OneAttributeDecides(nn.Module):
    """Images whose channel ``a`` holds attribute ``a``'s blob; ``grid`` (the hooked
    layer) halves the resolution; the embedding sees channel 0 only."""

    def __init__(self) -> None:
        super().__init__()
        self.grid = nn.AvgPool2d(2)
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False).double()

    def forward(self, x):
        g = self.grid(x)
        f = torch.relu(self.conv(g[:, :1])).amax((2, 3))
        return torch.cat([f, torch.ones_like(f[:, :1])], 1)


def blob_images(n: int, seed: int, texture: torch.Tensor) -> torch.Tensor:
    """``n`` images with one 4x4 blob per channel at random, distinct cells of a 4x4 layout."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, SIDE, SIDE, dtype=torch.float64)
    for i in range(n):
        cells = torch.randperm(16, generator=g)[:3]
        for a, cell in enumerate(cells.tolist()):
            r, c = divmod(cell, 4)
            x[i, a, r * BLOB:(r + 1) * BLOB, c * BLOB:(c + 1) * BLOB] = texture[a]
    return x


def test_one_attribute_region_decides_and_removal_agrees():
    model = OneAttributeDecides().eval()
    texture = 0.5 + torch.rand(3, BLOB, BLOB, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x1, x2 = blob_images(4, 1, texture), blob_images(4, 2, texture)
    head = AttributeHeatmapHead(3, 3, kernel_size=1, attribute_names=["decides", "b", "c"]).double()
    with torch.no_grad():  # heatmap a = 8 * channel a, plus a bias: attribute 2 is the most confident
        head.conv.weight.copy_(8 * torch.eye(3, dtype=torch.float64)[:, :, None, None])
        head.conv.bias.copy_(torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64))
    sim = SiameseSimilarity(model, "cosine")
    explainer = SalientAttributes(  # black-box maps: RISE with fewer masks than its default
        sim, model.grid, head,
        saliency_method=lambda a, b: SimilarityRISE(sim).attribute((a, b), n_masks=500, seed=0),
    )
    # an even trade-off (the default weighs confidence more; the bias of "c" is set to beat it)
    results = explainer.explain(x1, x2, attribute_weight=0.5)
    assert [r.name for r in results] == ["decides"] * 4
    assert [r.name for r in explainer.explain(x1, x2, attribute_weight=0.0)] == ["decides"] * 4
    assert all(r.agreement1[0] > 0.5 for r in results)
    confident = explainer.explain(x1, x2, attribute_weight=1.0)
    assert [r.name for r in confident] == ["c"] * 4  # confidence alone picks another one
    heat = explainer.scores(x1, x2, attribute_weight=1.0)["heatmaps1"]
    removal = attribute_removal(sim, x1, x2, heat, fraction=BLOB * BLOB / SIDE**2)
    assert removal.oracle.tolist() == [0, 0, 0, 0]
    assert (removal.drop[:, 0] > 0.05).all() and removal.drop[:, 1:].abs().max() < 1e-12


# ---------------------------------------------------------------- the removal oracle


def test_attribute_removal_equals_a_loop_and_does_not_depend_on_batching(world):
    model = small_cnn().double()
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = world.images[:3].double(), world.images[3:6].double()
    g = torch.Generator().manual_seed(2)
    heat = torch.rand(3, 5, 8, 8, generator=g, dtype=torch.float64)
    candidates = torch.tensor([[0, 2], [4, 1], [3, 3]])
    for baselines in (0.25, "blur"):
        result = attribute_removal(sim, x1, x2, heat, attributes=candidates, fraction=0.2,
                                   baselines=baselines, max_examples_per_batch=4)
        fill = gaussian_blur(x1, 5.0) if baselines == "blur" else torch.full_like(x1, 0.25)
        count = round(0.2 * 32 * 32)
        for i in range(3):
            for k in range(2):
                up = F.interpolate(heat[i, candidates[i, k]][None, None], size=(32, 32), mode="bilinear")
                top = torch.argsort(up.flatten(), descending=True, stable=True)[:count]
                mask = torch.zeros(32 * 32, dtype=torch.bool)
                mask[top] = True
                removed = torch.where(mask.view(1, 1, 32, 32), fill[i:i + 1], x1[i:i + 1])
                with torch.no_grad():
                    expected = sim(removed, x2[i:i + 1]).item()
                assert result.removed_score[i, k].item() == pytest.approx(expected, abs=1e-12)
        with torch.no_grad():
            assert torch.allclose(result.score, sim(x1, x2))
        again = attribute_removal(sim, x1, x2, heat, attributes=candidates, fraction=0.2,
                                  baselines=baselines, max_examples_per_batch=None)
        assert torch.allclose(again.removed_score, result.removed_score, atol=1e-12)
    assert torch.equal(result.oracle, candidates[torch.arange(3), result.drop.argmax(1)])
    shared = attribute_removal(sim, x1, x2, heat, attributes=torch.tensor([4, 1]), fraction=0.2)
    assert torch.allclose(shared.removed_score[1], attribute_removal(
        sim, x1, x2, heat, attributes=torch.tensor([[0, 0], [4, 1], [0, 0]]), fraction=0.2).removed_score[1])
    for kwargs, message in (
        (dict(attributes=torch.tensor([5])), r"\[0, 5\)"),
        (dict(fraction=0.0), "fraction"),
        (dict(attributes=torch.tensor([0.5])), "integer"),
    ):
        with pytest.raises(ValueError, match=message):
            attribute_removal(sim, x1, x2, heat, **kwargs)
    with pytest.raises(ValueError, match=r"\(N, A, h, w\)"):
        attribute_removal(sim, x1, x2, heat[:2])


# ---------------------------------------------------------------- metrics and data


def test_average_precision_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    scores, positive = torch.rand(40, generator=g), torch.rand(40, generator=g) > 0.6
    order = torch.argsort(scores, descending=True)
    hits = positive[order].double()
    precision = torch.cumsum(hits, 0) / torch.arange(1, 41)
    assert average_precision(scores, positive) == pytest.approx(float((precision * hits).sum() / hits.sum()))
    assert average_precision(torch.ones(4), torch.tensor([1, 0, 0, 1])) == pytest.approx(0.5)
    assert torch.isnan(torch.tensor(average_precision(scores, torch.zeros(40, dtype=torch.bool))))


def test_attribute_world_labels_masks_and_pairs():
    a = attribute_world(12, seed=7, size=48, masks=True)
    b = attribute_world(12, seed=7, size=48, masks=True)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, attribute_world(12, seed=8, size=48).images)
    relevant = torch.tensor(RELEVANT)
    assert a.images.shape == (12, 3, 48, 48) and 0 <= a.images.min() and a.images.max() <= 1
    assert (a.labels[:, relevant].sum(1) == 2).all() and (a.labels[:, ~relevant].sum(1) == 2).all()
    for i, identity in enumerate(a.identities.tolist()):
        assert torch.nonzero(a.labels[i, relevant]).flatten().tolist() == list(IDENTITIES[identity])
    present = a.masks.flatten(2).any(2)
    assert torch.equal(present, a.labels.bool())  # every present attribute has pixels, no other
    pairs = attribute_world_pairs(20, seed=3, size=48)
    both = pairs.first.labels.bool() & pairs.second.labels.bool()
    assert torch.equal(torch.nonzero(both[:, relevant])[:, 1], pairs.shared)  # exactly one, the shared
    assert torch.equal(pairs.shared_nuisance, both[:, ~relevant].any(1))
    with pytest.raises(ValueError, match="identities"):
        attribute_world(2, identities=[0, 15])
    balanced = attribute_world(30, seed=1, size=32, identities=[i % 15 for i in range(30)])
    partners = balanced.partners()
    assert torch.equal(balanced.identities[partners], balanced.identities)
    assert (partners != torch.arange(30)).all()
    with pytest.raises(ValueError, match="single image"):
        attribute_world(3, seed=1, size=32, identities=[0, 0, 1]).partners()


# ---------------------------------------------------------------- the figure


def test_figure_is_drawn_headless_and_saved(explained, tmp_path):
    explainer, x1, x2, saliency = explained
    result = explainer.explain(x1, x2, saliency=saliency)[1]
    fig = visualize_attributes(x1, x2, result, index=1, path=tmp_path / "attr.png")
    assert isinstance(fig, Figure) and (tmp_path / "attr.png").stat().st_size > 10_000
    assert result.name in fig._suptitle.get_text()
    pair_confidence = (result.confidence1[0] * result.confidence2[0]).sqrt().item()  # the default
    assert f"confidence {pair_confidence:.2f} (image 1: {result.confidence1[0]:.2f}" in fig._suptitle.get_text()
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels[::-1] == result.names[: len(labels)][::-1] or labels == result.names[: len(labels)]
    assert "pair 1 of" in fig._supxlabel.get_text()  # the footnote says which pair
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    only_x1 = explainer.explain(x1, x2, saliency=saliency[0])[0]
    visualize_attributes(x1, x2, only_x1)  # no map of x2: drawn without one
    flat = explainer.explain(x1, x2, saliency=torch.zeros_like(saliency[0]))[0]
    with pytest.warns(UserWarning, match="constant map"):
        fig = visualize_attributes(x1, x2, flat)
    assert any("constant map" in t.get_text() for ax in fig.axes for t in ax.texts)
    with pytest.raises(TypeError, match="AttributeExplanation"):
        visualize_attributes(x1, x2, {"name": "x"})


@pytest.mark.slow
def test_attribute_explainer_is_trained_once_and_cached(tmp_path, monkeypatch):
    from captum_similarity.training import demo_models

    monkeypatch.setenv("CAPTUM_SIMILARITY_CACHE", str(tmp_path))
    for key, value in (("n_train", 60), ("n_test", 30), ("steps", 10)):
        monkeypatch.setitem(demo_models.ATTRIBUTE_CONFIG, key, value)
    for key, value in (("n_images", 60), ("epochs", 2)):
        monkeypatch.setitem(demo_models.ATTRIBUTE_HEAD_CONFIG, key, value)
    first, info = demo_models.attribute_explainer()
    again, info_again = demo_models.attribute_explainer()
    assert not info["head"]["loaded_from_cache"] and info_again["head"]["loaded_from_cache"]
    for p0, p1 in zip(first.head.parameters(), again.head.parameters()):
        assert torch.equal(p0, p1)
    assert again.attribute_names == ATTRIBUTE_NAMES
    pairs = attribute_world_pairs(2, seed=0)
    assert len(again.explain(pairs.first.images, pairs.second.images)) == 2
