"""The fault matrix: every public entry point of the library's methods and
metrics against each fault a user's code can bring (wrong dtype, a missing
batch dimension, an empty or mismatched batch, NaN and Inf in images and
embeddings, a model in train mode, calls from several threads, under
``torch.no_grad()`` and ``torch.inference_mode()``). Each combination gives a
clear error or the documented result (docs/reliability.md), and the model is
left as found.

A new method is covered by adding its entry points to :data:`ENTRIES`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict

import pytest
import torch
from torch import Tensor, nn

from captum_similarity import (
    EmbeddingGradCAM,
    InferenceModeError,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    SimilarityDecomposition,
    SimilarityRISE,
)
from captum_similarity.metrics import insertion_deletion, match_plausibility
from conftest import snapshot

DT = torch.float64


class Net(nn.Module):
    """Conv-BatchNorm-ReLU, strided conv-ReLU, global average pooling, Dropout,
    linear: in train mode its BatchNorm statistics move and its Dropout draws."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def make_model() -> Net:
    torch.manual_seed(0)
    model = Net().to(DT)
    with torch.no_grad():
        model.features[1].running_mean.uniform_(-0.1, 0.1)
        model.features[1].running_var.uniform_(0.8, 1.2)
    return model.eval()


def make_data(seed: int = 0):
    """Two queries ``(2, 3, 8, 8)`` and a reference ``(1, 3, 8, 8)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 8, 8, generator=g, dtype=DT), torch.rand(1, 3, 8, 8, generator=g, dtype=DT)


LAYER = "features.4"


@dataclass(frozen=True)
class Entry:
    """A public entry point: ``run(sim, x, ref)`` explains the queries ``x``
    against ``ref`` (or the pair ``(x, ref)``) and returns tensors."""

    run: Callable[[SiameseSimilarity, Tensor, Tensor], object]
    gradients: bool = True  # needs autograd (forward-only methods work on an inference-mode model)


def _maps(result) -> tuple:
    """The tensors of a result, for comparisons."""
    if isinstance(result, Tensor):
        return (result,)
    if isinstance(result, dict):
        return tuple(result[k] for k in sorted(result))
    if isinstance(result, (list, tuple)):
        return tuple(t for r in result for t in _maps(r))
    if hasattr(result, "pixel_relevance1"):
        return (result.layer_relevance1, result.layer_relevance2, result.pixel_relevance1,
                result.pixel_relevance2, result.relevance)
    if hasattr(result, "deletion_curve"):
        return (result.insertion_curve, result.deletion_curve)
    raise TypeError(type(result))


#: Every public entry point of the library's methods and metrics.
ENTRIES: Dict[str, Entry] = {
    "EmbeddingGradCAM.attribute": Entry(
        lambda sim, x, ref: EmbeddingGradCAM(sim, LAYER).attribute(x, additional_forward_args=(ref,))
    ),
    "EmbeddingGradCAM.attribute (pair)": Entry(
        lambda sim, x, ref: EmbeddingGradCAM(sim, LAYER).attribute((x, ref))
    ),
    "EmbeddingGradCAM.attribute_gallery": Entry(
        lambda sim, x, ref: EmbeddingGradCAM(sim, LAYER).attribute_gallery(ref, x)
    ),
    "SimilarityDecomposition.attribute": Entry(
        lambda sim, x, ref: SimilarityDecomposition(sim, LAYER).attribute(
            x, additional_forward_args=(ref,)
        ),
        gradients=False,
    ),
    "SimilarityDecomposition.point_matches": Entry(
        lambda sim, x, ref: SimilarityDecomposition(sim, LAYER).point_matches((x, ref), (1, 2)),
        gradients=False,
    ),
    "LRPRelevancePairing.attribute": Entry(
        lambda sim, x, ref: LRPRelevancePairing(sim).attribute(x, additional_forward_args=(ref,))
    ),
    "LRPRelevancePairing.attribute_pairwise": Entry(
        lambda sim, x, ref: LRPRelevancePairing(sim).attribute_pairwise((x, ref), patch_size=4)
    ),
    "PairwiseIntermediateMatching.attribute": Entry(
        lambda sim, x, ref: PairwiseIntermediateMatching(sim, LAYER).attribute(
            x, additional_forward_args=(ref,), k=2
        )
    ),
    "PairwiseIntermediateMatching.explain": Entry(
        lambda sim, x, ref: PairwiseIntermediateMatching(sim, LAYER).explain(x, ref, k=2)
    ),
    "SimilarityRISE.attribute": Entry(
        lambda sim, x, ref: SimilarityRISE(sim).attribute(
            x, additional_forward_args=(ref,), n_masks=8, seed=0
        ),
        gradients=False,
    ),
    "insertion_deletion": Entry(
        lambda sim, x, ref: insertion_deletion(
            sim, x, torch.linspace(0, 1, x[:1].numel(), dtype=DT).view(x[:1].shape).expand_as(x),
            ref, n_steps=3,
        ),
        gradients=False,
    ),
    "match_plausibility": Entry(
        lambda sim, x, ref: match_plausibility(
            PairwiseIntermediateMatching(sim, LAYER).explain(x, ref, k=0), top=3
        )
    ),
}


def nan_equal(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def assert_model_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("training", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    for (name, g0), (_, g1) in zip(before["grad"], after["grad"]):
        assert (g0 is None) == (g1 is None) and (g0 is None or torch.equal(g0, g1)), name
    for key, value in before["state"].items():
        assert nan_equal(value, after["state"][key]), key


def assert_same(a, b) -> None:
    ta, tb = _maps(a), _maps(b)
    assert len(ta) == len(tb)
    for u, v in zip(ta, tb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-12)


# -- bad input: a clear error, the model as found --------------------------------


def _float32(x, ref):
    return x.float(), ref


def _no_batch(x, ref):
    return x[0], ref


def _empty(x, ref):
    return x[:0], ref


def _mismatched(x, ref):
    g = torch.Generator().manual_seed(9)
    return x, torch.rand(3, *x.shape[1:], generator=g, dtype=x.dtype)


def _nan_input(x, ref):
    x = x.clone()
    x[1, 0, 2, 3] = float("nan")
    return x, ref


def _inf_reference(x, ref):
    ref = ref.clone()
    ref[0, 2, 0, 0] = float("inf")
    return x, ref


#: fault -> (what it does to (x, ref), the error type, a pattern of its message)
BAD_INPUTS = {
    "float32 images, float64 model": (_float32, TypeError, r"dtype torch\.float32.*torch\.float64"),
    "3-D image (C, H, W)": (_no_batch, ValueError, r"batch dimension"),
    "empty batch": (_empty, ValueError, r"empty batch"),
    "mismatched batches (2 vs 3)": (_mismatched, ValueError, r"batch|cannot pair"),
    "NaN in a query": (_nan_input, ValueError, r"NaN or infinite values in .*row 1 of 2"),
    "Inf in the reference": (_inf_reference, ValueError, r"NaN or infinite values in .*row 0 of 1"),
}

#: Combinations where the fault means something else (the gallery's query is
#: the reference, one image; its references may have any batch).
NOT_APPLICABLE = {
    ("EmbeddingGradCAM.attribute_gallery", "mismatched batches (2 vs 3)"),
}


@pytest.mark.parametrize("fault", BAD_INPUTS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_bad_input_raises_a_clear_error_and_leaves_the_model(entry, fault):
    if (entry, fault) in NOT_APPLICABLE:
        pytest.skip("not applicable")
    transform, error, pattern = BAD_INPUTS[fault]
    model = make_model()
    before = snapshot(model)
    x, ref = transform(*make_data())
    with pytest.raises(error, match=pattern):
        ENTRIES[entry].run(SiameseSimilarity(model, "cosine"), x, ref)
    assert_model_unchanged(model, before)


@pytest.mark.parametrize("entry", ENTRIES)
def test_non_finite_embeddings_raise_naming_them(entry):
    """A model that returns NaN for finite images (here a NaN bias): an error,
    never a finite map."""
    model = make_model()
    with torch.no_grad():
        model.fc.bias[2] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"NaN or infinite values in .*(embedding|score)"):
        ENTRIES[entry].run(SiameseSimilarity(model, "cosine"), *make_data())
    assert_model_unchanged(model, before)


# -- the documented results -------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_train_mode_model_is_explained_in_eval_mode_and_left_in_train_mode(entry):
    model = make_model().train()
    before = snapshot(model)
    sim = SiameseSimilarity(model, "cosine")
    x, ref = make_data()
    first = ENTRIES[entry].run(sim, x, ref)
    second = ENTRIES[entry].run(sim, x, ref)
    assert_same(first, second)  # Dropout off, BatchNorm on its running statistics
    assert_model_unchanged(model, before)  # running stats, num_batches_tracked, train flags
    assert model.training and model.drop.training
    model.eval()
    assert_same(first, ENTRIES[entry].run(sim, x, ref))  # what eval mode gives


@pytest.mark.parametrize("entry", ENTRIES)
def test_no_grad_and_inference_mode_give_the_plain_result(entry):
    model = make_model()
    before = snapshot(model)
    sim = SiameseSimilarity(model, "cosine")
    x, ref = make_data()
    plain = ENTRIES[entry].run(sim, x, ref)
    with torch.no_grad():
        assert_same(ENTRIES[entry].run(sim, x, ref), plain)
    with torch.inference_mode():
        xi, refi = x.clone(), ref.clone()  # inference tensors
        assert_same(ENTRIES[entry].run(sim, xi, refi), plain)
    assert_model_unchanged(model, before)


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_model_made_in_inference_mode(entry):
    """Gradient methods need autograd through the weights: one clear error
    naming inference mode. Forward-only methods work."""
    with torch.inference_mode():
        model = make_model()
    sim = SiameseSimilarity(model, "cosine")
    x, ref = make_data()
    if ENTRIES[entry].gradients:
        with pytest.raises(InferenceModeError, match=r"inference_mode\(\)"):
            ENTRIES[entry].run(sim, x, ref)
    else:
        assert_same(ENTRIES[entry].run(sim, x, ref), ENTRIES[entry].run(SiameseSimilarity(make_model(), "cosine"), x, ref))


@pytest.mark.parametrize("entry", ENTRIES)
def test_threads_sharing_one_model_get_the_single_threaded_results(entry):
    """N threads x M calls on one train-mode model (two wrappers around it):
    every result equals the single-threaded one and the model is left as found."""
    threads, calls = 4, 3
    model = make_model().train()
    before = snapshot(model)
    sims = [SiameseSimilarity(model, "cosine") for _ in range(2)]
    x, ref = make_data()
    expected = ENTRIES[entry].run(sims[0], x, ref)
    results, errors = [], []
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        start.wait()
        for _ in range(calls):
            try:
                results.append(ENTRIES[entry].run(sims[i % 2], x, ref))
            except Exception as error:  # noqa: BLE001 - collected and reported below
                errors.append(error)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]
    assert len(results) == threads * calls
    for result in results:
        assert_same(result, expected)
    assert_model_unchanged(model, before)


# -- other public functions: bad input -------------------------------------------


def test_match_plausibility_refuses_non_finite_matches_and_a_zero_threshold():
    model = make_model()
    matches = PairwiseIntermediateMatching(SiameseSimilarity(model, "cosine"), LAYER).explain(
        *make_data(), k=0
    )
    assert set(match_plausibility(matches, top=3)) >= {"inlier_ratio", "residual"}
    for threshold in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="residual_threshold must be a positive number"):
            match_plausibility(matches, top=3, residual_threshold=threshold)
    # a tiny threshold is used as given (0 used to mean the default)
    tiny = match_plausibility(matches, top=3, residual_threshold=1e-12)["inlier_ratio"]
    assert not (tiny > 0).any()
    broken = matches[1]
    broken.points2 = broken.points2.clone()
    broken.points2[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in matches\[1\]\.points2"):
        match_plausibility(matches)
    broken.score = float("nan")
    with pytest.raises(ValueError, match=r"matches\[1\] has a non-finite score"):
        match_plausibility(matches)


def test_face_chips_refuse_nan_and_empty_images():
    import numpy as np

    from captum_similarity.models import face_chips

    image = np.full((20, 16, 3), 0.5)
    assert face_chips([image], align="pad_resize").shape == (1, 3, 150, 150)
    bad = image.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="image 1 has NaN or infinite values"):
        face_chips([image, bad], align="pad_resize")
    for empty in (np.zeros((0, 0, 3)), np.zeros((0, 5), dtype=np.uint8)):
        with pytest.raises(ValueError, match="image 0 is empty"):
            face_chips([empty], align="pad_resize")


def test_visualize_pair_names_a_bad_index_method_or_sign():
    from captum_similarity import visualize_pair

    x1, x2 = make_data()[0], make_data(1)[0]
    maps = (torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4))
    for index in (2, -3, 1.0):
        with pytest.raises(ValueError, match=r"index .* is not a sample of .*batch of 2"):
            visualize_pair(x1, x2, maps, index=index)
    with pytest.raises(ValueError, match="method must be one of Captum's 'heat_map'"):
        visualize_pair(x1, x2, maps, method="heatmap")
    with pytest.raises(ValueError, match="sign must be one of Captum's 'positive'"):
        visualize_pair(x1, x2, maps, sign="abs")
    visualize_pair(x1, x2, maps, index=-1)  # negative indices count from the end


def test_a_damaged_model_cache_is_retrained_with_a_warning(tmp_path, monkeypatch):
    from captum_similarity.training import demo_models

    monkeypatch.setenv("CAPTUM_SIMILARITY_CACHE", str(tmp_path))
    calls = []

    def train(model):
        calls.append(model)
        return {"steps": 1}

    def build():
        torch.manual_seed(0)
        return nn.Linear(3, 2)

    model, info = demo_models._cached("probe", {"a": 1}, build, train, cache=True)
    cache_file = tmp_path / info["cache_file"].split("/")[-1]
    assert len(calls) == 1 and cache_file.is_file()
    _, info = demo_models._cached("probe", {"a": 1}, build, train, cache=True)
    assert info["loaded_from_cache"] and len(calls) == 1
    for damage in (b"", b"not a checkpoint", cache_file.read_bytes()[:40]):
        cache_file.write_bytes(damage)
        with pytest.warns(RuntimeWarning, match="cannot be read .* training it again"):
            again, info = demo_models._cached("probe", {"a": 1}, build, train, cache=True)
        assert not info["loaded_from_cache"]
        torch.testing.assert_close(again.weight, build().weight)  # trained from a fresh build
    _, info = demo_models._cached("probe", {"a": 1}, build, train, cache=True)
    assert info["loaded_from_cache"]  # the file was rewritten


def test_the_locks_do_not_keep_a_model_alive():
    import gc
    import weakref

    model = make_model()
    EmbeddingGradCAM(SiameseSimilarity(model, "cosine"), LAYER).attribute(
        *make_data()[:1], additional_forward_args=(make_data()[1],)
    )
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_the_wrapper_names_dtype_and_missing_batch_dimension_and_passes_nan_through():
    """SiameseSimilarity (a model, not a method): wrong dtype and a 3-D image
    get errors naming them (they used to be torch's "expected input[1, 6, 8, 8]
    to have 3 channels"); a NaN image gives a NaN score, as torch models do."""
    model = make_model()
    sim = SiameseSimilarity(model, "cosine")
    x, ref = make_data()
    for a, b in ((x[0], x[1]), (x[0], ref), (x, ref[0])):
        with pytest.raises(ValueError, match=r"batch dimension is missing .* pass x\[None\]"):
            sim(a, b)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=f"x1 has dtype {dtype} but the model's parameters are"):
            sim(x.to(dtype), ref)
    single = SiameseSimilarity(make_model().float(), "cosine")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts for the model
        assert single(x.bfloat16(), ref.bfloat16()).shape == (2,)
    nan = x.clone()
    nan[1, 0, 0, 0] = float("nan")
    scores = sim(nan, ref)
    assert not torch.isnan(scores[0]) and torch.isnan(scores[1])
