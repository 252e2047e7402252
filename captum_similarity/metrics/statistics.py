"""Means with standard errors, and paired differences: what makes "method A
beats method B" a measured statement rather than a reading of two means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

__all__ = ["Estimate", "mean_and_standard_error", "paired_difference"]

Values = Union[Tensor, Sequence[float]]


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` values and its standard error
    (sample standard deviation / sqrt(n); NaN for fewer than 2 values)."""

    mean: float
    standard_error: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.standard_error:.2g} (n={self.n})"


def mean_and_standard_error(values: Values) -> Estimate:
    """The mean of the finite entries of ``values`` and its standard error.

    Raises:
        ValueError: ``values`` is not one-dimensional.
    """
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if v.dim() != 1:
        raise ValueError(f"values must be one-dimensional, got shape {tuple(v.shape)}")
    v = v[torch.isfinite(v)]
    n = int(v.numel())
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = float(v.mean())
    se = float(v.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(mean, se, n)


def paired_difference(a: Values, b: Values) -> Estimate:
    """The mean of ``a[i] - b[i]`` over the items measured by both (both finite)
    and its standard error: the comparison of two methods on the same pairs.

    Raises:
        ValueError: ``a`` and ``b`` have different shapes.
    """
    x = torch.as_tensor(a, dtype=torch.float64).detach().cpu()
    y = torch.as_tensor(b, dtype=torch.float64).detach().cpu()
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return mean_and_standard_error(x - y)
