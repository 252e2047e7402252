import pytest
import torch
from captum.attr import LayerGradCam, LayerIntegratedGradients

from captum_similarity import BranchLayerAttribution, SiameseSimilarity, split_branches
from conftest import assert_unchanged, make_reference_model, snapshot


def test_split_branches_tensor_and_tuple():
    a = torch.arange(8.0).reshape(4, 2)
    first, second = split_branches(a)
    torch.testing.assert_close(first, a[[0, 2]])
    torch.testing.assert_close(second, a[[1, 3]])
    (f1, f2), (s1, s2) = split_branches((a, a * 2))
    torch.testing.assert_close(f2, 2 * first)
    torch.testing.assert_close(s2, 2 * second)


def test_split_branches_rejects_odd_rows():
    with pytest.raises(ValueError, match="even number of rows"):
        split_branches(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="Tensor or a tuple"):
        split_branches([torch.zeros(2)])


def test_branch_layer_attribution_equals_fixed_branch_oracle(images):
    model = make_reference_model("resnet")
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = images(2), images(2, seed=1)
    before = snapshot(model)
    g1, g2 = BranchLayerAttribution(LayerGradCam, sim, model.layer3).attribute((x1, x2))
    f1, f2 = model(x1).detach(), model(x2).detach()
    oracle1 = LayerGradCam(lambda x: sim(x, f2), model.layer3).attribute(x1)
    oracle2 = LayerGradCam(lambda x: sim(f1, x), model.layer3).attribute(x2)
    torch.testing.assert_close(g1, oracle1)
    torch.testing.assert_close(g2, oracle2)
    assert_unchanged(model, before)


def test_branch_layer_integrated_gradients_with_per_branch_baselines(images):
    model = make_reference_model("cnn")
    sim = SiameseSimilarity(model, "dot")
    x1, x2 = images(2), images(1, seed=1)
    b1, b2 = torch.zeros_like(x1), torch.full_like(x2, 0.5)
    lig = BranchLayerAttribution(LayerIntegratedGradients, sim, model.features[2])
    (a1, d1), (a2, d2) = lig.attribute(
        (x1, x2), baselines=(b1, b2), n_steps=100, method="gausslegendre", return_convergence_delta=True
    )
    assert a1.shape[0] == 2 and a2.shape[0] == 2  # the batch-1 side is broadcast
    f1, f2 = model(x1).detach(), model(x2).detach()
    torch.testing.assert_close(a1.sum((1, 2, 3)), sim(x1, f2) - sim(b1, f2), atol=1e-4, rtol=0)
    torch.testing.assert_close(a2.sum((1, 2, 3)), sim(f1, x2) - sim(f1, b2), atol=1e-4, rtol=0)


def test_branch_layer_attribution_errors(images):
    model = make_reference_model("cnn")
    sim = SiameseSimilarity(model)
    with pytest.raises(TypeError, match="SiameseSimilarity"):
        BranchLayerAttribution(LayerGradCam, model, model.features[2])
    with pytest.raises(TypeError, match="nn.Module"):
        BranchLayerAttribution(LayerGradCam, sim, "features.2")
    bla = BranchLayerAttribution(LayerGradCam, sim, model.features[2])
    with pytest.raises(TypeError, match="tuple"):
        bla.attribute(images(1))
    with pytest.raises(TypeError, match="per branch"):
        bla.attribute((images(1), images(1)), additional_forward_args=(1,))
