"""Backward passes computed only inside receptive-field windows.

:func:`windowed_backward` walks a relevance pass's autograd graph itself and
carries, for each seed, the gradient of every intermediate tensor on the
window that the seed can reach there (see
:mod:`captum_similarity.lrp.receptive_field`), not on the whole tensor. Per
node it applies the operation's backward to all windows at once, as the
operation table (:mod:`captum_similarity.lrp.ops`) gives it: a transposed
convolution, a scatter, or a product with what the node saved (the rules'
factors and masks, a ReLU's output) computed on views of the saved tensor,
in place where nothing else reads the windows (:mod:`.windows`). The work
follows the area the seeds reach, whatever their overlap, rather than one
dense pass per group of seeds with disjoint footprints. Windows keep the
memory layout of the forward pass (channels-last or not).

Only graphs whose every node the table reproduces exactly are accepted
(:func:`windowable`): convolutions with constant weights, max and average
pooling without padding effects, strided slices, constant padding, channel
concatenation, additions, products with a saved tensor, ReLU, aliases and
the LRP rules' own functions. The results equal the full backward pass's up
to floating-point summation order.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from torch import Tensor

from .graph import topological
from .ops import window_backward, windowable_node
from .windows import Windows, add, cleaned

__all__ = ["windowable", "windowed_backward"]

_LEAF = "torch::autograd::AccumulateGrad"


def windowable(output: Tensor, leaves: Sequence[Tensor]) -> bool:
    """Whether every node between ``output`` and ``leaves`` is one that
    :func:`windowed_backward` reproduces (the receptive field must also be
    known: check :func:`~captum_similarity.lrp.receptive_field.receptive_field`
    first)."""
    if output.grad_fn is None:
        return False
    leaf_ids = {id(leaf) for leaf in leaves}
    for node in topological(output.grad_fn):
        if node.name() == _LEAF:
            if id(node.variable) not in leaf_ids:
                return False
        elif not windowable_node(node):
            return False
    return True


def windowed_backward(
    output: Tensor, leaves: Sequence[Tensor], grads: Windows
) -> List[Optional[Windows]]:
    r"""The gradient of ``output`` with respect to each leaf, window by window.

    Args:
        output (Tensor): ``(N, C, *spatial)`` a tensor of the graph.
        leaves (sequence of Tensor): Leaves ``(N, C', *input_spatial)`` of the graph.
        grads (Windows): Windows of the gradient seeded at ``output``; each
            must hold all of its seed's non-zero values.

    Returns:
        list of Windows or None: per leaf, the windows of the gradient that
        the seeds give it (windows cover everything each seed reaches), or
        None for a leaf that no seed reaches. Requires :func:`windowable`.
    """
    pending: Dict[object, Dict[int, Windows]] = {output.grad_fn: {0: grads}}
    found: Dict[int, Windows] = {}
    for node in topological(output.grad_fn):
        incoming = pending.pop(node, None)
        if incoming is None:
            continue
        if node.name() == _LEAF:
            found[id(node.variable)] = cleaned(incoming[0], node.variable.shape[2:])
            continue
        for (nxt, nr), window in zip(node.next_functions, window_backward(node, incoming)):
            if nxt is None or window is None:
                continue
            slot = pending.setdefault(nxt, {})
            slot[nr] = window if nr not in slot else add(slot[nr], window)
    return [found.get(id(leaf)) for leaf in leaves]
