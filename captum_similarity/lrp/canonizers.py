"""Canonizers: the model seen as LRP needs it, without writing to the model.

LRP rules are defined for linear layers followed by element-wise
activations. Real embedders deviate from that in four places; each is put
right here *functionally*, inside the forward hooks of one relevance pass, so
that no parameter, buffer or module of the user's model is ever written (there
is nothing to undo, also when an exception is raised):

- **BatchNorm folding.** A BatchNorm (or another per-channel affine layer
  declaring itself with ``lrp_channel_affine()``, see :func:`channel_affine`)
  that directly consumes the output of a conv or linear layer is merged with
  it: :func:`fold_batchnorm` builds the
  fused :class:`LinearOp` (``W * scale``, ``(b - mean) * scale + beta``) and
  the conv's rule is applied to the fused layer, from the conv's input to the
  BatchNorm's output. Values in the forward pass are those of the model; only
  the relevance path changes. A BatchNorm that follows anything else is treated
  as the per-channel affine layer it is in eval mode (:func:`linear_op`).
- **Residual additions** (``out + shortcut`` written in forward code need no
  module). The engine propagates ``c = R / a`` (relevance per unit of
  activation) as the gradient, so autograd's own backward of ``a + b`` hands
  both summands the same ``c``: ``R_a = a c`` and ``R_b = b c`` split ``R`` in
  proportion to each branch's contribution, which is LRP-0 for the sum, and
  ``R_a + R_b = R`` exactly. The same holds for every other linear functional
  op (reshapes, slicing, concatenation, means, scaling by constants).
- **Gates** (squeeze-excitation: ``x * sigmoid(...)``): the module is given a
  pass-through rule (:class:`~captum_similarity.lrp.rules.Pass`), which holds
  the gate constant, so the relevance of ``x * g`` goes to ``x`` whole and none
  to the gate's branch. :func:`is_squeeze_excitation` recognises such modules
  by class name.
- **Transformer blocks**: LayerNorm with the standard deviation held constant
  (:class:`~captum_similarity.lrp.rules.NormRule`) and attention weights
  (the ``nn.Softmax`` output) held constant
  (:class:`~captum_similarity.lrp.rules.Hold`), so ``attn @ v`` is a linear
  map of ``v`` with non-negative weights, as in Ali et al. (ICML 2022) and
  AttnLRP (Achtibat et al., ICML 2024).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LinearOp",
    "ConvAdjoint",
    "LINEAR_TYPES",
    "BATCHNORM_TYPES",
    "linear_op",
    "channel_affine",
    "fold_batchnorm",
    "is_squeeze_excitation",
]

#: Layers whose rule is a linear rule of their weights.
LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: BatchNorm layers, folded into a preceding linear layer or treated as affine.
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

LinearForward = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]

_SE_NAMES = re.compile(r"squeeze.?excit|^se(module|layer|block)?$|^effectivese", re.IGNORECASE)


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


def _channel_affine(x: Tensor, scale: Tensor, shift: Optional[Tensor]) -> Tensor:
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
        return LinearOp(_channel_affine, scale, shift, output)
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


def fold_batchnorm(op: LinearOp, bn: nn.Module, output: Optional[Tensor] = None) -> LinearOp:
    r"""Merges ``bn``, a BatchNorm (eval mode) or another per-channel affine
    layer (see :func:`channel_affine`), into the linear layer ``op`` that feeds it.

    Args:
        op (LinearOp): The linear layer.
        bn (nn.Module): The per-channel affine layer that follows it.
        output (Tensor, optional): ``bn``'s output in this forward pass, when
            known (saves recomputing it).
            Default: None

    Returns:
        LinearOp: ``x -> bn(op(x))`` with fused weight and bias; its ``output``
        is ``output``, or ``bn``'s affine map applied to ``op.output``.
    """
    affine = channel_affine(bn)
    if affine is None:
        raise TypeError(f"{type(bn).__name__} is not a per-channel affine layer")
    scale, shift = affine
    weight = op.weight * scale.reshape((-1,) + (1,) * (op.weight.dim() - 1))
    bias = shift if op.bias is None else op.bias * scale + shift
    if output is None:
        output = _channel_affine(op.output, scale, shift)
    return LinearOp(op.forward, weight, bias, output, op.adjoint)


def is_squeeze_excitation(module: nn.Module) -> bool:
    """Whether ``module`` is a squeeze-excitation gate, recognised by class name
    (``SqueezeExcitation``, ``SqueezeExcite``, ``SEModule``, ``SELayer``,
    ``EffectiveSEModule``, ...)."""
    return bool(_SE_NAMES.search(type(module).__name__))


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
