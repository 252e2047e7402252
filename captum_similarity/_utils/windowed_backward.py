"""Backward passes computed only inside receptive-field windows.

A seed placed on a few cells of a feature map can only reach the receptive
field of those cells (see :mod:`.receptive_field`). :func:`windowed_backward`
walks the autograd graph itself and carries, for each seed, the gradient of
every intermediate tensor on the window that the seed can reach there, not
on the whole tensor: per node it crops what the node saved (the rules'
factors and masks, a ReLU's output, pooling indices) to the windows and
applies the node's backward on them, batched over the seeds. The work then
follows the area the seeds reach, whatever their overlap, rather than one
dense pass per group of seeds with disjoint footprints.

Only nodes whose backward it reproduces exactly are accepted (:func:`windowable`):
convolutions with constant weights, max and average pooling without padding
effects, strided slices, channel concatenation, additions, products with a
saved tensor, ReLU, aliases and the LRP rules' own functions. The results
equal the full backward pass's up to floating-point summation order.

Every window of one tensor has the same size and the seeds' windows are
offset from one another the same way at every node, so a node's backward
runs once for all seeds (a batch of windows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .receptive_field import _per_axis, _shape, _topological

__all__ = ["Windows", "add", "crop", "windowable", "windowed_backward"]

_PASS_THROUGH = {"AliasBackward0", "CloneBackward0", "ViewBackward0"}
_SUPPORTED = _PASS_THROUGH | {
    "_RewiredBackward",
    "_SignSplitBackward",
    "AddBackward0",
    "SubBackward0",
    "MulBackward0",
    "MulBackward1",
    "NegBackward0",
    "ReluBackward0",
    "SliceBackward0",
    "CatBackward0",
    "ConvolutionBackward0",
    "MaxPool2DWithIndicesBackward0",
    "AvgPool2DBackward0",
    "torch::autograd::AccumulateGrad",
}
_TRANSPOSED = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


@dataclass
class Windows:
    r"""Equal-sized windows of a tensor ``(N, C, *spatial)``, one per seed.

    Attributes:
        values (Tensor): ``(U, C, *size)`` the windows' contents.
        origin (Tensor): ``(U, d)`` position of each window's first element in
            the tensor (may lie outside it; contents outside the tensor are zero).
        rows (Tensor): ``(U,)`` the batch row each window belongs to.
    """

    values: Tensor
    origin: Tensor
    rows: Tensor

    @property
    def size(self) -> Tuple[int, ...]:
        return tuple(self.values.shape[2:])

    def moved(self, values: Tensor, origin: Tensor) -> "Windows":
        return Windows(values, origin, self.rows)


def windowable(output: Tensor, leaves: Sequence[Tensor]) -> bool:
    """Whether every node between ``output`` and ``leaves`` is one that
    :func:`windowed_backward` reproduces (the receptive field must also be
    known: check :func:`~.receptive_field.receptive_field` first)."""
    if output.grad_fn is None:
        return False
    leaf_ids = {id(leaf) for leaf in leaves}
    for node in _topological(output.grad_fn):
        name = node.name()
        if name not in _SUPPORTED:
            return False
        if name == "torch::autograd::AccumulateGrad" and id(node.variable) not in leaf_ids:
            return False
        if name == "ConvolutionBackward0" and (
            node._saved_transposed or any(f is not None for f, _ in node.next_functions[1:])
        ):
            return False
        if name == "AvgPool2DBackward0" and not _plain_average(node):
            return False
        if name == "CatBackward0" and any(f is None for f, _ in node.next_functions):
            return False
        if name == "MulBackward0" and not _local_factors(node):
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
    for node in _topological(output.grad_fn):
        incoming = pending.pop(node, None)
        if incoming is None:
            continue
        name = node.name()
        if name == "torch::autograd::AccumulateGrad":
            found[id(node.variable)] = incoming[0]
            continue
        for (nxt, nr), window in zip(node.next_functions, _node_backward(node, name, incoming)):
            if nxt is None or window is None:
                continue
            slot = pending.setdefault(nxt, {})
            slot[nr] = window if nr not in slot else add(slot[nr], window)
    return [found.get(id(leaf)) for leaf in leaves]


def _node_backward(node: object, name: str, incoming: Dict[int, Windows]) -> List[Optional[Windows]]:
    """The node's backward on windows: one entry per ``next_functions`` entry."""
    if name == "_SignSplitBackward":
        (positive,) = node.saved_tensors  # type: ignore[attr-defined]
        pos, neg = incoming.get(0), incoming.get(1)
        if pos is not None and neg is not None:
            pos, neg = _common(pos, neg)
            return [pos.moved(torch.lerp(neg.values, pos.values, _crop(positive, pos)), pos.origin)]
        part = pos if pos is not None else neg
        mask = _crop(positive, part)
        return [part.moved(part.values * (mask if neg is None else 1 - mask), part.origin)]
    g = incoming[0]
    if name in _PASS_THROUGH:
        return [g]
    if name == "_RewiredBackward":
        factor = node.factor  # type: ignore[attr-defined]
        return [None, g if factor is None else g.moved(g.values * _crop(factor, g), g.origin), None]
    if name == "AddBackward0":
        alpha = getattr(node, "_saved_alpha", 1)
        return [_to_input(node, 0, g), _to_input(node, 1, _scaled(g, alpha))]
    if name == "SubBackward0":
        alpha = getattr(node, "_saved_alpha", 1)
        return [_to_input(node, 0, g), _to_input(node, 1, _scaled(g, -alpha))]
    if name == "NegBackward0":
        return [_scaled(g, -1)]
    if name == "MulBackward1":
        return [_scaled(g, node._saved_other)]  # type: ignore[attr-defined]
    if name == "MulBackward0":
        other, own = node._saved_other, node._saved_self  # type: ignore[attr-defined]
        return [
            None if other is None else _to_input(node, 0, g.moved(g.values * _crop(other, g), g.origin)),
            None if own is None else _to_input(node, 1, g.moved(g.values * _crop(own, g), g.origin)),
        ]
    if name == "ReluBackward0":
        result = _crop(node._saved_result, g)  # type: ignore[attr-defined]
        return [g.moved(g.values * (result > 0).to(g.values.dtype), g.origin)]
    if name == "SliceBackward0":
        return [_slice(node, g)]
    if name == "CatBackward0":
        return _cat(node, g)
    if name == "ConvolutionBackward0":
        return [_convolution(node, g), None, None]
    if name == "MaxPool2DWithIndicesBackward0":
        return [_max_pool(node, g)]
    if name == "AvgPool2DBackward0":
        return [_average_pool(node, g)]
    raise AssertionError(f"unsupported node {name}")  # windowable() rules this out


def _scaled(g: Windows, factor: object) -> Windows:
    return g if factor == 1 else g.moved(g.values * factor, g.origin)


def crop(full: Tensor, rows: Tensor, origin: Tensor, size: Sequence[int]) -> Tensor:
    r"""Windows of ``full`` ``(N or 1, C or 1, *spatial or 1)``: for each ``u``,
    row ``rows[u]`` from ``origin[u]`` on, ``size`` long per spatial axis, zero
    outside ``full``; axes of size 1 broadcast (are not cropped).

    Returns:
        Tensor: ``(U, C or 1, *size or 1)``.
    """
    full = full.detach()
    spatial = full.shape[2:]
    row_list = rows.tolist() if full.shape[0] > 1 else [0] * len(rows)
    pieces = []
    for row, start_at in zip(row_list, origin.tolist()):
        index: List[object] = [row, slice(None)]
        pad: List[int] = []
        for extent, start, length in zip(spatial, start_at, size):
            if extent == 1:
                index.append(slice(None))
                pad[:0] = [0, 0]
                continue
            lo, hi = max(start, 0), min(start + length, extent)
            index.append(slice(lo, max(hi, lo)))
            pad[:0] = [lo - start, start + length - max(hi, lo)]
        piece = full[tuple(index)]
        pieces.append(F.pad(piece, pad) if any(pad) else piece)
    return torch.stack(pieces)


def _crop(full: Tensor, like: Windows) -> Tensor:
    if full.dim() == 0:  # a scalar factor
        return full.detach()
    return crop(full, like.rows, like.origin, like.size)


def _common(a: Windows, b: Windows) -> Tuple[Windows, Windows]:
    """``a`` and ``b`` on one window covering both (their offset is the same for
    every seed: both descend from the same seed cells by the same maps)."""
    low = torch.minimum(a.origin, b.origin)
    high = torch.maximum(a.origin + a.origin.new_tensor(a.size), b.origin + b.origin.new_tensor(b.size))
    size = (high - low)[0].tolist()
    return _placed(a, low, size), _placed(b, low, size)


def _placed(w: Windows, origin: Tensor, size: Sequence[int]) -> Windows:
    shift = (w.origin - origin)[0].tolist()
    if shift == [0] * len(shift) and list(w.size) == list(size):
        return w
    pad: List[int] = []
    for before, length, total in zip(shift, w.size, size):
        pad[:0] = [before, total - before - length]
    return w.moved(F.pad(w.values, pad), origin)


def add(a: Windows, b: Windows) -> Windows:
    """The sum of two window sets of one tensor (same seeds), on windows covering both."""
    a, b = _common(a, b)
    return a.moved(a.values + b.values, a.origin)


def _to_input(node: object, index: int, g: Windows) -> Windows:
    """``g`` summed over the channels that input ``index`` broadcast along."""
    nxt, nr = node.next_functions[index]  # type: ignore[attr-defined]
    if nxt is not None and _shape(nxt, nr)[1] == 1 and g.values.shape[1] != 1:
        return g.moved(g.values.sum(1, keepdim=True), g.origin)
    return g


def _inside(values: Tensor, origin: Tensor, extents: Sequence[int]) -> Tensor:
    """``values`` with the positions outside ``[0, extent)`` zeroed."""
    size = values.shape[2:]
    if bool((origin >= 0).all()) and all(
        int(origin[:, d].max()) + size[d] <= extents[d] for d in range(len(size))
    ):
        return values
    mask = None
    for d, (extent, length) in enumerate(zip(extents, size)):
        position = origin[:, d : d + 1] + torch.arange(length, device=origin.device)  # (U, length)
        hit = ((position >= 0) & (position < extent)).to(values.dtype)
        shape = (len(origin), 1) + tuple(length if e == d else 1 for e in range(len(size)))
        mask = hit.reshape(shape) if mask is None else mask * hit.reshape(shape)
    return values * mask


def _scaled_origin(g: Windows, stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """Where a sliding window's input windows start: ``origin * stride - padding``."""
    return g.origin * g.origin.new_tensor(stride) - g.origin.new_tensor(padding)


def _input_extent(node: object, index: int = 0) -> List[int]:
    nxt, nr = node.next_functions[index]  # type: ignore[attr-defined]
    return list(_shape(nxt, nr)[2:])


def _convolution(node: object, g: Windows) -> Windows:
    """Gradient of a convolution's input on the windows that the output's reach."""
    weight = node._saved_weight  # type: ignore[attr-defined]
    ndim = weight.dim() - 2
    stride = _per_axis(node._saved_stride, ndim)  # type: ignore[attr-defined]
    padding = _per_axis(node._saved_padding, ndim)  # type: ignore[attr-defined]
    dilation = _per_axis(node._saved_dilation, ndim)  # type: ignore[attr-defined]
    values = _TRANSPOSED[ndim - 1](
        g.values, weight.detach(), None, stride, 0, 0, node._saved_groups, dilation  # type: ignore[attr-defined]
    )
    origin = _scaled_origin(g, stride, padding)
    return g.moved(_inside(values, origin, _input_extent(node)), origin)


def _slice(node: object, g: Windows) -> Windows:
    """``x[..., start:stop:step]`` along one axis, backwards."""
    ((nxt, nr),) = node.next_functions  # type: ignore[attr-defined]
    in_shape = _shape(nxt, nr)
    dim = node._saved_dim % len(in_shape)  # type: ignore[attr-defined]
    start, step = node._saved_start, node._saved_step  # type: ignore[attr-defined]
    start = start + in_shape[dim] if start < 0 else start
    if dim == 1:  # channels: the slice's channels go back to their places
        values = g.values.new_zeros((g.values.shape[0], in_shape[1]) + g.size)
        values[:, start : start + step * g.values.shape[1] : step] = g.values
        return g.moved(values, g.origin)
    d = dim - 2
    size = list(g.size)
    size[d] = (size[d] - 1) * step + 1
    values = g.values.new_zeros(g.values.shape[:2] + tuple(size))
    index = [slice(None)] * values.dim()
    index[dim] = slice(None, None, step)
    values[tuple(index)] = g.values
    origin = g.origin.clone()
    origin[:, d] = origin[:, d] * step + start
    return g.moved(values, origin)


def _cat(node: object, g: Windows) -> List[Optional[Windows]]:
    """Concatenation along channels, backwards: each input gets its channels."""
    out: List[Optional[Windows]] = []
    first = 0
    for nxt, nr in node.next_functions:  # type: ignore[attr-defined]
        width = _shape(nxt, nr)[1]  # windowable() rules out constant inputs
        out.append(g.moved(g.values[:, first : first + width], g.origin))
        first += width
    return out


def _max_pool(node: object, g: Windows) -> Windows:
    """Max pooling, backwards: each output's gradient goes to its argmax."""
    kernel = _per_axis(node._saved_kernel_size, 2)  # type: ignore[attr-defined]
    stride = _per_axis(node._saved_stride or kernel, 2)  # type: ignore[attr-defined]
    padding = _per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    dilation = _per_axis(node._saved_dilation, 2)  # type: ignore[attr-defined]
    _, width = _input_extent(node)
    size = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(g.size, stride, dilation, kernel)]
    origin = _scaled_origin(g, stride, padding)
    flat = _crop(node._saved_result1, g)  # type: ignore[attr-defined]  # argmax: h * width + w
    top, left = (origin[:, d].reshape(-1, 1, 1, 1) for d in (0, 1))
    local = (flat // width - top) * size[1] + flat % width - left
    local = local.clamp(0, size[0] * size[1] - 1)  # cells outside the input carry a zero gradient
    values = g.values.new_zeros(g.values.shape[:2] + (size[0] * size[1],))
    values.scatter_add_(2, local.flatten(2), g.values.flatten(2))
    return g.moved(values.reshape(g.values.shape[:2] + tuple(size)), origin)


def _local_factors(node: object) -> bool:
    """A product whose saved operands are scalars or have the output's rank
    (broadcasting along size-1 axes only)."""
    rank = len(_shape(node, 0))
    saved = (node._saved_self, node._saved_other)  # type: ignore[attr-defined]
    return all(t is None or t.dim() in (0, rank) for t in saved)


def _plain_average(node: object) -> bool:
    """An average pooling whose every window divides by the kernel's area."""
    padding = _per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    return (
        node._saved_divisor_override is None  # type: ignore[attr-defined]
        and not node._saved_ceil_mode  # type: ignore[attr-defined]
        and (padding == (0, 0) or node._saved_count_include_pad)  # type: ignore[attr-defined]
    )


def _average_pool(node: object, g: Windows) -> Windows:
    """Average pooling, backwards: a transposed convolution with a flat kernel."""
    kernel = _per_axis(node._saved_kernel_size, 2)  # type: ignore[attr-defined]
    stride = _per_axis(node._saved_stride or kernel, 2)  # type: ignore[attr-defined]
    padding = _per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    channels = g.values.shape[1]
    weight = g.values.new_full((channels, 1) + tuple(kernel), 1.0 / (kernel[0] * kernel[1]))
    values = F.conv_transpose2d(g.values, weight, None, stride, 0, 0, channels)
    origin = _scaled_origin(g, stride, padding)
    return g.moved(_inside(values, origin, _input_extent(node)), origin)
