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
        if eval_mode and any(mode for _, mode in modes):
            model.eval()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        # only what changed is written back (Module.__setattr__ is slow, and the
        # engine passes through here once per forward pass)
        for m, mode in modes:
            if m.training != mode:
                m.training = mode
        for p, flag, grad in zip(params, flags, grads):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if p.grad is not grad:
                p.grad = grad


@contextmanager
def frozen_batchnorm_statistics(model: object) -> Iterator[None]:
    """Forward passes inside the block leave BatchNorm running statistics unchanged.

    Modules in train mode still normalise with the batch's statistics; only
    the update of ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` is suppressed (for extra forward passes on
    synthetic inputs, e.g. masked images, during training).
    """
    norms = [
        m for m in (model.modules() if isinstance(model, nn.Module) else ())
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [
        (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in norms
    ]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
