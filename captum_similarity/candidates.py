"""Layers a method can explain: the feature maps of an embedder, listed.

PAIR-X matches the cells of one layer; Grad-CAM and the decomposition map a
layer's grid onto the image. :func:`candidate_layers` runs the embedder once
and lists the layers whose output is such a grid, with its shape and, for
transformer tokens and channels-last maps, the ``reshape_transform`` that
makes it one; :func:`default_layer` picks one per architecture.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._utils.inputs import check_float_tensor
from ._utils.layers import grid_layout, list_layers, resolve_layer, unwrap_embedder
from ._utils.state import preserved_state
from .models.vit import ChannelsLast, TokenGrid

__all__ = [
    "CandidateLayer",
    "candidate_layers",
    "default_layer",
    "default_layer_module",
    "token_grid",
    "DEFAULT_STRIDE",
]

ReshapeTransform = Callable[[Tensor], Tensor]

#: The stride (input pixels per cell) :func:`default_layer` aims for.
DEFAULT_STRIDE = 16

_MAX_PREFIX_TOKENS = 8


class CandidateLayer(NamedTuple):
    """A layer whose output is a grid of cells (see :func:`candidate_layers`).

    Attributes:
        name (str): Its dotted name in the embedder.
        type (str): Its class name.
        shape (tuple of int): Its output shape for the example.
        grid (tuple of int): ``(h, w)`` of its grid of cells; ``(0, 0)`` for
            tokens whose grid could not be told.
        needs_reshape (bool): Whether its output needs a ``reshape_transform``
            that could not be chosen for it (tokens whose layout is ambiguous).
        layout (str): ``"channels_first"`` ``(N, C, h, w)``,
            ``"channels_last"`` ``(N, h, w, C)`` or ``"tokens"`` ``(N, T, C)``.
        reshape_transform (Callable or None): What turns the output into
            ``(N, C, h, w)``: the one given to :func:`candidate_layers`, else
            :class:`~captum_similarity.models.ChannelsLast` for a channels-last
            map and :class:`~captum_similarity.models.TokenGrid` for tokens
            whose prefix tokens and grid are unambiguous; None for a
            channels-first map.
    """

    name: str
    type: str
    shape: Tuple[int, ...]
    grid: Tuple[int, int]
    needs_reshape: bool
    layout: str = "channels_first"
    reshape_transform: Optional[ReshapeTransform] = None


def _model(embedder: nn.Module) -> nn.Module:
    model = unwrap_embedder(embedder)
    if not isinstance(model, nn.Module):
        raise TypeError(f"embedder must be an nn.Module, got {type(model).__name__}")
    return model


def token_grid(model: nn.Module, tokens: int, image: Sequence[int]) -> Optional[TokenGrid]:
    r"""The :class:`~captum_similarity.models.TokenGrid` of ``tokens`` tokens of
    a model run on ``image`` ``(H, W)`` images, when only one layout fits:
    ``p`` prefix tokens (the model's ``num_prefix_tokens`` when it declares
    one, else 0 to 8) followed by an ``h x w`` grid with the same integer
    stride along both axes. None when no layout or several fit.
    """
    declared = getattr(model, "num_prefix_tokens", None)
    prefixes = [declared] if isinstance(declared, int) else range(_MAX_PREFIX_TOKENS + 1)
    height, width = int(image[0]), int(image[1])
    found = []
    for prefix in prefixes:
        cells = tokens - prefix
        for h in range(1, cells + 1):
            if cells % h:
                continue
            w = cells // h
            if height % h == 0 and width % w == 0 and height // h == width // w:
                found.append(TokenGrid((h, w), prefix))
    return found[0] if len(found) == 1 else None


def candidate_layers(
    embedder: nn.Module,
    example: Tensor,
    reshape_transform: Optional[ReshapeTransform] = None,
) -> List[CandidateLayer]:
    r"""Layers whose output is a grid of cells to match, with their shapes.

    Runs the embedder once on ``example`` (without gradients, in eval mode;
    the model is left as found) and lists, in execution order, every
    submodule whose output is a feature map with more than one cell: laid out
    ``(N, C, h, w)``, or ``(N, h, w, C)`` (a grid that only fits the image
    that way, as Swin's stages and ConvNeXt's blocks between their permutes
    give), or transformer tokens ``(N, T, C)`` that ``reshape_transform`` (or
    an unambiguous :class:`~captum_similarity.models.TokenGrid`) turns into one.

    Args:
        embedder (nn.Module or SiameseSimilarity): The embedder.
        example (Tensor): An input batch, e.g. one image ``(1, C, H, W)``.
        reshape_transform (Callable, optional): Applied to 3-D outputs to get
            their grid (e.g. ``vit.token_grid``); without it, a token layer
            gets a :class:`~captum_similarity.models.TokenGrid` where the
            model's prefix tokens (``num_prefix_tokens`` if declared) and the
            image size leave one layout, and is listed with
            ``needs_reshape=True`` and grid ``(0, 0)`` otherwise.
            Default: None

    Returns:
        list of :class:`CandidateLayer`: ``(name, type, shape, grid,
        needs_reshape, layout, reshape_transform)``, with ``grid = (h, w)``.

    Example::

        >>> for layer in candidate_layers(model, torch.rand(1, 3, 224, 224)):
        ...     print(layer.name, layer.layout, layer.grid, layer.reshape_transform)
    """
    return [c for c, _ in _candidates(_model(embedder), example, reshape_transform)]


def _candidates(
    model: nn.Module, example: Tensor, reshape_transform: Optional[ReshapeTransform]
) -> List[Tuple[CandidateLayer, Any]]:
    check_float_tensor(example, "example")
    image = tuple(example.shape[-2:])
    outputs: List[Any] = []
    with preserved_state(model, eval_mode=True):
        found = list_layers(model, example, outputs)
    out: List[Tuple[CandidateLayer, Any]] = []
    for (name, kind, shape), output in zip(found, outputs):
        if len(shape) == 4:
            layout = grid_layout(shape, image)
            if layout == "channels_first" and shape[2] * shape[3] > 1:
                out.append((CandidateLayer(name, kind, shape, (shape[2], shape[3]), False), output))
            elif layout == "channels_last" and shape[1] * shape[2] > 1:
                grid = (shape[1], shape[2])
                candidate = CandidateLayer(name, kind, shape, grid, False, layout, ChannelsLast())
                out.append((candidate, output))
        elif len(shape) == 3:
            transform = reshape_transform or token_grid(model, shape[1], image)
            if transform is None:
                out.append((CandidateLayer(name, kind, shape, (0, 0), True, "tokens"), output))
                continue
            try:
                grid = transform(torch.zeros(shape, dtype=example.dtype))
            except (ValueError, RuntimeError):
                continue
            if grid.dim() == 4:
                size = (grid.shape[2], grid.shape[3])
                candidate = CandidateLayer(name, kind, shape, size, False, "tokens", transform)
                out.append((candidate, output))
    return out


def default_layer(
    embedder: nn.Module, example: Tensor
) -> CandidateLayer:
    r"""A layer to explain by default, with its ``reshape_transform``.

    Among the :func:`candidate_layers` whose grid is as coarse as possible
    without a stride above :data:`DEFAULT_STRIDE` (16 input pixels per cell,
    the third of a ResNet's four stages), it takes the *blocks* (modules held
    by an ``nn.Sequential`` or ``nn.ModuleList``, at the shallowest nesting
    level that has any) and picks:

    - for feature maps, the last one (the stage's output: ResNet ``layer3``,
      ConvNeXt's and Swin's third stage, DenseNet's third dense block), named
      by the outermost module returning that same tensor;
    - for transformer tokens, the one before the last (a ViT's penultimate
      block: the last block's patch tokens reach the class token only, so
      neither gradients nor relevance reach them in class-token models).

    Args:
        embedder (nn.Module or SiameseSimilarity): The embedder.
        example (Tensor): An input batch, e.g. one image ``(1, C, H, W)``.

    Returns:
        CandidateLayer: its ``reshape_transform`` is None for a channels-first
        map, and the transform to pass otherwise.

    Raises:
        ValueError: no layer's output is a grid (or only tokens of an
            ambiguous layout: pass ``layer`` and ``reshape_transform``).
    """
    model = _model(embedder)
    found = [(c, o) for c, o in _candidates(model, example, None) if not c.needs_reshape]
    if not found:
        raise ValueError(
            f"no layer of {type(model).__name__} gives a feature map for input "
            f"{tuple(example.shape)}; pass layer= (and reshape_transform= for tokens)"
        )
    height = example.shape[-2]
    strides = sorted({height / c.grid[0] for c, _ in found})
    below = [s for s in strides if s <= DEFAULT_STRIDE + 1e-9]
    stride = below[-1] if below else strides[0]
    stage = [(c, o) for c, o in found if height / c.grid[0] == stride]
    parents = _parents(model)
    blocks = [(c, o) for c, o in stage if isinstance(parents.get(c.name), (nn.Sequential, nn.ModuleList))]
    if blocks:
        depth = min(c.name.count(".") for c, _ in blocks)
        stage = [(c, o) for c, o in blocks if c.name.count(".") == depth]
    if stage[-1][0].layout == "tokens":
        return stage[-2][0] if len(stage) > 1 else stage[-1][0]
    chosen, output = stage[-1]
    same = [c for c, o in found if o is output]
    return min(same, key=lambda c: c.name.count("."))


def default_layer_module(
    embedder: nn.Module, example: Tensor, reshape_transform: Optional[ReshapeTransform]
) -> Tuple[nn.Module, Optional[ReshapeTransform]]:
    """The module of :func:`default_layer` for ``example`` and the transform to
    use with it: ``reshape_transform`` if given, else the default layer's."""
    chosen = default_layer(embedder, example[:1])
    return resolve_layer(embedder, chosen.name), reshape_transform or chosen.reshape_transform


def _parents(model: nn.Module) -> dict:
    """Dotted module name -> its parent module."""
    parents = {}
    for name, module in model.named_modules():
        for child, _ in module.named_children():
            parents[f"{name}.{child}" if name else child] = module
    return parents
