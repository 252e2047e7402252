"""Layers a method can explain: the feature maps of an embedder, listed.

PAIR-X matches the cells of one layer; Grad-CAM and the decomposition map a
layer's grid onto the image. :func:`candidate_layers` runs the embedder once
and lists the layers whose output is such a grid, with its shape.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._utils.checks import check_float_tensor
from ._utils.layers import list_layers
from ._utils.state import preserved_state
from .siamese import SiameseSimilarity

__all__ = ["CandidateLayer", "candidate_layers", "default_layer"]

#: The smallest grid side :func:`default_layer` takes.
DEFAULT_MIN_GRID = 7

ReshapeTransform = Callable[[Tensor], Tensor]


class CandidateLayer(NamedTuple):
    """A layer whose output is a grid of cells (see :func:`candidate_layers`).

    Attributes:
        name (str): Its dotted name in the embedder.
        type (str): Its class name.
        shape (tuple of int): Its output shape for the example.
        grid (tuple of int): ``(h, w)`` of its grid of cells; ``(0, 0)`` for
            tokens without a ``reshape_transform``.
        needs_reshape (bool): Whether its output is transformer tokens that
            need a ``reshape_transform`` to become a grid.
    """

    name: str
    type: str
    shape: Tuple[int, ...]
    grid: Tuple[int, int]
    needs_reshape: bool


def candidate_layers(
    embedder: Union[nn.Module, SiameseSimilarity],
    example: Tensor,
    reshape_transform: Optional[ReshapeTransform] = None,
) -> List[CandidateLayer]:
    r"""Layers whose output is a grid of cells to match, with their shapes.

    Runs the embedder once on ``example`` (without gradients, in eval mode;
    the model is left as found) and lists, in execution order, every
    submodule whose output is a feature map ``(N, C, h, w)`` with more than
    one cell, or transformer tokens ``(N, T, C)`` that ``reshape_transform``
    turns into one.

    Args:
        embedder (nn.Module or SiameseSimilarity): The embedder.
        example (Tensor): An input batch, e.g. one image ``(1, C, H, W)``.
        reshape_transform (Callable, optional): Applied to 3-D outputs to get
            their grid (e.g. ``vit.token_grid``); without it, token layers are
            listed with ``needs_reshape=True`` and grid ``(0, 0)``.
            Default: None

    Returns:
        list of :class:`CandidateLayer`: ``(name, type, shape, grid,
        needs_reshape)``, with ``grid = (h, w)``.

    Example::

        >>> for layer in candidate_layers(model, torch.rand(1, 3, 224, 224)):
        ...     print(layer.name, layer.shape, layer.grid)
    """
    model = embedder.embedder if isinstance(embedder, SiameseSimilarity) else embedder
    if not isinstance(model, nn.Module):
        raise TypeError(f"embedder must be an nn.Module, got {type(model).__name__}")
    check_float_tensor(example, "example")
    with preserved_state(model, eval_mode=True):
        found = list_layers(model, example)
    out: List[CandidateLayer] = []
    for name, kind, shape in found:
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            out.append(CandidateLayer(name, kind, shape, (shape[2], shape[3]), False))
        elif len(shape) == 3:
            if reshape_transform is None:
                out.append(CandidateLayer(name, kind, shape, (0, 0), True))
                continue
            try:
                grid = reshape_transform(torch.zeros(shape, dtype=example.dtype))
            except (ValueError, RuntimeError):
                continue
            if grid.dim() == 4:
                out.append(CandidateLayer(name, kind, shape, (grid.shape[2], grid.shape[3]), False))
    return out


def default_layer(
    embedder: Union[nn.Module, SiameseSimilarity],
    example: Tensor,
    min_grid: int = DEFAULT_MIN_GRID,
) -> Optional[CandidateLayer]:
    r"""A sensible layer to explain when none is given.

    The last layer, in execution order, of :func:`candidate_layers` whose
    grid is at least ``min_grid`` cells on both sides: the deepest feature
    map that still localises (a block's container finishes after the layers
    inside it, so the whole block is preferred to its last convolution).
    When no grid is that large, the layer with the largest grid (the last
    of those).

    Args:
        embedder (nn.Module or SiameseSimilarity): The embedder.
        example (Tensor): An input batch, e.g. one image ``(1, C, H, W)``.
        min_grid (int, optional): Smallest grid side.
            Default: 7

    Returns:
        CandidateLayer or None: None when the embedder has no layer with a
        grid (e.g. an MLP).
    """
    found = [c for c in candidate_layers(embedder, example) if not c.needs_reshape]
    if not found:
        return None
    large = [c for c in found if min(c.grid) >= min_grid]
    if large:
        return large[-1]
    widest = max(c.grid[0] * c.grid[1] for c in found)
    return [c for c in found if c.grid[0] * c.grid[1] == widest][-1]
