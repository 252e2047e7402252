import pytest
import torch

from captum_similarity import SIMILARITIES, Similarity, resolve_similarity

NAMES = list(SIMILARITIES)


def _emb(n, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_matrix_matches_pairwise(name):
    sim = resolve_similarity(name)
    a, b = _emb(3), _emb(4, seed=1)
    m = sim.pairs(a, b)
    assert m.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(m[i, j], sim(a[i : i + 1], b[j : j + 1])[0])


@pytest.mark.parametrize("name", NAMES)
def test_contributions_sum_to_score(name):
    sim = resolve_similarity(name)
    a, b = _emb(6), _emb(6, seed=1)
    torch.testing.assert_close(sim.contribution(a, b).sum(1), sim(a, b))


@pytest.mark.parametrize("name", NAMES)
def test_symmetric(name):
    sim = resolve_similarity(name)
    a, b = _emb(4), _emb(4, seed=1)
    assert sim.symmetric
    torch.testing.assert_close(sim(a, b), sim(b, a))


def test_closed_forms():
    a, b = _emb(4), _emb(4, seed=1)
    torch.testing.assert_close(resolve_similarity("dot")(a, b), (a * b).sum(1))
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(resolve_similarity("cosine")(a, b), cos)
    torch.testing.assert_close(resolve_similarity("euclidean")(a, b), -(a - b).norm(dim=1))
    torch.testing.assert_close(
        resolve_similarity("squared_euclidean")(a, b), -(a - b).pow(2).sum(1)
    )


def test_euclidean_gradient_at_zero_distance_is_finite():
    a = _emb(2).requires_grad_()
    resolve_similarity("euclidean")(a, a.detach().clone()).sum().backward()
    assert torch.isfinite(a.grad).all()


def test_custom_callable_matrix_by_expansion():
    def weighted(a, b):
        return (a * b * torch.arange(1, a.shape[1] + 1, dtype=a.dtype)).sum(1)

    sim = resolve_similarity(weighted)
    assert sim.name == "weighted" and not sim.symmetric
    a, b = _emb(2), _emb(3, seed=1)
    expected = torch.stack([torch.stack([weighted(a[i : i + 1], b[j : j + 1])[0] for j in range(3)]) for i in range(2)])
    torch.testing.assert_close(sim.pairs(a, b), expected)
    with pytest.raises(ValueError, match="no per-dimension contributions"):
        sim.contribution(a[:2], b[:2])


def test_resolution_errors():
    with pytest.raises(ValueError, match="unknown similarity 'cos'"):
        resolve_similarity("cos")
    with pytest.raises(TypeError, match="similarity must be"):
        resolve_similarity(3)
    sim = resolve_similarity("dot")
    assert resolve_similarity(sim) is sim
    with pytest.raises(ValueError, match="embedding widths differ: 5 and 4"):
        sim(_emb(2), _emb(2, d=4))
    with pytest.raises(ValueError, match="must be 2-D"):
        sim(_emb(2)[None], _emb(2))
    bad = Similarity("bad", lambda a, b: a)
    with pytest.raises(ValueError, match=r"returned shape \(2, 5\)"):
        bad(_emb(2), _emb(2))
