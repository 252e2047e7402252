"""Receptive fields read off an autograd graph.

:func:`receptive_field` walks the graph from a feature map down to the input
and returns, per spatial axis, which input positions each feature cell can
depend on. It accepts only operations whose spatial reach it knows:
convolutions and pooling (from the kernel, stride, padding and dilation saved
in the graph), strided slices, constant padding (``F.pad``), shape-preserving
element-wise operations, channel concatenation and eval-mode BatchNorm.
Anything else (a global pooling, a reshape, attention, an upsampling, a
broadcast over space) makes it return ``None``: the answer is a guaranteed
superset or nothing.

:func:`disjoint_colouring` then sorts seeds into groups whose input
footprints do not overlap, so that one backward pass serves a whole group
(the backward pass is linear in its seed, and each seed's result is zero
outside its footprint).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor

from ..lrp.canonizers import ConvAdjoint

__all__ = ["ReceptiveField", "cell_bounds", "disjoint_colouring", "pad_widths", "receptive_field"]

# autograd nodes of operations that map each position to the same position
_ELEMENTWISE = {
    "AbsBackward0",
    "AddBackward0",
    "AddBackward1",
    "CloneBackward0",
    "ClampBackward1",
    "ClampMaxBackward0",
    "ClampMinBackward0",
    "DivBackward0",
    "DivBackward1",
    "EluBackward0",
    "ExpBackward0",
    "GeluBackward0",
    "HardsigmoidBackward0",
    "HardswishBackward0",
    "HardtanhBackward0",
    "LeakyReluBackward0",
    "MulBackward0",
    "MulBackward1",
    "NegBackward0",
    "PowBackward0",
    "ReluBackward0",
    "SigmoidBackward0",
    "SiluBackward0",
    "SqrtBackward0",
    "SubBackward0",
    "SubBackward1",
    "TanhBackward0",
    "ThresholdBackward0",
    "ToCopyBackward0",
    "WhereBackward0",
    # the LRP rules' own functions (captum_similarity.lrp.rules)
    "_RewiredBackward",
    "_SignSplitBackward",
}
# aliases: allowed when they leave the shape as it is
_ALIASES = {"AliasBackward0", "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0"}
_POOLS = {
    "MaxPool1DWithIndicesBackward0",
    "MaxPool2DWithIndicesBackward0",
    "MaxPool3DWithIndicesBackward0",
    "AvgPool2DBackward0",
    "AvgPool3DBackward0",
}
_BATCHNORM = {"NativeBatchNormBackward0", "CudnnBatchNormBackward0"}

_Axis = Tuple[int, int, int]  # (stride, start, stop): cell i reads [stride*i+start, stride*i+stop]


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


def cell_bounds(support: Tensor, ndim: int) -> Tuple[Tensor, Tensor]:
    """First and last cell ``(..., d)`` per axis of the boolean maps ``support``
    ``(..., *grid)`` with ``d = ndim`` grid axes; an empty map gives
    first = grid size and last = -1."""
    first, last = [], []
    for d in range(ndim):
        others = tuple(support.dim() - ndim + e for e in range(ndim) if e != d)
        hit = support.any(dim=others) if others else support  # (..., grid_d)
        index = torch.arange(hit.shape[-1], device=support.device)
        first.append(torch.where(hit, index, hit.shape[-1]).amin(-1))
        last.append(torch.where(hit, index, -1).amax(-1))
    return torch.stack(first, -1), torch.stack(last, -1)


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
    order = _topological(output.grad_fn)
    reach: Dict[object, List[_Axis]] = {output.grad_fn: [(1, 0, 0)] * ndim}
    found: Optional[List[_Axis]] = None
    for node in order:
        axes = reach.get(node)
        if axes is None:
            continue
        name = node.name()
        if name == "torch::autograd::AccumulateGrad":
            if id(node.variable) not in leaf_ids:
                return None
            found = axes if found is None else _merge(found, axes)
            if found is None:
                return None
            continue
        step = _step(node, name, axes, output.shape[0])
        if step is None:
            return None
        for nxt, nxt_axes in step:
            merged = nxt_axes if nxt not in reach else _merge(reach[nxt], nxt_axes)
            if merged is None:
                return None
            reach[nxt] = merged
    if found is None:
        return None
    (size,) = sizes
    return ReceptiveField(
        stride=tuple(a[0] for a in found),
        start=tuple(a[1] for a in found),
        stop=tuple(a[2] for a in found),
        size=size,
    )


def _topological(*roots: object) -> List[object]:
    """Nodes reachable from ``roots``, each after every node that feeds it a gradient."""
    consumers: Dict[object, int] = defaultdict(int)
    seen: Set[object] = set(roots)
    stack = list(seen)
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
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
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            consumers[nxt] -= 1
            if consumers[nxt] == 0:
                ready.append(nxt)
    return order


def _merge(a: List[_Axis], b: List[_Axis]) -> Optional[List[_Axis]]:
    if any(x[0] != y[0] for x, y in zip(a, b)):
        return None  # one input reached at two scales: not a plain feature pyramid
    return [(x[0], min(x[1], y[1]), max(x[2], y[2])) for x, y in zip(a, b)]


def _shape(node: object, index: int) -> Tuple[int, ...]:
    return tuple(node._input_metadata[index].shape)  # type: ignore[attr-defined]


def _step(
    node: object, name: str, axes: List[_Axis], batch: int
) -> Optional[List[Tuple[object, List[_Axis]]]]:
    """The receptive fields passed to each node feeding ``node``, or None."""
    out_shapes = [_shape(node, i) for i in range(len(node._input_metadata))]  # type: ignore[attr-defined]
    ndim = len(axes)
    if any(len(s) != ndim + 2 or s[0] != batch for s in out_shapes):
        return None
    inputs = [(nxt, nr) for nxt, nr in node.next_functions if nxt is not None]
    if name in _ELEMENTWISE or name in _ALIASES or name in _BATCHNORM or name == "CatBackward0":
        if name in _BATCHNORM and getattr(node, "_saved_training", True):
            return None  # batch statistics mix positions
        if name == "CatBackward0" and node._saved_dim not in (1, -ndim - 1):  # type: ignore[attr-defined]
            return None
        for nxt, nr in inputs:
            shape = _shape(nxt, nr)
            if name in _ALIASES and shape != out_shapes[0]:
                return None
            if len(shape) != ndim + 2 or shape[0] != batch or shape[2:] != out_shapes[0][2:]:
                return None  # broadcast over the batch or over space
        return [(nxt, axes) for nxt, _ in inputs]
    if name == "SliceBackward0":
        return _slice(node, axes, batch)
    if name == "ConstantPadNdBackward0":
        return _pad(node, axes)
    if name == "ConvolutionBackward0":
        if node._saved_transposed:  # type: ignore[attr-defined]
            return None
        data, weight, bias = node.next_functions  # type: ignore[attr-defined]
        if data[0] is None or weight[0] is not None or bias[0] is not None:
            return None  # weights computed from the input
        kernel = tuple(node._saved_weight.shape[2:])  # type: ignore[attr-defined]
        geometry = (node._saved_stride, node._saved_padding, node._saved_dilation)  # type: ignore[attr-defined]
        return _window(data, axes, kernel, geometry, out_shapes[0], ceil=False)
    if name == "_SignedLinearBackward":  # the rules' sign-split convolution
        adjoint = node.adjoint  # type: ignore[attr-defined]
        data = node.next_functions[0]  # type: ignore[attr-defined]
        if not isinstance(adjoint, ConvAdjoint) or data[0] is None:
            return None  # a Linear layer: not local
        kernel = tuple(node.weights[0].shape[2:])  # type: ignore[attr-defined]
        geometry = (adjoint.stride, adjoint.padding, adjoint.dilation)
        return _window(data, axes, kernel, geometry, out_shapes[0], ceil=False)
    if name in _POOLS:
        (data,) = [(nxt, nr) for nxt, nr in node.next_functions[:1]]  # type: ignore[attr-defined]
        if data[0] is None:
            return None
        kernel = tuple(node._saved_kernel_size)  # type: ignore[attr-defined]
        ceil = bool(getattr(node, "_saved_ceil_mode", False))
        geometry = (
            getattr(node, "_saved_stride", None) or kernel,
            getattr(node, "_saved_padding", 0),
            getattr(node, "_saved_dilation", 1),
        )
        return _window(data, axes, kernel, geometry, out_shapes[0], ceil=ceil)
    return None


def _window(
    data: Tuple[object, int],
    axes: List[_Axis],
    kernel: Tuple[int, ...],
    geometry: Tuple[object, object, object],
    out_shape: Tuple[int, ...],
    ceil: bool,
) -> Optional[List[Tuple[object, List[_Axis]]]]:
    """A sliding window (convolution, pooling) of ``geometry`` = ``(stride,
    padding, dilation)``: cell ``o`` reads
    ``o * stride - padding + dilation * [0, kernel - 1]``."""
    ndim = len(axes)
    stride, padding, dilation = (_per_axis(v, ndim) for v in geometry)
    in_shape = _shape(data[0], data[1])
    if None in (stride, padding, dilation) or len(kernel) != ndim or len(in_shape) != ndim + 2:
        return None
    for d in range(ndim):  # the saved parameters must explain the shapes
        span = in_shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1
        expected = (-(-span // stride[d]) if ceil else span // stride[d]) + 1
        if expected != out_shape[2 + d] and not (ceil and expected - 1 == out_shape[2 + d]):
            return None
    reached = [
        (
            s * stride[d],
            a * stride[d] - padding[d],
            b * stride[d] - padding[d] + dilation[d] * (kernel[d] - 1),
        )
        for d, (s, a, b) in enumerate(axes)
    ]
    return [(data[0], reached)]


def _slice(
    node: object, axes: List[_Axis], batch: int
) -> Optional[List[Tuple[object, List[_Axis]]]]:
    """``x[..., start::step]`` along one axis: cell ``o`` reads ``start + step * o``."""
    ((data, nr),) = node.next_functions  # type: ignore[attr-defined]
    in_shape = _shape(data, nr)
    ndim = len(axes)
    dim = node._saved_dim % (ndim + 2)  # type: ignore[attr-defined]
    if dim == 1:  # channels
        return [(data, axes)]
    if dim == 0 or len(in_shape) != ndim + 2 or in_shape[0] != batch:
        return None
    start, step = node._saved_start, node._saved_step  # type: ignore[attr-defined]
    start = start + in_shape[dim] if start < 0 else start
    d = dim - 2
    reached = list(axes)
    s, a, b = axes[d]
    reached[d] = (s * step, a * step + start, b * step + start)
    return [(data, reached)]


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


def _pad(node: object, axes: List[_Axis]) -> Optional[List[Tuple[object, List[_Axis]]]]:
    """``F.pad`` with a constant: output position ``o`` is input position
    ``o - before`` along each padded axis (padded channels change nothing)."""
    ((data, _),) = node.next_functions  # type: ignore[attr-defined]
    widths = pad_widths(node, len(axes) + 2)
    if data is None or widths is None:
        return None
    return [
        (data, [(s, a - before, b - before) for (s, a, b), (before, _) in zip(axes, widths[2:])])
    ]


def _per_axis(value: object, ndim: int) -> Optional[Tuple[int, ...]]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not all(isinstance(v, int) for v in values):
        return None
    return values


def disjoint_colouring(boxes: Tensor) -> Tensor:
    """Groups ``(..., K)`` for the boxes ``(..., K, d, 2)`` such that boxes of
    one group never overlap (per leading index; empty boxes overlap nothing),
    with few groups: a colouring of the overlap graph, DSatur's greedy one
    (Brelaz, 1979) improved, for up to 64 boxes, by a bounded backtracking
    search for one with fewer colours (the fewest, for the ten or so boxes of
    PAIR-X)."""
    first, last = boxes[..., 0], boxes[..., 1]  # (..., K, d)
    overlap = (
        (first[..., :, None, :] <= last[..., None, :, :])
        & (first[..., None, :, :] <= last[..., :, None, :])
    ).all(-1)  # (..., K, K)
    nonempty = (first <= last).all(-1)  # (..., K)
    overlap &= nonempty[..., :, None] & nonempty[..., None, :]
    k = boxes.shape[-3]
    overlap &= ~torch.eye(k, dtype=torch.bool, device=boxes.device)
    flat = overlap.reshape(-1, k, k).cpu().tolist()
    colours = [_fewest_colours(adjacency) for adjacency in flat]
    return torch.tensor(colours, dtype=torch.long, device=boxes.device).reshape(boxes.shape[:-2])


def _dsatur(adjacency: List[List[bool]]) -> List[int]:
    k = len(adjacency)
    neighbours = [[j for j, hit in enumerate(row) if hit] for row in adjacency]
    colour = [-1] * k
    seen: List[Set[int]] = [set() for _ in range(k)]  # colours among each vertex's neighbours
    for _ in range(k):
        v = max(
            (i for i in range(k) if colour[i] < 0),
            key=lambda i: (len(seen[i]), len(neighbours[i]), -i),
        )
        c = next(c for c in range(k) if c not in seen[v])
        colour[v] = c
        for j in neighbours[v]:
            seen[j].add(c)
    return colour


_SEARCH_LIMIT = 64  # vertices: the backtracking recurses once per vertex


def _fewest_colours(adjacency: List[List[bool]], budget: int = 20_000) -> List[int]:
    """DSatur's colouring, then (up to ``_SEARCH_LIMIT`` vertices) colourings
    with one colour fewer while a search within ``budget`` steps finds one."""
    best = _dsatur(adjacency)
    if len(adjacency) > _SEARCH_LIMIT:
        return best
    steps = [budget]
    while best and max(best) > 0:
        fewer = _colour_within(adjacency, max(best), steps)
        if fewer is None:
            break
        best = fewer
    return best


def _colour_within(
    adjacency: List[List[bool]], colours: int, steps: List[int]
) -> Optional[List[int]]:
    """A colouring with at most ``colours`` colours by backtracking (vertices
    by decreasing degree, a new colour only after all used ones), or None
    when there is none or ``steps[0]`` runs out."""
    k = len(adjacency)
    order = sorted(range(k), key=lambda i: -sum(adjacency[i]))
    colour = [-1] * k

    def place(position: int, used: int) -> bool:
        if position == k:
            return True
        steps[0] -= 1
        if steps[0] < 0:
            return False
        v = order[position]
        taken = {colour[j] for j in range(k) if adjacency[v][j] and colour[j] >= 0}
        for c in range(min(used + 1, colours)):
            if c not in taken:
                colour[v] = c
                if place(position + 1, max(used, c + 1)):
                    return True
        colour[v] = -1
        return False

    return colour if place(0, 0) else None
