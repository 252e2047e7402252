"""Finding a layer inside a model by module or dotted name."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from torch import nn

LayerSpec = Union[str, nn.Module]


def resolve_layer(model: Any, layer: LayerSpec) -> nn.Module:
    """Returns the module ``layer`` names inside ``model``.

    Args:
        model: The embedder (an ``nn.Module``; a plain callable only works
            with ``layer`` given as a module).
        layer (str or nn.Module): A submodule of ``model``, or its dotted name
            as listed by ``model.named_modules()`` (e.g. ``"layer3.0.conv2"``).

    Raises:
        ValueError: the name does not exist, or the module is not part of ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    if isinstance(layer, str):
        if not isinstance(model, nn.Module):
            raise TypeError("a layer given by name needs the embedder to be an nn.Module")
        modules = dict(model.named_modules())
        if layer not in modules:
            close = [n for n in modules if n and (layer in n or n in layer)][:5]
            hint = f"; similar names: {', '.join(close)}" if close else ""
            raise ValueError(f"the model has no layer named {layer!r}{hint}")
        return modules[layer]
    if isinstance(layer, nn.Module):
        if isinstance(model, nn.Module) and not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
        return layer
    raise TypeError(f"layer must be a module or a dotted name, got {type(layer).__name__}")


def list_layers(model: nn.Module, example: torch.Tensor) -> List[Tuple[str, str, Tuple[int, ...]]]:
    """Names, types and output shapes of every submodule for one example input.

    Runs one forward pass (without gradients, in the model's current mode)
    with temporary hooks that are removed afterwards. Modules whose output is
    not a tensor are listed with an empty shape.

    Returns:
        list of ``(name, type name, output shape)`` in execution order.
    """
    found: List[Tuple[str, str, Tuple[int, ...]]] = []
    order: List[Tuple[str, nn.Module]] = [(n, m) for n, m in model.named_modules() if n]
    shapes: dict = {}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if name not in shapes:
                shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
                found.append((name, type(module).__name__, shapes[name]))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in order]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return found


def feature_grid(
    t: torch.Tensor,
    reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]],
    method: str,
) -> torch.Tensor:
    """``t`` (through ``reshape_transform`` when given) as a feature map ``(N, C, h, w)``.

    Raises:
        ValueError: the result is not 4-D; the message names ``method`` and, for
            3-D transformer tokens, points to ``reshape_transform``.
    """
    if reshape_transform is not None:
        t = reshape_transform(t)
    if t.dim() != 4:
        hint = (
            "; for transformer tokens (N, T, C) pass reshape_transform (e.g. TokenGrid)"
            if t.dim() == 3
            else ""
        )
        raise ValueError(
            f"{method} needs a feature map (N, C, h, w) at the layer, got shape "
            f"{tuple(t.shape)}{hint}"
        )
    return t
