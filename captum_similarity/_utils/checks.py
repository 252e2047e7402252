"""Input validation with messages that name the offending argument."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def check_float_tensor(value: Any, name: str) -> Tensor:
    """Returns ``value`` if it is a floating-point tensor with a batch dimension.

    Raises:
        TypeError: ``value`` is not a tensor, or not of a floating-point dtype.
        ValueError: ``value`` is 0-dimensional or has an empty batch.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {value.dtype}; "
            "convert images with .float() (and scale them) first"
        )
    if value.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    if value.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    return value


def rows_identical(x: Tensor) -> bool:
    """Whether every row of ``x`` equals its first row (what Captum's expansion
    of a batch-1 argument produces)."""
    if x.shape[0] <= 1:
        return True
    return bool((x == x[:1]).all())


def broadcast_baselines(baselines: Any, inputs: Tensor, name: str = "baselines") -> Tensor:
    """``baselines`` as a tensor of shape ``(1 or N, *inputs.shape[1:])`` (an expanded view).

    Accepts a number, or a tensor broadcastable to one input (``inputs.shape[1:]``,
    with or without a leading 1) or to the whole batch ``(N, ...)``.

    Raises:
        TypeError: ``baselines`` is neither a number nor a tensor.
        ValueError: the tensor does not broadcast to ``inputs``.
    """
    if isinstance(baselines, bool) or not isinstance(baselines, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(baselines).__name__}")
    value = torch.as_tensor(baselines, dtype=inputs.dtype, device=inputs.device)
    while value.dim() < inputs.dim():
        value = value[None]
    batch = value.shape[0]
    if value.dim() != inputs.dim() or batch not in (1, inputs.shape[0]):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} do not broadcast to inputs of shape "
            f"{tuple(inputs.shape)}: give one input's shape, batch 1, or batch {inputs.shape[0]}"
        )
    try:
        return torch.broadcast_to(value, (batch,) + tuple(inputs.shape[1:]))
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} do not broadcast to inputs of shape "
            f"{tuple(inputs.shape)}"
        ) from None
