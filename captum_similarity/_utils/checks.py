"""Input validation with messages that name the offending argument."""

from __future__ import annotations

from typing import Any

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
