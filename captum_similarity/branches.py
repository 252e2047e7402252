"""Per-branch layer attributions on a shared encoder.

Captum's layer methods record a layer with a forward hook. When
:class:`~captum_similarity.SiameseSimilarity` runs the encoder once on the two
branches interleaved, a layer attribution covers both images, row-interleaved:
:func:`split_branches` separates them. Layer methods that scale or perturb
the inputs (LayerConductance, LayerIntegratedGradients, LayerDeepLift, ...)
expect the layer's batch to equal the input batch, which a two-branch call
cannot give; :class:`BranchLayerAttribution` runs such a method once per
branch with the other branch's embedding held fixed. Captum's layer methods
read a layer's output as ``(N, C, h, w)``; :class:`GridView` shows them
transformer tokens and channels-last maps in that layout.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ._utils.inputs import broadcast_pair
from ._utils.layers import LayerSpec, resolve_layer
from .candidates import candidate_layers, default_layer
from .siamese import SiameseSimilarity

__all__ = ["split_branches", "BranchLayerAttribution", "GridView"]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def split_branches(attributions: TensorOrTuple) -> Tuple[TensorOrTuple, TensorOrTuple]:
    r"""Splits a one-pass layer attribution into the two images' parts.

    Use it on what a Captum layer method (LayerGradCam, LayerActivation,
    LayerGradientXActivation, LayerLRP, ...) returns for a layer inside the
    embedder of a :class:`~captum_similarity.SiameseSimilarity`, when both
    sides were images of the same shape (so the encoder ran once on the
    interleaved batch). With a batch-1 image reference broadcast against ``N``
    queries, each of the ``N`` reference rows belongs to its own pair.

    Args:
        attributions (Tensor or tuple of Tensor): Layer attributions with
            ``2 * N`` rows, interleaved ``[x1[0], x2[0], x1[1], x2[1], ...]``.

    Returns:
        tuple: ``(first, second)``, each with ``N`` rows, tensors or tuples of
        tensors as the input was.

    Example::

        >>> gc = LayerGradCam(sim, sim.embedder.features[-1])
        >>> maps1, maps2 = split_branches(gc.attribute(x1, additional_forward_args=(x2,)))
    """
    if isinstance(attributions, tuple):
        parts = [split_branches(a) for a in attributions]
        return tuple(p[0] for p in parts), tuple(p[1] for p in parts)
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a Tensor or a tuple, got {type(attributions).__name__}")
    if attributions.dim() == 0 or attributions.shape[0] % 2:
        raise ValueError(
            f"a two-branch layer attribution has an even number of rows, got shape "
            f"{tuple(attributions.shape)}; was one side a precomputed embedding, or were "
            "the two images of different shapes (then the encoder ran twice)?"
        )
    return attributions[0::2], attributions[1::2]


class _SecondBranch(nn.Module):
    """``forward(x2, f1) = model(f1, x2)``: the second image as the explained input."""

    def __init__(self, model: SiameseSimilarity) -> None:
        super().__init__()
        self.model = model

    def forward(self, x2: Tensor, f1: Tensor) -> Tensor:
        return self.model(f1, x2)


class BranchLayerAttribution:
    r"""Runs any Captum layer method once per branch, the other branch fixed.

    For the first image, the method explains ``x -> s(x, f(x2))`` with
    ``f(x2)`` computed beforehand and passed as a precomputed embedding, so the
    encoder runs on the first image only and the layer's batch equals the
    input batch; likewise for the second image with ``f(x1)`` fixed. This is
    the recipe for layer methods that scale or perturb inputs
    (LayerConductance, LayerIntegratedGradients, LayerDeepLift,
    InternalInfluence, LayerFeatureAblation), and it works for every other
    layer method too.

    Args:
        method (type): A Captum layer attribution class taking
            ``(forward_func, layer, **init_kwargs)``.
        model (SiameseSimilarity): The similarity model.
        layer (nn.Module): A layer inside ``model``'s embedder.
        **init_kwargs: Passed to ``method``'s constructor.

    Example::

        >>> from captum.attr import LayerConductance
        >>> lc = BranchLayerAttribution(LayerConductance, sim, sim.embedder.features[2])
        >>> c1, c2 = lc.attribute((x1, x2), n_steps=32)
    """

    def __init__(
        self, method: Type[Any], model: SiameseSimilarity, layer: nn.Module, **init_kwargs: Any
    ) -> None:
        if not isinstance(model, SiameseSimilarity):
            raise TypeError(f"model must be a SiameseSimilarity, got {type(model).__name__}")
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        self.model = model
        self.first = method(model, layer, **init_kwargs)
        self.second = method(_SecondBranch(model), layer, **init_kwargs)

    def attribute(
        self,
        inputs: Tuple[Tensor, Tensor],
        baselines: Optional[Any] = None,
        **kwargs: Any,
    ) -> Tuple[Any, Any]:
        r"""Layer attributions of both images.

        Args:
            inputs (tuple of Tensor): ``(x1, x2)``, images of batch ``N`` (a
                batch-1 side is broadcast).
            baselines (optional): None; one baseline for both branches; or a
                tuple ``(b1, b2)`` with one per branch, in any form the method
                accepts.
                Default: None
            **kwargs: Passed to ``method.attribute`` for both branches
                (``n_steps``, ``attribute_to_layer_input``, ...).
                ``additional_forward_args`` is not accepted.

        Returns:
            tuple: ``(attributions of x1, attributions of x2)``, each what the
            method returns for a single input.
        """
        if not isinstance(inputs, tuple) or len(inputs) != 2:
            raise TypeError("inputs must be a tuple (x1, x2)")
        if "additional_forward_args" in kwargs:
            raise TypeError(
                "additional_forward_args is set per branch (the other image's embedding)"
            )
        x1, x2 = broadcast_pair(*inputs)
        if isinstance(baselines, tuple) and len(baselines) == 2:
            b1, b2 = baselines
        else:
            b1 = b2 = baselines
        with torch.no_grad():
            f1 = self.model.embed(x1).detach()
            f2 = self.model.embed(x2).detach()
        if baselines is None:
            a1 = self.first.attribute(x1, additional_forward_args=(f2,), **kwargs)
            a2 = self.second.attribute(x2, additional_forward_args=(f1,), **kwargs)
        else:
            a1 = self.first.attribute(x1, baselines=b1, additional_forward_args=(f2,), **kwargs)
            a2 = self.second.attribute(x2, baselines=b2, additional_forward_args=(f1,), **kwargs)
        return a1, a2


class GridView(nn.Module):
    r"""The model with one layer's output shown as a feature map
    ``(N, C, h, w)``, for Captum's layer methods.

    Captum's ``LayerGradCam`` (and every layer method) reads the recorded
    layer's output as ``(N, C, h, w)``: given transformer tokens
    ``(N, T, C)`` it averages gradients over the channels and returns "maps"
    over channels, and a channels-last map ``(N, h, w, C)`` is read with its
    axes mixed up. ``GridView(model, layer)`` runs ``model`` with the layer's
    output passed through ``reshape_transform`` and its inverse, the grid in
    between going through the identity module :attr:`grid`: explain
    ``view.grid`` instead of the layer. The values are the model's; the layer
    is hooked only while the view runs.

    Args:
        model (nn.Module): A :class:`~captum_similarity.SiameseSimilarity`
            (or any model whose first argument is an image batch).
        layer (nn.Module or str, optional): A layer inside ``model`` (or
            inside its embedder, by name). None: the
            :func:`~captum_similarity.candidates.default_layer` of the first
            images the view sees, with its transform.
            Default: None
        reshape_transform (Callable, optional): Turns the layer's output into
            ``(N, C, h, w)`` and has an ``inverse(grid, like)`` method:
            :class:`~captum_similarity.models.TokenGrid`,
            :class:`~captum_similarity.models.ChannelsLast`. None: the one
            :func:`~captum_similarity.candidate_layers` chooses for the layer
            (none for a channels-first map).
            Default: None

    Example::

        >>> from captum.attr import LayerGradCam
        >>> view = GridView(SiameseSimilarity(vit), "blocks.10")
        >>> maps = LayerGradCam(view, view.grid).attribute(x1, additional_forward_args=(x2,))
        >>> m1, m2 = split_branches(maps)          # (N, 1, h, w) each
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Optional[LayerSpec] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if reshape_transform is not None and not callable(getattr(reshape_transform, "inverse", None)):
            raise TypeError(
                "reshape_transform must have an inverse(grid, like) method (TokenGrid, ChannelsLast)"
            )
        self.model = model
        self.grid = nn.Identity()
        self._embedder = model.embedder if isinstance(model, SiameseSimilarity) else model
        self._layer = None if layer is None else resolve_layer(self._embedder, layer)
        self.reshape_transform = reshape_transform
        self._resolved = False

    @property
    def layer(self) -> Optional[nn.Module]:
        """The viewed layer (None until the first call when chosen by default)."""
        return self._layer

    def _resolve(self, example: Tensor) -> None:
        if self._resolved:
            return
        image = example[:1]
        if self._layer is None:
            chosen = default_layer(self._embedder, image)
            self._layer = resolve_layer(self._embedder, chosen.name)
            transform = chosen.reshape_transform
        else:
            name = next(n for n, m in self._embedder.named_modules() if m is self._layer)
            listed = [c for c in candidate_layers(self._embedder, image) if c.name == name]
            transform = listed[0].reshape_transform if listed else None
        if self.reshape_transform is None:
            self.reshape_transform = transform
        self._resolved = True

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if self.reshape_transform is None:
            return self.grid(output)
        grid = self.grid(self.reshape_transform(output))
        return self.reshape_transform.inverse(grid, output)  # type: ignore[attr-defined]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        images = [a for a in args if isinstance(a, Tensor) and a.dim() == 4]
        if images:
            self._resolve(images[0])
        elif not self._resolved:
            raise ValueError("GridView needs an image batch (N, C, H, W) among its inputs")
        handle = self._layer.register_forward_hook(self._hook)  # type: ignore[union-attr]
        try:
            return self.model(*args, **kwargs)
        finally:
            handle.remove()
