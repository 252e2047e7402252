"""Forward hooks that record layer tensors (always removed on exit), a hook that
keeps a module's output on given inputs, and a check for hooks someone else
registered."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple

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
            if got.device != want.device or not bool((got.detach() == want).all()):
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

