"""The entry point of every public method of the library's attribution classes.

:func:`attribution_entry` decorates ``attribute`` (and ``explain``,
``attribute_pairwise``, ...) so that each call

- runs inside :func:`~captum_similarity._utils.state.explaining` on the
  method's model (``self.forward_func``, Captum's name for it): one call at a
  time per model, eval mode with the flags restored, autograd enabled for
  gradient methods (also under ``torch.no_grad()``, as Captum's
  ``NoiseTunnel`` and metrics call methods, and under
  ``torch.inference_mode()``);
- receives normal tensors for any inference tensors it was given (they cannot
  be part of an autograd graph; a copy made outside inference mode can);
- carries what Captum's wrappers rely on: Captum's own ``log_usage``
  decorator, whose ``__wrapped__`` is what ``NoiseTunnel`` and
  ``GuidedGradCam`` call. ``__wrapped__`` is the guarded method, so those
  calls are guarded too.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

from captum.log import log_usage
from torch import Tensor

from .state import explaining

__all__ = ["attribution_entry", "normal_tensors"]

F = TypeVar("F", bound=Callable[..., Any])


def normal_tensors(value: Any) -> Any:
    """``value`` with every inference tensor (in tuples, lists and dicts too)
    replaced by a normal copy; anything else is returned as is."""
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(normal_tensors(v) for v in value)
    if isinstance(value, list):
        return [normal_tensors(v) for v in value]
    if isinstance(value, dict):
        return {k: normal_tensors(v) for k, v in value.items()}
    return value


def attribution_entry(gradients: bool = True) -> Callable[[F], F]:
    """Decorator for the public methods of an attribution class (see the module
    docstring).

    Args:
        gradients (bool, optional): Whether the method needs autograd (False
            for forward-only methods, which then run under ``torch.no_grad()``).
            Default: True
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            method = f"{type(self).__name__}.{fn.__name__}"
            with explaining(self.forward_func, gradients=gradients, method=method):
                return fn(self, *normal_tensors(args), **normal_tensors(kwargs))

        guarded.attribution_entry = True  # type: ignore[attr-defined]
        return log_usage()(guarded)  # type: ignore[no-any-return]

    return decorate
