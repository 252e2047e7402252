"""Layer-wise relevance propagation for similarity models.

- :mod:`~captum_similarity.lrp.rules`: how relevance crosses one layer
  (Epsilon, Gamma, AlphaBeta, ZPlus, ZBox, Pass, Hold, NormRule; Captum's rule
  classes are accepted and translated), and Captum's
  :class:`SimilarityHeadRule`.
- :mod:`~captum_similarity.lrp.composites`: which rule each layer gets
  (by type, depth, name; presets ``lrp0``, ``epsilon``, ``epsilon_plus``,
  ``gamma``).
- :mod:`~captum_similarity.lrp.canonizers`: BatchNorm folding, residual
  additions, gates and transformer blocks, applied without writing to the model.
- :mod:`~captum_similarity.lrp.engine`: :class:`LRPEngine` and
  :class:`RelevancePass`, relevance from the output or a layer down to a layer
  or the input, with batched seeds.
- :mod:`~captum_similarity.lrp.default_rule`: :class:`DefaultRule`, a Captum
  rule a module class keeps across Captum ``LRP`` calls (this engine reads it
  as a user rule).
"""

from .composites import COMPOSITES, Composite, depth_gamma, resolve_composite
from .default_rule import DefaultRule
from .engine import LRPEngine, RelevancePass
from .rules import (
    AlphaBeta,
    Epsilon,
    Gamma,
    Hold,
    LinearRule,
    NormRule,
    Pass,
    Rule,
    SimilarityHeadRule,
    ZBox,
    ZPlus,
    as_rule,
)

__all__ = [
    "LRPEngine",
    "RelevancePass",
    "Composite",
    "COMPOSITES",
    "resolve_composite",
    "depth_gamma",
    "Rule",
    "LinearRule",
    "Epsilon",
    "Gamma",
    "AlphaBeta",
    "ZPlus",
    "ZBox",
    "Pass",
    "Hold",
    "NormRule",
    "as_rule",
    "SimilarityHeadRule",
    "DefaultRule",
]
