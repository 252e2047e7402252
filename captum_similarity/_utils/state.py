"""Leaving the user's model exactly as it was found, and running it one
explanation at a time: :func:`explaining` is the context every method and
metric of the library enters."""

from __future__ import annotations

import threading
import weakref
from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, List

import torch
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


class InferenceModeError(RuntimeError):
    """A gradient-based explanation was asked for a model whose parameters or
    buffers are inference tensors (created under ``torch.inference_mode()``):
    autograd cannot record a graph through them."""


#: One re-entrant lock per module (or callable), created on first use and
#: dropped with the object: explanations of one model are serialised, while
#: explanations of different models run in parallel.
_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
#: For objects that cannot be weakly referenced (rare callables): one shared lock.
_FALLBACK_LOCK = threading.RLock()
#: Per thread: ids of the objects this thread is explaining now, with a depth.
_ENTERED = threading.local()


def explained_module(model: Any) -> Any:
    """The object whose state an explanation of ``model`` touches: ``model``
    itself for a module (a :class:`~captum_similarity.SiameseSimilarity`
    includes its embedder), the module of a bound method such as
    ``model.forward``, otherwise the callable itself."""
    owner = getattr(model, "__self__", None)
    if not isinstance(model, nn.Module) and isinstance(owner, nn.Module):
        return owner
    return model


def _lock(obj: Any) -> "threading.RLock":
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(obj)
            if lock is None:
                lock = _LOCKS[obj] = threading.RLock()
        except TypeError:  # not weakly referenceable (or not hashable)
            lock = _FALLBACK_LOCK
    return lock


def _locks(target: Any) -> List["threading.RLock"]:
    """The locks of every module of ``target`` (so that two wrappers around one
    embedder share its modules' locks), in one global order (by id) so that
    threads taking several never deadlock."""
    objects = list(target.modules()) if isinstance(target, nn.Module) else [target]
    unique = {id(o): o for o in objects}
    locks = {id(lk): lk for lk in (_lock(unique[k]) for k in sorted(unique))}
    return [locks[k] for k in sorted(locks)]


def _check_not_inference(target: Any, method: str) -> None:
    if not isinstance(target, nn.Module):
        return
    for name, t in list(target.named_parameters()) + list(target.named_buffers()):
        if t.is_inference():
            raise InferenceModeError(
                f"{method} needs autograd, but the model's {name!r} is an inference tensor "
                "(the model was created or loaded inside torch.inference_mode()); create or "
                "load the model outside torch.inference_mode() (torch.no_grad() is fine), "
                "then call the method inside or outside inference mode"
            )


@contextmanager
def explaining(model: Any, gradients: bool = True, method: str = "this method") -> Iterator[None]:
    r"""The one way every method and metric of the library runs a model.

    Inside the block:

    - **one explanation at a time per model**: a re-entrant lock per module of
      the model is held, so concurrent calls from several threads on one model
      (or on wrappers sharing its modules) run one after another, and nested
      calls from the same thread (a method calling the LRP engine) pass;
    - **eval mode**: the model runs in eval mode (BatchNorm uses and keeps its
      running statistics, Dropout is off); training flags, ``requires_grad``
      and ``.grad`` are restored on exit, also when an exception is raised;
    - **autograd** (``gradients=True``): enabled, also inside
      ``torch.no_grad()`` and ``torch.inference_mode()`` (which is left for
      the block); a model whose parameters or buffers are inference tensors
      raises :class:`InferenceModeError`. With ``gradients=False`` the block
      runs under ``torch.no_grad()``.

    A nested entry on an object the thread already explains only re-enters
    the locks.

    Args:
        model: A module, a bound method of one, or any callable (then only a
            lock is taken: its state cannot be seen).
        gradients (bool, optional): Whether the block needs autograd.
            Default: True
        method (str, optional): The method's name, for messages.
            Default: ``"this method"``

    Raises:
        InferenceModeError: ``gradients`` with a model made of inference tensors.
    """
    target = explained_module(model)
    entered = getattr(_ENTERED, "depth", None)
    if entered is None:
        entered = _ENTERED.depth = {}
    key = id(target)
    with ExitStack() as stack:
        for lock in _locks(target):
            stack.enter_context(lock)
        if entered.get(key, 0) == 0:
            stack.enter_context(preserved_state(target, eval_mode=True))
        entered[key] = entered.get(key, 0) + 1
        stack.callback(_leave, entered, key)
        if gradients:
            if torch.is_inference_mode_enabled():
                stack.enter_context(torch.inference_mode(False))
            _check_not_inference(target, method)
            stack.enter_context(torch.enable_grad())
        else:
            stack.enter_context(torch.no_grad())
        yield


def _leave(entered: Dict[int, int], key: int) -> None:
    entered[key] -= 1
    if not entered[key]:
        del entered[key]
