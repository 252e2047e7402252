"""Receptive fields read off an autograd graph.

:func:`receptive_field` walks the graph from a feature map down to the input
and returns, per spatial axis, which input positions each feature cell can
depend on. It asks the operation table (:mod:`captum_similarity.lrp.ops`)
how far each operation reaches: convolutions and pooling (from the kernel,
stride, padding and dilation saved in the graph), strided slices, constant
padding (``F.pad``), shape-preserving element-wise operations, channel
concatenation, eval-mode BatchNorm and the rules' own functions. Anything
else (a global pooling, a reshape, attention, an upsampling, a broadcast over
space) makes it return ``None``: the answer is a guaranteed superset or
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .graph import node_shape, topological
from .ops import Axis, reach
from .seeds import cell_bounds

__all__ = ["ReceptiveField", "receptive_field"]


@dataclass(frozen=True)
class ReceptiveField:
    r"""Which input positions each cell of a feature map can depend on.

    Along spatial axis ``d``, cell ``i`` reads input positions
    ``stride[d] * i + start[d]`` to ``stride[d] * i + stop[d]`` (inclusive),
    clipped to the input's extent ``size[d]``. The range is exact for cells
    whose windows stay inside every feature map; at the border it may hold
    positions that only padding would have reached (a superset, never less).
    """

    stride: Tuple[int, ...]
    start: Tuple[int, ...]
    stop: Tuple[int, ...]
    size: Tuple[int, ...]

    def boxes(self, cells: Tensor) -> Tensor:
        """``(..., d, 2)`` first and last input position (inclusive) per axis of
        the cells ``(..., d)``; an empty box has first > last."""
        stride, start, stop, size = (
            torch.tensor(v, device=cells.device)
            for v in (self.stride, self.start, self.stop, self.size)
        )
        first = (cells * stride + start).clamp(min=0)
        last = torch.minimum(cells * stride + stop, size - 1)
        return torch.stack((first, last), dim=-1)

    def footprints(self, support: Tensor) -> Tensor:
        """``(..., d, 2)`` input box (first and last position per axis, inclusive)
        of each boolean cell ``support`` ``(..., *grid)``: the receptive field of
        the cells' bounding box; an empty support gives an empty box."""
        ndim = len(self.stride)
        lead = support.shape[: support.dim() - ndim]
        first, last = cell_bounds(support, ndim)
        low = self.boxes(first)[..., 0]
        high = self.boxes(last)[..., 1]
        empty = ~support.reshape(*lead, -1).any(-1)
        high = torch.where(empty[..., None], low - 1, high)
        return torch.stack((low, high), dim=-1)


def receptive_field(output: Tensor, leaves: Sequence[Tensor]) -> Optional[ReceptiveField]:
    """The receptive field of the cells of ``output`` ``(N, C, *spatial)`` in
    ``leaves`` (tensors of the input's shape whose gradients are read), or
    ``None`` when the graph between them holds an operation whose spatial reach
    is not known to be local, or the output does not depend on the leaves."""
    ndim = output.dim() - 2
    if ndim < 1 or output.grad_fn is None or not leaves:
        return None
    sizes = {tuple(leaf.shape[2:]) for leaf in leaves}
    if len(sizes) != 1 or any(leaf.dim() != output.dim() for leaf in leaves):
        return None
    leaf_ids = {id(leaf) for leaf in leaves}
    batch = output.shape[0]
    fields: Dict[object, List[Axis]] = {output.grad_fn: [(1, 0, 0)] * ndim}
    found: Optional[List[Axis]] = None
    for node in topological(output.grad_fn):
        axes = fields.get(node)
        if axes is None:
            continue
        if node.name() == "torch::autograd::AccumulateGrad":
            if id(node.variable) not in leaf_ids:
                return None
            found = axes if found is None else _merge(found, axes)
            if found is None:
                return None
            continue
        step = _step(node, axes, batch)
        if step is None:
            return None
        for nxt, nxt_axes in step:
            merged = nxt_axes if nxt not in fields else _merge(fields[nxt], nxt_axes)
            if merged is None:
                return None
            fields[nxt] = merged
    if found is None:
        return None
    (size,) = sizes
    return ReceptiveField(
        stride=tuple(a[0] for a in found),
        start=tuple(a[1] for a in found),
        stop=tuple(a[2] for a in found),
        size=size,
    )


def _step(node: object, axes: List[Axis], batch: int) -> Optional[List[Tuple[object, List[Axis]]]]:
    """The receptive fields passed to each node feeding ``node``, or None."""
    try:
        outputs = [node_shape(node, i) for i in range(len(node._input_metadata))]  # type: ignore[attr-defined]
    except AttributeError:  # a private autograd attribute this PyTorch does not have
        return None
    if any(len(s) != len(axes) + 2 or s[0] != batch for s in outputs):
        return None
    return reach(node, axes, batch)


def _merge(a: List[Axis], b: List[Axis]) -> Optional[List[Axis]]:
    if any(x[0] != y[0] for x, y in zip(a, b)):
        return None  # one input reached at two scales: not a plain feature pyramid
    return [(x[0], min(x[1], y[1]), max(x[2], y[2])) for x, y in zip(a, b)]
