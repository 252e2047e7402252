"""PairwiseIntermediateMatching (PAIR-X): matches, ranking and per-match maps
against independent oracles; batching; Captum conventions; errors; model state."""

import pytest
import torch
from torch import nn

from captum_similarity import (
    PairMatches,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    candidate_layers,
    visualize_matches,
)
from captum_similarity._utils.hooks import recording
from captum_similarity.lrp import LRPEngine
from captum_similarity.models import SimpleCNN
from captum_similarity.pairwise_matching import mutual_nearest_neighbours
from conftest import REFERENCE_KINDS, assert_unchanged, make_reference_model, snapshot

LAYERS = {"cnn": "features.3", "resnet": "layer2", "efficientnet": "blocks.2", "vit": "blocks.0"}


def _pairx(kind, **kwargs):
    model = make_reference_model(kind)
    transform = model.token_grid if kind == "vit" else None
    return model, PairwiseIntermediateMatching(
        model, LAYERS[kind], reshape_transform=transform, **kwargs
    )


def _grid(model, kind, out):
    return model.token_grid(out) if kind == "vit" else out


def _plain_layer_output(model, kind, x):
    with torch.no_grad(), recording(model.get_submodule(LAYERS[kind])) as rec:
        model(x)
    return _grid(model, kind, rec.single())


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
def test_identical_pair_matches_every_cell_to_itself(kind, images):
    model, pairx = _pairx(kind)
    x = images(1)
    grid = _plain_layer_output(model, kind, x)
    descriptors = grid.flatten(2)[0].T
    assert (
        torch.cdist(descriptors, descriptors).add(torch.eye(len(descriptors))).min() > 0
    )  # distinct
    (result,) = pairx.explain(x, x, k=3)
    assert len(result) == grid.shape[2] * grid.shape[3]
    assert torch.equal(result.cells1, result.cells2)
    assert torch.equal(result.points1, result.points2)
    assert result.distance.abs().max() < 1e-6
    torch.testing.assert_close(
        result.relevance, result.layer_relevance1.flatten().sort(descending=True).values ** 2
    )
    torch.testing.assert_close(result.pixel_relevance1, result.pixel_relevance2)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_matches_are_the_brute_force_mutual_nearest_neighbours(kind, distance, images):
    model, pairx = _pairx(kind, distance=distance)
    x1, x2 = images(2), images(2, seed=1)
    results = pairx.explain(x1, x2, k=0)
    for p, result in enumerate(results):
        a = _plain_layer_output(model, kind, x1[p : p + 1]).flatten(2)[0].T.tolist()
        b = _plain_layer_output(model, kind, x2[p : p + 1]).flatten(2)[0].T.tolist()

        def dist(u, v):
            if distance == "l2":
                return sum((s - t) ** 2 for s, t in zip(u, v)) ** 0.5
            dot = sum(s * t for s, t in zip(u, v))
            return 1 - dot / (sum(s * s for s in u) ** 0.5 * sum(t * t for t in v) ** 0.5)

        table = [[dist(u, v) for v in b] for u in a]
        nearest12 = [min(range(len(b)), key=lambda j: row[j]) for row in table]
        nearest21 = [min(range(len(a)), key=lambda i: table[i][j]) for j in range(len(b))]
        expected = {(i, j): table[i][j] for i, j in enumerate(nearest12) if nearest21[j] == i}
        width1 = result.layer_relevance1.shape[1]
        width2 = result.layer_relevance2.shape[1]
        found = {
            (int(r1 * width1 + c1), int(r2 * width2 + c2)): float(d)
            for (r1, c1), (r2, c2), d in zip(result.cells1, result.cells2, result.distance)
        }
        assert found.keys() == expected.keys()
        for key, value in expected.items():
            assert found[key] == pytest.approx(value, abs=1e-9)


def test_layer_relevance_and_ranking_follow_their_definitions(images):
    """LRP-0 on a bias-free ReLU network is gradient x activation: the layer
    relevance is |sum_c a * d<w, f>/da| with the contribution weights w = c / f
    held fixed, and matches are ranked by r1[cell1] * r2[cell2]."""
    model = SimpleCNN(bias=False).double().eval()
    pairx = PairwiseIntermediateMatching(model, "features.3", similarity="dot", composite="lrp0")
    x1, x2 = images(2), images(2, seed=1)
    results = pairx.explain(x1, x2, k=0)
    layer = model.features[3]
    for side, x in enumerate((x1, x2)):
        with recording(layer) as rec:
            f = model(x)
        with torch.no_grad():
            other = model(x2 if side == 0 else x1)
        weights = (f * other / f).detach()  # dot: contribution f1 * f2, per unit of f
        (grad,) = torch.autograd.grad((f * weights).sum(), rec.single())
        expected = (rec.single() * grad).sum(1).abs().detach()
        for p, result in enumerate(results):
            got = result.layer_relevance1 if side == 0 else result.layer_relevance2
            torch.testing.assert_close(got, expected[p], rtol=1e-9, atol=1e-12)
    for result in results:
        r1, r2 = result.layer_relevance1, result.layer_relevance2
        product = (
            r1[result.cells1[:, 0], result.cells1[:, 1]]
            * r2[result.cells2[:, 0], result.cells2[:, 1]]
        )
        torch.testing.assert_close(result.relevance, product)
        assert (result.relevance[:-1] >= result.relevance[1:]).all()


def test_per_match_maps_are_gradient_times_input_of_the_cell(images):
    """With LRP-0 on a bias-free ReLU network, seeding a cell with its own
    activation gives x * d(sum_c a_c(cell))/dx at the pixels."""
    model = SimpleCNN(bias=False).double().eval()
    pairx = PairwiseIntermediateMatching(model, "features.3", composite="lrp0")
    x1, x2 = images(2), images(2, seed=1)
    results = pairx.explain(x1, x2, k=3)
    for p, result in enumerate(results):
        for x, cells, maps in (
            (x1, result.cells1, result.pixel_relevance1),
            (x2, result.cells2, result.pixel_relevance2),
        ):
            leaf = x[p : p + 1].clone().requires_grad_(True)
            with recording(model.features[3]) as rec:
                model(leaf)
            for j in range(3):
                row, col = cells[j].tolist()
                (grad,) = torch.autograd.grad(
                    rec.single()[0, :, row, col].sum(), leaf, retain_graph=True
                )
                torch.testing.assert_close(
                    maps[j], (leaf * grad)[0].detach(), rtol=1e-9, atol=1e-12
                )


@pytest.mark.parametrize("kind", REFERENCE_KINDS)
def test_per_match_maps_equal_one_seed_at_a_time(kind, images):
    model, pairx = _pairx(kind)
    x1, x2 = images(2), images(2, seed=1)
    results = pairx.explain(x1, x2, k=2)
    engine = LRPEngine(model, "epsilon_plus")
    layer = LAYERS[kind]
    for p, result in enumerate(results):
        for x, cells, maps in (
            (x1, result.cells1, result.pixel_relevance1),
            (x2, result.cells2, result.pixel_relevance2),
        ):
            run = engine.forward(x[p : p + 1], record=[layer])
            raw = run.activation(layer).detach()
            for j in range(2):
                row, col = cells[j].tolist()
                if kind == "vit":
                    seed = torch.zeros_like(raw)
                    token = 1 + row * model.token_grid.grid_size[1] + col
                    seed[:, token] = raw[:, token]
                else:
                    seed = torch.zeros_like(raw)
                    seed[:, :, row, col] = raw[:, :, row, col]
                torch.testing.assert_close(
                    maps[j], run.propagate(seed, source=layer)[0], rtol=1e-9, atol=1e-12
                )


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_batched_equals_unbatched(kind, images):
    _, pairx = _pairx(kind)
    _, vmapped = _pairx(kind, batching="vmap")
    x1, x2 = images(3), images(3, seed=1)
    batch = pairx.explain(x1, x2, k=4, internal_batch_size=None)
    assert len({len(r) for r in batch}) > 1  # different match counts, none truncated
    for p, result in enumerate(batch):
        (alone,) = pairx.explain(x1[p : p + 1], x2[p : p + 1], k=4)
        for field in ("cells1", "cells2", "points1", "points2"):
            assert torch.equal(getattr(result, field), getattr(alone, field)), field
        for field in (
            "distance",
            "relevance",
            "layer_relevance1",
            "layer_relevance2",
            "pixel_relevance1",
            "pixel_relevance2",
        ):
            torch.testing.assert_close(
                getattr(result, field), getattr(alone, field), rtol=1e-9, atol=1e-12
            )
        assert result.score == pytest.approx(alone.score)
    for a, b in zip(batch, vmapped.explain(x1, x2, k=4)):
        torch.testing.assert_close(a.pixel_relevance1, b.pixel_relevance1, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(a.pixel_relevance2, b.pixel_relevance2, rtol=1e-9, atol=1e-12)
    # chunks of pairs (internal_batch_size) give the same results
    chunked = pairx.explain(x1, x2, k=4, internal_batch_size=2)
    assert [len(r) for r in chunked] == [len(r) for r in batch]
    for a, b in zip(batch, chunked):
        torch.testing.assert_close(a.pixel_relevance1, b.pixel_relevance1, rtol=1e-9, atol=1e-12)
        assert torch.equal(a.cells2, b.cells2)
    summed = pairx.attribute((x1, x2), k=4, internal_batch_size=None)
    for a, b in zip(summed, pairx.attribute((x1, x2), k=4, internal_batch_size=2)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_attribute_follows_captum_conventions(images):
    model, pairx = _pairx("efficientnet")
    x1, x2 = images(2), images(2, seed=1)
    results = pairx.explain(x1, x2, k=3)
    a1, a2 = pairx.attribute((x1, x2), k=3)
    assert a1.shape == x1.shape and a2.shape == x2.shape
    for p, result in enumerate(results):
        torch.testing.assert_close(a1[p], result.pixel_relevance1.sum(0))
        torch.testing.assert_close(a2[p], result.pixel_relevance2.sum(0))
    single = pairx.attribute(x1, additional_forward_args=(x2,), k=3)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, a1)
    # a batch-1 side is broadcast
    b1, b2 = pairx.attribute((x1[:1], x2), k=3)
    assert b1.shape == x2.shape
    torch.testing.assert_close(b1[1], pairx.attribute((x1[:1], x2[1:]), k=3)[0][0])
    # a SiameseSimilarity brings its own similarity
    sim = SiameseSimilarity(model, "dot")
    assert PairwiseIntermediateMatching(sim, "blocks.2").similarity.name == "dot"


def test_images_of_different_sizes_are_matched(images):
    model, pairx = _pairx("resnet")
    x1 = images(1)
    x2 = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (result,) = pairx.explain(x1, x2, k=2)
    assert result.layer_relevance2.shape == (24, 20)
    assert result.pixel_relevance2.shape == (2, 3, 48, 40)
    # cell centres in input pixels: (col + 0.5) * W / w
    torch.testing.assert_close(result.points2, (result.cells2.flip(1).double() + 0.5) * 2.0)


def test_mutual_nearest_neighbours_breaks_ties_to_the_lowest_index():
    a = torch.tensor([[[0.0], [0.0], [5.0]]])
    b = torch.tensor([[[0.0], [5.0]]])
    mutual, nearest, distance = mutual_nearest_neighbours(a, b)
    assert mutual.tolist() == [[True, False, True]]
    assert nearest.tolist() == [[0, 0, 1]]
    assert distance.tolist() == [[0.0, 0.0, 0.0]]


def test_candidate_layers_lists_grids_and_leaves_the_model_as_found(images):
    model = make_reference_model("resnet").train()
    before = snapshot(model)
    layers = {layer.name: layer for layer in candidate_layers(model, images(1))}
    assert_unchanged(model, before)  # also the BatchNorm statistics of train mode
    assert layers["layer2"].grid == (16, 16) and layers["layer2"].shape == (1, 32, 16, 16)
    assert "head" not in layers and "pool" not in layers
    vit = make_reference_model("vit")
    tokens = {layer.name: layer for layer in candidate_layers(vit, images(1))}
    assert not tokens["blocks.0"].needs_reshape  # one class token, a 4x4 grid: unambiguous
    assert tokens["blocks.0"].reshape_transform == vit.token_grid
    grids = {layer.name: layer for layer in candidate_layers(vit, images(1), vit.token_grid)}
    assert grids["blocks.0"].grid == (4, 4) and not grids["blocks.0"].needs_reshape


def test_errors_are_clear(images):
    model = make_reference_model("resnet")
    x = images(1)
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        PairwiseIntermediateMatching(model, "layer9")
    with pytest.raises(ValueError, match="not a submodule"):
        PairwiseIntermediateMatching(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="unknown distance"):
        PairwiseIntermediateMatching(model, "layer2", distance="l1")
    with pytest.raises(ValueError, match="contributions"):
        PairwiseIntermediateMatching(model, "layer2", similarity=lambda a, b: (a * b).sum(1))
    pairx = PairwiseIntermediateMatching(model, "layer2")
    with pytest.raises(ValueError, match="k must be"):
        pairx.explain(x, x, k=-1)
    with pytest.raises(ValueError, match="k must be"):
        pairx.attribute((x, x), k=0)
    with pytest.raises(ValueError, match="precomputed embeddings"):
        pairx.explain(x, torch.rand(1, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels"):
        pairx.explain(x, images(1, channels=1))
    with pytest.raises(ValueError, match="cannot broadcast"):
        pairx.explain(images(2), images(3))
    with pytest.raises(TypeError, match="tuple"):
        pairx.attribute([x, x])
    with pytest.raises(ValueError, match="feature map"):
        PairwiseIntermediateMatching(model, "head").explain(x, x)
    vit = make_reference_model("vit")
    with pytest.raises(ValueError, match="reshape_transform"):
        PairwiseIntermediateMatching(vit, "blocks.0").explain(x, x)
    with pytest.raises(TypeError, match="PairMatches"):
        visualize_matches(x, x, {"cells1": None})


@pytest.mark.parametrize("kind", ["resnet", "vit"])
def test_model_left_as_found(kind, images):
    model, pairx = _pairx(kind)
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = snapshot(model)
    pairx.explain(images(2), images(2, seed=1), k=2)
    pairx.attribute((images(2), images(2, seed=1)), k=2)
    assert_unchanged(model, before)
    broken = PairwiseIntermediateMatching(model, "head" if kind == "resnet" else "blocks.0")
    with pytest.raises(ValueError):
        broken.explain(images(1), images(1))
    assert_unchanged(model, before)


def test_figure_draws_lines_maps_and_hides_the_overlay(images, tmp_path):
    model, pairx = _pairx("resnet")
    x1, x2 = images(1), images(1, seed=1)
    (result,) = pairx.explain(x1, x2, k=3)
    fig = visualize_matches(x1, x2, result, lines=5, path=tmp_path / "pairx.png")
    assert (tmp_path / "pairx.png").stat().st_size > 5_000
    top, bottom, colorbar = fig.axes
    assert len(top.lines) == 5 and len(top.images) == 2  # the images and the overlay
    assert len(bottom.images) == 1
    assert "layer relevance / max of both" in colorbar.get_ylabel()
    assert [t.get_text() for t in top.get_legend().get_texts()][:2] == ["rank 1", "rank 2"]
    assert fig.get_supxlabel().startswith("pair 0")
    bare = visualize_matches(x1, x2, result, lines=5, overlay=False)
    assert len(bare.axes) == 2 and len(bare.axes[0].images) == 1  # no overlay, no colorbar
    matches_only = pairx.explain(x1, x2, k=0)[0]
    assert (
        isinstance(matches_only, PairMatches)
        and len(visualize_matches(x1, x2, matches_only).axes) == 2  # the panel and its colorbar
    )
    with pytest.raises(ValueError, match="pass the images"):
        visualize_matches(images(1, size=16), x2, result)
