"""The autograd functions and arithmetic behind the LRP rules.

The engine propagates ``c = R / a``, the relevance per unit of activation, as
the gradient. A rule returns a tensor with the layer's exact output values
whose gradient implements the rule; :class:`Rewired` is that tensor's node:
the values of the forward pass, the gradient of another tensor ``t`` (the
modified layer), optionally scaled by a constant factor. :class:`SignedLinear`
and :class:`SignSplit` split a layer's input into its positive and negative
parts (for z+, alpha-beta and gamma on inputs of both signs) keeping only the
0/1 sign mask for the backward pass.

Element-wise choices use masks of the data's dtype and arithmetic that is
exact for 0/1 weights: on a CPU, ``torch.where`` with a boolean mask costs
several times a multiplication, and these run on every activation.

The windowed backward pass reproduces these functions' backward passes; their
handlers are registered by class in :mod:`captum_similarity.lrp.ops`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "Rewired",
    "SignedLinear",
    "SignSplit",
    "with_values",
    "divide_or_zero",
    "share",
    "nonnegative",
    "held_layer_norm",
    "held_group_norm",
]


def divide_or_zero(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, zero where the denominator is zero."""
    ratio = numerator / denominator
    # a zero denominator gives an infinite or NaN ratio: a finite sum rules it out
    if not bool(torch.isfinite(ratio.sum())):
        ratio[(denominator == 0).expand_as(ratio)] = 0
    return ratio


def share(z: Tensor, denominator: Tensor, epsilon: float, sign: int = 0) -> Tensor:
    """``z / (denominator + epsilon * sign)``, zero where the denominator is zero
    (the sign of a zero denominator counts as positive). ``sign`` = 1 or -1
    declares a denominator known to have that sign (or be zero)."""
    d = denominator.detach()
    if epsilon > 0:  # the stabilised denominator is never zero
        if sign:
            return z / (d + sign * epsilon)
        stabiliser = nonnegative(d).mul_(2 * epsilon).sub_(epsilon)  # +-epsilon
        return z / stabiliser.add_(d)
    return divide_or_zero(z, d)


class Rewired(torch.autograd.Function):
    """``values`` in the forward pass; in the backward pass the gradient goes to
    ``t`` only, scaled by ``factor`` when one is given."""

    # forward(ctx, ...) rather than a separate setup_context: apply() then skips
    # binding the arguments to the signature, a cost paid per rule per pass
    @staticmethod
    def forward(ctx: Any, values: Tensor, t: Tensor, factor: Optional[Tensor]) -> Tensor:
        ctx.factor = factor
        # A new tensor on the module output's own storage, not a copy: an in-place
        # operation downstream (ReLU(inplace=True), ``out += shortcut``) writes to
        # that output as it does without the rule; the rules read it before this.
        return values.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[None, Tensor, None]:
        return None, grad if ctx.factor is None else grad * ctx.factor, None


def with_values(values: Tensor, t: Tensor, factor: Optional[Tensor] = None) -> Tensor:
    """A tensor with ``values``' values whose gradient is that of ``t * factor``
    (``factor`` held constant)."""
    return Rewired.apply(values.detach(), t, factor)


def nonnegative(x: Tensor) -> Tensor:
    """The 0/1 mask of ``x >= 0`` in ``x``'s dtype, written directly: on CPU a
    boolean mask and its conversion cost several times more."""
    return torch.ge(x, 0, out=torch.empty_like(x))


def held_layer_norm(x: Tensor, dims: Tuple[int, ...], weight: Optional[Tensor], eps: float) -> Tensor:
    """``(x - mean(x)) * w / std(x)`` over ``dims``, with ``std`` (and ``w``)
    held constant: a linear map of ``x`` (LayerNorm without its bias, as the
    normalisation rule of Ali et al., 2022 sees it)."""
    with torch.no_grad():
        scale = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + eps)
        if weight is not None:
            scale = scale * weight.reshape(weight.shape + (1,) * (x.dim() - 1 - max(dims)))
    return (x - x.mean(dims, keepdim=True)) * scale


def held_group_norm(x: Tensor, groups: int, weight: Optional[Tensor], eps: float) -> Tensor:
    """GroupNorm of ``x`` ``(N, C, *)`` without its bias, with each group's
    standard deviation (and the weight) held constant."""
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    with torch.no_grad():
        scale = torch.rsqrt(grouped.var(2, unbiased=False, keepdim=True) + eps)
    centred = ((grouped - grouped.mean(2, keepdim=True)) * scale).reshape(x.shape)
    if weight is not None:
        centred = centred * weight.detach().reshape((1, c) + (1,) * (x.dim() - 2))
    return centred


class SignedLinear(torch.autograd.Function):
    """``op(x^+, w_a) + op(x^-, w_b) + bias`` as one node, for a layer whose
    adjoint is known (convolutions, Linear). It keeps only the 0/1 mask of
    ``x >= 0`` (the two parts are temporaries; as inputs of two layers they
    would be kept until the backward pass) and its backward picks each input
    element's gradient through ``w_a`` or ``w_b`` by that mask."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, op: Any, w_a: Tensor, w_b: Tensor, bias: Optional[Tensor]
    ) -> Tensor:
        positive = nonnegative(x)
        part = x.clamp(min=0)
        out = op.forward(part, w_a, bias)
        out = out.add_(op.forward(torch.clamp(x, max=0, out=part), w_b, None))
        ctx.save_for_backward(positive)
        ctx.adjoint, ctx.weights = op.adjoint, (w_a, w_b)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None, None]:
        (positive,) = ctx.saved_tensors
        w_a, w_b = ctx.weights
        through_b = ctx.adjoint(grad, w_b, positive)
        return through_b.lerp_(ctx.adjoint(grad, w_a, positive), positive), None, None, None, None


class SignSplit(torch.autograd.Function):
    """``(x^+, x^-)`` with ``x = x^+ + x^-``; the backward pass picks each
    element's gradient from the part it belongs to (one ``lerp`` with 0/1
    weights, exact, instead of two clamp backwards and a sum)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.save_for_backward(nonnegative(x))
        return x.clamp(min=0), x.clamp(max=0)

    @staticmethod
    def backward(ctx: Any, grad_pos: Optional[Tensor], grad_neg: Optional[Tensor]) -> Tensor:
        (positive,) = ctx.saved_tensors
        if grad_pos is None or grad_neg is None:  # one part unused
            grad = grad_neg if grad_pos is None else grad_pos
            return grad * (positive if grad_neg is None else 1 - positive)
        return torch.lerp(grad_neg, grad_pos, positive)
