"""Per-branch layer attributions on a shared encoder.

Captum's layer methods record a layer with a forward hook. When
:class:`~captum_similarity.SiameseSimilarity` runs the encoder once on the two
branches interleaved, a layer attribution covers both images, row-interleaved:
:func:`split_branches` separates them. Layer methods that scale or perturb
the inputs (LayerConductance, LayerIntegratedGradients, LayerDeepLift, ...)
expect the layer's batch to equal the input batch, which a two-branch call
cannot give; :class:`BranchLayerAttribution` runs such a method once per
branch with the other branch's embedding held fixed.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Type, Union

import torch
from torch import Tensor, nn

from ._utils.inputs import broadcast_pair
from .siamese import SiameseSimilarity

__all__ = ["split_branches", "BranchLayerAttribution"]

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
