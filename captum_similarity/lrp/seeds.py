"""Planning the backward passes of many local seeds.

PAIR-X explains each of its matches by a seed of relevance on one or a few
cells of a feature map, propagated down to the pixels. A seed can only reach
the receptive field of its cells (its *footprint*, a box per image), which
allows two exact shortcuts over one dense backward pass per seed:

- *packing*: seeds of one image whose footprints do not overlap share one
  dense pass, and each seed's map is cut out of the result by its footprint;
  :func:`pack` colours the overlap graph of the footprints
  (:func:`disjoint_colouring`) and says how many passes that takes;
- *windows*: one backward pass that keeps, for each seed, only the window of
  each tensor it can reach; :func:`plan_windows` sizes the windows and
  decides whether they cover less input than the packed passes would.

:class:`~captum_similarity.lrp.engine.RelevancePass` runs the passes these
plans describe. Everything here is arithmetic on boxes and cell masks; the
receptive field is anything with per-axis ``stride``, ``start`` and ``stop``
and a ``footprints`` method (a
:class:`~captum_similarity.lrp.ops.ReceptiveField`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "WINDOW_BUDGET",
    "Packing",
    "WindowPlan",
    "box_mask",
    "cell_bounds",
    "disjoint_colouring",
    "pack",
    "plan_windows",
]

#: Windows of one windowed backward cover at most this many times the input of the pass.
WINDOW_BUDGET = 4


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


def box_mask(boxes: Tensor, size: Sequence[int], dtype: torch.dtype) -> Tensor:
    """``(..., *size)`` indicator of the boxes ``(..., d, 2)`` (first and last
    position per axis, inclusive)."""
    mask = None
    for d, extent in enumerate(size):
        index = torch.arange(extent, device=boxes.device)
        inside = (index >= boxes[..., d, :1]) & (index <= boxes[..., d, 1:])  # (..., extent)
        shape = inside.shape[:-1] + (1,) * d + (extent,) + (1,) * (len(size) - d - 1)
        inside = inside.reshape(shape)
        mask = inside if mask is None else mask & inside
    return mask.to(dtype)


@dataclass
class Packing:
    """Seeds ``(K, N, C, *grid)`` sorted into dense passes.

    Attributes:
        support (Tensor): ``(K, N, *grid)`` bool, the cells each seed row touches.
        boxes (Tensor): ``(K, N, d, 2)`` the input footprint of each seed row.
        groups (Tensor): ``(N, K)`` the pass each seed row joins; seed rows of
            one image in one pass have disjoint footprints.
        passes (int): How many dense passes the groups need.
    """

    support: Tensor
    boxes: Tensor
    groups: Tensor
    passes: int

    def packed(self, seeds: Tensor) -> Tensor:
        """``(passes, *seeds.shape[1:])``: the seeds of each pass summed."""
        chosen = F.one_hot(self.groups, self.passes).permute(2, 0, 1).to(seeds.dtype)  # (G, N, K)
        return torch.einsum("gnk,kn...->gn...", chosen, seeds)

    def unpacked(self, maps: Tensor) -> Tensor:
        """Each seed's map ``(K, N, C, *input)`` cut out of the passes' maps
        ``(passes, N, C, *input)`` by its footprint."""
        rows = torch.arange(self.groups.shape[0], device=maps.device)
        picked = maps[self.groups.T, rows]  # (K, N, C, *input)
        return picked * box_mask(self.boxes, maps.shape[3:], picked.dtype)[:, :, None]


def pack(seeds: Tensor, field: Any) -> Packing:
    """The packing of ``seeds`` ``(K, N, C, *grid)`` whose cells reach the
    input through the receptive field ``field``."""
    support = seeds.detach().ne(0).any(2)  # (K, N, *grid)
    boxes = field.footprints(support)  # (K, N, d, 2)
    groups = disjoint_colouring(boxes.transpose(0, 1))  # (N, K)
    passes = int(groups.max()) + 1 if groups.numel() else 0
    return Packing(support, boxes, groups, passes)


@dataclass
class WindowPlan:
    """How the windowed backward pass runs a set of seeds.

    Attributes:
        units (Tensor): ``(U, 2)`` the ``(seed, row)`` pairs that touch any cell.
        first (Tensor): ``(U, d)`` the first cell of each unit's bounding box.
        size (list of int): The window size at the seeded layer (the largest
            bounding box, per axis): every unit gets a window of this size.
        chunks (list of Tensor): Indices into ``units`` of the units run in one
            windowed backward each (their windows cover at most
            :data:`WINDOW_BUDGET` times the input of the pass).
    """

    units: Tensor
    first: Tensor
    size: List[int]
    chunks: List[Tensor]


def plan_windows(
    support: Tensor, field: Any, spatial: Sequence[int], passes: int
) -> Optional[WindowPlan]:
    """The windowed plan for seeds touching ``support`` ``(K, N, *grid)`` cells,
    or None when no seed touches a cell or the windows would cover at least
    as much input (of spatial size ``spatial`` per image) as ``passes`` dense
    passes do."""
    n = support.shape[1]
    units = support.flatten(2).any(2).nonzero()  # (U, 2): seed, row
    if not len(units):
        return None
    cells = support[units[:, 0], units[:, 1]]  # (U, *grid)
    first, last = cell_bounds(cells, cells.dim() - 1)  # (U, d)
    size = (last - first + 1).amax(0).tolist()
    # input positions one window reaches, against those of the dense passes
    area = math.prod(
        (m - 1) * st + b - a + 1 for m, st, a, b in zip(size, field.stride, field.start, field.stop)
    )
    if area * len(units) >= passes * n * math.prod(spatial):
        return None
    chunk = max(1, WINDOW_BUDGET * n * math.prod(spatial) // area)
    return WindowPlan(units, first, size, list(torch.arange(len(units)).split(chunk)))


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
    ).all(
        -1
    )  # (..., K, K)
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
