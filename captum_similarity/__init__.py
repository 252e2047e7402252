"""captum-similarity: Captum attributions for similarity models.

Wrap an embedder in :class:`SiameseSimilarity` to explain ``s(x1, x2)`` with
any Captum method; use the library's own methods for what Captum lacks.
"""

from ._utils.state import InferenceModeError
from ._version import __version__
from .attributes import (
    AttributeExplanation,
    AttributeHeadFit,
    AttributeHeatmapHead,
    SalientAttributes,
    fit_attribute_head,
)
from .branches import BranchLayerAttribution, GridView, split_branches
from .candidates import CandidateLayer, candidate_layers, default_layer
from .decomposition import SimilarityDecomposition
from .embedding_gradcam import EmbeddingGradCAM
from .figures import (
    to_visualizer_arrays,
    visualize_attributes,
    visualize_matches,
    visualize_pair,
)
from .pairwise_matching import PairMatches, PairwiseIntermediateMatching
from .relevance_pairing import LRPRelevancePairing
from .rise import SimilarityRISE
from .siamese import SiameseSimilarity
from .similarity import SIMILARITIES, Similarity, resolve_similarity

__all__ = [
    "__version__",
    "SiameseSimilarity",
    "Similarity",
    "SIMILARITIES",
    "resolve_similarity",
    "split_branches",
    "BranchLayerAttribution",
    "GridView",
    "EmbeddingGradCAM",
    "SimilarityDecomposition",
    "LRPRelevancePairing",
    "to_visualizer_arrays",
    "visualize_pair",
    "SimilarityRISE",
    "PairwiseIntermediateMatching",
    "PairMatches",
    "candidate_layers",
    "default_layer",
    "CandidateLayer",
    "visualize_matches",
    "AttributeHeatmapHead",
    "fit_attribute_head",
    "AttributeHeadFit",
    "SalientAttributes",
    "AttributeExplanation",
    "visualize_attributes",
    "InferenceModeError",
]
