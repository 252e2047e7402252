"""Leaving the user's model exactly as it was found."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def preserved_state(model: object, eval_mode: bool = False, freeze: bool = False) -> Iterator[None]:
    """Restores training flags, ``requires_grad`` and ``.grad`` of ``model`` on exit.

    Inside the block the model may be switched to eval mode (``eval_mode``) and
    its parameters frozen (``freeze``, so that backward passes leave no
    ``.grad`` behind). Restoration also happens when an exception is raised.
    Weights are not copied: code that changes them (e.g. BatchNorm folding)
    must restore them itself. ``model`` may be any callable; only modules are
    touched.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
