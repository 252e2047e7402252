"""Choosing the explained layer: grids by layout, token grids, the default
layer, channels-last maps refused without a transform, and Captum's layer
methods on a grid view."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from conftest import assert_unchanged, make_reference_model, snapshot
from torch import nn

from captum_similarity import EmbeddingGradCAM, PairwiseIntermediateMatching, SiameseSimilarity
from captum_similarity.branches import GridView, split_branches
from captum_similarity.candidates import candidate_layers, default_layer, token_grid
from captum_similarity.models import ChannelsLast, TokenGrid

DT = torch.float64


class ChannelsLastNet(nn.Module):
    """Swin-like: a patch embedding, then stages on (N, h, w, C) maps."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.stages = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 5))
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        t = self.embed(x).permute(0, 2, 3, 1)  # (N, h, w, C)
        return self.head(self.stages(t).mean((1, 2)))


def test_layouts_and_transforms_are_told_apart(images):
    model = ChannelsLastNet().to(DT).eval()
    layers = {c.name: c for c in candidate_layers(model, images(1))}
    assert layers["embed"].layout == "channels_first" and layers["embed"].reshape_transform is None
    stage = layers["stages.2"]
    assert stage.layout == "channels_last" and stage.grid == (8, 8) and stage.shape == (1, 8, 8, 5)
    assert stage.reshape_transform == ChannelsLast()
    vit = make_reference_model("vit")
    tokens = {c.name: c for c in candidate_layers(vit, images(1))}["blocks.0"]
    assert tokens.layout == "tokens" and not tokens.needs_reshape
    assert tokens.reshape_transform == TokenGrid((4, 4), 1) and tokens.grid == (4, 4)


def test_token_layouts_are_chosen_only_when_unambiguous():
    plain = nn.Identity()
    assert token_grid(plain, 17, (64, 64)) == TokenGrid((4, 4), 1)  # 1 + 4x4, stride 16
    assert token_grid(plain, 21, (64, 64)) == TokenGrid((4, 4), 5)  # class + 4 registers
    assert token_grid(plain, 16, (64, 64)) == TokenGrid((4, 4), 0)
    assert token_grid(plain, 5, (64, 64)) is None  # 1 + 2x2 (stride 32) or 4 + 1x1 (64)
    plain.num_prefix_tokens = 4  # a model that says how many it has
    assert token_grid(plain, 5, (64, 64)) == TokenGrid((1, 1), 4)


def test_default_layer_is_a_stride_16_stage_or_a_penultimate_block(images):
    resnet = make_reference_model("resnet")  # three stages: the last is as coarse as it gets
    chosen = default_layer(resnet, images(1, size=64))
    assert chosen.name == "layer3" and chosen.grid == (16, 16)
    assert default_layer(ChannelsLastNet().to(DT), images(1, size=64)).reshape_transform is not None
    vit = make_reference_model("vit")  # two blocks: the first is the penultimate one
    chosen = default_layer(vit, images(1))
    assert chosen.name == "blocks.0" and chosen.reshape_transform == TokenGrid((4, 4), 1)


def test_a_channels_last_map_is_refused_without_its_transform(images):
    torch.manual_seed(0)
    model = ChannelsLastNet().to(DT).eval()
    x1, x2 = images(2), images(2, seed=1)
    for explainer in (EmbeddingGradCAM(model, "stages.2"), PairwiseIntermediateMatching(model, "stages.2")):
        with pytest.raises(ValueError, match=r"channels-last grid.*ChannelsLast"):
            explainer.attribute((x1, x2))
    given = EmbeddingGradCAM(model, "stages", reshape_transform=ChannelsLast())
    default = EmbeddingGradCAM(model)  # the default layer comes with its transform
    torch.testing.assert_close(default.attribute((x1, x2)), given.attribute((x1, x2)))
    assert default.layer is model.stages  # the outermost module giving the stage's output
    pairx = PairwiseIntermediateMatching(model)
    assert pairx.explain(x1, x2, k=2)[0].layer_relevance1.shape == (8, 8)
    assert pairx.layer is model.stages and pairx.reshape_transform == ChannelsLast()


@pytest.mark.parametrize("kind", ["vit", "channels_last"])
def test_captum_layer_gradcam_on_a_grid_view_equals_embedding_gradcam(kind, images):
    torch.manual_seed(0)
    model = make_reference_model("vit") if kind == "vit" else ChannelsLastNet().to(DT).eval()
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = images(2), images(2, seed=1)
    before = snapshot(model)
    view = GridView(sim)
    maps = LayerGradCam(view, view.grid).attribute(x1, additional_forward_args=(x2,))
    m1, m2 = split_branches(maps)
    e1, e2 = EmbeddingGradCAM(sim).attribute((x1, x2), weighting="similarity")
    torch.testing.assert_close((m1, m2), (e1, e2))
    assert m1.shape[-2:] == ((4, 4) if kind == "vit" else (8, 8))
    torch.testing.assert_close(view(x1, x2), sim(x1, x2))  # the model's values
    assert_unchanged(model, before)  # the view's hook is gone
