"""What the LRP wing knows about each autograd operation, and the two walks
over a relevance pass's autograd graph that use it.

Both walks need per-operation knowledge, and read it here, from one
:class:`OpHandler` per operation:

- :func:`receptive_field` walks the graph from a feature map down to the
  input and returns, per spatial axis, which input positions each feature
  cell can depend on; an operation's ``reach`` maps the receptive field of
  the node's output to those of its inputs, or is None for an operation
  whose spatial reach is not known to be local (a global pooling, attention,
  an upsampling, a reshape, a broadcast over space), and the walk then
  returns None: the answer is a guaranteed superset or nothing;
- :func:`windowed_backward` carries, for each seed, the gradient of every
  intermediate tensor on the window that the seed can reach there, not on
  the whole tensor; an operation's ``backward`` is its backward pass on
  windows (a transposed convolution, a scatter, or a product with what the
  node saved, computed on views of the saved tensor, in place where nothing
  else reads the windows: :mod:`captum_similarity.lrp.windows`), or None
  when the windowed pass does not reproduce it; ``windowable`` is the
  condition on what the node saved under which it does. The work follows the
  area the seeds reach, whatever their overlap, rather than one dense pass
  per group of seeds with disjoint footprints; windows keep the memory
  layout of the forward pass (channels-last or not). Only graphs whose every
  node the table reproduces exactly are accepted (:func:`windowable`), and
  the results equal the full backward pass's up to floating-point summation
  order.

Built-in operations are found by their autograd node's name; this library's
own autograd Functions (:mod:`captum_similarity.lrp.rules`) by their
class. :func:`register_op` and :func:`register_function` add or replace
entries. A node that reads a private autograd attribute which this version
of PyTorch lacks counts as unknown: the walks fall back (no receptive field,
dense backward passes), never raise ``AttributeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .graph import function_class, node_shape, pad_widths, per_axis, topological
from .rules import ConvAdjoint, Rewired, SignedLinear, SignSplit
from .seeds import cell_bounds
from .windows import (
    Windows,
    add,
    channels_last,
    cleaned,
    common,
    crop_to,
    mul_not,
    mul_positive,
    pick,
    scaled,
    scaled_origin,
    transposed,
    with_saved,
    zeros_in_layout,
)

__all__ = [
    "Axis",
    "OpHandler",
    "ReceptiveField",
    "handler_for",
    "reach",
    "receptive_field",
    "register_function",
    "register_op",
    "window_backward",
    "windowable",
    "windowable_node",
    "windowed_backward",
]

#: ``(stride, start, stop)`` along one spatial axis: cell ``i`` reads input
#: positions ``stride * i + start`` to ``stride * i + stop``.
Axis = Tuple[int, int, int]
#: ``(input node, its receptive field)`` for each input an operation reads.
Reached = List[Tuple[object, List[Axis]]]
ReachFn = Callable[[object, List[Axis], int], Optional[Reached]]
Incoming = Dict[int, Windows]
BackwardFn = Callable[[object, Incoming], List[Optional[Windows]]]


def _always(node: object) -> bool:
    return True


@dataclass(frozen=True)
class OpHandler:
    r"""What the receptive-field walk and the windowed backward pass know of
    one autograd operation.

    Args:
        reach (Callable, optional): ``reach(node, axes, batch)``: given the
            receptive field ``axes`` (one :data:`Axis` per spatial axis) of the
            node's output cells and the batch size, the receptive field passed
            to each input node, as a list of ``(input node, axes)``; None when
            the shapes or saved parameters do not allow a local answer.
            Default: None (the reach is not known to be local)
        backward (Callable, optional): ``backward(node, incoming)``: the
            backward pass on windows, from the windows of the gradient of each
            output (``{output index: Windows}``) to one entry per
            ``node.next_functions`` entry (None where nothing flows).
            Default: None (not reproduced on windows)
        windowable (Callable, optional): ``windowable(node)``: whether
            ``backward`` reproduces this node (what it saved allows it).
            Default: always
    """

    reach: Optional[ReachFn] = None
    backward: Optional[BackwardFn] = None
    windowable: Callable[[object], bool] = _always


_BY_NAME: Dict[str, OpHandler] = {}
_BY_FUNCTION: Dict[type, OpHandler] = {}


def register_op(name: str, handler: OpHandler) -> None:
    """Sets the handler of the built-in operation whose autograd node is named
    ``name`` (``node.name()``, e.g. ``"ConvolutionBackward0"``)."""
    if not isinstance(handler, OpHandler):
        raise TypeError(f"handler must be an OpHandler, got {type(handler).__name__}")
    _BY_NAME[name] = handler


def register_function(function: type, handler: OpHandler) -> None:
    """Sets the handler of the nodes of a ``torch.autograd.Function`` subclass."""
    if not (isinstance(function, type) and issubclass(function, torch.autograd.Function)):
        raise TypeError(f"function must be a torch.autograd.Function subclass, got {function!r}")
    if not isinstance(handler, OpHandler):
        raise TypeError(f"handler must be an OpHandler, got {type(handler).__name__}")
    _BY_FUNCTION[function] = handler


def handler_for(node: object) -> Optional[OpHandler]:
    """The handler of ``node``, or None for an operation the table does not hold."""
    function = function_class(node)
    if function is not None:
        return _BY_FUNCTION.get(function)
    return _BY_NAME.get(node.name())  # type: ignore[attr-defined]


def reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    """The receptive fields ``node`` passes to its inputs (see
    :class:`OpHandler`), or None when they are not known to be local."""
    handler = handler_for(node)
    if handler is None or handler.reach is None:
        return None
    try:
        return handler.reach(node, axes, batch)
    except AttributeError:  # a private autograd attribute this PyTorch does not have
        return None


def windowable_node(node: object) -> bool:
    """Whether the windowed backward pass reproduces ``node``."""
    handler = handler_for(node)
    if handler is None or handler.backward is None:
        return False
    try:
        return bool(handler.windowable(node))
    except AttributeError:  # a private autograd attribute this PyTorch does not have
        return False


def window_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    """``node``'s backward pass on windows (requires :func:`windowable_node`)."""
    handler = handler_for(node)
    if handler is None or handler.backward is None:
        raise ValueError(f"no windowed backward for {node.name()}")  # type: ignore[attr-defined]
    return handler.backward(node, incoming)


# -- reach ------------------------------------------------------------------


def _inputs(node: object) -> List[Tuple[object, int]]:
    return [(nxt, nr) for nxt, nr in node.next_functions if nxt is not None]  # type: ignore[attr-defined]


def _same_place(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    """An operation mapping each position to the same position (element-wise
    maps, shape-preserving aliases, eval-mode BatchNorm, channel
    concatenation): every input of the output's batch and spatial shape gets
    the output's receptive field; broadcasting over the batch or over space
    is not local."""
    out_spatial = node_shape(node, 0)[2:]
    ndim = len(axes)
    for nxt, nr in _inputs(node):
        shape = node_shape(nxt, nr)
        if len(shape) != ndim + 2 or shape[0] != batch or shape[2:] != out_spatial:
            return None
    return [(nxt, axes) for nxt, _ in _inputs(node)]


def _alias_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    """A view or alias: local only where it keeps the shape."""
    if any(node_shape(nxt, nr) != node_shape(node, 0) for nxt, nr in _inputs(node)):
        return None
    return _same_place(node, axes, batch)


def _batchnorm_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    if getattr(node, "_saved_training", True):
        return None  # batch statistics mix positions
    return _same_place(node, axes, batch)


def _cat_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    if node._saved_dim not in (1, -len(axes) - 1):  # type: ignore[attr-defined]
        return None  # only a concatenation of channels keeps positions
    return _same_place(node, axes, batch)


def _convolution_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    if node._saved_transposed:  # type: ignore[attr-defined]
        return None
    data, weight, bias = node.next_functions  # type: ignore[attr-defined]
    if data[0] is None or weight[0] is not None or bias[0] is not None:
        return None  # weights computed from the input
    kernel = tuple(node._saved_weight.shape[2:])  # type: ignore[attr-defined]
    geometry = (node._saved_stride, node._saved_padding, node._saved_dilation)  # type: ignore[attr-defined]
    return _window(data, axes, kernel, geometry, node_shape(node, 0), ceil=False)


def _signed_linear_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    """The rules' sign-split layer: a convolution's window, a Linear layer's everything."""
    adjoint = node.adjoint  # type: ignore[attr-defined]
    data = node.next_functions[0]  # type: ignore[attr-defined]
    if not isinstance(adjoint, ConvAdjoint) or data[0] is None:
        return None  # a Linear layer: not local
    kernel = tuple(node.weights[0].shape[2:])  # type: ignore[attr-defined]
    geometry = (adjoint.stride, adjoint.padding, adjoint.dilation)
    return _window(data, axes, kernel, geometry, node_shape(node, 0), ceil=False)


def _pool_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    data = node.next_functions[0]  # type: ignore[attr-defined]
    if data[0] is None:
        return None
    kernel = tuple(node._saved_kernel_size)  # type: ignore[attr-defined]
    ceil = bool(getattr(node, "_saved_ceil_mode", False))
    geometry = (
        getattr(node, "_saved_stride", None) or kernel,
        getattr(node, "_saved_padding", 0),
        getattr(node, "_saved_dilation", 1),
    )
    return _window(data, axes, kernel, geometry, node_shape(node, 0), ceil=ceil)


def _window(
    data: Tuple[object, int],
    axes: List[Axis],
    kernel: Tuple[int, ...],
    geometry: Tuple[object, object, object],
    out_shape: Tuple[int, ...],
    ceil: bool,
) -> Optional[Reached]:
    """A sliding window (convolution, pooling) of ``geometry`` = ``(stride,
    padding, dilation)``: cell ``o`` reads
    ``o * stride - padding + dilation * [0, kernel - 1]``."""
    ndim = len(axes)
    stride, padding, dilation = (per_axis(v, ndim) for v in geometry)
    in_shape = node_shape(data[0], data[1])
    if None in (stride, padding, dilation) or len(kernel) != ndim or len(in_shape) != ndim + 2:
        return None
    for d in range(ndim):  # the saved parameters must explain the shapes
        span = in_shape[2 + d] + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1
        expected = (-(-span // stride[d]) if ceil else span // stride[d]) + 1
        if expected != out_shape[2 + d] and not (ceil and expected - 1 == out_shape[2 + d]):
            return None
    reached = [
        (
            s * stride[d],
            a * stride[d] - padding[d],
            b * stride[d] - padding[d] + dilation[d] * (kernel[d] - 1),
        )
        for d, (s, a, b) in enumerate(axes)
    ]
    return [(data[0], reached)]


def _slice_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    """``x[..., start::step]`` along one axis: cell ``o`` reads ``start + step * o``."""
    ((data, nr),) = node.next_functions  # type: ignore[attr-defined]
    in_shape = node_shape(data, nr)
    ndim = len(axes)
    dim = node._saved_dim % (ndim + 2)  # type: ignore[attr-defined]
    if dim == 1:  # channels
        return [(data, axes)]
    if dim == 0 or len(in_shape) != ndim + 2 or in_shape[0] != batch:
        return None
    start, step = node._saved_start, node._saved_step  # type: ignore[attr-defined]
    start = start + in_shape[dim] if start < 0 else start
    d = dim - 2
    reached = list(axes)
    s, a, b = axes[d]
    reached[d] = (s * step, a * step + start, b * step + start)
    return [(data, reached)]


def _pad_reach(node: object, axes: List[Axis], batch: int) -> Optional[Reached]:
    """``F.pad`` with a constant: output position ``o`` is input position
    ``o - before`` along each padded axis (padded channels change nothing)."""
    ((data, _),) = node.next_functions  # type: ignore[attr-defined]
    widths = pad_widths(node, len(axes) + 2)
    if data is None or widths is None:
        return None
    return [
        (data, [(s, a - before, b - before) for (s, a, b), (before, _) in zip(axes, widths[2:])])
    ]


# -- backward on windows ----------------------------------------------------


def _pass_through(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    return [incoming[0]]


def _sign_split_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    (positive,) = node.saved_tensors  # type: ignore[attr-defined]  # 0/1: x >= 0
    pos, neg = incoming.get(0), incoming.get(1)
    if pos is not None and neg is not None:
        pos, neg = common(pos, neg)
        return [with_saved(pick, positive, pos, neg.values)]
    if pos is not None:
        return [with_saved(torch.mul, positive, pos)]
    return [with_saved(mul_not, positive, neg)]


def _signed_linear_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    (positive,) = node.saved_tensors  # type: ignore[attr-defined]  # 0/1: x >= 0
    adjoint = node.adjoint  # type: ignore[attr-defined]
    g = cleaned(incoming[0], node_shape(node, 0)[2:])
    keep = channels_last(positive)
    through_a, through_b = (
        transposed(g, w, adjoint.stride, adjoint.padding, adjoint.dilation, adjoint.groups, keep)
        for w in node.weights  # type: ignore[attr-defined]
    )
    return [with_saved(pick, positive, through_a, through_b.values), None, None, None]


def _rewired_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    g = incoming[0]
    factor = node.factor  # type: ignore[attr-defined]
    return [None, g if factor is None else with_saved(torch.mul, factor, g), None]


def _sum_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    """``a + alpha * b`` and ``a - alpha * b``."""
    g = incoming[0]
    sign = 1 if node.name() == "AddBackward0" else -1  # type: ignore[attr-defined]
    alpha = getattr(node, "_saved_alpha", 1) * sign
    first, second = _to_input(node, 0, g), _to_input(node, 1, scaled(g, alpha))
    if first.values is second.values:  # both summands read the same windows
        first = second = g.moved(g.values, owned=False)
    return [first, second]


def _neg_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    return [scaled(incoming[0], -1)]


def _scalar_product_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    return [scaled(incoming[0], node._saved_other)]  # type: ignore[attr-defined]


def _product_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    g = incoming[0]
    other, own = node._saved_other, node._saved_self  # type: ignore[attr-defined]
    if other is not None and own is not None:  # both products read g
        g = g.moved(g.values, owned=False)
    return [
        None if other is None else _to_input(node, 0, with_saved(torch.mul, other, g)),
        None if own is None else _to_input(node, 1, with_saved(torch.mul, own, g)),
    ]


def _relu_backward(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    return [with_saved(mul_positive, node._saved_result, incoming[0])]  # type: ignore[attr-defined]


def _one(backward: Callable[[object, Windows], Windows], slots: int = 1) -> BackwardFn:
    """A backward of one gradient to the node's first input (of ``slots``)."""

    def run(node: object, incoming: Incoming) -> List[Optional[Windows]]:
        return [backward(node, incoming[0])] + [None] * (slots - 1)

    return run


def _cat_windows(node: object, incoming: Incoming) -> List[Optional[Windows]]:
    return _cat_backward(node, incoming[0])


def _to_input(node: object, index: int, g: Windows) -> Windows:
    """``g`` summed over the channels that input ``index`` broadcast along."""
    nxt, nr = node.next_functions[index]  # type: ignore[attr-defined]
    if nxt is not None and node_shape(nxt, nr)[1] == 1 and g.values.shape[1] != 1:
        return g.moved(g.values.sum(1, keepdim=True))
    return g


def _input_extent(node: object, index: int = 0) -> List[int]:
    nxt, nr = node.next_functions[index]  # type: ignore[attr-defined]
    return list(node_shape(nxt, nr)[2:])


def _convolution_backward(node: object, g: Windows) -> Windows:
    """Gradient of a convolution's input on the windows that the output's reach."""
    weight = node._saved_weight  # type: ignore[attr-defined]
    ndim = weight.dim() - 2
    g = cleaned(g, node_shape(node, 0)[2:])
    return transposed(
        g,
        weight,
        per_axis(node._saved_stride, ndim),  # type: ignore[attr-defined]
        per_axis(node._saved_padding, ndim),  # type: ignore[attr-defined]
        per_axis(node._saved_dilation, ndim),  # type: ignore[attr-defined]
        node._saved_groups,  # type: ignore[attr-defined]
        channels_last(node._saved_input),  # type: ignore[attr-defined]
    )


def _slice_backward(node: object, g: Windows) -> Windows:
    """``x[..., start:stop:step]`` along one axis, backwards."""
    ((nxt, nr),) = node.next_functions  # type: ignore[attr-defined]
    in_shape = node_shape(nxt, nr)
    dim = node._saved_dim % len(in_shape)  # type: ignore[attr-defined]
    start, step = node._saved_start, node._saved_step  # type: ignore[attr-defined]
    start = start + in_shape[dim] if start < 0 else start
    if dim == 1:  # channels: the slice's channels go back to their places
        values = zeros_in_layout(g.values, (g.values.shape[0], in_shape[1]) + g.size)
        values[:, start : start + step * g.values.shape[1] : step] = g.values
        return g.moved(values)
    d = dim - 2
    size = list(g.size)
    size[d] = (size[d] - 1) * step + 1
    values = zeros_in_layout(g.values, g.values.shape[:2] + tuple(size))
    index = [slice(None)] * values.dim()
    index[dim] = slice(None, None, step)
    values[tuple(index)] = g.values
    origin = g.origin.clone()
    origin[:, d] = origin[:, d] * step + start
    return g.moved(values, origin)


def _pad_backward(node: object, g: Windows) -> Windows:
    """``F.pad`` with a constant, backwards: the padded channels are dropped
    (cropped ones come back as zeros) and the windows move by the padding;
    the positions they hold outside the input (the padding's) are zeroed later."""
    widths = pad_widths(node, g.values.dim())
    if any(w < 0 for pair in widths for w in pair):  # a crop brings outer positions inside
        g = cleaned(g, node_shape(node, 0)[2:])
    values = g.values
    if widths[1] != (0, 0):  # channels: the inverse padding
        before, after = widths[1]
        values = F.pad(values, [0, 0] * (values.dim() - 2) + [-before, -after])
    shift = g.origin.new_tensor([before for before, _ in widths[2:]])
    spatial = any(pair != (0, 0) for pair in widths[2:])
    return g.moved(values, g.origin - shift, clean=g.clean and not spatial, owned=g.owned)


def _cat_backward(node: object, g: Windows) -> List[Optional[Windows]]:
    """Concatenation along channels, backwards: each input gets its channels."""
    out: List[Optional[Windows]] = []
    first = 0
    for nxt, nr in node.next_functions:  # type: ignore[attr-defined]
        width = node_shape(nxt, nr)[1]  # windowable() rules out constant inputs
        out.append(g.moved(g.values[:, first : first + width], owned=g.owned))
        first += width
    return out


def _max_pool_backward(node: object, g: Windows) -> Windows:
    """Max pooling, backwards: each output's gradient goes to its argmax."""
    kernel = per_axis(node._saved_kernel_size, 2)  # type: ignore[attr-defined]
    stride = per_axis(node._saved_stride or kernel, 2)  # type: ignore[attr-defined]
    padding = per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    dilation = per_axis(node._saved_dilation, 2)  # type: ignore[attr-defined]
    _, width = _input_extent(node)
    g = cleaned(g, node_shape(node, 0)[2:])
    size = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip(g.size, stride, dilation, kernel)]
    origin = scaled_origin(g, stride, padding)
    flat = crop_to(node._saved_result1, g)  # type: ignore[attr-defined]  # argmax: h * width + w
    top, left = (origin[:, d].reshape(-1, 1, 1, 1) for d in (0, 1))
    local = (flat // width - top) * size[1] + flat % width - left
    local = local.clamp(0, size[0] * size[1] - 1)  # cells outside the input carry a zero gradient
    values = g.values.new_zeros(g.values.shape[:2] + (size[0] * size[1],))
    values.scatter_add_(2, local.flatten(2), g.values.flatten(2))
    # clean: every gradient lands on an argmax inside the input (cells outside carry zero)
    return g.moved(values.reshape(g.values.shape[:2] + tuple(size)), origin)


def _local_factors(node: object) -> bool:
    """A product whose saved operands are scalars or have the output's rank
    (broadcasting along size-1 axes only)."""
    rank = len(node_shape(node, 0))
    saved = (node._saved_self, node._saved_other)  # type: ignore[attr-defined]
    return all(t is None or t.dim() in (0, rank) for t in saved)


def _plain_average(node: object) -> bool:
    """An average pooling whose every window divides by the kernel's area."""
    padding = per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    return (
        node._saved_divisor_override is None  # type: ignore[attr-defined]
        and not node._saved_ceil_mode  # type: ignore[attr-defined]
        and (padding == (0, 0) or node._saved_count_include_pad)  # type: ignore[attr-defined]
    )


def _average_pool_backward(node: object, g: Windows) -> Windows:
    """Average pooling, backwards: a transposed convolution with a flat kernel."""
    kernel = per_axis(node._saved_kernel_size, 2)  # type: ignore[attr-defined]
    stride = per_axis(node._saved_stride or kernel, 2)  # type: ignore[attr-defined]
    padding = per_axis(node._saved_padding, 2)  # type: ignore[attr-defined]
    g = cleaned(g, node_shape(node, 0)[2:])
    channels = g.values.shape[1]
    weight = g.values.new_full((channels, 1) + tuple(kernel), 1.0 / (kernel[0] * kernel[1]))
    values = F.conv_transpose2d(g.values, weight, None, stride, 0, 0, channels)
    return g.moved(values, scaled_origin(g, stride, padding), clean=False)


# -- the table --------------------------------------------------------------


def _convolution_windowable(node: object) -> bool:
    return not node._saved_transposed and all(  # type: ignore[attr-defined]
        f is None for f, _ in node.next_functions[1:]  # type: ignore[attr-defined]
    )


def _pad_windowable(node: object) -> bool:
    return pad_widths(node, len(node_shape(node, 0))) is not None


def _cat_windowable(node: object) -> bool:
    return all(f is not None for f, _ in node.next_functions)  # type: ignore[attr-defined]


_ELEMENTWISE_ONLY = (
    "AbsBackward0", "AddBackward1", "ClampBackward1", "ClampMaxBackward0", "ClampMinBackward0",
    "DivBackward0", "DivBackward1", "EluBackward0", "ExpBackward0", "GeluBackward0",
    "HardsigmoidBackward0", "HardswishBackward0", "HardtanhBackward0", "LeakyReluBackward0",
    "PowBackward0", "SigmoidBackward0", "SiluBackward0", "SqrtBackward0", "SubBackward1",
    "TanhBackward0", "ThresholdBackward0", "ToCopyBackward0", "WhereBackward0",
)  # fmt: skip
for _name in _ELEMENTWISE_ONLY:
    register_op(_name, OpHandler(reach=_same_place))
for _name in ("ReshapeAliasBackward0", "UnsafeViewBackward0"):
    register_op(_name, OpHandler(reach=_alias_reach))
for _name in ("AliasBackward0", "ViewBackward0"):
    register_op(_name, OpHandler(reach=_alias_reach, backward=_pass_through))
for _name in ("NativeBatchNormBackward0", "CudnnBatchNormBackward0"):
    register_op(_name, OpHandler(reach=_batchnorm_reach))
for _name in (
    "MaxPool1DWithIndicesBackward0",
    "MaxPool3DWithIndicesBackward0",
    "AvgPool3DBackward0",
):
    register_op(_name, OpHandler(reach=_pool_reach))
for _name in ("AddBackward0", "SubBackward0"):
    register_op(_name, OpHandler(reach=_same_place, backward=_sum_backward))
register_op("CloneBackward0", OpHandler(reach=_same_place, backward=_pass_through))
register_op("NegBackward0", OpHandler(reach=_same_place, backward=_neg_backward))
register_op("MulBackward1", OpHandler(reach=_same_place, backward=_scalar_product_backward))
register_op(
    "MulBackward0",
    OpHandler(reach=_same_place, backward=_product_backward, windowable=_local_factors),
)
register_op("ReluBackward0", OpHandler(reach=_same_place, backward=_relu_backward))
register_op("SliceBackward0", OpHandler(reach=_slice_reach, backward=_one(_slice_backward)))
register_op(
    "ConstantPadNdBackward0",
    OpHandler(reach=_pad_reach, backward=_one(_pad_backward), windowable=_pad_windowable),
)
register_op(
    "CatBackward0",
    OpHandler(reach=_cat_reach, backward=_cat_windows, windowable=_cat_windowable),
)
register_op(
    "ConvolutionBackward0",
    OpHandler(
        reach=_convolution_reach,
        backward=_one(_convolution_backward, slots=3),
        windowable=_convolution_windowable,
    ),
)
register_op(
    "MaxPool2DWithIndicesBackward0",
    OpHandler(reach=_pool_reach, backward=_one(_max_pool_backward)),
)
register_op(
    "AvgPool2DBackward0",
    OpHandler(reach=_pool_reach, backward=_one(_average_pool_backward), windowable=_plain_average),
)
register_function(Rewired, OpHandler(reach=_same_place, backward=_rewired_backward))
register_function(SignSplit, OpHandler(reach=_same_place, backward=_sign_split_backward))
register_function(
    SignedLinear,
    OpHandler(
        reach=_signed_linear_reach,
        backward=_signed_linear_backward,
        windowable=lambda node: isinstance(node.adjoint, ConvAdjoint),
    ),
)


# -- the receptive-field walk ------------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    r"""Which input positions each cell of a feature map can depend on.

    Along spatial axis ``d``, cell ``i`` reads input positions
    ``stride[d] * i + start[d]`` to ``stride[d] * i + stop[d]`` (inclusive),
    clipped to the input's extent ``size[d]``. The range is exact for cells
    whose windows stay inside every feature map; at the border it may hold
    positions that only padding would have reached (a superset, never less).
    """

    stride: Tuple[int, ...]
    start: Tuple[int, ...]
    stop: Tuple[int, ...]
    size: Tuple[int, ...]

    def boxes(self, cells: Tensor) -> Tensor:
        """``(..., d, 2)`` first and last input position (inclusive) per axis of
        the cells ``(..., d)``; an empty box has first > last."""
        stride, start, stop, size = (
            torch.tensor(v, device=cells.device)
            for v in (self.stride, self.start, self.stop, self.size)
        )
        first = (cells * stride + start).clamp(min=0)
        last = torch.minimum(cells * stride + stop, size - 1)
        return torch.stack((first, last), dim=-1)

    def footprints(self, support: Tensor) -> Tensor:
        """``(..., d, 2)`` input box (first and last position per axis, inclusive)
        of each boolean cell ``support`` ``(..., *grid)``: the receptive field of
        the cells' bounding box; an empty support gives an empty box."""
        ndim = len(self.stride)
        lead = support.shape[: support.dim() - ndim]
        first, last = cell_bounds(support, ndim)
        low = self.boxes(first)[..., 0]
        high = self.boxes(last)[..., 1]
        empty = ~support.reshape(*lead, -1).any(-1)
        high = torch.where(empty[..., None], low - 1, high)
        return torch.stack((low, high), dim=-1)


def receptive_field(output: Tensor, leaves: Sequence[Tensor]) -> Optional[ReceptiveField]:
    """The receptive field of the cells of ``output`` ``(N, C, *spatial)`` in
    ``leaves`` (tensors of the input's shape whose gradients are read), or
    ``None`` when the graph between them holds an operation whose spatial reach
    is not known to be local, or the output does not depend on the leaves."""
    ndim = output.dim() - 2
    if ndim < 1 or output.grad_fn is None or not leaves:
        return None
    sizes = {tuple(leaf.shape[2:]) for leaf in leaves}
    if len(sizes) != 1 or any(leaf.dim() != output.dim() for leaf in leaves):
        return None
    leaf_ids = {id(leaf) for leaf in leaves}
    batch = output.shape[0]
    fields: Dict[object, List[Axis]] = {output.grad_fn: [(1, 0, 0)] * ndim}
    found: Optional[List[Axis]] = None
    for node in topological(output.grad_fn):
        axes = fields.get(node)
        if axes is None:
            continue
        if node.name() == "torch::autograd::AccumulateGrad":
            if id(node.variable) not in leaf_ids:
                return None
            found = axes if found is None else _merge(found, axes)
            if found is None:
                return None
            continue
        step = _step(node, axes, batch)
        if step is None:
            return None
        for nxt, nxt_axes in step:
            merged = nxt_axes if nxt not in fields else _merge(fields[nxt], nxt_axes)
            if merged is None:
                return None
            fields[nxt] = merged
    if found is None:
        return None
    (size,) = sizes
    return ReceptiveField(
        stride=tuple(a[0] for a in found),
        start=tuple(a[1] for a in found),
        stop=tuple(a[2] for a in found),
        size=size,
    )


def _step(node: object, axes: List[Axis], batch: int) -> Optional[List[Tuple[object, List[Axis]]]]:
    """The receptive fields passed to each node feeding ``node``, or None."""
    try:
        outputs = [node_shape(node, i) for i in range(len(node._input_metadata))]  # type: ignore[attr-defined]
    except AttributeError:  # a private autograd attribute this PyTorch does not have
        return None
    if any(len(s) != len(axes) + 2 or s[0] != batch for s in outputs):
        return None
    return reach(node, axes, batch)


def _merge(a: List[Axis], b: List[Axis]) -> Optional[List[Axis]]:
    if any(x[0] != y[0] for x, y in zip(a, b)):
        return None  # one input reached at two scales: not a plain feature pyramid
    return [(x[0], min(x[1], y[1]), max(x[2], y[2])) for x, y in zip(a, b)]


# -- the windowed backward pass ----------------------------------------------------------


_LEAF = "torch::autograd::AccumulateGrad"


def windowable(output: Tensor, leaves: Sequence[Tensor]) -> bool:
    """Whether every node between ``output`` and ``leaves`` is one that
    :func:`windowed_backward` reproduces (the receptive field must also be
    known: check :func:`~captum_similarity.lrp.ops.receptive_field`
    first)."""
    if output.grad_fn is None:
        return False
    leaf_ids = {id(leaf) for leaf in leaves}
    for node in topological(output.grad_fn):
        if node.name() == _LEAF:
            if id(node.variable) not in leaf_ids:
                return False
        elif not windowable_node(node):
            return False
    return True


def windowed_backward(
    output: Tensor, leaves: Sequence[Tensor], grads: Windows
) -> List[Optional[Windows]]:
    r"""The gradient of ``output`` with respect to each leaf, window by window.

    Args:
        output (Tensor): ``(N, C, *spatial)`` a tensor of the graph.
        leaves (sequence of Tensor): Leaves ``(N, C', *input_spatial)`` of the graph.
        grads (Windows): Windows of the gradient seeded at ``output``; each
            must hold all of its seed's non-zero values.

    Returns:
        list of Windows or None: per leaf, the windows of the gradient that
        the seeds give it (windows cover everything each seed reaches), or
        None for a leaf that no seed reaches. Requires :func:`windowable`.
    """
    pending: Dict[object, Dict[int, Windows]] = {output.grad_fn: {0: grads}}
    found: Dict[int, Windows] = {}
    for node in topological(output.grad_fn):
        incoming = pending.pop(node, None)
        if incoming is None:
            continue
        if node.name() == _LEAF:
            found[id(node.variable)] = cleaned(incoming[0], node.variable.shape[2:])
            continue
        for (nxt, nr), window in zip(node.next_functions, window_backward(node, incoming)):
            if nxt is None or window is None:
                continue
            slot = pending.setdefault(nxt, {})
            slot[nr] = window if nr not in slot else add(slot[nr], window)
    return [found.get(id(leaf)) for leaf in leaves]
