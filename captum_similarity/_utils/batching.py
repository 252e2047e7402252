"""Splitting work along the batch dimension."""

from __future__ import annotations

from typing import Iterator, Optional


def batch_slices(n: int, batch_size: Optional[int]) -> Iterator[slice]:
    """Yields slices covering ``range(n)`` in chunks of at most ``batch_size``.

    ``batch_size=None`` yields one slice covering everything.
    """
    if batch_size is None:
        yield slice(0, n)
        return
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))
