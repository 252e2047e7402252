"""LRP rules: how relevance crosses one layer (the rule catalog).

The rules of this library's engine (:class:`Rule` subclasses), used by
:class:`~captum_similarity.lrp.engine.LRPEngine` and the methods built on it.
Linear rules (:class:`Epsilon`, :class:`Gamma`, :class:`AlphaBeta`,
:class:`ZPlus`, :class:`ZBox`) apply to Linear, Conv1d/2d/3d and BatchNorm
layers; module rules (:class:`Pass`, :class:`Hold`, :class:`NormRule`) apply to
element-wise activations, gates, softmax and LayerNorm. Which layer gets which
rule is a composite's business (:mod:`captum_similarity.lrp.composites`); the
autograd functions the rules are built from live in
:mod:`captum_similarity.lrp.functions`.

How an engine rule works (the "gradient trick"). The engine propagates
``c = R / a``, the relevance per unit of activation, as the gradient; the
relevance of a tensor ``a`` is ``a * c``. A rule is a forward hook that
returns a tensor with the layer's exact output values whose gradient
implements the rule: for a linear layer ``z = W x + b`` and a modified layer
``z' = W' x + b'`` (built from ``x`` with the graph kept), it returns
the values ``z`` with the gradient of ``t = z' * (z / z').detach()`` (a small
autograd function, :class:`~captum_similarity.lrp.functions.Rewired`: the
module output's own storage in the forward pass, one product in each
backward pass), so that ``c_in = W'^T (z c_out / z')`` and
``R_in = x * c_in = x * W'^T (R_out / z')``, the rule's formula. Everything
the rule divides by is detached, so one forward pass serves any number of
backward passes, and the backward is linear in its seed (seeds can be
batched).

:func:`as_rule` also accepts Captum's rule classes (``EpsilonRule``,
``GammaRule``, ``Alpha1_Beta0_Rule``, ``IdentityRule``) and translates them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional, Tuple, Union

import torch
from captum.attr._utils.lrp_rules import (
    Alpha1_Beta0_Rule,
    EpsilonRule,
    GammaRule,
    IdentityRule,
    PropagationRule,
)
from torch import Tensor, nn

from .functions import (
    SignedLinear,
    SignSplit,
    divide_or_zero,
    held_group_norm,
    held_layer_norm,
    nonnegative,
    share,
    with_values,
)
from .linear import BATCHNORM_TYPES, LINEAR_TYPES, LinearOp, channel_affine, linear_op

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
    :func:`~captum_similarity.lrp.linear.channel_affine`) that reads the
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
