"""Forward hooks that record layer tensors (always removed on exit), hooks that
keep a module's output on given inputs (whole batches, or rows wherever they
occur in a batch), and a check for hooks someone else registered."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_globals
from torch.utils.hooks import RemovableHandle


class LayerRecorder:
    """Records a module's output (or first input) on every forward call.

    Use it as a context manager; the hook is removed on exit, also when an
    exception is raised inside the block.

    Args:
        layer (nn.Module): The module to watch.
        attribute_to_layer_input (bool, optional): Record the module's first
            positional input instead of its output.
            Default: False
    """

    def __init__(self, layer: nn.Module, attribute_to_layer_input: bool = False) -> None:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        self.layer = layer
        self.attribute_to_layer_input = attribute_to_layer_input
        self.tensors: List[Tensor] = []
        self._handle: Optional[RemovableHandle] = None

    def _hook(self, module: nn.Module, inputs: Tuple, output: object) -> None:
        value = inputs[0] if self.attribute_to_layer_input else output
        if not isinstance(value, Tensor):
            where = "input" if self.attribute_to_layer_input else "output"
            raise TypeError(
                f"layer {type(module).__name__} produced a {type(value).__name__} "
                f"as its {where}; a single tensor is required"
            )
        self.tensors.append(value)

    def __enter__(self) -> "LayerRecorder":
        self.tensors = []
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def single(self) -> Tensor:
        """The recorded tensor of the one forward call made inside the block."""
        if len(self.tensors) != 1:
            raise RuntimeError(
                f"layer {type(self.layer).__name__} ran {len(self.tensors)} times in one "
                "forward pass; explain a layer that runs exactly once"
            )
        return self.tensors[0]


@contextmanager
def recording(layer: nn.Module, attribute_to_layer_input: bool = False) -> Iterator[LayerRecorder]:
    """Context-manager shorthand for :class:`LayerRecorder`."""
    with LayerRecorder(layer, attribute_to_layer_input) as rec:
        yield rec


class OutputOnInputs:
    """Keeps a module's output from the first forward call made on exactly
    the given inputs (the same shapes and values), so that a caller can read
    the result of a pass that someone else runs (e.g. the score of a pair
    from the forward pass of the method explaining it) instead of running
    the module again.

    Use it as a context manager; the hook is removed on exit, also when an
    exception is raised inside the block. Calls on other inputs (perturbed,
    scaled, another batch size) are ignored.

    Args:
        module (nn.Module): The module to watch.
        inputs (tuple of Tensor): The positional inputs to wait for.
    """

    def __init__(self, module: nn.Module, inputs: Tuple[Tensor, ...]) -> None:
        self.module = module
        self.inputs = tuple(inputs)
        self.output: Optional[Tensor] = None
        self._handle: Optional[RemovableHandle] = None

    def _matches(self, args: Tuple) -> bool:
        if len(args) < len(self.inputs):
            return False
        for got, want in zip(args, self.inputs):
            if not isinstance(got, Tensor) or got.shape != want.shape or got.dtype != want.dtype:
                return False
            if got.device != want.device or not torch.equal(got.detach(), want):
                return False
        return True

    def _hook(self, module: nn.Module, args: Tuple, output: object) -> None:
        if self.output is None and isinstance(output, Tensor) and self._matches(args):
            self.output = output.detach()

    def __enter__(self) -> "OutputOnInputs":
        self.output = None
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


#: How many values of a row :class:`RowOutputsOnInputs` sums, evenly spaced,
#: to find candidate rows before comparing them whole.
KEY_ELEMENTS = 1024


def _row_keys(batch: Tensor) -> Tensor:
    """``(B,)`` float64 sums of at most :data:`KEY_ELEMENTS` evenly spaced
    values of each row (a small copy: a sum over whole rows would copy the
    batch in float64)."""
    if batch.numel() == 0:
        return torch.zeros(len(batch), dtype=torch.float64, device=batch.device)
    flat = batch.reshape(len(batch), -1)
    step = -(-flat.shape[1] // KEY_ELEMENTS)  # ceil: at most KEY_ELEMENTS values
    return flat[:, ::step].double().sum(1)


class RowOutputsOnInputs:
    """Keeps a module's output rows for given input rows, wherever they occur
    in the batches it is called on (alone, concatenated, interleaved with
    other rows), so that a caller can read e.g. the embeddings of images that
    a method embedded on its own instead of embedding them again.

    The module must map a batch ``(B, ...)`` to outputs ``(B, ...)`` row by
    row. A row counts as found when an input row equals it exactly (same
    shape, dtype, device and values); the first call that contains it gives
    its output. Rows are first matched on a sum of at most
    :data:`KEY_ELEMENTS` of their values, then compared whole, so that
    watching costs little beside the module's own pass. Use it as a context
    manager; the hook is removed on exit, also when an exception is raised
    inside the block. A module whose hooks cannot be registered (a
    TorchScript module) is not watched. While it watches, the module counts
    as hooked (:func:`has_hooks`), so a
    :class:`~captum_similarity.SiameseSimilarity` embeds a broadcast
    one-row side once per row instead of once (same values).

    Args:
        module (nn.Module): The module to watch.
        rows (Tensor or sequence of Tensor): The input rows to wait for,
            ``(M, ...)``, or several such tensors of one row shape, dtype
            and device, taken as their concatenation (not made).
    """

    def __init__(self, module: object, rows: Union[Tensor, Sequence[Tensor]]) -> None:
        self.module = module
        groups = [rows] if isinstance(rows, Tensor) else list(rows)
        if not groups:
            raise ValueError("rows is an empty sequence: give a tensor or at least one tensor")
        if any(
            g.shape[1:] != groups[0].shape[1:] or g.dtype != groups[0].dtype
            or g.device != groups[0].device for g in groups
        ):
            raise ValueError("rows must be a tensor, or tensors of one row shape, dtype and device")
        self._first = groups[0].detach()
        self._rows = [r for g in groups for r in g.detach().unbind(0)]
        self._outputs: List[Optional[Tensor]] = [None] * len(self._rows)
        self._keys = (
            torch.cat([_row_keys(g.detach()) for g in groups])
            if self._rows else self._first.new_zeros(0, dtype=torch.float64)
        )
        self._handle: Optional[RemovableHandle] = None

    def _hook(self, module: nn.Module, args: Tuple, output: object) -> None:
        if not args or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
            return
        batch = args[0].detach()
        want = self._first
        same_kind = batch.dtype == want.dtype and batch.device == want.device
        if batch.shape[1:] != want.shape[1:] or not same_kind:
            return
        if output.dim() == 0 or output.shape[0] != batch.shape[0]:
            return
        missing = [i for i, o in enumerate(self._outputs) if o is None]
        if not missing:
            return
        keys = _row_keys(batch)  # a cheap first test before comparing rows
        close = torch.isclose(
            self._keys[missing][:, None], keys[None, :], rtol=1e-9, atol=1e-9
        )  # (missing rows, batch rows): one synchronisation for the candidates
        for m, b in close.nonzero().tolist():
            i = missing[m]
            if self._outputs[i] is None and torch.equal(batch[b], self._rows[i]):
                self._outputs[i] = output[b].detach()

    def outputs(self) -> Optional[Tensor]:
        """The output rows ``(M, ...)``, in the order of ``rows``; None unless
        every row was found."""
        if not self._outputs or any(o is None for o in self._outputs):
            return None
        return torch.stack(self._outputs)

    def __enter__(self) -> "RowOutputsOnInputs":
        self._outputs = [None] * len(self._rows)
        try:
            register = self.module.register_forward_hook  # type: ignore[attr-defined]
            self._handle = register(self._hook)
        except (AttributeError, RuntimeError, TypeError):
            self._handle = None  # not a module that takes hooks: nothing is watched
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def has_hooks(model: nn.Module) -> bool:
    """Whether any module hook (forward, forward-pre, backward, backward-pre) is
    registered on ``model`` or one of its submodules, or globally for all
    modules: whether something (a Captum layer method, DeepLift, LRP) watches
    the model's layers."""
    if any(getattr(module_globals, name, None) for name in _GLOBAL_HOOKS):
        return True
    return any(getattr(m, name, None) for m in model.modules() for name in _MODULE_HOOKS)

