"""Rules for functional code: torch functions called inside a module's forward.

Forward hooks reach modules, not the functional code between them:
``Tensor.softmax`` in timm's attention, ``F.scaled_dot_product_attention``,
``F.multi_head_attention_forward`` inside ``nn.MultiheadAttention``,
``F.layer_norm`` inside a channels-first ``LayerNorm2d``, a GELU written as
``F.gelu``. During a relevance pass the engine runs the model inside
:class:`FunctionalRules`, a ``TorchFunctionMode`` that sees every torch call
of the forward pass (of this thread only; nothing is written to the model)
and gives the calls that need one an LRP rule:

- **attention** (``F.scaled_dot_product_attention``,
  ``F.multi_head_attention_forward``, and any softmax: ``F.softmax``,
  ``torch.softmax``, ``Tensor.softmax``): the attention weights are held
  constant, so ``weights @ v`` is a linear map of the values with
  non-negative weights and relevance reaches the tokens through the values
  only. This is the conservative propagation of Ali et al., "XAI for
  Transformers: Better Explanations through Conservative Propagation"
  (ICML 2022), the CP-LRP variant of AttnLRP (Achtibat et al., ICML 2024).
  The fused calls are computed unfused (the same values up to float
  rounding); a relative position bias or a mask, added before the softmax,
  only changes the held weights;
- **normalisation** (``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``,
  ``F.normalize``): the scale (standard deviation, RMS, norm) is held
  constant, so the layer is linear in its input (centering and affine part
  included) and relevance follows that linear map (LRP-0), the bias taking
  its share (Ali et al., 2022). Whatever axis the call normalises, channels
  first or last, is the one held;
- **division by a tensor of the pass** (``a / b``): the denominator is held
  constant, as a normaliser;
- **element-wise activations** (``F.gelu``, ``F.silu``, ``torch.sigmoid``,
  ``torch.tanh``, ``F.hardswish``, ...): pass-through (relevance goes to the
  input element by element, as :class:`~captum_similarity.lrp.rules.Pass`);
- **products of two tensors of the pass** (``a * b``, ``a @ b``,
  ``torch.bmm``, ``torch.einsum`` with two such operands): each operand
  receives half of the relevance, AttnLRP's uniform rule for multiplicative
  gates and bilinear products; with the plain product rule each would receive
  all of it and the total would double.

Everything else keeps its own gradient, which with the engine's ``c = R / a``
is exact pass-through for layout operations (reshape, permute, transpose,
slicing, ``cat``, ``roll``, ``pad``) and LRP-0 for linear ones (sums, means,
``F.linear`` with the frozen weights). Calls whose tensors are not part of
the pass (no gradient), and calls inside a module that has its own rule (the
rule replaces the module's graph), are left alone.
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .rules import divide_or_zero, held_group_norm, held_layer_norm, with_values

__all__ = [
    "FunctionalRules",
    "Shared",
    "held_attention",
    "FUNCTIONAL_RULES",
    "EXACT_NODES",
    "unruled_node",
]

Handler = Callable[[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]], Any]


class Shared(torch.autograd.Function):
    """Identity in the forward pass; the gradient times ``share`` in the backward
    pass (an operand of a product that shares its relevance equally)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, share: float) -> Tensor:
        ctx.share = share
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:
        return grad * ctx.share, None


def _in_pass(t: Any) -> bool:
    return isinstance(t, Tensor) and t.requires_grad


def _arg(args: Tuple[Any, ...], kwargs: Dict[str, Any], index: int, name: str, default: Any) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


# -- attention -----------------------------------------------------------------


def held_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Scaled dot-product attention with the attention weights held constant.

    ``weights = softmax(q k^T * scale + mask)`` is computed without a graph;
    ``weights @ v`` keeps the graph of ``v`` only.

    Args:
        q (Tensor): ``(..., L, E)``.
        k (Tensor): ``(..., S, E)``.
        v (Tensor): ``(..., S, Ev)``.
        attn_mask (Tensor, optional): Boolean (True: attend) or additive,
            broadcastable to ``(..., L, S)``.
        dropout_p (float, optional): Dropout on the weights.
        is_causal (bool, optional): Causal mask.
        scale (float, optional): Default ``1 / sqrt(E)``.

    Returns:
        tuple: ``(output (..., L, Ev), weights (..., L, S))``.
    """
    with torch.no_grad():
        factor = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        logits = (q.detach() @ k.detach().transpose(-2, -1)) * factor
        if is_causal:
            length, source = logits.shape[-2:]
            causal = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
            logits = logits.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            else:
                logits = logits + attn_mask
        weights = torch.softmax(logits, dim=-1)
        if dropout_p > 0:
            weights = F.dropout(weights, dropout_p)
    return weights.to(v.dtype) @ v, weights


def _sdpa(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    q, k, v = (_arg(args, kwargs, i, n, None) for i, n in enumerate(("query", "key", "value")))
    if not _in_pass(v):  # nothing to explain through the values: weights only
        return func(*args, **kwargs)
    attn_mask = _arg(args, kwargs, 3, "attn_mask", None)
    dropout_p = float(_arg(args, kwargs, 4, "dropout_p", 0.0))
    is_causal = bool(_arg(args, kwargs, 5, "is_causal", False))
    scale = kwargs.get("scale")
    if kwargs.get("enable_gqa", False) and k.shape[-3] != q.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(repeat, dim=-3)
        v = v.repeat_interleave(repeat, dim=-3)
    return held_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)[0]


def _softmax(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    out = func(*args, **kwargs)
    return out.detach() if isinstance(out, Tensor) else out


_MHA_UNSUPPORTED = ("bias_k", "bias_v", "static_k", "static_v")


def _multi_head_attention(
    func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Any:
    bound = inspect.signature(F.multi_head_attention_forward).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    for name in _MHA_UNSUPPORTED:
        if a[name] is not None:
            raise ValueError(
                f"LRP's attention rule does not support nn.MultiheadAttention with {name}; "
                "give the attention module a rule of its own (rules={'<name>': ...})"
            )
    if a["add_zero_attn"]:
        raise ValueError(
            "LRP's attention rule does not support nn.MultiheadAttention with add_zero_attn; "
            "give the attention module a rule of its own (rules={'<name>': ...})"
        )
    query, key, value = a["query"], a["key"], a["value"]
    batched = query.dim() == 3
    if not batched:
        query, key, value = (t.unsqueeze(1) for t in (query, key, value))
    length, n, embed = query.shape
    heads = int(a["num_heads"])
    head_dim = embed // heads
    if a["use_separate_proj_weight"]:
        weights = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"])
    else:
        weights = a["in_proj_weight"].chunk(3)
    biases = (None,) * 3 if a["in_proj_bias"] is None else a["in_proj_bias"].chunk(3)
    q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases))
    # (L, N, E) -> (N, heads, L, head_dim)
    q, k, v = (t.reshape(t.shape[0], n, heads, head_dim).permute(1, 2, 0, 3) for t in (q, k, v))
    source = k.shape[2]
    mask = _mha_mask(a["attn_mask"], a["key_padding_mask"], n, heads, length, source, q.dtype)
    dropout = float(a["dropout_p"]) if a["training"] else 0.0
    causal = bool(a["is_causal"]) and mask is None
    out, attn = held_attention(q, k, v, mask, dropout, causal)
    out = out.permute(2, 0, 1, 3).reshape(length, n, embed)
    out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"])
    if not batched:
        out = out.squeeze(1)
    if not a["need_weights"]:
        return out, None
    if a["average_attn_weights"]:
        attn = attn.mean(1)
    if not batched:
        attn = attn.squeeze(0)
    return out, attn


def _mha_mask(
    attn_mask: Optional[Tensor],
    padding: Optional[Tensor],
    n: int,
    heads: int,
    length: int,
    source: int,
    dtype: torch.dtype,
) -> Optional[Tensor]:
    """``nn.MultiheadAttention``'s masks (True: masked out) as one additive mask
    ``(N, heads, L, S)``."""
    total = None
    for mask in (attn_mask, padding):
        if mask is None:
            continue
        if mask is padding:
            mask = mask.reshape(n, 1, 1, source)
        elif mask.dim() == 3:
            mask = mask.reshape(n, heads, length, source)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        total = mask.to(dtype) if total is None else total + mask.to(dtype)
    return total


# -- normalisation -------------------------------------------------------------


def _norm_dims(x: Tensor, count: int) -> Tuple[int, ...]:
    return tuple(range(x.dim() - count, x.dim()))


def _layer_norm(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    x = _arg(args, kwargs, 0, "input", None)
    if not _in_pass(x):
        return func(*args, **kwargs)
    shape = _arg(args, kwargs, 1, "normalized_shape", None)
    weight = _arg(args, kwargs, 2, "weight", None)
    eps = _arg(args, kwargs, 4, "eps", 1e-5)
    with torch.no_grad():
        values = func(*args, **kwargs)
    return with_values(values, held_layer_norm(x, _norm_dims(x, len(shape)), weight, eps))


def _rms_norm(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    x = _arg(args, kwargs, 0, "input", None)
    if not _in_pass(x):
        return func(*args, **kwargs)
    shape = _arg(args, kwargs, 1, "normalized_shape", None)
    weight = _arg(args, kwargs, 2, "weight", None)
    eps = _arg(args, kwargs, 3, "eps", None)
    dims = _norm_dims(x, len(shape))
    with torch.no_grad():
        values = func(*args, **kwargs)
        if eps is None:
            eps = torch.finfo(x.dtype).eps
        scale = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
        if weight is not None:
            scale = scale * weight
    return with_values(values, x * scale)


def _group_norm(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    x = _arg(args, kwargs, 0, "input", None)
    if not _in_pass(x):
        return func(*args, **kwargs)
    groups = int(_arg(args, kwargs, 1, "num_groups", 1))
    weight = _arg(args, kwargs, 2, "weight", None)
    eps = _arg(args, kwargs, 4, "eps", 1e-5)
    with torch.no_grad():
        values = func(*args, **kwargs)
    return with_values(values, held_group_norm(x, groups, weight, eps))


def _divide(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    a = _arg(args, kwargs, 0, "input", None)
    b = _arg(args, kwargs, 1, "other", None)
    if not (_in_pass(b) and isinstance(a, Tensor)):
        return func(*args, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in ("input", "other")}
    return func(a, b.detach(), *args[2:], **rest)


# -- element-wise activations and products --------------------------------------


def _out_of_place(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]):
    """``args, kwargs`` with an ``inplace`` argument of ``func`` set to False."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return args, kwargs
    if "inplace" not in signature.parameters:
        return args, kwargs
    bound = signature.bind(*args, **kwargs)
    bound.arguments["inplace"] = False
    return bound.args, bound.kwargs


def _pass_through(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    x = _arg(args, kwargs, 0, "input", None)
    if not _in_pass(x):
        return func(*args, **kwargs)
    # an in-place call runs out of place: the rule reads the input, and the caller
    # goes on with the returned tensor (nn.SiLU(inplace=True) and the like)
    args, kwargs = _out_of_place(func, args, kwargs)
    with torch.no_grad():
        y = func(*args, **kwargs)
        ratio = divide_or_zero(y, x)
    return with_values(y, x, ratio)


def _product(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    a = _arg(args, kwargs, 0, "input", None)
    b = _arg(args, kwargs, 1, "other", None)
    if not (_in_pass(a) and _in_pass(b)):
        return func(*args, **kwargs)
    rest = {k: v for k, v in kwargs.items() if k not in ("input", "other")}
    return func(Shared.apply(a, 0.5), Shared.apply(b, 0.5), *args[2:], **rest)


def _einsum(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    operands = list(args[1:]) if len(args) > 1 else []
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    in_pass = [_in_pass(t) for t in operands]
    if sum(in_pass) < 2:
        return func(*args, **kwargs)
    share = 1.0 / sum(in_pass)
    scaled = [t if not p else Shared.apply(t, share) for t, p in zip(operands, in_pass)]
    return func(args[0], *scaled, **kwargs)


def _functions(*names: str, sources: Sequence[Any] = (F, torch, torch.Tensor)) -> list:
    found = []
    for source in sources:
        for name in names:
            fn = getattr(source, name, None)
            if fn is not None and fn not in found:
                found.append(fn)
    return found


def _table() -> Dict[Any, Handler]:
    table: Dict[Any, Handler] = {}

    def add(handler: Handler, *functions: Any) -> None:
        for fn in functions:
            table[fn] = handler

    add(_sdpa, F.scaled_dot_product_attention)
    add(_multi_head_attention, F.multi_head_attention_forward)
    add(_softmax, *_functions("softmax"), getattr(torch.special, "softmax", F.softmax))
    add(_layer_norm, F.layer_norm)
    add(_group_norm, F.group_norm)
    if hasattr(F, "rms_norm"):
        add(_rms_norm, F.rms_norm)
    add(_pass_through, F.normalize)  # x / |x|: the norm held, element by element
    add(_divide, *_functions("div", "divide", "true_divide", sources=(torch, torch.Tensor)))
    activations = (
        "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish", "elu", "selu",
        "celu", "softplus", "relu6", "hardtanh",
    )  # fmt: skip
    add(_pass_through, *_functions(*activations))
    add(_product, *_functions("mul", "multiply", "matmul", "bmm", "mm", sources=(torch, torch.Tensor)))
    add(_einsum, torch.einsum)
    return table


#: The torch functions given a rule during a relevance pass, and their handlers.
FUNCTIONAL_RULES: Dict[Any, Handler] = _table()


class FunctionalRules(TorchFunctionMode):
    r"""The ``TorchFunctionMode`` a relevance pass runs in (see the module docstring).

    Calls are handled only while the mode is not suspended: rules applied by
    forward hooks, and the forward code of modules that have a rule, run
    suspended (:meth:`suspended`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._suspended = 0

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """Calls inside the block keep their own gradients."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def suspend(self) -> None:
        self._suspended += 1

    def resume(self) -> None:
        self._suspended = max(0, self._suspended - 1)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Tuple[Any, ...] = (),
        kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        kwargs = kwargs or {}
        handler = FUNCTIONAL_RULES.get(func)
        if handler is None or self._suspended or not torch.is_grad_enabled():
            return func(*args, **kwargs)
        return handler(func, args, kwargs)


# -- what plain gradients already explain ----------------------------------------

#: Autograd nodes whose plain gradient is an LRP rule already (with the engine's
#: ``c = R / a``): layout operations and selections (exact pass-through), linear
#: maps with constant coefficients (LRP-0), ReLU and max pooling (winner takes
#: all). A product, matrix product or division is one of them only when a
#: single operand belongs to the pass, or when every operand that does comes
#: through a relevance share (:class:`Shared`).
EXACT_NODES = frozenset(
    """
    ViewBackward0 UnsafeViewBackward0 ReshapeAliasBackward0 AliasBackward0 PermuteBackward0
    TransposeBackward0 TransposeBackward1 TBackward0 CloneBackward0 CatBackward0 StackBackward0
    RollBackward0 ConstantPadNdBackward0 SliceBackward0 SelectBackward0 NarrowBackward0
    ExpandBackward0 SqueezeBackward0 SqueezeBackward1 SqueezeBackward2 SqueezeBackward3
    UnsqueezeBackward0 FlipBackward0 RepeatBackward0 UnfoldBackward0 IndexBackward0
    GatherBackward0 IndexSelectBackward0 SplitBackward0 SplitWithSizesBackward0 UnbindBackward0
    AsStridedBackward0 ToCopyBackward0 PixelShuffleBackward0 PixelUnshuffleBackward0
    Im2ColBackward0 Col2ImBackward0 UpsampleNearest1DBackward0 UpsampleNearest2DBackward0
    UpsampleNearest3DBackward0 UpsampleBilinear2DBackward0 MaskedFillBackward0 WhereBackward0
    ReflectionPad1DBackward0 ReflectionPad2DBackward0 ReplicationPad1DBackward0
    ReplicationPad2DBackward0 ExpandAsBackward0 ViewAsRealBackward0
    AddBackward0 AddBackward1 SubBackward0 SubBackward1 RsubBackward0 RsubBackward1 NegBackward0
    MulBackward0 MulBackward1 DivBackward0 DivBackward1 SumBackward0 SumBackward1 MeanBackward0
    MeanBackward1 CumsumBackward0 ConvolutionBackward0 AddmmBackward0 MmBackward0 BmmBackward0
    MvBackward0 AddmvBackward0 BaddbmmBackward0 LinearBackward0
    AvgPool1DBackward0 AvgPool2DBackward0 AvgPool3DBackward0 AdaptiveAvgPool1DBackward0
    AdaptiveAvgPool2DBackward0 AdaptiveAvgPool3DBackward0
    ReluBackward0 ThresholdBackward0 ThresholdBackward1 LeakyReluBackward0 LeakyReluBackward1
    MaxPool1DWithIndicesBackward0 MaxPool2DWithIndicesBackward0 MaxPool3DWithIndicesBackward0
    AdaptiveMaxPool1DBackward0 AdaptiveMaxPool2DBackward0 AdaptiveMaxPool3DBackward0
    MaxBackward0 MaxBackward1 AmaxBackward0 NativeBatchNormBackward0 CudnnBatchNormBackward0
    """.split()
)

#: Nodes of two operands that are linear only when one of them is constant.
_BILINEAR_NODES = frozenset(
    "MulBackward0 DivBackward0 MmBackward0 BmmBackward0 MvBackward0 BaddbmmBackward0".split()
)
_SHARES = (Shared,)


def _sequence(node: object) -> int:
    try:
        return int(node._sequence_nr())  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return -1


def unruled_node(
    output: object, inputs: Sequence[Any], input_nodes: Sequence[object] = ()
) -> Optional[str]:
    r"""The name of the first operation between ``inputs`` and ``output`` whose
    plain gradient is not an LRP rule (see :data:`EXACT_NODES`), or None.

    The walk covers the nodes created after the inputs (a module's own
    forward code, given its inputs and output); the library's own autograd
    functions (the rules' and :class:`FunctionalRules`') count as rules.
    ``input_nodes`` are the inputs' graph nodes as they were when the module
    was called (an in-place operation replaces a tensor's node).
    """
    outputs = [output] if isinstance(output, Tensor) else [
        t for t in (output if isinstance(output, (tuple, list)) else ()) if isinstance(t, Tensor)
    ]
    stops = {t.grad_fn for t in inputs if isinstance(t, Tensor) and t.grad_fn is not None}
    stops.update(input_nodes)
    floor = max((_sequence(n) for n in stops), default=-1)
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen: set = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        name = type(node).__name__
        if name == "AccumulateGrad" or 0 <= _sequence(node) <= floor:
            continue
        cls = getattr(type(node), "_forward_cls", None)
        if cls is not None and not cls.__module__.startswith("captum_similarity."):
            return name  # another library's autograd function
        if cls is None and name not in EXACT_NODES:
            return name
        nexts = [n for n, _ in node.next_functions]  # type: ignore[attr-defined]
        if name in _BILINEAR_NODES:
            live = [n for n in nexts if n is not None]
            if len(live) > 1 and not all(
                getattr(type(n), "_forward_cls", None) in _SHARES for n in live
            ):
                return name
        stack.extend(n for n in nexts if n is not None)
    return None
