"""SimilarityAttentionLoss: finite-difference gradients, masks, training use."""

import pytest
import torch
import torch.nn.functional as F

from captum_similarity import EmbeddingGradCAM
from captum_similarity.models import ResNetEmbedder, SimpleCNN
from captum_similarity.training import (
    SimilarityAttentionLoss,
    batch_hard_triplet_loss,
    batch_hard_triplets,
    fit_metric,
)
from conftest import assert_unchanged, snapshot


def _tiny():
    torch.manual_seed(0)
    model = SimpleCNN(in_channels=1, widths=(4, 6), embedding_dim=5).double()
    g = torch.Generator().manual_seed(1)
    triplet = [torch.rand(2, 1, 10, 10, generator=g, dtype=torch.float64) for _ in range(3)]
    return model, triplet


def test_gradients_match_finite_differences():
    model, (xa, xp, xn) = _tiny()
    constraint = SimilarityAttentionLoss("features.4", scale=4.0)
    params = dict(model.named_parameters())
    loss = constraint(model, xa, xp, xn)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    entries = [(n, i) for n, g in grads.items() for i in range(g.numel()) if abs(g.view(-1)[i]) > 1e-4]
    picks = [entries[j] for j in torch.randperm(len(entries), generator=torch.Generator().manual_seed(0))[:8]]
    eps = 1e-6
    for name, i in picks:
        p = params[name].data.view(-1)
        old = p[i].item()
        p[i] = old + eps
        up = constraint(model, xa, xp, xn).item()
        p[i] = old - eps
        down = constraint(model, xa, xp, xn).item()
        p[i] = old
        assert (up - down) / (2 * eps) == pytest.approx(grads[name].view(-1)[i].item(), rel=1e-5, abs=1e-9)

    # the maps are differentiated through: holding them fixed changes the gradient
    maps = EmbeddingGradCAM(model, "features.4").attribute(
        (xa, xp, xn), weighting="triplet", relu_attributions=True)
    masked = [x * (1 - constraint.soft_mask(m, x.shape[-2:])) for x, m in zip((xa, xp, xn), maps)]
    fa, fp, fn = (F.normalize(model(x), dim=1) for x in masked)
    fixed = ((fa - fp).norm(dim=1) - (fa - fn).norm(dim=1)).abs().mean()
    torch.testing.assert_close(fixed, loss)
    fixed_grads = torch.autograd.grad(fixed, list(params.values()))
    assert max((a - grads[n]).abs().max() for n, a in zip(params, fixed_grads)) > 1e-4


def test_soft_mask():
    constraint = SimilarityAttentionLoss("features.4", scale=10.0, threshold=0.5)
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]], dtype=torch.float64)
    mask = constraint.soft_mask(maps, (2, 2))
    expected = torch.sigmoid(10.0 * (maps / 4.0 - 0.5))
    torch.testing.assert_close(mask, expected)
    assert constraint.soft_mask(maps, (8, 8)).shape == (1, 1, 8, 8)
    assert constraint.soft_mask(torch.zeros(1, 1, 2, 2), (4, 4)).max() < 0.01
    with pytest.raises(ValueError, match="scale must be positive"):
        SimilarityAttentionLoss("features.4", scale=0.0)


def test_leaves_batchnorm_statistics_and_model_state_alone():
    torch.manual_seed(0)
    model = ResNetEmbedder(in_channels=1, widths=(4, 8), embedding_dim=8).train()
    x = torch.rand(6, 1, 16, 16)
    before = snapshot(model)
    loss = SimilarityAttentionLoss(model.layer2)(model, x[:2], x[2:4], x[4:])
    assert loss.requires_grad and loss.item() >= 0
    assert_unchanged(model, before)
    assert model.stem[1].momentum == 0.1


def test_batch_hard_triplets_are_the_loss_triplets():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 9])
    a, p, n = batch_hard_triplets(z, labels)
    assert a.tolist() == list(range(11))  # label 9 has no positive
    u = F.normalize(z, dim=1)
    d = lambda i, j: (u[i] - u[j]).norm(dim=1)  # noqa: E731
    torch.testing.assert_close(F.relu(d(a, p) - d(a, n) + 0.2).mean(), batch_hard_triplet_loss(z, labels))
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all() and (a != p).all()


def test_fit_metric_adds_the_constraint():
    torch.manual_seed(0)
    model = ResNetEmbedder(in_channels=1, widths=(4, 8), embedding_dim=8)
    images, labels = torch.rand(16, 1, 16, 16), torch.arange(4).repeat_interleave(4)
    constraint = SimilarityAttentionLoss("layer2")
    seen = []

    def extra(net, batch, batch_labels, z):
        a, p, n = batch_hard_triplets(z, batch_labels)
        value = constraint(net, batch[a], batch[p], batch[n])
        seen.append(float(value.detach()))
        return 0.5 * value

    result = fit_metric(model, images, labels, steps=2, identities_per_batch=2,
                        images_per_identity=2, extra_loss=extra)
    assert len(seen) == 2 and all(v >= 0 for v in seen)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert len(result.losses) == 2
