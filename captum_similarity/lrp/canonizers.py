"""Canonizers: the model seen as LRP needs it, without writing to the model.

LRP rules are defined for linear layers followed by element-wise
activations. Real embedders deviate from that in four places; each is put
right here *functionally*, inside the forward hooks of one relevance pass, so
that no parameter, buffer or module of the user's model is ever written (there
is nothing to undo, also when an exception is raised):

- **BatchNorm folding.** A BatchNorm (or another per-channel affine layer
  declaring itself with ``lrp_channel_affine()``, see
  :func:`~captum_similarity.lrp.rules.channel_affine`)
  that directly consumes the output of a conv or linear layer is merged with
  it: :func:`fold_batchnorm` builds the fused
  :class:`~captum_similarity.lrp.rules.LinearOp` (``W * scale``,
  ``(b - mean) * scale + beta``) and the conv's rule is applied to the fused layer, from the conv's input to the
  BatchNorm's output. Values in the forward pass are those of the model; only
  the relevance path changes. A BatchNorm that follows anything else is treated
  as the per-channel affine layer it is in eval mode
  (:func:`~captum_similarity.lrp.rules.linear_op`).
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
  to the gate's branch
  (:func:`~captum_similarity.lrp.composites.is_squeeze_excitation` recognises
  such modules by class name).
- **Transformer blocks**: LayerNorm with the standard deviation held constant
  (:class:`~captum_similarity.lrp.rules.NormRule`) and attention weights
  (the ``nn.Softmax`` output) held constant
  (:class:`~captum_similarity.lrp.rules.Hold`), so ``attn @ v`` is a linear
  map of ``v`` with non-negative weights, as in Ali et al. (ICML 2022) and
  AttnLRP (Achtibat et al., ICML 2024).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .rules import LinearOp, affine_per_channel, channel_affine

__all__ = ["fold_batchnorm"]



def fold_batchnorm(op: LinearOp, bn: nn.Module, output: Optional[Tensor] = None) -> LinearOp:
    r"""Merges ``bn``, a BatchNorm (eval mode) or another per-channel affine
    layer (see :func:`~captum_similarity.lrp.rules.channel_affine`), into the linear layer ``op`` that feeds it.

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
        output = affine_per_channel(op.output, scale, shift)
    return LinearOp(op.forward, weight, bias, output, op.adjoint)
