"""Layer-wise relevance propagation for similarity models.

What a user picks:

- :mod:`~captum_similarity.lrp.rules`: how relevance crosses one layer
  (Epsilon, Gamma, AlphaBeta, ZPlus, ZBox, Pass, Hold, NormRule; Captum's rule
  classes are accepted and translated), and what the rules are made of (the
  autograd functions, linear layers as the rules see them: ``LinearOp``,
  ``ConvAdjoint``).
- :mod:`~captum_similarity.lrp.composites`: which rule each layer gets
  (by type, depth, name; presets ``lrp0``, ``epsilon``, ``epsilon_plus``,
  ``gamma``).
- :mod:`~captum_similarity.lrp.canonizers`: BatchNorm folding and gates,
  applied without writing to the model.
- :mod:`~captum_similarity.lrp.engine`: :class:`LRPEngine` and
  :class:`RelevancePass`, relevance from the output or a layer down to a layer
  or the input, with batched seeds.

The machinery below them:

- :mod:`~captum_similarity.lrp.graph`: reading and rewriting the autograd
  graph of a pass;
- :mod:`~captum_similarity.lrp.ops`: what the graph walks know of each
  operation (reach, backward on windows), one table, and the two walks:
  receptive fields and the windowed backward pass;
- :mod:`~captum_similarity.lrp.windows` and
  :mod:`~captum_similarity.lrp.seeds`: local seeds (PAIR-X's per-match maps)
  computed on their receptive fields only.

:class:`SimilarityHeadRule` and :class:`DefaultRule`, for Captum's own
``LRP`` on a :class:`~captum_similarity.SiameseSimilarity`, live in
:mod:`captum_similarity.head` and are re-exported here.
"""

from ..head import DefaultRule, SimilarityHeadRule
from .composites import COMPOSITES, Composite, depth_gamma, resolve_composite
from .engine import SEED_BATCHING, LRPEngine, RelevancePass
from . import rules
from .rules import *  # noqa: F401,F403  (the rule catalog: rules.__all__)

__all__ = [
    "LRPEngine",
    "RelevancePass",
    "SEED_BATCHING",
    "Composite",
    "COMPOSITES",
    "resolve_composite",
    "depth_gamma",
    "SimilarityHeadRule",
    "DefaultRule",
    *rules.__all__,
]
