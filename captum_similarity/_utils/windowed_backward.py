"""Backward passes computed only inside receptive-field windows.

A seed placed on a few cells of a feature map can only reach the receptive
field of those cells (see :mod:`.receptive_field`). :func:`windowed_backward`
walks the autograd graph itself and carries, for each seed, the gradient of
every intermediate tensor on the window that the seed can reach there, not
on the whole tensor: per node it applies the node's backward to all windows
at once (a transposed convolution, a scatter) or, for a product with what
the node saved (the rules' factors and masks, a ReLU's output), multiplies
each window by a view of the saved tensor, without cropped copies, in place
where nothing else reads the windows. The positions a transposed
convolution spills outside its input are zeroed only before the next
sliding-window operation. The work follows the area the seeds reach, whatever their
overlap, rather than one dense pass per group of seeds with disjoint
footprints. Windows keep the memory layout of the forward pass
(channels-last or not).

Only nodes whose backward it reproduces exactly are accepted (:func:`windowable`):
convolutions with constant weights, max and average pooling without padding
effects, strided slices, constant padding, channel concatenation, additions,
products with a saved tensor, ReLU, aliases and the LRP rules' own functions.
The results equal the full backward pass's up to floating-point summation
order.

Every window of one tensor has the same size and the seeds' windows are
offset from one another the same way at every node, so a node's backward
runs once for all seeds (a batch of windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lrp.canonizers import ConvAdjoint
from .receptive_field import _per_axis, _shape, _topological, pad_widths

__all__ = [
    "Windows",
    "add",
    "channels_last",
    "crop",
    "paste",
    "times_saved",
    "windowable",
    "windowed_backward",
]

_PASS_THROUGH = {"AliasBackward0", "CloneBackward0", "ViewBackward0"}
_SUPPORTED = _PASS_THROUGH | {
    "_RewiredBackward",
    "_SignSplitBackward",
    "_SignedLinearBackward",
    "AddBackward0",
    "SubBackward0",
    "MulBackward0",
    "MulBackward1",
    "NegBackward0",
    "ReluBackward0",
    "SliceBackward0",
    "ConstantPadNdBackward0",
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
            the tensor (may lie outside it).
        rows (Tensor): ``(U,)`` the batch row each window belongs to.
        clean (bool): Whether the contents outside the tensor are zero. A
            transposed convolution spills onto positions outside its input;
            they are zeroed only when the next sliding-window operation or a
            leaf is reached, and products with a saved tensor zero them on the
            way. Default: True
        owned (bool): Whether ``values`` may be overwritten: nothing else reads
            it. Products with a saved tensor then write in place, which spares
            the allocation of a fresh window set per node. Default: False
    """

    values: Tensor
    origin: Tensor
    rows: Tensor
    clean: bool = True
    owned: bool = False
    # per-window index plans (see _plan), shared by windows at the same place
    plans: Dict[object, list] = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> Tuple[int, ...]:
        return tuple(self.values.shape[2:])

    def moved(
        self,
        values: Tensor,
        origin: Optional[Tensor] = None,
        clean: Optional[bool] = None,
        owned: bool = True,
    ) -> "Windows":
        """New contents, on the same windows unless ``origin`` is given;
        ``owned``: ``values`` is a new tensor, or a view of this one's owned values."""
        return Windows(
            values,
            self.origin if origin is None else origin,
            self.rows,
            self.clean if clean is None else clean,
            owned,
            self.plans if origin is None else {},
        )


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
        if name == "_SignedLinearBackward" and not isinstance(node.adjoint, ConvAdjoint):
            return False
        if name == "AvgPool2DBackward0" and not _plain_average(node):
            return False
        if name == "CatBackward0" and any(f is None for f, _ in node.next_functions):
            return False
        if name == "MulBackward0" and not _local_factors(node):
            return False
        if name == "ConstantPadNdBackward0" and pad_widths(node, len(_shape(node, 0))) is None:
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
            found[id(node.variable)] = _cleaned(incoming[0], node.variable.shape[2:])
            continue
        for (nxt, nr), window in zip(node.next_functions, _node_backward(node, name, incoming)):
            if nxt is None or window is None:
                continue
            slot = pending.setdefault(nxt, {})
            slot[nr] = window if nr not in slot else add(slot[nr], window)
    return [found.get(id(leaf)) for leaf in leaves]


def _node_backward(
    node: object, name: str, incoming: Dict[int, Windows]
) -> List[Optional[Windows]]:
    """The node's backward on windows: one entry per ``next_functions`` entry."""
    if name == "_SignSplitBackward":
        (positive,) = node.saved_tensors  # type: ignore[attr-defined]  # 0/1: x >= 0
        pos, neg = incoming.get(0), incoming.get(1)
        if pos is not None and neg is not None:
            pos, neg = _common(pos, neg)
            return [_with_saved(_pick, positive, pos, neg.values)]
        if pos is not None:
            return [_with_saved(torch.mul, positive, pos)]
        return [_with_saved(_mul_not, positive, neg)]
    g = incoming[0]
    if name in _PASS_THROUGH:
        return [g]
    if name == "_SignedLinearBackward":
        (positive,) = node.saved_tensors  # type: ignore[attr-defined]  # 0/1: x >= 0
        adjoint = node.adjoint  # type: ignore[attr-defined]
        g = _cleaned(g, _shape(node, 0)[2:])
        keep = channels_last(positive)
        through_a, through_b = (
            _transposed(
                g, w, adjoint.stride, adjoint.padding, adjoint.dilation, adjoint.groups, keep
            )
            for w in node.weights  # type: ignore[attr-defined]
        )
        return [_with_saved(_pick, positive, through_a, through_b.values), None, None, None]
    if name == "_RewiredBackward":
        factor = node.factor  # type: ignore[attr-defined]
        return [None, g if factor is None else _with_saved(torch.mul, factor, g), None]
    if name in ("AddBackward0", "SubBackward0"):
        alpha = getattr(node, "_saved_alpha", 1) * (1 if name == "AddBackward0" else -1)
        first, second = _to_input(node, 0, g), _to_input(node, 1, _scaled(g, alpha))
        if first.values is second.values:  # both summands read the same windows
            first = second = g.moved(g.values, owned=False)
        return [first, second]
    if name == "NegBackward0":
        return [_scaled(g, -1)]
    if name == "MulBackward1":
        return [_scaled(g, node._saved_other)]  # type: ignore[attr-defined]
    if name == "MulBackward0":
        other, own = node._saved_other, node._saved_self  # type: ignore[attr-defined]
        if other is not None and own is not None:  # both products read g
            g = g.moved(g.values, owned=False)
        return [
            None if other is None else _to_input(node, 0, _with_saved(torch.mul, other, g)),
            None if own is None else _to_input(node, 1, _with_saved(torch.mul, own, g)),
        ]
    if name == "ReluBackward0":
        return [_with_saved(_mul_positive, node._saved_result, g)]  # type: ignore[attr-defined]
    if name == "SliceBackward0":
        return [_slice(node, g)]
    if name == "ConstantPadNdBackward0":
        return [_pad(node, g)]
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
    return g if factor == 1 else g.moved(g.values * factor)


# Element-wise steps with a saved tensor, in the form _with_saved calls them.
# Masks stay in floating point: boolean masks are several times slower on CPU.


def _pick(saved: Tensor, pos: Tensor, neg: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``pos`` where the 0/1 mask ``saved`` is 1, else ``neg`` (exact)."""
    return torch.lerp(neg, pos, saved, out=out)


def _mul_not(saved: Tensor, g: Tensor, out: Optional[Tensor] = None) -> Tensor:
    return torch.mul(g, 1 - saved, out=out)


def _mul_positive(saved: Tensor, g: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``g`` where the ReLU output ``saved`` is positive (its sign is the 0/1 mask)."""
    return torch.mul(g, saved.sign(), out=out)


def _with_saved(op: Callable[..., Tensor], full: Tensor, g: Windows, *others: Tensor) -> Windows:
    """``op(saved, g.values, *others, out=...)`` where ``saved`` is ``full``
    cropped to ``g``'s windows; zero outside ``full``. Each window's part
    inside ``full`` is computed from a view of ``full``, with no cropped copy;
    axes of size 1 broadcast as in :func:`crop`."""
    full = full.detach()
    values = g.values
    spatial = full.shape[2:]
    if full.dim() != values.dim() or 1 in spatial or full.shape[1] not in (1, values.shape[1]):
        # a scalar, or broadcast over space: nothing to crop along those axes
        saved = full if full.dim() == 0 else _crop(full, g)
        return g.moved(op(saved, values, *others), clean=g.clean and not others)
    dtype = torch.result_type(values, full)
    out = values if g.owned and values.dtype == dtype else torch.empty_like(values, dtype=dtype)
    for source, window, outside in _plan(g, tuple(spatial), full.shape[0] == 1):
        if source is not None:
            op(full[source], values[window], *(o[window] for o in others), out=out[window])
        for strip in outside:
            out[strip].zero_()
    return g.moved(out, clean=True)


def _plan(g: Windows, spatial: Tuple[int, ...], one_row: bool) -> list:
    """:func:`_window_plan` for ``g``'s windows, computed once per place and
    tensor extents."""
    key = (spatial, g.size, one_row)
    if key not in g.plans:
        g.plans[key] = _window_plan(g.rows, g.origin, g.size, spatial, one_row)
    return g.plans[key]


def _window_plan(
    rows: Tensor, origin: Tensor, size: Sequence[int], spatial: Sequence[int], one_row: bool
) -> list:
    """Per window (``rows``, ``origin``, ``size``) on a tensor of extents
    ``spatial``: the index of its part inside the tensor (in the tensor; None
    if empty), the index of that part in the windows ``(U, C, *size)``, and
    the indices of the windows' strips outside the tensor. With ``one_row``
    every window reads the tensor's only row."""
    plan = []
    every = slice(None)
    row_list = [0] * len(rows) if one_row else rows.tolist()
    for u, (row, start_at) in enumerate(zip(row_list, origin.tolist())):
        inner, outer = _overlap(start_at, size, spatial)
        if any(part.start == part.stop for part in inner):
            plan.append((None, None, [(u,)]))
            continue
        outside = [
            (u, every) + (every,) * d + (strip,)
            for d, (part, length) in enumerate(zip(inner, size))
            for strip in (slice(0, part.start), slice(part.stop, length))
            if strip.start < strip.stop
        ]
        plan.append(((row, every, *outer), (u, every, *inner), outside))
    return plan


def _overlap(
    start_at: Sequence[int], size: Sequence[int], spatial: Sequence[int]
) -> Tuple[List[slice], List[slice]]:
    """Per axis, the part of a window (from ``start_at``, ``size`` long) that
    lies inside ``[0, extent)``: as slices of the window and of the tensor
    (empty slices when they do not meet)."""
    inner, outer = [], []
    for extent, start, length in zip(spatial, start_at, size):
        lo = max(start, 0)
        hi = max(min(start + length, extent), lo)
        inner.append(slice(lo - start, hi - start))
        outer.append(slice(lo, hi))
    return inner, outer


def times_saved(full: Tensor, g: Windows) -> Windows:
    """``g``'s values times ``full`` ``(N or 1, C or 1, *spatial)`` on the same
    windows (zero outside ``full``), without cropping ``full`` first."""
    return _with_saved(torch.mul, full, g)


def crop(full: Tensor, rows: Tensor, origin: Tensor, size: Sequence[int]) -> Tensor:
    r"""Windows of ``full`` ``(N or 1, C or 1, *spatial or 1)``: for each ``u``,
    row ``rows[u]`` from ``origin[u]`` on, ``size`` long per spatial axis, zero
    outside ``full``; axes of size 1 broadcast (are not cropped).

    Returns:
        Tensor: ``(U, C or 1, *size or 1)``.
    """
    full = full.detach()
    spatial = tuple(full.shape[2:])
    broadcast = [d for d, extent in enumerate(spatial) if extent == 1]
    size = [1 if extent == 1 else length for extent, length in zip(spatial, size)]
    if broadcast:
        origin = origin.clone()
        origin[:, broadcast] = 0
    out = full.new_empty((len(rows), full.shape[1], *size))
    for source, window, outside in _window_plan(rows, origin, size, spatial, full.shape[0] == 1):
        if source is not None:
            out[window] = full[source]
        for strip in outside:
            out[strip].zero_()
    return out


def paste(target: Tensor, values: Tensor, origin: Sequence[int]) -> None:
    """Adds one window ``values`` ``(C, *size)`` into ``target`` ``(C, *spatial)``
    at ``origin``, dropping what falls outside (the inverse of :func:`crop`)."""
    inner, outer = _overlap(origin, values.shape[1:], target.shape[1:])
    target[(slice(None), *outer)] += values[(slice(None), *inner)]


def _crop(full: Tensor, like: Windows) -> Tensor:
    if full.dim() == 0:  # a scalar factor
        return full.detach()
    return crop(full, like.rows, like.origin, like.size)


def _common(a: Windows, b: Windows) -> Tuple[Windows, Windows]:
    """``a`` and ``b`` on one window covering both (their offset is the same for
    every seed: both descend from the same seed cells by the same maps)."""
    low = torch.minimum(a.origin, b.origin)
    high = torch.maximum(
        a.origin + a.origin.new_tensor(a.size), b.origin + b.origin.new_tensor(b.size)
    )
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
    if not a.owned and b.owned:
        a, b = b, a
    total = a.values.add_(b.values) if a.owned else a.values + b.values
    return a.moved(total, clean=a.clean and b.clean)


def _to_input(node: object, index: int, g: Windows) -> Windows:
    """``g`` summed over the channels that input ``index`` broadcast along."""
    nxt, nr = node.next_functions[index]  # type: ignore[attr-defined]
    if nxt is not None and _shape(nxt, nr)[1] == 1 and g.values.shape[1] != 1:
        return g.moved(g.values.sum(1, keepdim=True))
    return g


def _inside(
    values: Tensor, origin: Tensor, extents: Sequence[int], in_place: bool = False
) -> Tensor:
    """``values`` with the positions outside ``[0, extent)`` zeroed (in place
    with ``in_place``)."""
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
    return values.mul_(mask) if in_place else values * mask


def _cleaned(g: Windows, extents: Sequence[int]) -> Windows:
    """``g`` with the positions outside ``[0, extent)`` zeroed, if they may not be."""
    if g.clean:
        return g
    values = _inside(g.values, g.origin, extents, in_place=g.owned)
    return g.moved(values, clean=True, owned=g.owned or values is not g.values)


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
    g = _cleaned(g, _shape(node, 0)[2:])
    return _transposed(
        g,
        weight,
        _per_axis(node._saved_stride, ndim),  # type: ignore[attr-defined]
        _per_axis(node._saved_padding, ndim),  # type: ignore[attr-defined]
        _per_axis(node._saved_dilation, ndim),  # type: ignore[attr-defined]
        node._saved_groups,  # type: ignore[attr-defined]
        channels_last(node._saved_input),  # type: ignore[attr-defined]
    )


def _transposed(
    g: Windows,
    weight: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    keep_channels_last: bool,
) -> Windows:
    """The transposed convolution of clean windows ``g``: the input windows
    (the positions spilled outside the input are not zeroed yet)."""
    ndim = weight.dim() - 2
    values = _TRANSPOSED[ndim - 1](g.values, weight.detach(), None, stride, 0, 0, groups, dilation)
    if keep_channels_last:
        # keep the layout of the forward pass (lost where windows are 1x1)
        values = values.contiguous(memory_format=torch.channels_last)
    return g.moved(values, _scaled_origin(g, stride, padding), clean=False)


def channels_last(t: Tensor) -> bool:
    """Whether ``t`` is a 4-D tensor laid out channels-last (and not also plain contiguous)."""
    return (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def _zeros_like(like: Tensor, shape: Sequence[int]) -> Tensor:
    """Zeros of ``shape`` in ``like``'s dtype, device and memory layout."""
    layout = torch.channels_last if channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout).zero_()


def _slice(node: object, g: Windows) -> Windows:
    """``x[..., start:stop:step]`` along one axis, backwards."""
    ((nxt, nr),) = node.next_functions  # type: ignore[attr-defined]
    in_shape = _shape(nxt, nr)
    dim = node._saved_dim % len(in_shape)  # type: ignore[attr-defined]
    start, step = node._saved_start, node._saved_step  # type: ignore[attr-defined]
    start = start + in_shape[dim] if start < 0 else start
    if dim == 1:  # channels: the slice's channels go back to their places
        values = _zeros_like(g.values, (g.values.shape[0], in_shape[1]) + g.size)
        values[:, start : start + step * g.values.shape[1] : step] = g.values
        return g.moved(values)
    d = dim - 2
    size = list(g.size)
    size[d] = (size[d] - 1) * step + 1
    values = _zeros_like(g.values, g.values.shape[:2] + tuple(size))
    index = [slice(None)] * values.dim()
    index[dim] = slice(None, None, step)
    values[tuple(index)] = g.values
    origin = g.origin.clone()
    origin[:, d] = origin[:, d] * step + start
    return g.moved(values, origin)


def _pad(node: object, g: Windows) -> Windows:
    """``F.pad`` with a constant, backwards: the padded channels are dropped
    (cropped ones come back as zeros) and the windows move by the padding;
    the positions they hold outside the input (the padding's) are zeroed later."""
    widths = pad_widths(node, g.values.dim())
    if any(w < 0 for pair in widths for w in pair):  # a crop brings outer positions inside
        g = _cleaned(g, _shape(node, 0)[2:])
    values = g.values
    if widths[1] != (0, 0):  # channels: the inverse padding
        before, after = widths[1]
        values = F.pad(values, [0, 0] * (values.dim() - 2) + [-before, -after])
    shift = g.origin.new_tensor([before for before, _ in widths[2:]])
    spatial = any(pair != (0, 0) for pair in widths[2:])
    return g.moved(values, g.origin - shift, clean=g.clean and not spatial, owned=g.owned)


def _cat(node: object, g: Windows) -> List[Optional[Windows]]:
    """Concatenation along channels, backwards: each input gets its channels."""
    out: List[Optional[Windows]] = []
    first = 0
    for nxt, nr in node.next_functions:  # type: ignore[attr-defined]
        width = _shape(nxt, nr)[1]  # windowable() rules out constant inputs
        out.append(g.moved(g.values[:, first : first + width], owned=g.owned))
        first += width
    return out


def _max_pool(node: object, g: Windows) -> Windows:
    """Max pooling, backwards: each output's gradient goes to its argmax."""
    kernel = _per_axis(node._saved_kernel_size, 2)  # type: ignore[attr-defined]
    stride = _per_axis(node._saved_stride or kernel, 2)  # type: ignore[attr-defined]
    padding = _per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    dilation = _per_axis(node._saved_dilation, 2)  # type: ignore[attr-defined]
    _, width = _input_extent(node)
    g = _cleaned(g, _shape(node, 0)[2:])
    size = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(g.size, stride, dilation, kernel)]
    origin = _scaled_origin(g, stride, padding)
    flat = _crop(node._saved_result1, g)  # type: ignore[attr-defined]  # argmax: h * width + w
    top, left = (origin[:, d].reshape(-1, 1, 1, 1) for d in (0, 1))
    local = (flat // width - top) * size[1] + flat % width - left
    local = local.clamp(0, size[0] * size[1] - 1)  # cells outside the input carry a zero gradient
    values = g.values.new_zeros(g.values.shape[:2] + (size[0] * size[1],))
    values.scatter_add_(2, local.flatten(2), g.values.flatten(2))
    # clean: every gradient lands on an argmax inside the input (cells outside carry zero)
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
    g = _cleaned(g, _shape(node, 0)[2:])
    channels = g.values.shape[1]
    weight = g.values.new_full((channels, 1) + tuple(kernel), 1.0 / (kernel[0] * kernel[1]))
    values = F.conv_transpose2d(g.values, weight, None, stride, 0, 0, channels)
    return g.moved(values, _scaled_origin(g, stride, padding), clean=False)
