import itertools

import pytest
import torch
import torch.nn.functional as F

from captum_similarity.data import identity_split, load_orl_faces, stereo_crops
from captum_similarity.metrics import auroc, retrieval_metrics, verification_auroc
from captum_similarity.models import SimpleCNN
from captum_similarity.training import (
    batch_hard_triplet_loss,
    fit_metric,
    info_nce_loss,
    random_views,
)


def test_auroc_matches_pair_counting_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=g).double()
    positive = torch.rand(40, generator=g) < 0.4
    pos, neg = scores[positive], scores[~positive]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p, n in itertools.product(pos, neg))
    assert auroc(scores, positive) == pytest.approx(wins / (len(pos) * len(neg)))
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc(scores, torch.ones(40, dtype=torch.bool))


def test_retrieval_metrics_on_a_known_ranking():
    # 1-D embeddings, euclidean ranking: items 0,1 (label 0) close, 2,3 (label 1) close,
    # item 4 (label 0) far away
    emb = torch.tensor([[0.0], [0.1], [1.0], [1.1], [5.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    m = retrieval_metrics(emb, labels, "euclidean")
    assert m["recall_at_1"] == pytest.approx(4 / 5)  # item 4's nearest is item 3
    # APs: item0 [hit, -, -, hit] -> (1 + 2/4)/2; item1 same; item2 1; item3 1;
    # item4 ranking 3,2,1,0 -> hits at 3,4 -> (1/3 + 2/4)/2
    expected = ((1 + 0.5) / 2 * 2 + 1 + 1 + (1 / 3 + 0.5) / 2) / 5
    assert m["mean_average_precision"] == pytest.approx(expected)
    pairs = list(itertools.combinations(range(5), 2))
    same = [labels[i] == labels[j] for i, j in pairs]
    dist = [abs(float(emb[i, 0] - emb[j, 0])) for i, j in pairs]
    pos = [d for d, y in zip(dist, same) if y]
    neg = [d for d, y in zip(dist, same) if not y]
    wins = sum(float(p < n) + 0.5 * float(p == n) for p in pos for n in neg)
    assert verification_auroc(emb, labels, "euclidean") == pytest.approx(wins / (len(pos) * len(neg)))


def test_batch_hard_triplet_loss_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(8, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    z = F.normalize(emb, dim=1)
    losses = []
    for a in range(8):
        d = (z[a] - z).norm(dim=1)
        pos = max(d[p] for p in range(8) if p != a and labels[p] == labels[a])
        neg = min(d[n] for n in range(8) if labels[n] != labels[a])
        losses.append(max(0.0, float(pos - neg + 0.3)))
    assert float(batch_hard_triplet_loss(emb, labels, 0.3)) == pytest.approx(sum(losses) / 8)


def test_info_nce_is_minimal_for_matching_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 8, generator=g)
    assert info_nce_loss(z, z, 0.05) < info_nce_loss(z, z[torch.randperm(6, generator=g)], 0.05)
    logits = F.normalize(z, dim=1) @ F.normalize(z, dim=1).T / 0.1
    expected = F.cross_entropy(logits, torch.arange(6))
    assert float(info_nce_loss(z, z, 0.1)) == pytest.approx(float(expected), rel=1e-5)


def test_random_views_are_valid_and_seeded():
    x = torch.rand(4, 3, 16, 16)
    a = random_views(x, torch.Generator().manual_seed(1))
    b = random_views(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    still = random_views(x, shift=0, scale=(1, 1), rotation=0, flip=False, brightness=0, contrast=0)
    torch.testing.assert_close(still, x, atol=1e-5, rtol=0)


def test_fit_metric_learns_separable_identities():
    g = torch.Generator().manual_seed(0)
    # identity = which quadrant is bright
    labels = torch.arange(4).repeat_interleave(6)
    images = torch.rand(24, 1, 16, 16, generator=g) * 0.2
    for i, lab in enumerate(labels.tolist()):
        r, c = divmod(lab, 2)
        images[i, 0, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] += 0.8
    model = SimpleCNN(in_channels=1, widths=(4, 8), embedding_dim=8)
    result = fit_metric(model, images, labels, steps=60, identities_per_batch=4,
                        images_per_identity=3, augment=False, seed=0)
    assert len(result.losses) == 60
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    assert not model.training and all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert retrieval_metrics(model(images), labels)["recall_at_1"] == 1.0


def test_stereo_crops_correspond():
    left, right, boxes = stereo_crops(4, size=32, seed=0)
    assert left.shape == right.shape == (4, 3, 32, 32)
    assert (boxes[:, 2] > 0).all()  # the right view is shifted left by the disparity
    # corresponding crops are closer than non-corresponding ones
    d_same = (left - right).abs().mean((1, 2, 3))
    d_other = (left - right.roll(1, 0)).abs().mean((1, 2, 3))
    assert (d_same < d_other).float().mean() >= 0.75


def test_orl_loader_and_identity_split(orl_root):
    faces = load_orl_faces(orl_root)
    assert faces.images.shape == (400, 1, 112, 92)
    assert 0.0 <= faces.images.min() and faces.images.max() <= 1.0
    assert torch.equal(torch.bincount(faces.labels), torch.full((40,), 10))
    assert faces.files[10] == "s2/1.pgm"
    train, test = identity_split(faces, 30)
    assert len(train) == 300 and len(test) == 100
    assert set(train.labels.tolist()).isdisjoint(test.labels.tolist())
    small = load_orl_faces(orl_root, size=(56, 46))
    assert small.images.shape == (400, 1, 56, 46)
    with pytest.raises(ValueError, match="n_train"):
        identity_split(faces, 40)


def test_orl_loader_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ORL subject folders"):
        load_orl_faces(tmp_path)
