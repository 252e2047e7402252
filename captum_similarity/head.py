"""The similarity head as a module, so hook-based methods (LRP) can
address it, and the rules Captum's ``LRP`` uses on this library's modules.

Captum's ``LRP`` (``captum.attr.LRP``) looks for a ``rule`` attribute on each
module it meets and raises for module types it has no default for; after
every ``attribute`` call it deletes the attribute. Two pieces make it work on
a :class:`~captum_similarity.SiameseSimilarity`:

- :class:`SimilarityHeadRule`, the rule of the wrapper's similarity head
  (:class:`SimilarityHead`): it splits the score over the embedding
  dimensions with the similarity's per-dimension contributions, so that
  relevance is conserved through the similarity;
- :class:`DefaultRule`, a class attribute giving every instance of a module
  class its own rule, which comes back after Captum deletes it (the head
  carries its rule this way, and so do the dlib port's modules).

This library's own LRP engine (:mod:`captum_similarity.lrp`) does not use
either: it reads a module's ``rule`` attribute as a user rule.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from captum.attr._utils.lrp_rules import PropagationRule
from torch import Tensor, nn

__all__ = ["SimilarityHead", "DefaultRule", "SimilarityHeadRule"]


class DefaultRule:
    r"""Class attribute giving each module instance its own LRP ``rule``.

    Captum's ``LRP`` uses a module's ``rule`` attribute when it has one and
    raises for module types it has no default for; after every ``attribute``
    call it deletes ``module.rule``. Declaring ``rule = DefaultRule(factory)``
    in a module class gives every instance a rule made by ``factory`` on first
    access, lets users assign another one, and brings a fresh default back
    after Captum's deletion, so the next call finds it again.

    Args:
        factory (Callable): Makes a new rule (a Captum ``PropagationRule``),
            e.g. ``captum.attr._utils.lrp_rules.EpsilonRule``.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.slot = "_rule"

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Optional[object], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if self.slot not in obj.__dict__:
            obj.__dict__[self.slot] = self.factory()
        return obj.__dict__[self.slot]

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.slot] = value

    def __delete__(self, obj: object) -> None:
        obj.__dict__.pop(self.slot, None)


class SimilarityHeadRule(PropagationRule):
    r"""LRP rule for a :class:`~captum_similarity.head.SimilarityHead`.

    A pair's relevance ``R`` (normalised to 1 by Captum's LRP) is split over
    the embedding dimensions of *each* side in proportion to the similarity's
    per-dimension contributions ``c = Similarity.contribution(f1, f2)``:
    ``R(f1)_j = R(f2)_j = R * c_j / s``. Both sides therefore receive the whole
    score, ``sum_j R(f1)_j = sum_j R(f2)_j = s`` once Captum scales relevance
    back by the output (a side given as a precomputed embedding is a constant
    and gets none). For ``"dot"``, ``c = f1 * f2`` and this equals what
    gradient x input gives; for ``"cosine"``, ``c = f1_hat * f2_hat`` with the
    norms held constant, whereas plain gradients through the normalisation
    would give relevance summing to zero.

    Args:
        epsilon (float, optional): Stabiliser added (with the score's sign) to
            ``s`` in the division.
            Default: 1e-9
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        self.STABILITY_FACTOR = epsilon

    def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        pass

    def forward_hook(
        self, module: nn.Module, inputs: Tuple[Tensor, ...], outputs: Tensor
    ) -> Tensor:
        f1, f2 = inputs
        scores = outputs.detach()
        sign = torch.where(scores >= 0, 1.0, -1.0).to(scores.dtype)
        share = (
            module.similarity.contribution(f1.detach(), f2.detach())
            / (scores + sign * self.STABILITY_FACTOR)[:, None]
        )
        self._has_single_input = False
        # a side given as a precomputed embedding (a constant) needs no relevance
        self._handle_input_hooks = [
            f.register_hook(self._input_relevance(share)) for f in (f1, f2) if f.requires_grad
        ]
        self._handle_output_hook = outputs.register_hook(self._store_output_relevance)
        return outputs.clone()

    def _store_output_relevance(self, grad: Tensor) -> Tensor:
        self.relevance_output[grad.device] = grad.data
        return grad

    def _input_relevance(self, share: Tensor) -> Callable[[Tensor], Tensor]:
        def hook(grad: Tensor) -> Tensor:
            relevance = self.relevance_output[grad.device][:, None] * share
            self.relevance_input[grad.device].append(relevance.data)
            return relevance

        return hook


class SimilarityHead(nn.Module):
    r"""Scores two ``(N, D)`` embedding batches row by row: ``(N,)``.

    It is the last module of :class:`~captum_similarity.SiameseSimilarity`.
    It carries a default Captum LRP rule, :class:`SimilarityHeadRule`, as its
    ``rule`` attribute; Captum's ``LRP`` deletes rules after each call, and
    the default comes back on deletion so that the next call finds it. Set
    ``head.rule`` to use another rule.

    Args:
        similarity (Similarity): The resolved similarity
            (:class:`~captum_similarity.similarity.Similarity`: called on two
            embedding batches, with ``name`` and ``contribution``).
    """

    rule = DefaultRule(SimilarityHeadRule)

    def __init__(self, similarity: Callable[[Tensor, Tensor], Tensor]) -> None:
        super().__init__()
        self.similarity = similarity

    def extra_repr(self) -> str:
        return f"similarity={self.similarity.name!r}"

    def forward(self, f1: Tensor, f2: Tensor) -> Tensor:
        return self.similarity(f1, f2)
