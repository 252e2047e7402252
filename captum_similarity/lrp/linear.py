"""Linear layers as the LRP rules see them.

A rule for a linear layer needs the layer as a function of its input and
weights (:class:`LinearOp`: ``z = forward(x, weight, bias)``), so that it can
run the layer with modified weights (``W+``, ``W + gamma W+``) on the same
input. :func:`linear_op` builds that view of a Linear, Conv1d/2d/3d or
(eval-mode) BatchNorm module; :class:`ConvAdjoint` is a convolution's adjoint
(its transposed convolution) with the geometry that the graph walks of the
windowed backward pass and of receptive fields read; :func:`channel_affine`
gives the per-channel ``(scale, shift)`` of a layer that canonizers can fold
into the layer feeding it.
"""

from __future__ import annotations

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
    "affine_per_channel",
]

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
