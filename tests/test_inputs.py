"""The one input contract of every method: the accepted forms of ``inputs`` and
``additional_forward_args``, tuple in / tuple out, references expanded as
Captum's wrappers expand them, and one policy for the similarity."""

import pytest
import torch

from captum_similarity import (
    EmbeddingGradCAM,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    SimilarityDecomposition,
    SimilarityRISE,
)
from captum_similarity._utils.inputs import MissingReferenceError, format_inputs
from captum_similarity.siamese import DEFAULT_SIMILARITIES, as_siamese
from conftest import make_reference_model

DT = torch.float64


def _methods(model):
    """Every attribution class explaining one image against a reference, as
    ``(name, attribute callable)``."""
    sim = SiameseSimilarity(model, "cosine")
    return [
        ("EmbeddingGradCAM", EmbeddingGradCAM(sim, "layer2").attribute),
        ("LRPRelevancePairing", LRPRelevancePairing(sim).attribute),
        ("PairwiseIntermediateMatching", PairwiseIntermediateMatching(sim, "layer2").attribute),
        ("SimilarityRISE", lambda x, a: SimilarityRISE(sim).attribute(x, a, n_masks=20, seed=0)),
        ("SimilarityDecomposition", SimilarityDecomposition(sim, "layer3").attribute),
    ]


def test_format_inputs_forms_and_errors():
    x = torch.rand(2, 3, 8, 8, dtype=DT)
    images, reference, is_tuple = format_inputs(x, (x[:1],), "M")
    assert images[0] is x and reference is not None and torch.equal(reference, x[:1])
    assert not is_tuple
    images, reference, is_tuple = format_inputs((x,), x[:1], "M")
    assert len(images) == 1 and is_tuple and torch.equal(reference, x[:1])
    images, reference, is_tuple = format_inputs((x, x), None, "M")
    assert len(images) == 2 and reference is None and is_tuple
    with pytest.raises(MissingReferenceError, match="M needs a reference") as missing:
        format_inputs(x, None, "M")
    assert isinstance(missing.value, ValueError) and isinstance(missing.value, TypeError)
    assert format_inputs(x, None, "M", needs_reference=False)[1] is None
    with pytest.raises(TypeError, match="tensor or a tuple"):
        format_inputs([x, x], None, "M")
    with pytest.raises(ValueError, match="pair"):
        format_inputs((x, x, x), None, "M")
    assert len(format_inputs((x, x, x), None, "M", sizes=(2, 3))[0]) == 3
    with pytest.raises(ValueError, match="must be None"):
        format_inputs((x, x), (x,), "M")
    with pytest.raises(ValueError, match="exactly one tensor"):
        format_inputs(x, (x, x), "M")
    with pytest.raises(TypeError, match="floating-point"):
        format_inputs(x, (x.long(),), "M")


def test_one_tuple_in_one_tuple_out_equals_the_tensor_call():
    model = make_reference_model("resnet")
    g = torch.Generator().manual_seed(0)
    x, ref = (torch.rand(2, 3, 32, 32, dtype=DT, generator=g) for _ in range(2))
    for name, attribute in _methods(model):
        plain = attribute(x, (ref,))
        (wrapped,) = attribute((x,), (ref,))
        assert isinstance(plain, torch.Tensor), name
        torch.testing.assert_close(wrapped, plain, msg=name)


@pytest.mark.parametrize("expand", ["repeat_interleave", "cat"])
def test_references_expanded_as_captum_does_equal_the_batch_one_reference(expand):
    # NoiseTunnel and GradientShap repeat a batch-1 argument with repeat_interleave,
    # IntegratedGradients and Occlusion with cat: every row is the same reference
    model = make_reference_model("resnet")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 32, 32, dtype=DT, generator=g)
    ref = torch.rand(1, 3, 32, 32, dtype=DT, generator=g)
    expanded = ref.repeat_interleave(3, 0) if expand == "repeat_interleave" else torch.cat([ref] * 3)
    for name, attribute in _methods(model):
        torch.testing.assert_close(attribute(x, (expanded,)), attribute(x, (ref,)), msg=name)


def test_one_policy_for_a_similarity_given_with_a_siamese_model():
    model = make_reference_model("resnet")
    sim = SiameseSimilarity(model, "dot")
    for make in (
        lambda s: EmbeddingGradCAM(sim, "layer2", similarity=s),
        lambda s: LRPRelevancePairing(sim, s),
        lambda s: PairwiseIntermediateMatching(sim, "layer2", similarity=s),
        lambda s: SimilarityDecomposition(sim, "layer3", s),
    ):
        with pytest.raises(ValueError, match="do not pass similarity"):
            make("cosine")
        assert make(None).model.similarity.name == "dot"  # the wrapper's own
    # a bare embedder gets the method's documented default
    for method, name in DEFAULT_SIMILARITIES.items():
        assert as_siamese(model, None, method).similarity.name == name
    assert EmbeddingGradCAM(model, "layer2").similarity.name == "cosine"
    assert LRPRelevancePairing(model).similarity.name == "dot"


def test_three_dimensional_images_name_the_missing_batch_dimension():
    model = make_reference_model("resnet")
    x = torch.rand(3, 32, 32, dtype=DT)
    sim = SiameseSimilarity(model)
    with pytest.raises(ValueError, match="add a batch dimension"):
        PairwiseIntermediateMatching(sim, "layer2").attribute(x, (x[None],))
    with pytest.raises(ValueError, match="add a batch dimension"):
        SimilarityRISE(sim).attribute(x, (x[None],), n_masks=2)
