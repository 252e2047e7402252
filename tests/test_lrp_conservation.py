"""Every LRP-family call measures its conservation and names, when it exceeds
the bound, the layers where relevance was absorbed, lost or created."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_reference_model, zero_additive_constants
from torch import nn

from captum_similarity import LRPRelevancePairing, PairwiseIntermediateMatching
from captum_similarity.lrp import LRPEngine
from captum_similarity.lrp.conservation import ConservationWarning

DT = torch.float64


def _with_head_bias(model: nn.Module, value: float = 3.0) -> nn.Module:
    with torch.no_grad():
        model.head.bias.fill_(value)
    return model


@pytest.mark.parametrize("where", ["input", "to layer", "from layer"])
def test_module_losses_add_up_to_the_error_and_name_the_biased_layer(where, images):
    model = _with_head_bias(make_reference_model("resnet"))
    x = images(2)
    engine = LRPEngine(model, "epsilon")
    p = engine.forward(x, record=["layer2"])
    if where == "from layer":
        seed, source, target = p.activation("layer2").detach(), "layer2", None
    else:
        seed, source, target = p.output.detach() * 0.5, None, "layer2" if where == "to layer" else None
    reached = p.propagate(seed, source=source, target=target)
    losses = engine.diagnose(x, seed, source=source, target=target)
    total = sum(entry.lost for entry in losses)
    # (epsilon's small denominators amplify rounding: merged factors in one pass, not the other)
    assert total == pytest.approx(float(seed.sum() - reached.sum()), rel=1e-6)
    if where != "from layer":
        assert losses[0].name == "head" and losses[0].absorbed  # the bias we set
    else:
        assert all(not name.startswith(("head", "layer3")) for name in (e.name for e in losses))


def test_functional_code_that_loses_relevance_is_attributed_to_its_module(images):
    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, bias=False)
            self.head = nn.Linear(4, 5, bias=False)

        def forward(self, x):  # exp in forward code: no rule covers it
            return self.head(torch.exp(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    model = Leaky().to(DT).eval()
    lrp = LRPRelevancePairing(model, "dot", composite="lrp0")
    with pytest.warns(ConservationWarning, match=r"<model> \(Leaky\)"):
        lrp.attribute((images(2, size=6), images(2, seed=1, size=6)))
    assert lrp.conservation.layers[0].name == "" and not lrp.conservation.layers[0].absorbed


def test_first_order_calls_carry_their_error_and_warn_above_the_bound(images):
    x1, x2 = images(2), images(2, seed=1)
    model = _with_head_bias(make_reference_model("resnet"))
    lrp = LRPRelevancePairing(model, "cosine", composite="epsilon")
    with pytest.warns(ConservationWarning, match=r"head \(Linear\)"):
        (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    c = lrp.conservation
    torch.testing.assert_close(c.error.reshape(2, 2).T, delta.to(DT))  # rows: side 1, side 2
    assert c.exceeded and c.max_relative_error > lrp.engine.conservation_bound
    lrp.engine.conservation_bound = 10.0  # a looser bound: no warning, same numbers
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConservationWarning)
        lrp.attribute((x1, x2))
    assert not lrp.conservation.exceeded and not lrp.conservation.layers


def test_conserving_calls_stay_silent(images):
    model = zero_additive_constants(make_reference_model("resnet"))
    x1, x2 = images(2), images(2, seed=1)
    lrp = LRPRelevancePairing(model, "cosine", composite="lrp0")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConservationWarning)
        lrp.attribute((x1, x2))
        assert lrp.conservation.max_relative_error < 1e-9
        lrp.attribute_pairwise((x1, x2), patch_size=8, projection_dim=4)
        assert lrp.conservation.max_relative_error < 1e-9


def test_bilrp_measures_each_dimension_map(images):
    model = _with_head_bias(make_reference_model("resnet"), 1.0)
    x1, x2 = images(1), images(1, seed=1)
    lrp = LRPRelevancePairing(model, "dot", composite="epsilon")
    with pytest.warns(ConservationWarning, match="embedding dimension"):
        lrp.attribute_pairwise((x1, x2), patch_size=8, projection_dim=3)
    assert lrp.conservation.explained.shape == (2 * 3,)  # (side, dimension, image) rows


def test_pairx_results_carry_both_errors(images):
    model = _with_head_bias(zero_additive_constants(make_reference_model("resnet")))
    pairx = PairwiseIntermediateMatching(model, "layer2", composite="epsilon")
    x1, x2 = images(2), images(2, seed=1)
    with pytest.warns(ConservationWarning, match=r"the similarity .*head \(Linear\)"):
        matches = pairx.explain(x1, x2, k=3)
    for m in matches:
        assert m.layer_conservation_error > pairx.engine.conservation_bound
        assert 0 <= m.pixel_conservation_error < 1e-3  # no bias below the layer: epsilon only
    # the layer relevance's error, recomputed
    p = pairx.engine.forward(torch.cat([x1, x2]), record=["layer2"])
    f = p.output.detach()
    c = pairx.similarity.contribution(f[:2], f[2:])
    r = p.propagate(torch.cat([c, c]), target="layer2").flatten(1).sum(1)
    errors = ((torch.cat([c, c]).sum(1) - r).abs() / torch.cat([c, c]).abs().sum(1)).reshape(2, 2)
    torch.testing.assert_close(
        torch.tensor([m.layer_conservation_error for m in matches], dtype=DT), errors.amax(0)
    )


def test_the_warning_points_at_the_callers_line(images):
    """However many of the library's frames (entry decorator, Captum's logging
    wrapper) lie between, the warning names the line that called the method."""
    model = _with_head_bias(make_reference_model("resnet"))
    x1, x2 = images(1), images(1, seed=1)
    lrp = LRPRelevancePairing(model, "dot", composite="epsilon")
    pairx = PairwiseIntermediateMatching(model, "layer2", composite="epsilon")
    calls = [
        lambda: lrp.attribute((x1, x2)),
        lambda: lrp.attribute_pairwise((x1, x2), patch_size=8, projection_dim=2),
        lambda: pairx.explain(x1, x2, k=2),
    ]
    for call in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        where = {(w.filename, w.lineno) for w in caught if w.category is ConservationWarning}
        assert where == {(__file__, call.__code__.co_firstlineno)}
