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
    try:
        lock = _LOCKS.get(obj)  # a lookup needs no registry lock
        if lock is not None:
            return lock
        with _LOCKS_GUARD:
            return _LOCKS.setdefault(obj, threading.RLock())
    except TypeError:  # not weakly referenceable (or not hashable)
        return _FALLBACK_LOCK


def _locks(objects: List[Any]) -> List["threading.RLock"]:
    """The locks of ``objects`` (every module of a model, so that two wrappers
    around one embedder share its modules' locks), in one global order (by
    id) so that threads taking several never deadlock."""
    locks = {id(lk): lk for lk in map(_lock, objects)}
    return [locks[k] for k in sorted(locks)]


def _made_in_inference_mode(target: Any) -> bool:
    """Whether ``target``'s first parameter (or buffer) is an inference tensor:
    a model built inside ``torch.inference_mode()`` (a model loaded there
    keeps normal tensors: ``load_state_dict`` copies in place)."""
    if not isinstance(target, nn.Module):
        return False
    first = next(target.parameters(), None)
    if first is None:
        first = next(target.buffers(), None)
    return first is not None and first.is_inference()


def _from_inference_tensors(error: BaseException) -> bool:
    """Whether torch raised ``error`` (or an error it arose from) for an
    inference tensor meeting autograd."""
    seen = 0
    while error is not None and seen < 8:
        if "inference tensor" in str(error).lower():
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _inference_mode_error(method: str) -> InferenceModeError:
    return InferenceModeError(
        f"{method} needs autograd, but the model's parameters or buffers are inference "
        "tensors (the model was built inside torch.inference_mode()); build it outside "
        "torch.inference_mode() (loading weights inside is fine, as is torch.no_grad()), then "
        "call the method inside or outside inference mode"
    )


@contextmanager
def _eval_mode(modules: List[Any]) -> Iterator[None]:
    """``modules`` in eval mode inside the block, their training flags restored
    on exit (also on an exception); only the modules that were training are
    written."""
    training = [m for m in modules if isinstance(m, nn.Module) and m.training]
    try:
        for m in training:
            m.training = False
        yield
    finally:
        for m in training:
            m.training = True


@contextmanager
def explaining(model: Any, gradients: bool = True, method: str = "this method") -> Iterator[None]:
    r"""The one way every method and metric of the library runs a model.

    Inside the block:

    - **one explanation at a time per model**: a re-entrant lock per module of
      the model is held, so concurrent calls from several threads on one model
      (or on wrappers sharing its modules) run one after another, and nested
      calls from the same thread (a method calling the LRP engine) pass;
    - **eval mode**: the model runs in eval mode (BatchNorm uses and keeps its
      running statistics, Dropout is off); the training flags are restored on
      exit, also when an exception is raised (the methods change neither
      ``requires_grad`` nor ``.grad``: they take gradients with
      ``torch.autograd.grad``, and the LRP engine restores what it changes
      with :func:`preserved_state`);
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
    modules = list(target.modules()) if isinstance(target, nn.Module) else [target]
    entered = getattr(_ENTERED, "depth", None)
    if entered is None:
        entered = _ENTERED.depth = {}
    key = id(target)
    with ExitStack() as stack:
        for lock in _locks(modules):
            stack.enter_context(lock)
        if entered.get(key, 0) == 0:
            stack.enter_context(_eval_mode(modules))
        entered[key] = entered.get(key, 0) + 1
        stack.callback(_leave, entered, key)
        if not gradients:
            stack.enter_context(torch.no_grad())
            yield
            return
        if _made_in_inference_mode(target):
            raise _inference_mode_error(method)
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        try:
            yield
        except RuntimeError as error:
            # torch's message when some other weight made in inference mode meets autograd
            if _from_inference_tensors(error):
                raise _inference_mode_error(method) from error
            raise


def _leave(entered: Dict[int, int], key: int) -> None:
    entered[key] -= 1
    if not entered[key]:
        del entered[key]
