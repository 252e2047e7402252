"""The library's methods inside Captum's NoiseTunnel, infidelity and
sensitivity_max: each runs and equals the result computed by hand from the
same noisy inputs or perturbations; and each carries what Captum's wrappers
rely on (``__wrapped__``, ``has_convergence_delta``, ``multiplies_by_inputs``)."""

import inspect

import pytest
import torch
from captum.attr import LayerAttribution, NoiseTunnel
from captum.metrics import infidelity, sensitivity_max

from captum_matrix import noisy_inputs, smooth
from captum_similarity import (
    EmbeddingGradCAM,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    SimilarityDecomposition,
    SimilarityRISE,
)
from conftest import make_reference_model

DT = torch.float64
N, SAMPLES, STDEV = 2, 3, 0.05


def _sim():
    return SiameseSimilarity(make_reference_model("cnn"), "cosine")


#: Every attribution class of the library: a factory and the keyword
#: arguments its ``attribute`` takes here (few masks, few matches: cheap).
METHODS = {
    "EmbeddingGradCAM": (lambda sim: EmbeddingGradCAM(sim, "features.4"), {}),
    "LRPRelevancePairing": (lambda sim: LRPRelevancePairing(sim), {}),
    "PairwiseIntermediateMatching": (
        lambda sim: PairwiseIntermediateMatching(sim, "features.4"), {"k": 2}
    ),
    "SimilarityRISE": (lambda sim: SimilarityRISE(sim), {"n_masks": 16, "seed": 0}),
    "SimilarityDecomposition": (lambda sim: SimilarityDecomposition(sim, "features.7"), {}),
}


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N, 3, 16, 16, generator=g, dtype=DT),
            torch.rand(1, 3, 16, 16, generator=g, dtype=DT))


def test_every_public_entry_point_of_every_method_is_guarded():
    """Each function of the library's attribution classes that runs the model
    (``attribute*``, ``explain``, ``point_matches``) goes through
    ``attribution_entry``: ``__wrapped__`` is the guarded function."""
    import captum_similarity
    from captum.attr import Attribution

    classes = [c for c in vars(captum_similarity).values()
               if inspect.isclass(c) and issubclass(c, Attribution)]
    assert {c.__name__ for c in classes} == set(METHODS)
    for cls in classes:
        for name, fn in vars(cls).items():
            if name.startswith("attribute") or name in ("explain", "point_matches"):
                assert getattr(fn.__wrapped__, "attribution_entry", False), f"{cls.__name__}.{name}"


@pytest.mark.parametrize("name", METHODS)
def test_attribute_carries_what_captum_wrappers_rely_on(name):
    make, _ = METHODS[name]
    method = make(_sim())
    wrapped = method.attribute.__wrapped__  # what NoiseTunnel and GuidedGradCam call
    assert "additional_forward_args" in inspect.signature(wrapped).parameters
    assert isinstance(method.has_convergence_delta(), bool)
    assert isinstance(method.multiplies_by_inputs, bool)
    if method.has_convergence_delta():
        assert callable(method.compute_convergence_delta)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_equals_the_statistics_of_the_same_noisy_inputs(name, nt_type):
    make, kwargs = METHODS[name]
    method = make(_sim())
    x, ref = _data()
    torch.manual_seed(11)
    smoothed = NoiseTunnel(method).attribute(
        x, nt_type=nt_type, nt_samples=SAMPLES, stdevs=STDEV, additional_forward_args=(ref,),
        **kwargs,
    )
    torch.manual_seed(11)
    noisy = noisy_inputs(x, SAMPLES, STDEV)
    per_sample = method.attribute(noisy, additional_forward_args=(ref,), **kwargs)
    assert smoothed.shape == per_sample.shape[:0] + (N,) + per_sample.shape[1:]
    torch.testing.assert_close(smoothed, smooth(per_sample, N, nt_type))


def test_noise_tunnel_with_one_reference_per_query():
    """NoiseTunnel repeats a batch-N reference with repeat_interleave: each noisy
    query keeps its own reference."""
    method = EmbeddingGradCAM(_sim(), "features.4")
    x, _ = _data()
    refs, _ = _data(1)
    torch.manual_seed(5)
    smoothed = NoiseTunnel(method).attribute(
        x, nt_samples=SAMPLES, stdevs=STDEV, additional_forward_args=(refs,)
    )
    torch.manual_seed(5)
    noisy = noisy_inputs(x, SAMPLES, STDEV)
    per_sample = method.attribute(noisy, additional_forward_args=(refs.repeat_interleave(SAMPLES, 0),))
    torch.testing.assert_close(smoothed, smooth(per_sample, N, "smoothgrad"))


def test_noise_tunnel_passes_the_convergence_delta_through():
    sim = SiameseSimilarity(make_reference_model("cnn_nobias"), "dot")
    lrp = LRPRelevancePairing(sim, composite="lrp0")
    x, ref = _data()
    torch.manual_seed(2)
    _, delta = NoiseTunnel(lrp).attribute(
        x, nt_samples=SAMPLES, stdevs=STDEV, additional_forward_args=(ref,),
        return_convergence_delta=True,
    )
    assert delta.shape == (N * SAMPLES,)
    assert delta.abs().max() < 1e-9  # LRP-0 conserves on a bias-free ReLU network


class _Recorder:
    """A seeded perturbation function that keeps what it returned."""

    def __init__(self, returns_perturbation: bool) -> None:
        self.generator = torch.Generator().manual_seed(0)
        self.returns_perturbation = returns_perturbation
        self.calls = []

    def __call__(self, inputs, *args):
        noise = (torch.rand(inputs.shape, generator=self.generator, dtype=inputs.dtype) - 0.5) * 0.04
        self.calls.append((noise, inputs - noise))
        return (noise, inputs - noise) if self.returns_perturbation else inputs - noise


@pytest.mark.parametrize("name", METHODS)
def test_sensitivity_max_equals_the_maximum_over_the_same_perturbations(name):
    make, kwargs = METHODS[name]
    method = make(_sim())
    x, ref = _data()
    perturb = _Recorder(returns_perturbation=False)
    sens = sensitivity_max(
        method.attribute, x, perturb_func=perturb, n_perturb_samples=SAMPLES,
        additional_forward_args=(ref,), **kwargs,
    )
    (_, perturbed), = perturb.calls
    base = method.attribute(x, additional_forward_args=(ref,), **kwargs)
    moved = method.attribute(perturbed, additional_forward_args=(ref,), **kwargs)
    change = (moved - base.repeat_interleave(SAMPLES, 0)).flatten(1).norm(dim=1)
    expected = (change.view(N, SAMPLES) / base.flatten(1).norm(dim=1)[:, None]).amax(1)
    assert sens.shape == (N,)
    torch.testing.assert_close(sens, expected.to(sens.dtype))


def _input_shaped(maps, x):
    """A layer map ``(N, 1 or C', h, w)`` or a matrix ``(N, n1, n2)`` as an input
    attribution: summed over channels (or the second image's cells),
    upsampled, spread evenly over the input channels."""
    if maps.dim() == 3:  # the decomposition's matrix: the first image's marginal
        side = int(maps.shape[1] ** 0.5)
        maps = maps.sum(2).view(-1, 1, side, side)
    if maps.shape[-2:] != x.shape[-2:]:
        maps = LayerAttribution.interpolate(maps.sum(1, keepdim=True), tuple(x.shape[-2:]), "bilinear")
    return maps.sum(1, keepdim=True).expand_as(x) / x.shape[1]


@pytest.mark.parametrize("name", METHODS)
def test_infidelity_of_each_method_equals_its_definition_on_the_same_perturbations(name):
    make, kwargs = METHODS[name]
    sim = _sim()
    x, ref = _data()
    attributions = _input_shaped(make(sim).attribute(x, additional_forward_args=(ref,), **kwargs), x)
    perturb = _Recorder(returns_perturbation=True)
    value = infidelity(
        sim, perturb, x, attributions, additional_forward_args=(ref,), n_perturb_samples=SAMPLES
    )
    (noise, perturbed), = perturb.calls
    with torch.no_grad():
        drop = sim(x, ref).repeat_interleave(SAMPLES) - sim(perturbed, ref)
    dot = (noise * attributions.repeat_interleave(SAMPLES, 0)).flatten(1).sum(1)
    expected = (dot - drop).pow(2).view(N, SAMPLES).mean(1)
    torch.testing.assert_close(value, expected.to(value.dtype))


def test_the_compositions_of_issue_22():
    """As a Captum user composes them: a small CNN, 24x24, batch-3 queries
    against a batch-1 reference."""
    from captum.attr import GuidedGradCam, KernelShap, Lime

    from captum_similarity.models import SimpleCNN

    torch.manual_seed(0)
    model = SimpleCNN().eval()
    sim = SiameseSimilarity(model, "cosine")
    g = torch.Generator().manual_seed(0)
    x, ref = torch.rand(3, 3, 24, 24, generator=g), torch.rand(1, 3, 24, 24, generator=g)
    layer = model.features[3]
    for method, kwargs in (
        (EmbeddingGradCAM(sim, layer), {}),
        (LRPRelevancePairing(sim), {}),
        (PairwiseIntermediateMatching(sim, layer), {"k": 2}),
        (SimilarityRISE(sim), {"n_masks": 8, "seed": 0}),
    ):
        smoothed = NoiseTunnel(method).attribute(
            x, nt_type="smoothgrad", nt_samples=2, additional_forward_args=(ref,), **kwargs
        )
        assert smoothed.shape[0] == 3 and torch.isfinite(smoothed).all()
    for method in (LRPRelevancePairing(sim), EmbeddingGradCAM(sim, layer)):
        sens = sensitivity_max(method.attribute, x, additional_forward_args=(ref,), n_perturb_samples=2)
        assert sens.shape == (3,) and torch.isfinite(sens).all()
    with pytest.raises(ValueError, match="pass the reference as a precomputed embedding"):
        GuidedGradCam(sim, layer).attribute(x, additional_forward_args=(ref,))
    pytest.importorskip("sklearn", reason="Lime and KernelShap need captum-similarity[lime]")
    for cls in (Lime, KernelShap):
        assert cls(sim).attribute(x, additional_forward_args=(ref,), n_samples=8).shape == x.shape


def test_lime_needs_the_lime_extra():
    """The extra that installs scikit-learn for Lime and KernelShap exists, and
    the docs name it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'lime = ["scikit-learn' in pyproject
    assert 'pip install "captum-similarity[lime]"' in (root / "docs" / "captum-methods.md").read_text()
