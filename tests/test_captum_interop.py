"""Captum's own methods through SiameseSimilarity, checked against oracles."""

import numpy as np
import pytest
import torch
from captum.attr import (
    LRP,
    DeepLift,
    FeatureAblation,
    GradientShap,
    InputXGradient,
    IntegratedGradients,
    LayerActivation,
    LayerConductance,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from captum_similarity import BranchLayerAttribution, SiameseSimilarity, split_branches
from conftest import assert_unchanged, make_reference_model, snapshot

N = 3


@pytest.fixture
def model():
    return make_reference_model("cnn")


@pytest.fixture
def bias_free():
    """Positively homogeneous: LRP-0 equals gradient x input. (Cosine is then
    scale-invariant along IG's straight path, so a zero baseline is degenerate.)"""
    return make_reference_model("cnn_nobias")


@pytest.fixture
def pair(images):
    return images(N), images(1, seed=1)


def _repeat(ref, n=N):
    return ref.expand(n, *ref.shape[1:]).contiguous()


def test_integrated_gradients_completeness_with_batch_one_reference(model, pair):
    sim = SiameseSimilarity(model, "cosine")
    x, ref = pair
    ig = IntegratedGradients(sim)
    attr, delta = ig.attribute(
        x, additional_forward_args=(ref,), n_steps=64, method="gausslegendre",
        return_convergence_delta=True,
    )
    assert attr.shape == x.shape
    # ReLU kinks make the path integral converge slowly; 1e-4 against scores of ~1
    assert delta.abs().max() < 1e-4
    torch.testing.assert_close(
        attr.sum((1, 2, 3)), sim(x, ref) - sim(torch.zeros_like(x), ref), atol=1e-4, rtol=0
    )
    repeated = ig.attribute(x, additional_forward_args=(_repeat(ref),), n_steps=64, method="gausslegendre")
    torch.testing.assert_close(attr, repeated)


def test_integrated_gradients_on_both_images(model, images):
    sim = SiameseSimilarity(model, "dot")
    x1, x2 = images(N), images(N, seed=1)
    b1, b2 = torch.zeros_like(x1), torch.full_like(x2, 0.5)
    (a1, a2), delta = IntegratedGradients(sim).attribute(
        (x1, x2), baselines=(b1, b2), n_steps=64, return_convergence_delta=True
    )
    assert a1.shape == x1.shape and a2.shape == x2.shape
    total = a1.sum((1, 2, 3)) + a2.sum((1, 2, 3))
    torch.testing.assert_close(total, sim(x1, x2) - sim(b1, b2), atol=1e-4, rtol=1e-3)
    assert delta.abs().max() < 1e-4


def test_saliency_and_input_x_gradient_equal_autograd(model, pair):
    sim = SiameseSimilarity(model, "cosine")
    x, ref = pair
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(sim(xg, ref).sum(), xg)
    torch.testing.assert_close(Saliency(sim).attribute(x, additional_forward_args=(ref,), abs=False), grad)
    torch.testing.assert_close(InputXGradient(sim).attribute(x, additional_forward_args=(ref,)), grad * x)


@pytest.mark.parametrize("expand", ["noise_tunnel", "gradient_shap"])
def test_repeat_interleave_expansion_matches_repeated_reference(model, pair, expand):
    sim = SiameseSimilarity(model, "cosine")
    x, ref = pair
    results = []
    for r in (ref, _repeat(ref)):
        torch.manual_seed(7)
        np.random.seed(7)  # GradientShap draws baselines and alphas with numpy
        if expand == "noise_tunnel":
            a = NoiseTunnel(Saliency(sim)).attribute(
                x, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, additional_forward_args=(r,)
            )
        else:
            a = GradientShap(sim).attribute(
                x, baselines=torch.zeros(2, *x.shape[1:], dtype=x.dtype), n_samples=3,
                additional_forward_args=(r,),
            )
        results.append(a)
    torch.testing.assert_close(results[0], results[1])


def test_occlusion_batched_perturbations_with_batch_one_reference(model, pair):
    sim = SiameseSimilarity(model, "cosine")
    x, ref = pair
    occ = Occlusion(sim)
    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=8)
    fast = occ.attribute(x, additional_forward_args=(ref,), perturbations_per_eval=5, **kwargs)
    slow = occ.attribute(x, additional_forward_args=(_repeat(ref),), perturbations_per_eval=1, **kwargs)
    torch.testing.assert_close(fast, slow)
    # oracle for the top-left window: score drop when it is zeroed
    occluded = x.clone()
    occluded[:, :, :8, :8] = 0
    drop = (sim(x, ref) - sim(occluded, ref)).to(fast.dtype)  # Captum returns float32 here
    torch.testing.assert_close(fast[:, 0, 0, 0], drop)


def test_feature_ablation_needs_offset_masks_for_separate_images(model, images):
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = images(1), images(1, seed=1)
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.long)
    mask[..., 16:, :] = 1  # two features per image: top and bottom halves
    fa = FeatureAblation(sim)
    a1, a2 = fa.attribute((x1, x2), feature_mask=(mask, mask + 2))
    bottom2 = x2.clone()
    bottom2[..., 16:, :] = 0
    torch.testing.assert_close(a2[0, 0, 20, 0], (sim(x1, x2) - sim(x1, bottom2))[0])
    # the pitfall: equal ids ablate both images jointly
    j1, j2 = fa.attribute((x1, x2), feature_mask=(mask, mask))
    bottom1 = x1.clone()
    bottom1[..., 16:, :] = 0
    torch.testing.assert_close(j2[0, 0, 20, 0], (sim(x1, x2) - sim(bottom1, bottom2))[0])
    assert not torch.allclose(j2, a2)


def _branch_fixed_gradcam(sim, layer, x, other):
    """Oracle: Grad-CAM of x -> s(x, f(other)) with the other embedding a constant."""
    fixed = sim.embed(other).detach()
    return LayerGradCam(lambda inp: sim(inp, fixed), layer).attribute(x)


def test_layer_gradcam_one_pass_equals_per_branch_oracle(images):
    model = make_reference_model("resnet")
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = images(N), images(N, seed=1)
    layer = model.layer2
    maps = LayerGradCam(sim, layer).attribute(x1, additional_forward_args=(x2,))
    assert maps.shape[0] == 2 * N
    m1, m2 = split_branches(maps)
    torch.testing.assert_close(m1, _branch_fixed_gradcam(sim, layer, x1, x2))
    torch.testing.assert_close(m2, _branch_fixed_gradcam(sim, layer, x2, x1))


def test_naive_two_call_wrapper_loses_the_first_branch(images):
    """The pitfall the interleaved call avoids: Captum keeps the last hook call."""
    model = make_reference_model("resnet")
    x1, x2 = images(N), images(N, seed=1)

    def naive(a, b):
        return torch.cosine_similarity(model(a), model(b))

    maps = LayerGradCam(naive, model.layer2).attribute(x1, additional_forward_args=(x2,))
    sim = SiameseSimilarity(model, "cosine")
    oracle_2 = _branch_fixed_gradcam(sim, model.layer2, x2, x1)
    oracle_1 = _branch_fixed_gradcam(sim, model.layer2, x1, x2)
    assert maps.shape[0] == N  # only one branch's map survives the hook
    torch.testing.assert_close(maps, oracle_2)  # ... the second image's, returned as if the first's
    assert not torch.allclose(maps, oracle_1)


def test_layer_activation_split_gives_each_image_activation(model, images):
    sim = SiameseSimilarity(model)
    x1, x2 = images(N), images(N, seed=1)
    layer = model.features[4]
    act1, act2 = split_branches(LayerActivation(sim, layer).attribute(x1, additional_forward_args=(x2,)))
    torch.testing.assert_close(act1, model.features[:5](x1))
    torch.testing.assert_close(act2, model.features[:5](x2))


def test_branch_layer_conductance_completeness(model, pair):
    sim = SiameseSimilarity(model, "dot")
    x, ref = pair
    lc = BranchLayerAttribution(LayerConductance, sim, model.features[4])
    c1, c2 = lc.attribute((x, ref), n_steps=200, method="gausslegendre")
    assert c1.shape[0] == N and c2.shape[0] == N
    fixed_ref, fixed_x = sim.embed(ref).detach(), sim.embed(x).detach()
    torch.testing.assert_close(
        c1.sum((1, 2, 3)), sim(x, fixed_ref) - sim(torch.zeros_like(x), fixed_ref), atol=2e-5, rtol=0
    )
    torch.testing.assert_close(
        c2.sum((1, 2, 3)), sim(fixed_x, ref) - sim(fixed_x, torch.zeros_like(ref)), atol=2e-5, rtol=0
    )


@pytest.mark.parametrize("as_embedding", [False, True])
def test_deeplift_summation_to_delta(pair, as_embedding):
    """With a dot head against a fixed reference, DeepLift's rescale rule sums
    exactly to s(x) - s(baseline) on a ReLU network of convs, BatchNorm and
    residual additions. (Captum's max-pool rule is not summation-exact, so the
    ResNet reference model, which downsamples with strided convs, is used.)"""
    sim = SiameseSimilarity(make_reference_model("resnet"), "dot")
    x, ref = pair
    if as_embedding:
        ref = sim.embed(ref).detach()
    baseline = torch.full_like(x, 0.25)
    attr, delta = DeepLift(sim).attribute(
        x, baselines=baseline, additional_forward_args=(ref,), return_convergence_delta=True
    )
    assert delta.abs().max() < 1e-10
    torch.testing.assert_close(attr.sum((1, 2, 3)), sim(x, ref) - sim(baseline, ref))


def test_deeplift_with_image_reference_equals_fixed_embedding(model, pair):
    """Interleaving keeps DeepLift's inputs/baselines halves aligned."""
    sim = SiameseSimilarity(model, "dot")
    x, ref = pair
    with_image = DeepLift(sim).attribute(x, baselines=x * 0.5, additional_forward_args=(ref,))
    with_embedding = DeepLift(sim).attribute(
        x, baselines=x * 0.5, additional_forward_args=(sim.embed(ref).detach(),)
    )
    repeated = DeepLift(sim).attribute(x, baselines=x * 0.5, additional_forward_args=(_repeat(ref),))
    torch.testing.assert_close(with_image, with_embedding)
    torch.testing.assert_close(with_image, repeated)


@pytest.mark.parametrize("name", ["dot", "cosine"])
def test_captum_lrp_conserves_through_the_similarity_head(bias_free, images, name):
    model = bias_free
    sim = SiameseSimilarity(model, name)
    x1, x2 = images(N), images(N, seed=1)
    before = snapshot(model)
    for _ in range(2):  # Captum deletes rules after a call; the head's comes back
        r1, r2 = LRP(sim).attribute((x1, x2))
        torch.testing.assert_close(r1.sum((1, 2, 3)), sim(x1, x2), atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(r2.sum((1, 2, 3)), sim(x1, x2), atol=1e-7, rtol=1e-6)
    if name == "dot":  # LRP-0 on a bias-free ReLU network is gradient x input
        g1, g2 = InputXGradient(sim).attribute((x1, x2))
        torch.testing.assert_close(r1, g1, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(r2, g2, atol=1e-7, rtol=1e-5)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", ["dot", "cosine"])
def test_captum_lrp_with_an_embedding_reference_equals_the_image_reference(bias_free, images, name):
    sim = SiameseSimilarity(bias_free, name)
    x, ref = images(N), images(N, seed=1)
    with_image = LRP(sim).attribute(x, additional_forward_args=(ref,))
    with_embedding = LRP(sim).attribute(x, additional_forward_args=(sim.embed(ref).detach(),))
    torch.testing.assert_close(with_embedding, with_image)
    torch.testing.assert_close(with_embedding.sum((1, 2, 3)), sim(x, ref), atol=1e-7, rtol=1e-6)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 32 * 32, 8, bias=False).double()

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_infidelity_and_sensitivity_through_the_wrapper(pair):
    """For a linear embedder and a dot head the score is linear in the query:
    gradients are exact (infidelity 0) and constant (max-sensitivity 0)."""
    sim = SiameseSimilarity(_Linear(), "dot")
    x, ref = pair
    saliency = Saliency(sim)
    attr = saliency.attribute(x, additional_forward_args=(ref,), abs=False)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.05
        return noise, inputs - noise

    torch.manual_seed(0)
    infid = infidelity(sim, perturb, x, attr, additional_forward_args=(ref,), n_perturb_samples=4)
    assert infid.shape == (N,)
    assert infid.abs().max() < 1e-20

    def explain(inputs, additional_forward_args=None):
        return saliency.attribute(inputs, additional_forward_args=additional_forward_args, abs=False)

    sens = sensitivity_max(explain, x, additional_forward_args=(ref,), n_perturb_samples=3)
    assert sens.shape == (N,)
    assert sens.abs().max() < 1e-12
    # a non-linear model has non-zero sensitivity: the check can fail
    relu_sim = SiameseSimilarity(make_reference_model("cnn_nobias"), "cosine")
    relu_sal = Saliency(relu_sim)
    sens_relu = sensitivity_max(
        lambda inputs, additional_forward_args=None: relu_sal.attribute(
            inputs, additional_forward_args=additional_forward_args, abs=False
        ),
        x, additional_forward_args=(ref,), n_perturb_samples=3,
    )
    assert sens_relu.min() > 1e-6
