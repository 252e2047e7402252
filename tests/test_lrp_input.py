"""The layer reading the input: an input normalisation inside the model
(rules.InputAffine), Pass and z^B through it, and pixels at exactly 0 (the
black padding of aligned face chips) keeping their relevance."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from captum_similarity import LRPRelevancePairing, PairwiseIntermediateMatching
from captum_similarity.lrp.rules import Pass
from captum_similarity.models.dlib_resnet import InputNormalization

DT = torch.float64


def _body() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5, bias=False),
    ).to(DT)
    for p in body.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=DT) * 0.5
    return body.eval()


def _normalisations():
    bn = nn.BatchNorm2d(3).to(DT).eval()
    bn.running_mean.copy_(torch.tensor([0.4, 0.5, 0.6]))
    bn.running_var.copy_(torch.tensor([0.05, 0.1, 0.2]))
    bn.weight.data.copy_(torch.tensor([1.0, -0.5, 2.0]))
    bn.bias.data.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return {"BatchNorm2d": bn, "dlib InputNormalization": InputNormalization().to(DT).eval()}


def _padded_images() -> torch.Tensor:
    """Images in [0, 1] whose border of 3 pixels is exactly 0, as aligned chips."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 16, 16, generator=g, dtype=DT)
    x[..., :3, :] = 0
    x[..., :, -3:] = 0
    return x


@pytest.mark.parametrize("kind", ["BatchNorm2d", "dlib InputNormalization"])
@pytest.mark.parametrize("norm_rule", [None, "Pass"])
def test_pixels_get_their_normalised_values_relevance(kind, norm_rule):
    """Oracle: the same body without the normalisation, fed the normalised
    images: each pixel's relevance equals its normalised value's, zero pixels
    included, and LRP-0 on the bias-free body conserves the score exactly."""
    norm = _normalisations()[kind]
    body = _body()
    x = _padded_images()
    x1, x2 = x[:2], x[2:]
    rules = None if norm_rule is None else {"0": Pass()}
    lrp = LRPRelevancePairing(nn.Sequential(norm, body), "dot", composite="lrp0", rules=rules)
    (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    with torch.no_grad():
        y1, y2 = norm(x1), norm(x2)
    expected = LRPRelevancePairing(body, "dot", composite="lrp0").attribute((y1, y2))
    torch.testing.assert_close((r1, r2), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-10)
    assert r1[x1 == 0].abs().sum() > 0.05 * r1.abs().sum()  # the padding has its share


@pytest.mark.parametrize("kind", ["BatchNorm2d", "dlib InputNormalization"])
def test_zbox_applies_through_the_normalisation_with_mapped_bounds(kind):
    """input_bounds on the pixels equal input_bounds mapped through the
    normalisation on the body alone; no "not applied" warning."""
    norm = _normalisations()[kind]
    body = _body()
    x = _padded_images()
    x1, x2 = x[:2], x[2:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrp = LRPRelevancePairing(nn.Sequential(norm, body), "dot", composite="lrp0",
                                  input_bounds=(0.0, 1.0))
        (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    with torch.no_grad():
        y1, y2 = norm(x1), norm(x2)
        ends = norm(torch.stack([torch.zeros(3, 1, 1), torch.ones(3, 1, 1)]).to(DT))
    low, high = ends.min(0, keepdim=True).values, ends.max(0, keepdim=True).values
    expected = LRPRelevancePairing(body, "dot", composite="lrp0", input_bounds=(low, high))
    torch.testing.assert_close((r1, r2), expected.attribute((y1, y2)), rtol=1e-9, atol=1e-12)
    # z^B's stabiliser (1e-9) is all that separates the sums from the score
    torch.testing.assert_close(delta, torch.zeros_like(delta), rtol=0, atol=1e-7)


def test_a_rule_named_by_the_user_wins():
    """A rule set in the composite for the normalisation is applied as given:
    LRP-epsilon lets the shift absorb its share (the zero pixels get none)."""
    from captum_similarity.lrp.rules import Epsilon

    norm, body = _normalisations()["BatchNorm2d"], _body()
    x = _padded_images()
    lrp = LRPRelevancePairing(nn.Sequential(norm, body), "dot", composite="lrp0",
                              rules={"0": Epsilon(1e-9)})
    with pytest.warns(UserWarning):  # not conserved, and said so
        (r1, _), delta = lrp.attribute((x[:2], x[2:]), return_convergence_delta=True)
    assert r1[x[:2] == 0].abs().max() == 0 and delta.abs().max() > 1e-3


@pytest.fixture(scope="module")
def aligned_chips():
    pytest.importorskip("face_recognition_models", reason="needs the faces extra")
    pytest.importorskip("dlib", reason="face alignment needs dlib-bin")
    from captum_similarity.data import astronaut_pair
    from captum_similarity.models import dlib_face_resnet, face_chips

    chips = face_chips(list(astronaut_pair()), align="dlib")
    assert chips.eq(0).all(1).any()  # black padding
    return dlib_face_resnet(), chips


def test_dlib_on_aligned_chips_conserves_with_the_default_rules(aligned_chips):
    """dlib's face ResNet on chips with black padding: the default composite
    conserves the cosine to float32 precision (it lost about 5 % when zero
    pixels dropped their relevance) and PAIR-X's windowed passes, which carry
    the normalisation's companion, equal one seed at a time."""
    model, chips = aligned_chips
    x1, x2 = chips[:1], chips[1:]
    lrp = LRPRelevancePairing(model, "cosine")
    (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    score = lrp.model(x1, x2).detach()
    assert (delta.abs() / score.abs()).max() < 1e-4
    assert r1[x1 == 0].abs().sum() > 0
    windowed = PairwiseIntermediateMatching(model, "layer3").explain(x1, x2, k=3)
    each = PairwiseIntermediateMatching(model, "layer3", batching="each").explain(x1, x2, k=3)
    torch.testing.assert_close(windowed[0].pixel_relevance1, each[0].pixel_relevance1)
    torch.testing.assert_close(windowed[0].pixel_relevance2, each[0].pixel_relevance2)
