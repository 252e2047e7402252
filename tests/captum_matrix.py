"""Every attribution class of ``captum.attr`` through :class:`SiameseSimilarity`.

Each :class:`Case` runs one Captum class on a similarity model and asserts a
property of its result against an oracle (completeness, equality with a direct
computation, equality with Captum on the one-branch model ``x -> s(x, f(r))``,
per-branch equality for layer methods) or asserts the clear error a
combination that cannot work raises. ``tests/test_captum_matrix.py`` runs
every case; the table in ``docs/captum-methods.md`` is written from the same
cases by running this file (and a test fails when the page and the cases
disagree):

    python tests/captum_matrix.py            # runs every case, then rewrites the table
    python tests/captum_matrix.py --check    # exits 1 when the page is out of date

The models are tiny (8x8 RGB images, a 2-conv CNN, float64) so that the whole
matrix runs in seconds.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
import captum.attr as captum_attr
from captum.attr import (
    LRP,
    DataLoaderAttribution,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    FeaturePermutation,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    InternalInfluence,
    KernelShap,
    LayerActivation,
    LayerConductance,
    LayerDeepLift,
    LayerDeepLiftShap,
    LayerFeatureAblation,
    LayerFeaturePermutation,
    LayerGradCam,
    LayerGradientShap,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    LayerLRP,
    Lime,
    LimeBase,
    NeuronConductance,
    NeuronDeconvolution,
    NeuronDeepLift,
    NeuronDeepLiftShap,
    NeuronFeatureAblation,
    NeuronGradient,
    NeuronGradientShap,
    NeuronGuidedBackprop,
    NeuronIntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
    ShapleyValues,
    ShapleyValueSampling,
)
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "captum-methods.md"
START, END = "<!-- captum-matrix:start -->", "<!-- captum-matrix:end -->"

DT = torch.float64
N = 2  # queries per call
SIZE = 8  # image side


# -- models and data ---------------------------------------------------------


class Tiny(nn.Module):
    """Conv-ReLU, strided conv-ReLU, global average pooling, linear: 8x8 RGB -> 5."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


class Linear(nn.Module):
    """A linear embedder: with the dot product and a fixed reference, the score
    is linear in the query (gradients are constant, explanations exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


class OneBranch(nn.Module):
    """The oracle model ``x -> s(x, f(reference))`` with ``f(reference)`` a constant."""

    def __init__(self, sim, reference: Tensor) -> None:
        super().__init__()
        self.sim = sim
        with torch.no_grad():
            self.register_buffer("fixed", sim.embed(reference).detach())

    def forward(self, x: Tensor) -> Tensor:
        return self.sim.head(self.sim.embedder(x), self.fixed.expand(x.shape[0], -1))


class Fixed(nn.Module):
    """The oracle model ``(x, f) -> s(x, f)``, the other image's embedding ``f``
    given as an argument (Captum expands it as it expands any argument)."""

    def __init__(self, sim) -> None:
        super().__init__()
        self.sim = sim

    def forward(self, x: Tensor, f: Tensor) -> Tensor:
        return self.sim.head(self.sim.embedder(x), f)


@lru_cache(maxsize=None)
def _model(kind: str) -> nn.Module:
    torch.manual_seed({"tiny": 0, "tiny_nobias": 1, "linear": 2}[kind])
    model = {"tiny": Tiny, "tiny_nobias": lambda: Tiny(bias=False), "linear": Linear}[kind]()
    return model.to(DT).eval()


def siamese(kind: str = "tiny", similarity: str = "dot"):
    from captum_similarity import SiameseSimilarity

    return SiameseSimilarity(_model(kind), similarity)


def data(seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Queries ``(N, 3, 8, 8)`` and a reference ``(1, 3, 8, 8)``."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(N, 3, SIZE, SIZE, generator=g, dtype=DT),
        torch.rand(1, 3, SIZE, SIZE, generator=g, dtype=DT),
    )


def close(actual: Tensor, expected: Tensor, atol: float = 1e-10, rtol: float = 1e-7) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=rtol)


def total(a: Tensor) -> Tensor:
    return a.reshape(a.shape[0], -1).sum(1)


def quarter_mask() -> Tensor:
    """Four features per image: its quadrants, ``(1, 1, 8, 8)`` long."""
    mask = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.long)
    mask[..., : SIZE // 2, SIZE // 2 :] = 1
    mask[..., SIZE // 2 :, : SIZE // 2] = 2
    mask[..., SIZE // 2 :, SIZE // 2 :] = 3
    return mask


def ablated(x: Tensor, mask: Tensor, feature: int, value: float = 0.0) -> Tensor:
    return torch.where(mask == feature, torch.full_like(x, value), x)


def branch(kind: str = "tiny", similarity: str = "dot"):
    """``(sim, x, ref, one-branch oracle model)``."""
    sim = siamese(kind, similarity)
    x, ref = data()
    return sim, x, ref, OneBranch(sim, ref)


def needs_sklearn() -> None:
    """Lime and KernelShap fit an interpretable model with scikit-learn."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pytest.skip("needs scikit-learn: pip install 'captum-similarity[lime]'")


# -- the cases -------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One Captum class through the wrapper.

    Attributes:
        name (str): The class name in ``captum.attr``.
        family (str): ``gradient``, ``perturbation``, ``layer``, ``neuron``,
            ``wrapper``, ``base class`` or ``other domain``.
        call (str): How it is called on ``sim`` (for the docs table).
        checks (str): The property the run asserts (for the docs table).
        run (Callable): Asserts the property (or the error); None for classes
            that are not attribution methods of images.
        works (bool): Whether it explains a similarity through the wrapper
            (False: it raises the documented error, or does not apply).
    """

    name: str
    family: str
    call: str
    checks: str
    run: Callable[[], None] = None  # type: ignore[assignment]
    works: bool = True


CASES: Dict[str, Case] = {}


def case(name: str, family: str, call: str, checks: str, works: bool = True):
    def add(fn: Callable[[], None]) -> Callable[[], None]:
        CASES[name] = Case(name, family, call, checks, fn, works)
        return fn

    return add


def not_a_method(name: str, family: str, why: str) -> None:
    CASES[name] = Case(name, family, "-", why, None, works=False)


# gradient methods ------------------------------------------------------------


@case("IntegratedGradients", "gradient", "`(x, additional_forward_args=(ref,))`",
      "completeness: `sum(a) = s(x, r) - s(b, r)` (2e-5: ReLU kinks)")
def _ig() -> None:
    sim, x, ref, _ = branch()
    b = torch.full_like(x, 0.3)
    a = IntegratedGradients(sim).attribute(
        x, baselines=b, additional_forward_args=(ref,), n_steps=200, method="gausslegendre"
    )
    close(total(a), sim(x, ref) - sim(b, ref), atol=2e-5)


@case("Saliency", "gradient", "`(x, additional_forward_args=(ref,))`",
      "equals `torch.autograd.grad` of `s(x, r)`")
def _saliency() -> None:
    sim, x, ref, _ = branch()
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(sim(xg, ref).sum(), xg)
    close(Saliency(sim).attribute(x, additional_forward_args=(ref,), abs=False), grad)


@case("InputXGradient", "gradient", "`((x1, x2))`",
      "equals `x * grad` on both images; on a bias-free ReLU net with dot the two sums add "
      "up to `2 s`")
def _input_x_gradient() -> None:
    sim = siamese("tiny_nobias")
    x1, x2 = data()[0], data(1)[0]
    a1, a2 = InputXGradient(sim).attribute((x1, x2))
    g1, g2 = (x.clone().requires_grad_() for x in (x1, x2))
    d1, d2 = torch.autograd.grad(sim(g1, g2).sum(), (g1, g2))
    close(a1, x1 * d1)
    close(a2, x2 * d2)
    # s is homogeneous of degree 1 in each image's embedding, which is homogeneous in the image
    close(total(a1) + total(a2), 2 * sim(x1, x2))


@case("DeepLift", "gradient", "`(x, baselines=b, additional_forward_args=(ref,))`",
      "summation to delta: `sum(a) = s(x, r) - s(b, r)` (1e-10)")
def _deeplift() -> None:
    sim, x, ref, _ = branch()
    b = torch.full_like(x, 0.25)
    a = DeepLift(sim).attribute(x, baselines=b, additional_forward_args=(ref,))
    close(total(a), sim(x, ref) - sim(b, ref))


@case("DeepLiftShap", "gradient", "`(x, baselines=B, additional_forward_args=(ref,))`",
      "summation to delta: `sum(a) = s(x, r) - mean_b s(b, r)`")
def _deeplift_shap() -> None:
    sim, x, ref, _ = branch()
    bases = torch.stack([torch.full_like(x[0], v) for v in (0.1, 0.4, 0.7)])
    a = DeepLiftShap(sim).attribute(x, baselines=bases, additional_forward_args=(ref,))
    expected = sim(x, ref) - torch.stack([sim(b[None].expand_as(x), ref) for b in bases]).mean(0)
    close(total(a), expected)


@case("GradientShap", "gradient", "`(x, baselines=b, additional_forward_args=(ref,))`",
      "completeness on a model linear in `x` (exact for every random point)")
def _gradient_shap() -> None:
    sim, x, ref, _ = branch("linear")
    b = torch.full_like(x[:1], 0.2)
    torch.manual_seed(0)
    a = GradientShap(sim).attribute(
        x, baselines=b, additional_forward_args=(ref,), n_samples=4, stdevs=0.0
    )
    close(total(a), sim(x, ref) - sim(b, ref))


@case("GuidedBackprop", "gradient", "`(x, additional_forward_args=(ref,))`",
      "equals Captum's GuidedBackprop of the one-branch model `x -> s(x, f(r))`")
def _guided_backprop() -> None:
    sim, x, ref, one = branch()
    close(GuidedBackprop(sim).attribute(x, additional_forward_args=(ref,)),
          GuidedBackprop(one).attribute(x))


@case("Deconvolution", "gradient", "`(x, additional_forward_args=(ref,))`",
      "equals Captum's Deconvolution of the one-branch model")
def _deconvolution() -> None:
    sim, x, ref, one = branch()
    close(Deconvolution(sim).attribute(x, additional_forward_args=(ref,)),
          Deconvolution(one).attribute(x))


@case("GuidedGradCam", "gradient",
      "`(x, additional_forward_args=(sim.embed(ref),))`; both images: `BranchLayerAttribution`",
      "equals the one-branch model's; with an image reference a `ValueError` says to pass "
      "the embedding (the layer batch holds both images)")
def _guided_gradcam() -> None:
    from captum_similarity import BranchLayerAttribution

    sim, x, ref, one = branch()
    layer = sim.embedder.relu2
    expected = GuidedGradCam(one, layer).attribute(x)
    close(GuidedGradCam(sim, layer).attribute(x, additional_forward_args=(sim.embed(ref),)),
          expected)
    a1, _ = BranchLayerAttribution(GuidedGradCam, sim, layer).attribute((x, ref))
    close(a1, expected)
    with pytest.raises(ValueError, match="GuidedGradCam needs one attribution row per input"):
        GuidedGradCam(sim, layer).attribute(x, additional_forward_args=(ref,))


@case("LRP", "gradient", "`((x1, x2))`",
      "conservation: each image's relevance sums to `s` (bias-free ReLU net, LRP-0); "
      "equals InputXGradient there")
def _lrp() -> None:
    sim = siamese("tiny_nobias")
    x1, x2 = data()[0], data(1)[0]
    r1, r2 = LRP(sim).attribute((x1, x2))
    close(total(r1), sim(x1, x2), atol=1e-8, rtol=1e-6)  # Captum's epsilon is 1e-9
    close(total(r2), sim(x1, x2), atol=1e-8, rtol=1e-6)
    g1, g2 = InputXGradient(sim).attribute((x1, x2))
    close(r1 + r2, g1 + g2, atol=1e-8, rtol=1e-6)
    # a reference given as an embedding is a constant: relevance of the query alone
    ref = sim.embed(x2).detach()
    close(LRP(sim).attribute(x1, additional_forward_args=(ref,)), r1, atol=1e-8, rtol=1e-6)


# perturbation methods ---------------------------------------------------------


@case("FeatureAblation", "perturbation", "`(x, additional_forward_args=(ref,), feature_mask=m)`",
      "equals `s(x, r) - s(x with the feature zeroed, r)`, feature by feature")
def _feature_ablation() -> None:
    sim, x, ref, _ = branch()
    mask = quarter_mask()
    a = FeatureAblation(sim).attribute(x, additional_forward_args=(ref,), feature_mask=mask)
    for k in range(4):
        drop = sim(x, ref) - sim(ablated(x, mask, k), ref)
        close(a[:, 0][(mask[0, 0] == k).expand(N, -1, -1)].view(N, -1)[:, 0], drop)


@case("FeaturePermutation", "perturbation", "`(x, additional_forward_args=(ref,), feature_mask=m)`",
      "equals the score drop with the feature swapped between the two queries")
def _feature_permutation() -> None:
    sim, x, ref, _ = branch()
    mask = quarter_mask()
    a = FeaturePermutation(sim).attribute(x, additional_forward_args=(ref,), feature_mask=mask)
    for k in range(4):
        swapped = torch.where(mask == k, x.flip(0), x)  # a permutation of 2 rows is the swap
        close(a[:, 0][(mask[0, 0] == k).expand(N, -1, -1)].view(N, -1)[:, 0],
              sim(x, ref) - sim(swapped, ref))


@case("Occlusion", "perturbation", "`(x, additional_forward_args=(ref,), sliding_window_shapes=...)`",
      "equals the score drop with the window zeroed")
def _occlusion() -> None:
    sim, x, ref, _ = branch()
    a = Occlusion(sim).attribute(
        x, additional_forward_args=(ref,), sliding_window_shapes=(3, 4, 4), strides=4,
        perturbations_per_eval=3,
    )
    occluded = x.clone()
    occluded[:, :, :4, :4] = 0
    close(a[:, 0, 0, 0], sim(x, ref) - sim(occluded, ref))


@case("ShapleyValueSampling", "perturbation",
      "`(x, additional_forward_args=(ref,), feature_mask=m)`",
      "completeness: `sum(a) = s(x, r) - s(0, r)` (every sampled permutation is exact)")
def _shapley_sampling() -> None:
    sim, x, ref, _ = branch()
    torch.manual_seed(0)
    a = ShapleyValueSampling(sim).attribute(
        x, additional_forward_args=(ref,), feature_mask=quarter_mask(), n_samples=3
    )
    close(total(a) / SIZE**2 * 4 / 3, sim(x, ref) - sim(torch.zeros_like(x), ref), atol=1e-8)


@case("ShapleyValues", "perturbation", "`(x, additional_forward_args=(ref,), feature_mask=m)`",
      "completeness, and the exact Shapley value of each feature from all 2^4 coalitions")
def _shapley_values() -> None:
    sim, x, ref, _ = branch()
    mask = quarter_mask()
    a = ShapleyValues(sim).attribute(x, additional_forward_args=(ref,), feature_mask=mask)
    close(total(a) / SIZE**2 * 4 / 3, sim(x, ref) - sim(torch.zeros_like(x), ref))
    # exact Shapley value of feature 0 by enumerating the coalitions of the others
    from itertools import combinations
    from math import factorial

    def score(keep):
        kept = x.clone()
        for k in range(4):
            if k not in keep:
                kept = ablated(kept, mask, k)
        return sim(kept, ref)

    value = torch.zeros(N, dtype=DT)
    for size in range(4):
        for coalition in combinations((1, 2, 3), size):
            weight = factorial(size) * factorial(3 - size) / factorial(4)
            value += weight * (score(set(coalition) | {0}) - score(set(coalition)))
    close(a[:, 0, 0, 0], value)


@case("Lime", "perturbation",
      "`(x, additional_forward_args=(ref,), feature_mask=m)`; needs `captum-similarity[lime]`",
      "with a linear-regression surrogate on a model linear in `x`: equals FeatureAblation")
def _lime() -> None:
    from captum._utils.models.linear_model import SkLearnLinearRegression

    _equals_ablation_on_a_linear_model(
        lambda sim: Lime(sim, interpretable_model=SkLearnLinearRegression())
    )


@case("KernelShap", "perturbation",
      "`(x, additional_forward_args=(ref,), feature_mask=m)`; needs `captum-similarity[lime]`",
      "on a model linear in `x` Shapley values are the ablation effects: equals FeatureAblation")
def _kernel_shap() -> None:
    _equals_ablation_on_a_linear_model(KernelShap)


def _equals_ablation_on_a_linear_model(make: Callable) -> None:
    """``make(sim)`` (a surrogate-model method) on a model linear in ``x``
    recovers each feature's ablation effect."""
    needs_sklearn()
    sim, x, ref, _ = branch("linear")
    mask = quarter_mask()
    a = make(sim).attribute(x, additional_forward_args=(ref,), feature_mask=mask, n_samples=40)
    expected = FeatureAblation(sim).attribute(x, additional_forward_args=(ref,), feature_mask=mask)
    close(a, expected, atol=1e-8, rtol=1e-6)


@case("LimeBase", "perturbation",
      "with your own sampling, similarity and interpretable model (Lime and KernelShap are two)",
      "with ablation samples and a linear surrogate on a model linear in `x`: equals FeatureAblation")
def _lime_base() -> None:
    needs_sklearn()
    from captum._utils.models.linear_model import SkLearnLinearRegression

    sim, x, ref, _ = branch("linear")
    mask = quarter_mask()[0, 0]
    x1 = x[:1]
    gen = torch.Generator().manual_seed(0)

    def sample(inputs, **kwargs):
        return torch.randint(0, 2, (1, 4), generator=gen, dtype=DT)

    def to_input(z, original, **kwargs):
        return original * z[0][mask]

    base = LimeBase(
        sim, SkLearnLinearRegression(), similarity_func=lambda *a, **k: 1.0,
        perturb_func=sample, perturb_interpretable_space=True,
        from_interp_rep_transform=to_input, to_interp_rep_transform=None,
    )
    coef = base.attribute(x1, additional_forward_args=(ref,), n_samples=30)
    expected = FeatureAblation(sim).attribute(
        x1, additional_forward_args=(ref,), feature_mask=mask[None, None]
    )
    close(coef[0], torch.stack([expected[0, 0][mask == k][0] for k in range(4)]), atol=1e-8,
          rtol=1e-6)


@case("DataLoaderAttribution", "perturbation",
      "`DataLoaderAttribution(FeatureAblation(sim)).attribute(loader, input_roles=(0, 1), ...)` "
      "over `[x, ref]` batches (lists: Captum fails on tuples)",
      "equals the drop of the summed score when the feature is zeroed in every image")
def _dataloader() -> None:
    from captum.attr._core.dataloader_attr import InputRole

    sim, x, ref, _ = branch()
    batches = [[x, ref.expand_as(x)], [x.flip(0), ref.expand_as(x)]]  # lists: Captum's form
    mask = quarter_mask()
    a = DataLoaderAttribution(FeatureAblation(sim)).attribute(
        batches, input_roles=(InputRole.need_attr, InputRole.need_forward),
        feature_mask=(mask,), to_metric=lambda scores: scores.sum(),
    )
    for k in range(4):
        drop = sum(
            float(sim(xb, rb).sum() - sim(ablated(xb, mask, k), rb).sum()) for xb, rb in batches
        )
        close(a[0][0, 0][mask[0, 0] == k][:1].to(DT), torch.tensor([drop], dtype=DT))


# layer methods ------------------------------------------------------------------


def _branch_oracle(cls, sim, layer, x, other, **kwargs):
    """``cls`` on the one-branch model of ``x`` against ``other``'s fixed embedding."""
    fixed = sim.embed(other).detach()
    return cls(Fixed(sim), layer).attribute(x, additional_forward_args=(fixed,), **kwargs)


def refused(cls, *args, **kwargs) -> None:
    """``cls`` with an image reference raises the wrapper's error naming it."""
    sim, x, ref, _ = branch()
    with pytest.raises(ValueError, match=f"{cls.__name__} cannot explain a SiameseSimilarity"):
        cls(sim, *args).attribute(x, additional_forward_args=(ref,), **kwargs)


@case("LayerGradCam", "layer", "`(x1, additional_forward_args=(x2,))`, then `split_branches`",
      "per-branch equality: each half equals Grad-CAM of that image with the other's "
      "embedding fixed")
def _layer_gradcam() -> None:
    from captum_similarity import split_branches

    sim = siamese()
    x1, x2 = data()[0], data(1)[0]
    layer = sim.embedder.relu2
    m1, m2 = split_branches(LayerGradCam(sim, layer).attribute(x1, additional_forward_args=(x2,)))
    close(m1, _branch_oracle(LayerGradCam, sim, layer, x1, x2))
    close(m2, _branch_oracle(LayerGradCam, sim, layer, x2, x1))


@case("LayerActivation", "layer", "`(x1, additional_forward_args=(x2,))`, then `split_branches`",
      "each half is that image's activation")
def _layer_activation() -> None:
    from captum_similarity import split_branches

    sim = siamese()
    x1, x2 = data()[0], data(1)[0]
    m = sim.embedder
    a1, a2 = split_branches(LayerActivation(sim, m.relu2).attribute(x1, additional_forward_args=(x2,)))
    close(a1, m.relu2(m.conv2(m.relu1(m.conv1(x1)))))
    close(a2, m.relu2(m.conv2(m.relu1(m.conv1(x2)))))


@case("LayerGradientXActivation", "layer",
      "`(x1, additional_forward_args=(x2,))`, then `split_branches`", "per-branch equality")
def _layer_gxa() -> None:
    from captum_similarity import split_branches

    sim = siamese()
    x1, x2 = data()[0], data(1)[0]
    layer = sim.embedder.relu1
    a1, a2 = split_branches(
        LayerGradientXActivation(sim, layer).attribute(x1, additional_forward_args=(x2,))
    )
    close(a1, _branch_oracle(LayerGradientXActivation, sim, layer, x1, x2))
    close(a2, _branch_oracle(LayerGradientXActivation, sim, layer, x2, x1))


def _branchwise(cls, completeness: bool, seeded: bool = False, **kwargs) -> None:
    """``BranchLayerAttribution(cls)`` equals the one-branch oracle on each side
    and, with ``completeness``, sums to ``s(x) - s(0)`` per side; ``cls``
    called directly with an image reference raises."""
    from captum_similarity import BranchLayerAttribution

    sim = siamese()
    x1, x2 = data()[0], data(1)[0]
    layer = sim.embedder.relu1
    results = []
    for run in (
        lambda: BranchLayerAttribution(cls, sim, layer).attribute((x1, x2), **kwargs),
        lambda: (_branch_oracle(cls, sim, layer, x1, x2, **kwargs),
                 _branch_oracle(cls, sim, layer, x2, x1, **kwargs)),
    ):
        if seeded:  # the same random draws (numpy's and torch's) for both
            np.random.seed(0)
            torch.manual_seed(0)
        results.append(run())
    (a1, a2), (o1, o2) = results
    close(a1, o1)
    if not seeded:  # the oracle's second side draws after its first
        close(a2, o2)
    if completeness:
        zero = torch.zeros_like(x1)
        f1, f2 = sim.embed(x1).detach(), sim.embed(x2).detach()
        close(total(a1), sim(x1, f2) - sim(zero, f2), atol=1e-5)
        close(total(a2), sim(f1, x2) - sim(f1, zero), atol=1e-5)
    refused(cls, layer, **kwargs)


_BRANCH_CALL = (
    "`BranchLayerAttribution({}, sim, layer).attribute((x1, x2))`, or "
    "`(x, additional_forward_args=(sim.embed(ref),))`"
)
_REFUSED = "; with two image sides a `ValueError` names the method and these two ways"


@case("LayerConductance", "layer", _BRANCH_CALL.format("LayerConductance"),
      "per-branch equality with the one-branch model; completeness per image (1e-5)" + _REFUSED)
def _layer_conductance() -> None:
    _branchwise(LayerConductance, True, n_steps=200, method="gausslegendre")


@case("LayerIntegratedGradients", "layer",
      "`(x1, additional_forward_args=(x2,))`, then `split_branches`",
      "completeness of the first half: `s(x1, x2) - s(b, x2)`; the second half is zero "
      "(the reference is not scaled); the first half equals the one-branch model's")
def _layer_ig() -> None:
    from captum_similarity import split_branches

    sim = siamese()
    x1, x2 = data()[0], data(1)[0]
    layer = sim.embedder.relu1
    b = torch.full_like(x1, 0.3)
    a = LayerIntegratedGradients(sim, layer).attribute(
        x1, baselines=b, additional_forward_args=(x2,), n_steps=200, method="gausslegendre"
    )
    a1, a2 = split_branches(a)
    close(total(a1), sim(x1, x2) - sim(b, x2), atol=1e-6)
    close(a2, torch.zeros_like(a2))
    close(a1, _branch_oracle(LayerIntegratedGradients, sim, layer, x1, x2, baselines=b,
                             n_steps=200, method="gausslegendre"))


@case("LayerDeepLift", "layer", "`(x1, additional_forward_args=(x2,))`, then `split_branches`",
      "summation to delta of the first half: `s(x1, x2) - s(b, x2)`; the second half is zero; "
      "the first half equals the one-branch model's")
def _layer_deeplift() -> None:
    from captum_similarity import split_branches

    sim = siamese()
    x1, x2 = data()[0], data(1)[0]
    layer = sim.embedder.relu1
    b = torch.full_like(x1, 0.25)
    a1, a2 = split_branches(
        LayerDeepLift(sim, layer).attribute(x1, baselines=b, additional_forward_args=(x2,))
    )
    close(total(a1), sim(x1, x2) - sim(b, x2))
    close(a2, torch.zeros_like(a2))
    close(a1, _branch_oracle(LayerDeepLift, sim, layer, x1, x2, baselines=b))


@case("LayerDeepLiftShap", "layer",
      "`BranchLayerAttribution(LayerDeepLiftShap, sim, layer).attribute((x1, x2), baselines=...)`",
      "per-branch equality with the one-branch model" + _REFUSED)
def _layer_deeplift_shap() -> None:
    bases = torch.stack([torch.full((3, SIZE, SIZE), v, dtype=DT) for v in (0.0, 0.5)])
    _branchwise(LayerDeepLiftShap, False, baselines=bases)


@case("LayerGradientShap", "layer",
      "`BranchLayerAttribution(LayerGradientShap, sim, layer).attribute((x1, x2), baselines=...)`",
      "per-branch equality with the one-branch model (same random draws)" + _REFUSED)
def _layer_gradient_shap() -> None:
    base = torch.zeros(1, 3, SIZE, SIZE, dtype=DT)
    _branchwise(LayerGradientShap, False, seeded=True, baselines=base, n_samples=3)


@case("InternalInfluence", "layer", _BRANCH_CALL.format("InternalInfluence"),
      "where `s` is linear in the layer (the last ReLU, dot product): the gradient of `s` "
      "with respect to the layer" + _REFUSED)
def _internal_influence() -> None:
    from captum_similarity import BranchLayerAttribution

    sim, x, ref, _ = branch()
    layer = sim.embedder.relu2
    a1, _ = BranchLayerAttribution(InternalInfluence, sim, layer).attribute((x, ref), n_steps=8)
    acts = []
    f_ref = sim.embed(ref).detach()
    handle = layer.register_forward_hook(lambda m, i, o: acts.append(o))
    score = sim(x, f_ref)
    handle.remove()
    (grad,) = torch.autograd.grad(score.sum(), acts[0])
    close(a1, grad)
    refused(InternalInfluence, layer)


def _layer_channel_effect(cls, change: Callable[[Tensor], Tensor]) -> None:
    """``BranchLayerAttribution(cls)`` of channel 2 of the last ReLU equals the
    score drop when ``change`` is applied to that channel; ``cls`` called with
    an image reference raises."""
    from captum_similarity import BranchLayerAttribution

    sim, x, ref, _ = branch()
    layer = sim.embedder.relu2
    mask = torch.arange(6).view(1, 6, 1, 1)
    a1, _ = BranchLayerAttribution(cls, sim, layer).attribute((x, ref), layer_mask=mask)
    f_ref = sim.embed(ref).detach()

    def hook(module, inputs, output):
        output = output.clone()
        output[:, 2] = change(output[:, 2])
        return output

    handle = layer.register_forward_hook(hook)
    changed = sim(x, f_ref)
    handle.remove()
    close(a1[:, 2, 0, 0], sim(x, f_ref) - changed)
    refused(cls, layer, layer_mask=mask)


@case("LayerFeatureAblation", "layer", _BRANCH_CALL.format("LayerFeatureAblation"),
      "equals the score drop with the layer's channel zeroed" + _REFUSED)
def _layer_feature_ablation() -> None:
    _layer_channel_effect(LayerFeatureAblation, torch.zeros_like)


@case("LayerFeaturePermutation", "layer", _BRANCH_CALL.format("LayerFeaturePermutation"),
      "equals the score drop with the layer's channel swapped between the two queries" + _REFUSED)
def _layer_feature_permutation() -> None:
    _layer_channel_effect(LayerFeaturePermutation, lambda channel: channel.flip(0))


@case("LayerLRP", "layer", _BRANCH_CALL.format("LayerLRP"),
      "conservation at the layer: each image's layer relevance sums to `s` (bias-free, LRP-0)"
      + _REFUSED)
def _layer_lrp() -> None:
    from captum_similarity import BranchLayerAttribution

    sim = siamese("tiny_nobias")
    x1, x2 = data()[0], data(1)[0]
    layer = sim.embedder.conv2
    r1, r2 = BranchLayerAttribution(LayerLRP, sim, layer).attribute((x1, x2))
    close(total(r1), sim(x1, x2), atol=1e-8, rtol=1e-6)
    close(total(r2), sim(x1, x2), atol=1e-8, rtol=1e-6)
    refused(LayerLRP, sim.embedder.conv2)


# neuron methods ----------------------------------------------------------------

NEURON = (3, 1, 2)  # channel, row, column of conv2's output (4x4)


def _neuron_value(sim, x: Tensor) -> Tensor:
    m = sim.embedder
    return m.relu2(m.conv2(m.relu1(m.conv1(x))))[(slice(None),) + NEURON]


@case("NeuronGradient", "neuron", "`(x, NEURON, additional_forward_args=(ref,))`",
      "equals `torch.autograd.grad` of the neuron of the query's branch")
def _neuron_gradient() -> None:
    sim, x, ref, _ = branch()
    a = NeuronGradient(sim, sim.embedder.relu2).attribute(x, NEURON, additional_forward_args=(ref,))
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(_neuron_value(sim, xg).sum(), xg)
    close(a, grad)


@case("NeuronIntegratedGradients", "neuron", "`(x, NEURON, additional_forward_args=(ref,))`",
      "completeness: `sum(a) = neuron(x) - neuron(0)`")
def _neuron_ig() -> None:
    sim, x, ref, _ = branch()
    a = NeuronIntegratedGradients(sim, sim.embedder.relu2).attribute(
        x, NEURON, additional_forward_args=(ref,), n_steps=200, method="gausslegendre"
    )
    close(total(a), _neuron_value(sim, x) - _neuron_value(sim, torch.zeros_like(x)), atol=1e-6)


@case("NeuronConductance", "neuron", "`(x, NEURON, additional_forward_args=(sim.embed(ref),))`",
      "equals the one-branch model's; with an image reference a `ValueError` says to pass the "
      "embedding")
def _neuron_conductance() -> None:
    sim, x, ref, one = branch()
    layer = sim.embedder.relu2
    a = NeuronConductance(sim, layer).attribute(
        x, NEURON, additional_forward_args=(sim.embed(ref).detach(),), n_steps=16
    )
    close(a, NeuronConductance(one, layer).attribute(x, NEURON, n_steps=16))
    refused(NeuronConductance, layer, neuron_selector=NEURON)


@case("NeuronDeepLift", "neuron", "`(x, NEURON, baselines=b, additional_forward_args=(ref,))`",
      "summation to delta: `sum(a) = neuron(x) - neuron(b)`")
def _neuron_deeplift() -> None:
    sim, x, ref, _ = branch()
    b = torch.full_like(x, 0.25)
    a = NeuronDeepLift(sim, sim.embedder.relu2).attribute(
        x, NEURON, baselines=b, additional_forward_args=(ref,)
    )
    close(total(a), _neuron_value(sim, x) - _neuron_value(sim, b))


@case("NeuronDeepLiftShap", "neuron", "`(x, NEURON, baselines=B, additional_forward_args=(ref,))`",
      "summation to delta: `sum(a) = neuron(x) - mean_b neuron(b)`")
def _neuron_deeplift_shap() -> None:
    sim, x, ref, _ = branch()
    bases = torch.stack([torch.full_like(x[0], v) for v in (0.1, 0.6)])
    a = NeuronDeepLiftShap(sim, sim.embedder.relu2).attribute(
        x, NEURON, baselines=bases, additional_forward_args=(ref,)
    )
    expected = _neuron_value(sim, x) - torch.stack(
        [_neuron_value(sim, b[None].expand_as(x)) for b in bases]
    ).mean(0)
    close(total(a), expected)


@case("NeuronGradientShap", "neuron", "`(x, NEURON, baselines=b, additional_forward_args=(ref,))`",
      "equals the one-branch model's (same random draws)")
def _neuron_gradient_shap() -> None:
    sim, x, ref, one = branch()
    layer = sim.embedder.relu2
    base = torch.zeros(1, 3, SIZE, SIZE, dtype=DT)
    results = []
    for model, extra in ((sim, {"additional_forward_args": (ref,)}), (one, {})):
        np.random.seed(0)
        torch.manual_seed(0)
        results.append(
            NeuronGradientShap(model, layer).attribute(x, NEURON, baselines=base, n_samples=3, **extra)
        )
    close(*results)


@case("NeuronGuidedBackprop", "neuron", "`(x, NEURON, additional_forward_args=(ref,))`",
      "equals the one-branch model's")
def _neuron_guided_backprop() -> None:
    sim, x, ref, one = branch()
    layer = sim.embedder.relu2
    close(NeuronGuidedBackprop(sim, layer).attribute(x, NEURON, additional_forward_args=(ref,)),
          NeuronGuidedBackprop(one, layer).attribute(x, NEURON))


@case("NeuronDeconvolution", "neuron", "`(x, NEURON, additional_forward_args=(ref,))`",
      "equals the one-branch model's")
def _neuron_deconvolution() -> None:
    sim, x, ref, one = branch()
    layer = sim.embedder.relu2
    close(NeuronDeconvolution(sim, layer).attribute(x, NEURON, additional_forward_args=(ref,)),
          NeuronDeconvolution(one, layer).attribute(x, NEURON))


@case("NeuronFeatureAblation", "neuron",
      "`(x, NEURON, additional_forward_args=(sim.embed(ref),), feature_mask=m)`",
      "equals the neuron's drop with the feature zeroed; with an image reference a `ValueError` "
      "says to pass the embedding")
def _neuron_feature_ablation() -> None:
    sim, x, ref, _ = branch()
    mask = quarter_mask()
    layer = sim.embedder.relu2
    a = NeuronFeatureAblation(sim, layer).attribute(
        x, NEURON, additional_forward_args=(sim.embed(ref).detach(),), feature_mask=mask
    )
    refused(NeuronFeatureAblation, layer, neuron_selector=NEURON, feature_mask=mask)
    for k in range(4):
        drop = _neuron_value(sim, x) - _neuron_value(sim, ablated(x, mask, k))
        close(a[:, 0][(mask[0, 0] == k).expand(N, -1, -1)].view(N, -1)[:, 0], drop)


# wrappers ------------------------------------------------------------------------


@case("NoiseTunnel", "wrapper",
      "`NoiseTunnel(Saliency(sim)).attribute(x, nt_type=..., additional_forward_args=(ref,))`; "
      "the library's methods too (see below)",
      "smoothgrad, smoothgrad_sq and vargrad equal the mean, mean square and variance of the "
      "gradients at the same noisy inputs; a layer method with an image reference raises")
def _noise_tunnel() -> None:
    sim, x, ref, _ = branch()
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        torch.manual_seed(3)
        a = NoiseTunnel(Saliency(sim)).attribute(
            x, nt_type=nt_type, nt_samples=3, stdevs=0.1, additional_forward_args=(ref,), abs=False
        )
        torch.manual_seed(3)
        noisy = noisy_inputs(x, 3, 0.1).requires_grad_()
        (grad,) = torch.autograd.grad(sim(noisy, ref).sum(), noisy)
        close(a, smooth(grad.detach(), x.shape[0], nt_type))
    with pytest.raises(ValueError, match="NoiseTunnel needs one attribution row per input"):
        NoiseTunnel(LayerGradCam(sim, sim.embedder.relu2)).attribute(
            x, nt_samples=2, additional_forward_args=(ref,)
        )


def noisy_inputs(x: Tensor, samples: int, stdev: float) -> Tensor:
    """The noisy inputs NoiseTunnel draws after ``torch.manual_seed`` (its draw,
    reproduced: one normal sample per element of ``x`` repeated ``samples`` times)."""
    shape = (x.shape[0] * samples,) + tuple(x.shape[1:])
    noise = torch.normal(0, torch.tensor(stdev, device=x.device).repeat(shape))
    return x.repeat_interleave(samples, dim=0) + noise


def smooth(per_sample: Tensor, n: int, nt_type: str) -> Tensor:
    """What NoiseTunnel returns from the attributions of its noisy inputs."""
    a = per_sample.view(n, -1, *per_sample.shape[1:])
    if nt_type == "smoothgrad":
        return a.mean(1)
    if nt_type == "smoothgrad_sq":
        return a.pow(2).mean(1)
    return a.pow(2).mean(1) - a.mean(1).pow(2)


for _name in ("Attribution", "GradientAttribution", "PerturbationAttribution",
              "LayerAttribution", "NeuronAttribution"):
    not_a_method(_name, "base class", "the base class of the methods above (no `attribute`)")
for _name in ("LLMAttribution", "LLMGradientAttribution", "RemoteLLMAttribution"):
    not_a_method(_name, "other domain", "explains a language model's generated text: no image pairs")


# -- the docs table ----------------------------------------------------------------

FAMILIES = ("gradient", "perturbation", "layer", "neuron", "wrapper", "base class", "other domain")


def captum_classes() -> List[str]:
    """Every attribution class ``captum.attr`` exports."""
    return sorted(
        name for name in captum_attr.__all__
        if inspect.isclass(getattr(captum_attr, name))
        and issubclass(getattr(captum_attr, name), captum_attr.Attribution)
    )


def table() -> str:
    """The markdown table of the docs page, from :data:`CASES`."""
    rows = [
        "| Captum class | kind | through `SiameseSimilarity` | tested property |",
        "| --- | --- | --- | --- |",
    ]
    for family in FAMILIES:
        for c in sorted((c for c in CASES.values() if c.family == family), key=lambda c: c.name):
            status = "works" if c.works else ("n/a" if c.run is None else "raises")
            call = c.call if c.call == "-" else f"{status}: {c.call}"
            rows.append(f"| `{c.name}` | {c.family} | {call} | {c.checks} |")
    return "\n".join(rows)


def page_with_table(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the page with the cases")
    args = parser.parse_args(argv)
    text = PAGE.read_text()
    if args.check:
        ok = page_with_table(text) == text
        print("docs/captum-methods.md is", "up to date" if ok else "out of date")
        return 0 if ok else 1
    failed = []
    for c in CASES.values():
        if c.run is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                c.run()
        except Exception as error:  # noqa: BLE001 - reported, then the table is not written
            failed.append(f"{c.name}: {type(error).__name__}: {error}")
    if failed:
        print("\n".join(failed))
        return 1
    PAGE.write_text(page_with_table(text))
    print(f"{len(CASES)} Captum classes; the table of docs/captum-methods.md is written")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
