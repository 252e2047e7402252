import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

from captum_similarity import SiameseSimilarity, resolve_similarity
from conftest import assert_unchanged, make_reference_model, snapshot


class CallCounter(nn.Module):
    """Wraps an embedder and records the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.inner(x)


@pytest.fixture
def model():
    return make_reference_model("cnn")


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "squared_euclidean"])
def test_scores_equal_direct_computation(model, images, name):
    sim = SiameseSimilarity(model, name)
    x1, x2 = images(3), images(3, seed=1)
    out = sim(x1, x2)
    assert out.shape == (3,)
    torch.testing.assert_close(out, resolve_similarity(name)(model(x1), model(x2)))


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "squared_euclidean"])
def test_symmetry(model, images, name):
    sim = SiameseSimilarity(model, name)
    x1, x2 = images(3), images(3, seed=1)
    torch.testing.assert_close(sim(x1, x2), sim(x2, x1))


def test_custom_callable_similarity(model, images):
    sim = SiameseSimilarity(model, lambda a, b: -(a - b).abs().sum(1))
    x1, x2 = images(2), images(2, seed=1)
    torch.testing.assert_close(sim(x1, x2), -(model(x1) - model(x2)).abs().sum(1))


def test_batch_one_reference_broadcasts(model, images):
    sim = SiameseSimilarity(model)
    x, ref = images(4), images(1, seed=1)
    expected = sim(x, ref.expand(4, -1, -1, -1))
    torch.testing.assert_close(sim(x, ref), expected)
    torch.testing.assert_close(sim(ref, x), expected)


def test_identical_rows_broadcast_like_captum_expansion(model, images):
    sim = SiameseSimilarity(model)
    x, ref = images(6), images(1, seed=1)
    # IntegratedGradients repeats a batch-1 argument n_steps times with cat
    torch.testing.assert_close(sim(x, torch.cat([ref] * 3)), sim(x, ref))


def test_unbroadcastable_batches_raise(model, images):
    sim = SiameseSimilarity(model)
    with pytest.raises(ValueError, match=r"cannot broadcast batch sizes 4 \(x1\) and 3 \(x2\)"):
        sim(images(4), images(3, seed=1))


def test_precomputed_embeddings_skip_the_embedder(model, images):
    counter = CallCounter(model)
    sim = SiameseSimilarity(counter, "dot")
    x, ref = images(3), images(1, seed=1)
    expected = sim(x, ref)
    f_ref = model(ref).detach()
    counter.batches.clear()
    torch.testing.assert_close(sim(x, f_ref), expected)
    torch.testing.assert_close(sim(x, f_ref.expand(3, -1)), expected)
    assert counter.batches == [3, 3]
    counter.batches.clear()
    torch.testing.assert_close(sim(model(x), f_ref), expected)
    assert counter.batches == []


def test_encoder_runs_once_on_the_interleaved_batch(model, images):
    counter = CallCounter(model)
    sim = SiameseSimilarity(counter)
    x1, x2 = images(3), images(3, seed=1)
    sim(x1, x2)
    assert counter.batches == [6]
    seen = []
    handle = model.features.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        sim(x1, x2)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0][0::2], x1)
    torch.testing.assert_close(seen[0][1::2], x2)


def test_embed_pair_is_what_forward_scores(model, images):
    counter = CallCounter(model)
    sim = SiameseSimilarity(counter, "dot")
    x1, ref = images(3), images(1, seed=1)
    f1, f2 = sim.embed_pair(x1, ref)
    assert counter.batches == [6]  # broadcast, then one interleaved call
    torch.testing.assert_close(f1, model(x1))
    torch.testing.assert_close(f2, model(ref).expand(3, -1))
    torch.testing.assert_close(sim(x1, ref), (f1 * f2).sum(1))


def test_different_shapes_run_the_encoder_per_side(model, images):
    counter = CallCounter(model)
    sim = SiameseSimilarity(counter)
    x1, x2 = images(2), images(2, seed=1, size=40)
    out = sim(x1, x2)
    assert counter.batches == [2, 2]
    torch.testing.assert_close(out, resolve_similarity("cosine")(model(x1), model(x2)))


def test_similarity_matrix_embeds_each_item_once(model, images):
    counter = CallCounter(model)
    sim = SiameseSimilarity(counter, "dot")
    q, g = images(2), images(5, seed=1)
    m = sim.similarity_matrix(q, g, batch_size=2)
    assert counter.batches == [2, 2, 2, 1]
    assert m.shape == (2, 5)
    for i in range(2):
        torch.testing.assert_close(m[i], sim(q[i : i + 1], g))
    f_g = model(g).detach()
    counter.batches.clear()
    row = sim.similarity_matrix(q[:1], f_g)[0]
    assert counter.batches == [1]  # a precomputed gallery: only the query is embedded
    torch.testing.assert_close(row, sim(q[:1], g))


def test_vector_inputs_with_input_ndim(images):
    mlp = nn.Sequential(nn.Linear(6, 4)).double()
    sim = SiameseSimilarity(mlp, "dot", input_ndim=2)
    a, b = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(sim(a, b), (mlp(a) * mlp(b)).sum(1))
    with pytest.raises(ValueError, match="takes 2-D inputs"):
        sim(a[None], b)


def test_bad_inputs_raise_clear_errors(model, images):
    sim = SiameseSimilarity(model)
    before = snapshot(model)
    x = images(2)
    with pytest.raises(TypeError, match="x2 must be a floating-point tensor, got dtype torch.int64"):
        sim(x, torch.zeros(2, 3, 32, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor"):
        sim(x.numpy(), x)
    with pytest.raises(ValueError, match="embedding widths differ: x1 gives 32, x2 gives 7"):
        sim(x, torch.zeros(1, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown similarity"):
        SiameseSimilarity(model, "cosin")
    with pytest.raises(TypeError, match="embedder must be"):
        SiameseSimilarity(3)
    with pytest.raises(ValueError, match="input_ndim"):
        SiameseSimilarity(model, input_ndim=0)
    with pytest.raises(ValueError, match="takes 4-D inputs"):
        SiameseSimilarity(model, input_ndim=4)(x[0], x)
    assert_unchanged(model, before)


def test_embedder_output_must_be_2d(images):
    conv = nn.Conv2d(3, 4, 3).double()
    conv.weight.grad = torch.ones_like(conv.weight)
    before = snapshot(conv)
    sim = SiameseSimilarity(conv)
    with pytest.raises(ValueError, match=r"2-D tensor \(N, D\) with N = 4, got shape \(4, 4, 30, 30\)"):
        sim(images(2), images(2, seed=1))
    with pytest.raises(TypeError, match="must return a Tensor"):
        SiameseSimilarity(lambda x: (x, x))(images(1), images(1))
    assert_unchanged(conv, before)


def test_model_left_as_found_after_forward_and_backward(images):
    model = make_reference_model("resnet").train()
    model.head.weight.requires_grad_(False)
    before = snapshot(model)
    sim = SiameseSimilarity(model)
    x1 = images(2).requires_grad_()
    model.eval()
    before = snapshot(model)
    sim(x1, images(2, seed=1)).sum().backward()
    # gradients w.r.t. parameters are the user's business when they call backward;
    # the wrapper itself adds no hooks and changes no flags
    for p in model.parameters():
        p.grad = None
    assert_unchanged(model, before)
    assert x1.grad is not None


def test_extra_repr_and_submodules(model):
    sim = SiameseSimilarity(model, "dot")
    assert "similarity='dot'" in repr(sim)
    assert sim.embedder is model
    assert sim.similarity.name == "dot"


def test_a_one_row_reference_is_embedded_once_when_no_hook_watches(model, images):
    counter = CallCounter(model).eval()
    sim = SiameseSimilarity(counter, "dot")
    x1, ref = images(3), images(1, seed=1)
    f1, f2 = sim.embed_pair(x1, ref)
    assert counter.batches == [1, 3]
    torch.testing.assert_close(f1, model(x1))
    torch.testing.assert_close(f2, model(ref).expand(3, -1))
    # identical rows without gradients (Captum's expansion of a batch-1 argument)
    counter.batches.clear()
    torch.testing.assert_close(sim(ref.expand(2, -1, -1, -1).clone(), x1), sim(x1, ref))
    assert counter.batches == [1, 3, 1, 3]
    # a hook on a layer: one interleaved call, so the hook sees both branches
    seen = []
    handle = model.features[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        counter.batches.clear()
        torch.testing.assert_close(sim(x1, ref), (f1 * f2).sum(1))
    finally:
        handle.remove()
    assert counter.batches == [6] and seen == [6]
    # identical rows that need their own gradients: broadcast and interleaved
    counter.batches.clear()
    sim(images(4, seed=2), ref.expand(2, -1, -1, -1).clone().requires_grad_(True))
    assert counter.batches == [8]
    # training mode (batch statistics would change): interleaved
    model.train()
    counter.batches.clear()
    sim(x1, ref)
    assert counter.batches == [6]


def test_integrated_gradients_are_the_same_with_and_without_the_shared_reference(model, images):
    counter = CallCounter(model).eval()
    sim = SiameseSimilarity(counter)
    x1, ref = images(2), images(1, seed=1)
    ig = IntegratedGradients(sim)
    fast = ig.attribute(x1, additional_forward_args=(ref,), n_steps=8)
    assert counter.batches == [1, 16]  # the reference once, the 8 steps of 2 queries
    counter.batches.clear()
    handle = model.features[0].register_forward_hook(lambda m, i, o: None)
    try:
        interleaved = ig.attribute(x1, additional_forward_args=(ref,), n_steps=8)
    finally:
        handle.remove()
    assert counter.batches == [32]  # reference expanded and interleaved
    torch.testing.assert_close(fast, interleaved)
