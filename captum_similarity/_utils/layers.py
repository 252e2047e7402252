"""Finding a layer inside a model by module or dotted name."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

LayerSpec = Union[str, nn.Module]


def unwrap_embedder(model: nn.Module) -> nn.Module:
    """The embedder inside a similarity wrapper (a class declaring
    ``wraps_embedder = True`` and holding it in ``.embedder``, as
    ``SiameseSimilarity`` does), else ``model`` itself."""
    return model.embedder if getattr(type(model), "wraps_embedder", False) else model


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


def list_layers(
    model: nn.Module, example: torch.Tensor, outputs: Optional[List[Any]] = None
) -> List[Tuple[str, str, Tuple[int, ...]]]:
    """Names, types and output shapes of every submodule for one example input.

    Runs one forward pass (without gradients, in the model's current mode)
    with temporary hooks that are removed afterwards. Modules whose output is
    not a tensor are listed with an empty shape.

    Args:
        model (nn.Module): The model.
        example (Tensor): Its input.
        outputs (list, optional): Filled with each listed module's output, in
            the same order (modules returning the same tensor share it).
            Default: None

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
                if outputs is not None:
                    outputs.append(output)

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in order]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return found


def fits_image(grid: Sequence[int], image: Sequence[int]) -> bool:
    """Whether a grid ``(h, w)`` can tile an image ``(H, W)`` with one stride
    along both axes (up to a quarter, for padding and rounding)."""
    h, w = int(grid[0]), int(grid[1])
    height, width = int(image[0]), int(image[1])
    if not (1 <= h <= height and 1 <= w <= width):
        return False
    sh, sw = height / h, width / w
    return abs(sh - sw) <= 0.25 * max(sh, sw)


def grid_layout(shape: Sequence[int], image: Sequence[int]) -> Optional[str]:
    """``"channels_first"`` for a feature map ``(N, C, h, w)`` whose grid fits
    the image, ``"channels_last"`` for one laid out ``(N, h, w, C)`` (where
    only that reading fits), else None. Where both readings fit (e.g.
    ``(N, 8, 8, 8)``), channels first."""
    if len(shape) != 4:
        return None
    if fits_image(shape[2:], image):
        return "channels_first"
    if fits_image(shape[1:3], image):
        return "channels_last"
    return None


def feature_grid(
    t: torch.Tensor,
    reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]],
    method: str,
    image_size: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """``t`` (through ``reshape_transform`` when given) as a feature map ``(N, C, h, w)``.

    With ``image_size`` and no ``reshape_transform``, a 4-D ``t`` whose grid
    only fits the image when read channels-last (``(N, h, w, C)``, as Swin's
    stages give) is refused rather than read as channels first.

    Raises:
        ValueError: the result is not 4-D, or is a channels-last grid; the
            message names ``method`` and the ``reshape_transform`` to pass.
    """
    if reshape_transform is None and image_size is not None and t.dim() == 4:
        if grid_layout(t.shape, image_size) == "channels_last":
            raise ValueError(
                f"{method}: the layer's output {tuple(t.shape)} is a channels-last grid "
                f"(N, h, w, C) for {tuple(image_size)} images, not (N, C, h, w); pass "
                "reshape_transform=captum_similarity.models.ChannelsLast() (or give no layer: "
                "the default layer comes with its transform)"
            )
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
