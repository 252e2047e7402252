"""LRP rules: how relevance crosses one layer (the rule catalog).

The rules of this library's engine (:class:`Rule` subclasses), used by
:class:`~captum_similarity.lrp.engine.LRPEngine` and the methods built on it.
Linear rules (:class:`Epsilon`, :class:`Gamma`, :class:`AlphaBeta`,
:class:`ZPlus`, :class:`ZBox`) apply to Linear, Conv1d/2d/3d and BatchNorm
layers; module rules (:class:`Pass`, :class:`Hold`, :class:`NormRule`) apply to
element-wise activations, gates, softmax and LayerNorm. Which layer gets which
rule is a composite's business (:mod:`captum_similarity.lrp.composites`).

How an engine rule works (the "gradient trick"). The engine propagates
``c = R / a``, the relevance per unit of activation, as the gradient; the
relevance of a tensor ``a`` is ``a * c``. A rule is a forward hook that
returns a tensor with the layer's exact output values whose gradient
implements the rule: for a linear layer ``z = W x + b`` and a modified layer
``z' = W' x + b'`` (built from ``x`` with the graph kept), it returns
the values ``z`` with the gradient of ``t = z' * (z / z').detach()`` (a small
autograd function, :class:`Rewired`: the
module output's own storage in the forward pass, one product in each
backward pass), so that ``c_in = W'^T (z c_out / z')`` and
``R_in = x * c_in = x * W'^T (R_out / z')``, the rule's formula. Everything
the rule divides by is detached, so one forward pass serves any number of
backward passes, and the backward is linear in its seed (seeds can be
batched).

:func:`as_rule` also accepts Captum's rule classes (``EpsilonRule``,
``GammaRule``, ``Alpha1_Beta0_Rule``, ``IdentityRule``) and translates them.

What the rules are made of lives here too, before the rules:

**The autograd functions and arithmetic behind the rules.** The engine
propagates ``c = R / a``, the relevance per unit of activation, as the
gradient. A rule returns a tensor with the layer's exact output values whose
gradient implements the rule; :class:`Rewired` is that tensor's node: the
values of the forward pass, the gradient of another tensor ``t`` (the modified
layer), optionally scaled by a constant factor. :class:`SignedLinear` and
:class:`SignSplit` split a layer's input into its positive and negative parts
(for z+, alpha-beta and gamma on inputs of both signs) keeping only the 0/1
sign mask for the backward pass.

Element-wise choices use masks of the data's dtype and arithmetic that is
exact for 0/1 weights: on a CPU, ``torch.where`` with a boolean mask costs
several times a multiplication, and these run on every activation.

The windowed backward pass reproduces these functions' backward passes
(:mod:`captum_similarity.lrp.ops` registers them by class).

**Linear layers as the rules see them.** A rule for a linear layer needs the
layer as a function of its input and weights (:class:`LinearOp`: ``z =
forward(x, weight, bias)``), so that it can run the layer with modified
weights (``W+``, ``W + gamma W+``) on the same input. :func:`linear_op` builds
that view of a Linear, Conv1d/2d/3d or (eval-mode) BatchNorm module;
:class:`ConvAdjoint` is a convolution's adjoint (its transposed convolution)
with the geometry that the graph walks of the windowed backward pass and of
receptive fields read; :func:`channel_affine` gives the per-channel ``(scale,
shift)`` of a layer that canonizers can fold into the layer feeding it.

``__all__`` is the rule catalog (re-exported by :mod:`captum_similarity.lrp`);
the building blocks are imported by name (:class:`Rewired`,
:class:`LinearOp`, :func:`linear_op`, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import (
    Alpha1_Beta0_Rule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
    PropagationRule,
)
from torch import Tensor, nn

__all__ = [
    "Rule",
    "LinearRule",
    "Epsilon",
    "Gamma",
    "AlphaBeta",
    "ZPlus",
    "ZBox",
    "Pass",
    "InputAffine",
    "Hold",
    "NormRule",
    "as_rule",
    "RuleLike",
]


# -- the autograd functions and arithmetic behind the rules ------------------------------


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


# -- linear layers as the rules see them -------------------------------------------------


#: Layers whose rule is a linear rule of their weights.
LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: BatchNorm layers, folded into a preceding linear layer or treated as affine.
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

LinearForward = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


@dataclass
class LinearOp:
    r"""A linear layer as the rules see it: ``z = forward(x, weight, bias)``.

    Args:
        forward (Callable): ``(x, weight, bias) -> z``; rules call it with
            modified weights (``bias`` may be None).
        weight (Tensor): The layer's (possibly fused) weight.
        bias (Tensor or None): The layer's (possibly fused) bias.
        output (Tensor): ``forward(x, weight, bias)`` as computed in the
            forward pass, differentiable with respect to ``x``.
        adjoint (Callable, optional): ``(grad, weight, like) -> grad_x``, the
            gradient of ``forward(x, weight, None)`` with respect to an ``x``
            shaped (and laid out) like ``like``, given the output's gradient
            ``grad``; None when not known (rules then use autograd's).
            Default: None
    """

    forward: LinearForward
    weight: Tensor
    bias: Optional[Tensor]
    output: Tensor
    adjoint: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None


@dataclass(frozen=True)
class ConvAdjoint:
    r"""The adjoint of a zero-padded convolution (its transposed convolution),
    with the geometry that windowed backward passes and receptive fields read.

    Args:
        stride (tuple of int): Per spatial axis.
        padding (tuple of int): Per spatial axis, on both sides.
        dilation (tuple of int): Per spatial axis.
        groups (int): Channel groups.
    """

    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int

    def __call__(self, grad: Tensor, weight: Tensor, like: Tensor) -> Tensor:
        zeros = [0] * len(self.stride)
        return torch.ops.aten.convolution_backward(
            grad,
            like,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            zeros,
            self.groups,
            [True, False, False],
        )[0]


def _linear_adjoint(grad: Tensor, weight: Tensor, like: Tensor) -> Tensor:
    return grad @ weight


def affine_per_channel(x: Tensor, scale: Tensor, shift: Optional[Tensor]) -> Tensor:
    """``x * scale + shift`` along the channel axis (axis 1) of ``x``."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = x * scale.reshape(shape)
    return out if shift is None else out + shift.reshape(shape)


def _batchnorm_affine(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) = x * scale + shift`` per channel, in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"{type(bn).__name__} has no running statistics (track_running_stats=False), "
            "so it is not a fixed affine layer; LRP cannot fold it. Give it a rule "
            "(e.g. rules={'<name>': Pass()}) or train it with running statistics"
        )
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean.detach() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


def linear_op(module: nn.Module, output: Tensor) -> LinearOp:
    r"""The :class:`LinearOp` of a Linear, Conv1d/2d/3d or BatchNorm (eval) module.

    Args:
        module (nn.Module): The layer.
        output (Tensor): The layer's output in this forward pass.

    Raises:
        TypeError: ``module`` is not one of these layers.
    """
    if isinstance(module, nn.Linear):
        return LinearOp(
            F.linear, module.weight.detach(), _detached(module.bias), output, _linear_adjoint
        )
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        forward = _conv_forward(module)
        return LinearOp(
            forward,
            module.weight.detach(),
            _detached(module.bias),
            output,
            _conv_adjoint(module) if forward == module._conv_forward else None,
        )
    if isinstance(module, BATCHNORM_TYPES):
        scale, shift = _batchnorm_affine(module)
        return LinearOp(affine_per_channel, scale, shift, output)
    raise TypeError(
        f"a linear LRP rule needs a Linear, Conv1d/2d/3d or BatchNorm layer, got "
        f"{type(module).__name__}; give this module a module-level rule (Pass, Hold, NormRule)"
    )


def channel_affine(module: nn.Module) -> Optional[Tuple[Tensor, Tensor]]:
    r"""``(scale, shift)`` of a per-channel affine layer that can be folded, else None.

    BatchNorm (eval statistics) is one; any other module declares itself one
    by defining ``lrp_channel_affine()`` returning ``(scale, shift)``, each of
    shape ``(C,)``, such that ``module(x)[:, c] = scale[c] * x[:, c] + shift[c]``
    (dlib's ``Affine`` does).
    """
    if isinstance(module, BATCHNORM_TYPES):
        return _batchnorm_affine(module)
    method = getattr(module, "lrp_channel_affine", None)
    if callable(method):
        scale, shift = method()
        return scale.detach(), shift.detach()
    return None


def _conv_forward(module: nn.Module) -> LinearForward:
    """The convolution of ``module`` for the rules. A 1x1 convolution with a
    stride and no padding (a ResNet shortcut) runs as a 1x1 convolution of the
    subsampled input: the same values, and a backward pass that scatters
    instead of the strided convolution backward, several times slower on CPU."""
    padding = module.padding
    unpadded = padding == "valid" or (not isinstance(padding, str) and not any(padding))
    pointwise = all(k == 1 for k in module.kernel_size) and all(d == 1 for d in module.dilation)
    if not (unpadded and pointwise and any(st > 1 for st in module.stride)):
        return module._conv_forward
    index = (slice(None), slice(None)) + tuple(slice(None, None, st) for st in module.stride)
    conv = (F.conv1d, F.conv2d, F.conv3d)[len(module.kernel_size) - 1]
    groups = module.groups

    def forward(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        return conv(x[index], weight, bias, groups=groups)

    return forward


def _conv_adjoint(module: nn.Module) -> Optional[ConvAdjoint]:
    """The adjoint of ``module``'s convolution, if it pads with zeros symmetrically."""
    if module.padding_mode != "zeros":
        return None
    padding = module.padding
    if padding == "valid":
        padding = (0,) * len(module.kernel_size)
    elif padding == "same":
        spans = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(span % 2 for span in spans):
            return None  # padded more on one side
        padding = tuple(span // 2 for span in spans)
    return ConvAdjoint(tuple(module.stride), tuple(padding), tuple(module.dilation), module.groups)


def _detached(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach()


# -- the rules ---------------------------------------------------------------------------


Bound = Union[float, Tensor]


class Rule(ABC):
    r"""Base class of the engine's rules.

    A rule is applied as a forward hook: :meth:`apply` receives the module,
    its positional inputs, its output and the current trace (which exposes
    ``input``, the model input of this pass; ``companions``, a list to
    which input-layer rules append extra leaf tensors of the input's shape
    whose relevance counts as input relevance; and ``input_view(x)``, which
    tells whether ``x`` is the input or a per-channel affine map of it such as
    an input normalisation, see :class:`InputAffine`), and returns the tensor
    that replaces the output: same values, gradient given by the rule.
    """

    @abstractmethod
    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        """Returns the module's output rewired so that its gradient is the rule."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearRule(Rule):
    r"""A rule for Linear, Conv1d/2d/3d and BatchNorm layers.

    Subclasses define the modified layer ``z'`` (:meth:`modified`);
    relevance is redistributed as ``R_in = x * W'^T (R_out / z')``, where
    ``z'`` is stabilised by ``epsilon`` (added with its sign).

    Args:
        epsilon (float): Stabiliser of the denominator.
    """

    def __init__(self, epsilon: float) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon}")
        self.epsilon = float(epsilon)

    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        return self.rewire(linear_op(module, output), inputs[0], trace)

    def rewire(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        """The output of ``op`` on ``x`` with this rule's gradient."""
        z = op.output.detach()
        modified = self.modified(op, x, trace)
        return with_values(z, modified, share(z, modified, self.epsilon))

    @abstractmethod
    def modified(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        """``z'``: the modified layer applied to ``x``, differentiable in ``x``."""


class Epsilon(LinearRule):
    r"""LRP-epsilon: ``R_in = x * W^T (R_out / (z + epsilon * sign(z)))``.

    ``Epsilon(0)`` is LRP-0, which on a bias-free ReLU network equals
    gradient x input. The bias and ``epsilon`` absorb part of the relevance.
    Besides Linear, Conv and BatchNorm layers it applies to any module that
    computes an affine map of its inputs (a per-channel scale, a sum of
    several inputs such as a residual addition module), using the module's
    own gradient as the weights.

    Args:
        epsilon (float, optional): Stabiliser; larger values keep only the
            strongest relevance paths.
            Default: 1e-6
        zero_bias (bool, optional): Leave the bias out of the denominator
            (Captum's ``set_bias_to_zero``).
            Default: False
    """

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False) -> None:
        super().__init__(epsilon)
        self.zero_bias = zero_bias

    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        if self.zero_bias or isinstance(module, LINEAR_TYPES + BATCHNORM_TYPES):
            return super().apply(module, inputs, output, trace)
        # Any other module is taken to be the affine map it is given this rule for
        # (a per-channel scale, an addition of its inputs, ...): its own gradient is
        # W, so its output serves as z' and no weights are needed.
        z = output.detach()
        return with_values(z, output, share(z, output, self.epsilon))

    def modified(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        return op.forward(x, op.weight, None) if self.zero_bias else op.output


class Gamma(LinearRule):
    r"""LRP-gamma: contributions of the output's own sign are amplified by ``gamma``.

    With ``z_ij = x_i w_ij`` split into its positive and negative parts, an
    output with ``z_j >= 0`` redistributes ``z_ij + gamma z_ij^+`` and one with
    ``z_j < 0`` redistributes ``z_ij + gamma z_ij^-`` (biases likewise). For
    non-negative inputs (after a ReLU) and positive outputs this is
    ``W' = W + gamma W^+`` (Montavon et al., 2019); treating negative outputs
    symmetrically keeps each denominator of the output's sign and at least as
    large as ``|z_j|``, so relevance reaching negative pre-activations (through
    residual additions) does not blow up. ``gamma = 0`` is LRP-epsilon.

    Args:
        gamma (float, optional): Weight of the amplified part.
            Default: 0.25
        epsilon (float, optional): Stabiliser.
            Default: 1e-9
        zero_bias (bool, optional): Leave the bias out (Captum's
            ``set_bias_to_zero``).
            Default: False
    """

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-9, zero_bias: bool = False) -> None:
        super().__init__(epsilon)
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.gamma = float(gamma)
        self.zero_bias = zero_bias

    def modified(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        bias = None if self.zero_bias else op.bias
        z = op.output if bias is op.bias else op.forward(x, op.weight, None)
        if not self.gamma:
            return z
        positive = _signed_part(op, x, True, None if bias is None else bias.clamp(min=0))
        negative = _signed_part(op, x, False, None if bias is None else bias.clamp(max=0))
        chosen = torch.lerp(negative, positive, nonnegative(z.detach()))
        return z + self.gamma * chosen


def _signed_part(op: LinearOp, x: Tensor, positive: bool, bias: Optional[Tensor] = None) -> Tensor:
    """Sum of the positive (or negative) contributions ``x_i w_ij`` per output, plus ``bias``."""
    w_pos, w_neg = op.weight.clamp(min=0), op.weight.clamp(max=0)
    if not positive:
        w_pos, w_neg = w_neg, w_pos
    if not bool(x.detach().amin() < 0):
        # after a ReLU: nothing to split, and no split for every backward pass to cross
        return op.forward(x, w_pos, bias)
    if op.adjoint is not None:
        return SignedLinear.apply(x, op, w_pos, w_neg, bias)
    x_pos, x_neg = SignSplit.apply(x)
    return op.forward(x_pos, w_pos, bias) + op.forward(x_neg, w_neg, None)


class AlphaBeta(LinearRule):
    r"""LRP-alpha-beta: positive and negative contributions ``z_ij = x_i w_ij``
    are redistributed separately,
    ``R_i = sum_j (alpha z_ij^+ / z_j^+ - beta z_ij^- / z_j^-) R_j``.

    Inputs of either sign are handled (``z^+`` collects ``x^+ W^+`` and
    ``x^- W^-``). Biases are left out, so with ``alpha - beta = 1`` relevance
    is conserved exactly wherever ``z_j^+`` and ``z_j^-`` are non-zero.

    Args:
        alpha (float, optional): Weight of the positive part.
            Default: 1.0
        beta (float, optional): Weight of the negative part.
            Default: 0.0
        epsilon (float, optional): Stabiliser.
            Default: 1e-9
    """

    def __init__(self, alpha: float = 1.0, beta: float = 0.0, epsilon: float = 1e-9) -> None:
        super().__init__(epsilon)
        if abs(alpha - beta - 1.0) > 1e-12 or beta < 0:
            raise ValueError(
                f"alpha - beta must be 1 with beta >= 0, got alpha={alpha}, beta={beta}"
            )
        self.alpha = float(alpha)
        self.beta = float(beta)

    def rewire(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        z = op.output.detach()
        positive = _signed_part(op, x, True)
        positive_share = share(z, positive, self.epsilon, sign=1)
        if not self.beta:  # alpha = 1
            return with_values(z, positive, positive_share)
        negative = _signed_part(op, x, False)
        t = self.alpha * positive * positive_share - self.beta * negative * share(
            z, negative, self.epsilon, sign=-1
        )
        return with_values(z, t)

    def modified(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        return _signed_part(op, x, True)


class ZPlus(AlphaBeta):
    r"""LRP-z+ (alpha1-beta0): only positive contributions carry relevance.

    Args:
        epsilon (float, optional): Stabiliser.
            Default: 1e-9
    """

    def __init__(self, epsilon: float = 1e-9) -> None:
        super().__init__(1.0, 0.0, epsilon)

    def __repr__(self) -> str:
        return f"ZPlus(epsilon={self.epsilon!r})"


class ZBox(LinearRule):
    r"""Bounded z^B rule for the layer that reads the model input:
    ``R_i = sum_j (x_i w_ij - l_i w_ij^+ - h_i w_ij^-) / z^B_j * R_j``.

    Inputs are known to lie in ``[low, high]`` (pixel range); relevance is
    conserved exactly (biases are left out). It can only be given to a layer
    whose input is the model input, or a per-channel affine map of it (an
    input normalisation inside the model, see :class:`InputAffine`: the
    bounds are then mapped through it); composites apply it there with
    ``input_rule``. The bounds' own relevance terms are counted in the input
    relevance.

    Args:
        low (float or Tensor): Lower bound, broadcastable to the input
            (e.g. per channel ``(1, C, 1, 1)`` for normalised images).
        high (float or Tensor): Upper bound, likewise.
        epsilon (float, optional): Stabiliser.
            Default: 1e-9
    """

    def __init__(self, low: Bound, high: Bound, epsilon: float = 1e-9) -> None:
        super().__init__(epsilon)
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            raise ValueError(f"low must not exceed high, got low={low}, high={high}")
        self.low = low
        self.high = high

    def modified(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        view = trace.input_view(x)
        if view is None:
            raise ValueError(
                "the ZBox rule applies only to a layer that reads the model input directly; "
                "set it as the composite's input_rule (or input_bounds=) rather than on an "
                "inner layer"
            )
        low, high = (torch.as_tensor(b, dtype=x.dtype, device=x.device) for b in (self.low, self.high))
        if view is not True:  # x = scale * input + shift: the bounds of x
            scale, shift = view
            low, high = scale * low + shift, scale * high + shift
            low, high = torch.minimum(low, high), torch.maximum(low, high)
        low, high = (self._leaf(b, x) for b in (low, high))
        trace.companions.extend((low, high))
        return (
            op.forward(x, op.weight, None)
            - op.forward(low, op.weight.clamp(min=0), None)
            - op.forward(high, op.weight.clamp(max=0), None)
        )

    @staticmethod
    def _leaf(bound: Bound, x: Tensor) -> Tensor:
        b = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
        return b.expand_as(x).clone().requires_grad_(True)


class Pass(Rule):
    r"""Pass-through (identity) rule: ``R_in = R_out`` element by element.

    For element-wise activations (SiLU, GELU, Tanh, ...) and for gates such as
    squeeze-excitation, whose output is ``x`` times a gate computed from ``x``:
    the gate is held constant, so all relevance goes to ``x`` and none to the
    gate's branch. Input and output must have the same shape.
    """

    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        x = inputs[0]
        if not isinstance(x, Tensor) or x.shape != output.shape:
            raise ValueError(
                f"the Pass rule needs a module whose output has its input's shape; "
                f"{type(module).__name__} maps {tuple(getattr(x, 'shape', ()))} to "
                f"{tuple(output.shape)}"
            )
        y = output.detach()
        if trace.input_view(x) is not None:
            # on the input, R = x * c cannot carry relevance at x = 0 (black
            # padding): the difference y - x rides on a companion leaf instead
            rest = (y - x.detach()).requires_grad_(True)
            trace.companions.append(rest)
            return with_values(y, x + rest)
        xd = x.detach()
        ratio = divide_or_zero(y, xd)
        return with_values(y, x, ratio)


class InputAffine(Rule):
    r"""Pass-through for a per-channel affine map of the model input, such as
    an input normalisation inside the model (``y = scale * x + shift``):
    each pixel gets its normalised value's relevance, ``R_x = R_y``.

    The relevance ``scale * x * c`` reaches the pixel through the gradient
    and the ``shift * c`` part through a companion leaf counted as input
    relevance, so pixels at 0 (the black padding of aligned face chips) keep
    theirs and nothing is lost to the shift. Its output is a view of the
    input for the rule of the next layer: :class:`ZBox` maps its bounds
    through the affine map.

    The engine gives this rule to a BatchNorm or a module declaring
    ``lrp_channel_affine()`` (see
    :func:`~captum_similarity.lrp.rules.channel_affine`) that reads the
    model input directly, unless the composite names a rule for it.
    """

    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        x = inputs[0]
        affine = channel_affine(module)
        if affine is None or trace.input_view(x) is not True:
            raise ValueError(
                f"InputAffine applies to a per-channel affine layer (BatchNorm, or a module "
                f"with lrp_channel_affine()) that reads the model input; "
                f"{type(module).__name__} is {'not one' if affine is None else 'not on the input'}"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale, shift = (t.to(x.dtype).reshape(shape) for t in affine)
        offset = shift.expand_as(x).clone().requires_grad_(True)
        trace.companions.append(offset)
        out = with_values(output.detach(), x * scale + offset)
        trace.add_input_view(out, scale, shift)
        return out


class Hold(Rule):
    r"""Holds the module's output constant: no relevance flows into the module.

    Used for attention weights (the ``nn.Softmax`` of an attention layer), so
    that ``attn @ v`` passes relevance to ``v`` only.
    """

    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        return output.detach()


class NormRule(Rule):
    r"""LayerNorm or GroupNorm with the standard deviation held constant.

    ``y = (x - mean(x)) * (w / std(x)) + b`` becomes linear in ``x`` once
    ``std`` is constant; relevance then follows that linear map (LRP-0), the
    bias ``b`` absorbing its share, as proposed for transformers by Ali et al.
    (2022) and in AttnLRP (Achtibat et al., 2024).

    For an ``nn.LayerNorm`` (or a subclass) the rule normalises over the axes
    the module normalises: the trailing ``normalized_shape`` axes of its
    input, or the channel axis 1 of a channels-first feature map (ConvNeXt's
    ``LayerNorm2d``, which permutes inside its forward); where both fit, the
    one that reproduces the module's output. For ``nn.GroupNorm``, each
    group's standard deviation is held.

    (The engine gives the same treatment to ``F.layer_norm``,
    ``F.group_norm`` and ``F.rms_norm`` calls anywhere in forward code, see
    :mod:`~captum_similarity.lrp.functional`; this rule is for a module whose
    forward computes its normalisation by hand.)
    """

    def apply(
        self, module: nn.Module, inputs: Tuple[Any, ...], output: Tensor, trace: Any
    ) -> Tensor:
        x = inputs[0]
        if isinstance(module, nn.GroupNorm):
            return with_values(
                output.detach(), held_group_norm(x, module.num_groups, module.weight, module.eps)
            )
        if not isinstance(module, nn.LayerNorm):
            raise TypeError(
                f"NormRule applies to nn.LayerNorm and nn.GroupNorm, got {type(module).__name__}"
            )
        shape = tuple(module.normalized_shape)
        candidates = []
        if tuple(x.shape[x.dim() - len(shape) :]) == shape:
            candidates.append(tuple(range(x.dim() - len(shape), x.dim())))
        if len(shape) == 1 and x.dim() > 2 and x.shape[1] == shape[0]:
            candidates.append((1,))
        bias = module.bias
        for dims in candidates:
            linear = held_layer_norm(x, dims, module.weight, module.eps)
            if len(candidates) == 1:
                return with_values(output.detach(), linear)
            values = linear.detach()
            if bias is not None:
                values = values + bias.detach().reshape(
                    bias.shape + (1,) * (x.dim() - 1 - max(dims))
                )
            if torch.allclose(values, output.detach(), rtol=1e-4, atol=1e-5):
                return with_values(output.detach(), linear)
        raise ValueError(
            f"NormRule cannot tell which axes {type(module).__name__} normalises: its input "
            f"{tuple(x.shape)} has normalized_shape {shape} neither as its trailing axes nor "
            "(channels first) as axis 1 matching its output; give the module a rule of its own"
        )


RuleLike = Union[Rule, PropagationRule]


def as_rule(rule: RuleLike) -> Rule:
    r"""Returns an engine rule for ``rule``, translating Captum's rule classes.

    ``EpsilonRule(eps)`` becomes :class:`Epsilon` ``(eps)``, ``GammaRule`` becomes
    :class:`Gamma` (keeping ``gamma`` and ``set_bias_to_zero``),
    ``Alpha1_Beta0_Rule`` becomes :class:`ZPlus` and ``IdentityRule`` becomes
    :class:`Pass`.

    Raises:
        TypeError: ``rule`` is neither an engine rule nor one of those.
    """
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, IdentityRule):
        return Pass()
    if isinstance(rule, EpsilonRule):
        return Epsilon(rule.STABILITY_FACTOR)
    if isinstance(rule, GammaRule):
        return Gamma(rule.gamma, zero_bias=rule.set_bias_to_zero)
    if isinstance(rule, Alpha1_Beta0_Rule):
        return ZPlus()
    raise TypeError(
        f"expected an LRP rule (captum_similarity.lrp.rules.Rule or Captum's EpsilonRule, "
        f"GammaRule, Alpha1_Beta0_Rule, IdentityRule), got {type(rule).__name__}"
    )
