"""A default Captum LRP rule that a module keeps across ``LRP.attribute`` calls."""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = ["DefaultRule"]


class DefaultRule:
    r"""Class attribute giving each module instance its own LRP ``rule``.

    Captum's ``LRP`` uses a module's ``rule`` attribute when it has one and
    raises for module types it has no default for; after every ``attribute``
    call it deletes ``module.rule``. Declaring ``rule = DefaultRule(factory)``
    in a module class gives every instance a rule made by ``factory`` on first
    access, lets users assign another one, and brings a fresh default back
    after Captum's deletion, so the next call finds it again.

    Args:
        factory (Callable): Makes a new rule (a Captum ``PropagationRule``),
            e.g. ``captum.attr._utils.lrp_rules.EpsilonRule``.
    """

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.slot = "_rule"

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Optional[object], objtype: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if self.slot not in obj.__dict__:
            obj.__dict__[self.slot] = self.factory()
        return obj.__dict__[self.slot]

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.slot] = value

    def __delete__(self, obj: object) -> None:
        obj.__dict__.pop(self.slot, None)
