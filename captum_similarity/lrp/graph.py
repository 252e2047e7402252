"""Reading and rewriting the autograd graph of a relevance pass.

The engine's rules turn a model's forward pass into a graph whose backward
pass is LRP. Several parts of the LRP wing walk that graph: the engine (to
check that a folded layer's raw output left the graph, and to merge rule
factors), the receptive-field walk and the windowed backward pass. The
helpers they share live here: the order of the walk, readers of what a node
saved, and the factor merging.

Built-in autograd nodes keep what their backward needs as private
attributes (``node._saved_stride``, ``node._input_metadata``); the readers
here raise ``AttributeError`` where a PyTorch version lacks one, and the
walks that use them treat that node as one they do not know.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from torch import Tensor

__all__ = [
    "function_class",
    "topological",
    "reachable",
    "node_shape",
    "per_axis",
    "pad_widths",
    "fuse_factors",
]


def function_class(node: object) -> Optional[type]:
    """The ``torch.autograd.Function`` subclass whose backward ``node`` runs,
    or None for a node of a built-in operation."""
    return getattr(type(node), "_forward_cls", None)


def topological(*roots: object) -> List[object]:
    """Nodes reachable from ``roots``, each after every node that feeds it a gradient."""
    consumers: Dict[object, int] = defaultdict(int)
    seen: Set[object] = set(roots)
    stack = list(seen)
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:  # type: ignore[attr-defined]
            if nxt is None:
                continue
            consumers[nxt] += 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    order, ready = [], [r for r in seen if r in roots and not consumers[r]]
    while ready:
        node = ready.pop()
        order.append(node)
        for nxt, _ in node.next_functions:  # type: ignore[attr-defined]
            if nxt is None:
                continue
            consumers[nxt] -= 1
            if consumers[nxt] == 0:
                ready.append(nxt)
    return order


def reachable(roots: Iterable[object]) -> Set[object]:
    """Every node of the graph below the tensors (or nodes) ``roots``."""
    stack = [getattr(r, "grad_fn", r) for r in roots]
    seen: Set[object] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions)  # type: ignore[attr-defined]
    return seen


def node_shape(node: object, index: int) -> Tuple[int, ...]:
    """The shape of the node's ``index``-th output (the tensor whose gradient
    it receives there)."""
    return tuple(node._input_metadata[index].shape)  # type: ignore[attr-defined]


def per_axis(value: object, ndim: int) -> Optional[Tuple[int, ...]]:
    """A saved stride, padding, dilation or kernel size as one integer per
    spatial axis, or None when it is not one."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(isinstance(v, int) for v in values):
        return None
    return values


def pad_widths(node: object, dims: int) -> Optional[List[Tuple[int, int]]]:
    """``(before, after)`` per dimension of a ``ConstantPadNd`` node on a
    ``dims``-dimensional tensor (negative: cropped), or None when it pads the
    batch dimension."""
    # last dimension first; negative widths come back as unsigned 64-bit integers
    saved = node._saved_pad  # type: ignore[attr-defined]
    pad = [w - (1 << 64) if w >= 1 << 63 else w for w in saved]
    widths = [(0, 0)] * dims
    for j in range(len(pad) // 2):
        widths[dims - 1 - j] = (pad[2 * j], pad[2 * j + 1])
    return None if widths[0] != (0, 0) else widths


def fuse_factors(roots: Sequence[Tensor], function: type) -> None:
    r"""Merges chains of constant gradient factors in the graph below ``roots``, in place.

    ``function`` is an autograd Function whose node scales the gradient it
    receives by ``node.factor`` (None: no factor) and hands it to its input
    1 (the engine's :class:`~captum_similarity.lrp.rules.Rewired`). Where
    such a node ``A`` (factor ``f_A``) hands its gradient to another one, ``B``
    (factor ``f_B`` of the same shape and dtype), and nothing else feeds
    ``B``, every backward pass computes ``grad * f_A * f_B``: ``B`` takes the
    product as its factor and ``A`` passes its gradient through. An
    activation's factor and the factor of the layer below it (``silu(x) / x``
    and ``x / z^+``) are then kept as one tensor, for the graph's lifetime.
    Only the gradient of the tensor between ``A`` and ``B`` changes, so
    ``roots`` must hold every tensor whose gradient is seeded or read (the
    output, the recorded layers').
    """

    def factored(node: object) -> bool:
        return (
            node is not None
            and function_class(node) is function
            and node.factor is not None  # type: ignore[attr-defined]
        )

    entries = {t.grad_fn for t in roots if t.grad_fn is not None}
    order = topological(*entries)
    feeders: Dict[object, int] = {node: 1 for node in entries}
    for node in order:
        for nxt, _ in node.next_functions:  # type: ignore[attr-defined]
            if nxt is not None:
                feeders[nxt] = feeders.get(nxt, 0) + 1
    # in topological order a chain's first factor reaches its last
    for node in order:
        if not factored(node):
            continue
        below, _ = node.next_functions[1]  # type: ignore[attr-defined]
        if (
            factored(below)
            and feeders[below] == 1
            and below.factor.shape == node.factor.shape  # type: ignore[attr-defined]
            and below.factor.dtype == node.factor.dtype  # type: ignore[attr-defined]
        ):
            below.factor = below.factor.mul_(node.factor)  # type: ignore[attr-defined]
            node.factor = None  # type: ignore[attr-defined]
