"""Windows: the gradient of a tensor kept only where a seed can reach it.

A seed placed on a few cells of a feature map can only reach the receptive
field of those cells. The windowed backward pass
(:func:`~captum_similarity.lrp.ops.windowed_backward`) carries, for each seed, the
gradient of every intermediate tensor on one window of it (the part the seed
can reach) instead of the whole tensor. This module holds that data
structure, :class:`Windows`, and the arithmetic on it that every operation's
windowed backward is made of: cropping and pasting windows, adding two window
sets of one tensor, products with a tensor the forward pass saved (computed
on views of the saved tensor, without cropped copies, in place where nothing
else reads the windows), transposed convolutions, and zeroing the positions
a window holds outside its tensor.

Every window of one tensor has the same size and the seeds' windows are
offset from one another the same way at every node, so an operation runs
once for all seeds (a batch of windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Windows",
    "add",
    "channels_last",
    "cleaned",
    "common",
    "crop",
    "crop_to",
    "mul_not",
    "mul_positive",
    "paste",
    "pick",
    "scaled",
    "scaled_origin",
    "times_saved",
    "transposed",
    "with_saved",
    "zeros_in_layout",
]

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


def scaled(g: Windows, factor: object) -> Windows:
    """``g`` times a constant."""
    return g if factor == 1 else g.moved(g.values * factor)


# Element-wise steps with a saved tensor, in the form with_saved calls them.
# Masks stay in floating point: boolean masks are several times slower on CPU.


def pick(saved: Tensor, pos: Tensor, neg: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``pos`` where the 0/1 mask ``saved`` is 1, else ``neg`` (exact)."""
    return torch.lerp(neg, pos, saved, out=out)


def mul_not(saved: Tensor, g: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``g`` where the 0/1 mask ``saved`` is 0."""
    return torch.mul(g, 1 - saved, out=out)


def mul_positive(saved: Tensor, g: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``g`` where the ReLU output ``saved`` is positive (its sign is the 0/1 mask)."""
    return torch.mul(g, saved.sign(), out=out)


def with_saved(op: Callable[..., Tensor], full: Tensor, g: Windows, *others: Tensor) -> Windows:
    """``op(saved, g.values, *others, out=...)`` where ``saved`` is ``full``
    cropped to ``g``'s windows; zero outside ``full``. Each window's part
    inside ``full`` is computed from a view of ``full``, with no cropped copy;
    axes of size 1 broadcast as in :func:`crop`."""
    full = full.detach()
    values = g.values
    spatial = full.shape[2:]
    if full.dim() != values.dim() or 1 in spatial or full.shape[1] not in (1, values.shape[1]):
        # a scalar, or broadcast over space: nothing to crop along those axes
        saved = full if full.dim() == 0 else crop_to(full, g)
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
    return with_saved(torch.mul, full, g)


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


def crop_to(full: Tensor, like: Windows) -> Tensor:
    """``full`` cropped to the windows of ``like`` (a 0-d tensor as it is)."""
    if full.dim() == 0:  # a scalar factor
        return full.detach()
    return crop(full, like.rows, like.origin, like.size)


def common(a: Windows, b: Windows) -> Tuple[Windows, Windows]:
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
    a, b = common(a, b)
    if not a.owned and b.owned:
        a, b = b, a
    total = a.values.add_(b.values) if a.owned else a.values + b.values
    return a.moved(total, clean=a.clean and b.clean)


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


def cleaned(g: Windows, extents: Sequence[int]) -> Windows:
    """``g`` with the positions outside ``[0, extent)`` zeroed, if they may not be."""
    if g.clean:
        return g
    values = _inside(g.values, g.origin, extents, in_place=g.owned)
    return g.moved(values, clean=True, owned=g.owned or values is not g.values)


def scaled_origin(g: Windows, stride: Sequence[int], padding: Sequence[int]) -> Tensor:
    """Where a sliding window's input windows start: ``origin * stride - padding``."""
    return g.origin * g.origin.new_tensor(stride) - g.origin.new_tensor(padding)


def transposed(
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
    return g.moved(values, scaled_origin(g, stride, padding), clean=False)


def channels_last(t: Tensor) -> bool:
    """Whether ``t`` is a 4-D tensor laid out channels-last (and not also plain contiguous)."""
    return (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    )


def zeros_in_layout(like: Tensor, shape: Sequence[int]) -> Tensor:
    """Zeros of ``shape`` in ``like``'s dtype, device and memory layout."""
    layout = torch.channels_last if channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout).zero_()
