"""The model matrix: every method on the torchvision and timm backbones of
``captum_similarity.models.backbones.BACKBONES`` (random weights, BatchNorm
statistics calibrated on a few images, 64x64 inputs, a 128-d linear head),
each against an oracle, and the model left as found. A new architecture is
one line in ``BACKBONES``.

Skipped when torchvision or timm is not installed (the README's test command
installs both).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import NamedTuple

import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn

pytest.importorskip("torchvision")
pytest.importorskip("timm")

from captum.attr import IntegratedGradients, LayerGradCam  # noqa: E402
from captum.attr._utils.approximation_methods import approximation_parameters  # noqa: E402

from captum_similarity import (  # noqa: E402
    EmbeddingGradCAM,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    SimilarityRISE,
)
from captum_similarity.branches import GridView, split_branches  # noqa: E402
from captum_similarity.lrp.conservation import ConservationWarning  # noqa: E402
from captum_similarity.models.backbones import BACKBONES, backbone, held_out_images  # noqa: E402
from captum_similarity.rise import random_masks  # noqa: E402

pytestmark = pytest.mark.slow

SIZE = 64
N_STEPS = 4
METHOD = "riemann_trapezoid"
#: The first backbone of each family: PAIR-X's per-match maps are checked
#: against one backward pass per match there.
REPRESENTATIVES = {
    next(name for name, b in BACKBONES.items() if b.family == family)
    for family in {b.family for b in BACKBONES.values()}
}


class Net(NamedTuple):
    name: str
    model: nn.Module
    sim: SiameseSimilarity
    x1: torch.Tensor
    x2: torch.Tensor
    before: dict
    bound: float


@pytest.fixture(scope="module", params=list(BACKBONES))
def net(request) -> Net:
    model = backbone(request.param, image_size=SIZE)
    x1, x2 = held_out_images(SIZE).split(1)
    sim = SiameseSimilarity(model, "cosine")
    return Net(request.param, model, sim, x1, x2, snapshot(model), BACKBONES[request.param].lrp_bound)


@contextmanager
def _quiet():
    """Conservation warnings are checked against each architecture's bound here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConservationWarning)
        yield


def test_integrated_gradients_through_the_wrapper_is_the_path_sum(net):
    """Captum's IG of the wrapper (both images at once, one encoder pass per
    step) equals the Riemann sum of the plain gradients of ``cos(f(a), f(b))``
    along the path, and its delta is the completeness gap of that sum. (The
    gap itself is integration error: on random-weight ReLU networks the path
    crosses many kinks; docs/backbones.md.)"""
    alphas, weights = _path(N_STEPS)
    b1, b2 = net.x1 * 0.5, net.x2 * 0.5
    (a1, a2), delta = IntegratedGradients(net.sim).attribute(
        (net.x1, net.x2), baselines=(b1, b2), n_steps=N_STEPS, method=METHOD,
        return_convergence_delta=True,
    )  # fmt: skip
    p1 = (b1 + alphas[:, None, None, None] * (net.x1 - b1)).requires_grad_(True)
    p2 = (b2 + alphas[:, None, None, None] * (net.x2 - b2)).requires_grad_(True)
    f = net.model(torch.cat([p1, p2]))
    s = torch.nn.functional.cosine_similarity(f[:N_STEPS], f[N_STEPS:])
    g1, g2 = torch.autograd.grad((s * weights).sum(), (p1, p2))
    scale = float(torch.cat([a1, a2]).abs().max()) + 1e-12
    torch.testing.assert_close(a1 / scale, g1.sum(0) * (net.x1 - b1) / scale, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(a2 / scale, g2.sum(0) * (net.x2 - b2) / scale, atol=1e-4, rtol=1e-3)
    change = (net.sim(net.x1, net.x2) - net.sim(b1, b2)).detach()
    total = a1.sum((1, 2, 3)) + a2.sum((1, 2, 3))
    torch.testing.assert_close(total - delta, change, rtol=1e-4, atol=1e-5)
    assert_unchanged(net.model, net.before)


def _path(n: int):
    """Captum's points and weights of ``METHOD`` on [0, 1]."""
    steps, points = approximation_parameters(METHOD)
    return torch.tensor(points(n)), torch.tensor(steps(n))


def test_layer_gradcam_on_the_default_layer_equals_embedding_gradcam(net):
    """Captum's LayerGradCam through the wrapper, on the grid view of the default
    layer (tokens and channels-last maps reshaped), split per branch, equals
    EmbeddingGradCAM's similarity weighting: both are Grad-CAM of the score."""
    view = GridView(net.sim)
    maps = LayerGradCam(view, view.grid).attribute(net.x1, additional_forward_args=(net.x2,))
    m1, m2 = split_branches(maps)
    cam = EmbeddingGradCAM(net.sim)
    e1, e2 = cam.attribute((net.x1, net.x2), weighting="similarity")
    assert cam.layer is view.layer and m1.shape == e1.shape and m1.shape[-2:] == (4, 4)
    scale = float(torch.cat([e1, e2]).abs().max()) + 1e-12
    torch.testing.assert_close(m1 / scale, e1 / scale, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(m2 / scale, e2 / scale, rtol=1e-3, atol=1e-4)
    assert_unchanged(net.model, net.before)


def test_lrp_relevance_pairing_conserves_within_the_bound(net):
    lrp = LRPRelevancePairing(net.sim)
    with _quiet():
        (r1, r2), delta = lrp.attribute((net.x1, net.x2), return_convergence_delta=True)
    s = net.sim(net.x1, net.x2).detach()
    want = torch.stack([s - r1.sum((1, 2, 3)), s - r2.sum((1, 2, 3))], 1)
    torch.testing.assert_close(delta, want, rtol=1e-3, atol=1e-4)  # float32 scores
    assert lrp.conservation.max_relative_error <= net.bound, lrp.conservation.summary()
    assert_unchanged(net.model, net.before)


def test_bilrp_with_projection_totals_the_projected_score(net):
    """The total is ``sum_k A_k B_k / (|f1| |f2|)`` with ``A_k``, ``B_k`` the
    totals of the two images' maps of projected dimension ``k``; each map is
    within the bound of its seed ``(P f)_k``, so the total is within the bound
    that implies of the projected score ``<P f1, P f2> / (|f1| |f2|)``."""
    k = 2
    lrp = LRPRelevancePairing(net.sim)
    with _quiet():
        relevance = lrp.attribute_pairwise((net.x1, net.x2), patch_size=16, projection_dim=k)
    assert relevance.shape == (1, 16, 16)
    c = lrp.conservation  # rows: (image, dimension)
    assert c.max_relative_error <= net.bound, c.summary()
    with torch.no_grad():
        f1, f2 = net.sim.embed(net.x1).double(), net.sim.embed(net.x2).double()
    g = torch.Generator().manual_seed(0)  # the documented projection: N(0, 1 / K), seed 0
    p = torch.randn(k, f1.shape[1], generator=g, dtype=torch.float64) / k**0.5
    norms = float(f1.norm() * f2.norm())
    a, b = (f1 @ p.T)[0], (f2 @ p.T)[0]
    torch.testing.assert_close(c.explained, torch.cat([a, b]), rtol=2e-3, atol=1e-5)  # float32
    big_a, big_b = c.reached[:k], c.reached[k:]
    total = float(relevance.double().sum())
    assert total == pytest.approx(float((big_a * big_b).sum()) / norms, rel=1e-4, abs=1e-7)
    slack = net.bound * float((a.abs() * c.magnitude[k:] + big_b.abs() * c.magnitude[:k]).sum())
    assert abs(total - float((a * b).sum()) / norms) <= slack / norms + 1e-6
    assert_unchanged(net.model, net.before)


def test_pairx_explains_ten_matches_at_the_default_layer(net):
    pairx = PairwiseIntermediateMatching(net.sim)
    with _quiet():
        (result,) = pairx.explain(net.x1, net.x2, k=10)
    top = min(10, len(result))
    assert result.pixel_relevance1.shape == (top, 3, SIZE, SIZE) and top > 0
    assert result.layer_conservation_error <= net.bound
    assert result.pixel_conservation_error <= net.bound
    if net.name in REPRESENTATIVES:  # per-match maps equal one backward pass per match
        each = PairwiseIntermediateMatching(net.sim, pairx.layer, batching="each")
        each.reshape_transform = pairx.reshape_transform
        with _quiet():
            (oracle,) = each.explain(net.x1, net.x2, k=10)
        for got, want in ((result.pixel_relevance1, oracle.pixel_relevance1),
                          (result.pixel_relevance2, oracle.pixel_relevance2)):  # fmt: skip
            scale = float(want.abs().max()) + 1e-12
            torch.testing.assert_close(got / scale, want / scale, rtol=1e-4, atol=1e-5)
    assert_unchanged(net.model, net.before)


def test_similarity_rise_is_the_mask_weighted_mean_score(net):
    n = 12
    saliency = SimilarityRISE(net.sim).attribute(
        net.x1, additional_forward_args=(net.x2,), n_masks=n, mask_cells=4, seed=0
    )
    masks = random_masks(n, (SIZE, SIZE), mask_cells=4, seed=0)
    with torch.no_grad():
        scores = net.sim(net.x1 * masks, net.x2.expand(n, -1, -1, -1))
    want = (scores[:, None, None] * masks[:, 0]).sum(0) / masks[:, 0].sum(0).clamp_min(1e-30)
    torch.testing.assert_close(saliency[0, 0], want, rtol=1e-4, atol=1e-5)
    assert_unchanged(net.model, net.before)
