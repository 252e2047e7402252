"""Composites: which rule each layer of a model gets.

A :class:`Composite` assigns rules by, in this order of precedence:

1. user rules by module name (exact dotted name or a glob pattern such as
   ``"layer2.*.conv1"``) or by module object;
2. a ``rule`` attribute set on the module (Captum's convention; Captum's rule
   classes are translated by :func:`~captum_similarity.lrp.rules.as_rule`, and
   the attribute is never deleted);
3. the input rule (e.g. :class:`~captum_similarity.lrp.rules.ZBox`) for a
   Linear/Conv layer that reads the model input directly (decided at run time);
4. rules by layer type, where a value may be a function of the layer's
   relative depth (``0 <= depth < 1``: position among the model's
   Linear/Conv modules in registration order, divided by their count).

Modules whose plain gradient already is the LRP rule need none: ReLU,
LeakyReLU, Dropout, Identity, Flatten, average and max pooling (with relevance
as the gradient's ``R / a``, a linear map's own gradient is LRP-0 and max
pooling's is winner-take-all). Neither does any other module without
parameters of its own kind: a leaf module without a rule is run with the
functional rules of :mod:`~captum_similarity.lrp.functional` (attention,
normalisation, activations and products in forward code get their rules
there) and its graph is checked: layout operations (permute, reshape, roll,
pad, slicing, ``cat``), eval-mode identities (StochasticDepth, DropPath) and
linear maps with constant coefficients pass relevance exactly; an operation
no rule covers (``exp``, ``pow``, another library's autograd function) makes
the call raise a ``ValueError`` that names the module, the operation and how
to give the module a rule.

The presets (:data:`COMPOSITES`) share the defaults for non-linear modules:
:class:`~captum_similarity.lrp.rules.Pass` for element-wise activations,
squeeze-excitation gates and a BatchNorm that cannot be folded into the
layer feeding it (DenseNet's pre-activation BatchNorm: the per-channel affine
map passes relevance element by element, conserving it, where LRP-0 would
give the shift a share and blow up where ``x * scale`` and the shift nearly
cancel), and :class:`~captum_similarity.lrp.rules.Hold` for ``nn.Softmax``
(attention weights). LayerNorm, GroupNorm and attention are covered by the
functional rules.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

from torch import nn

from .rules import (
    BATCHNORM_TYPES,
    LINEAR_TYPES,
    Epsilon,
    Gamma,
    Hold,
    Pass,
    Rule,
    RuleLike,
    ZPlus,
    as_rule,
)

__all__ = [
    "Composite",
    "is_squeeze_excitation",
    "COMPOSITES",
    "resolve_composite",
    "lrp0",
    "epsilon",
    "epsilon_plus",
    "gamma",
    "depth_gamma",
    "PLAIN_GRADIENT_TYPES",
    "ACTIVATION_TYPES",
    "UNSUPPORTED_TYPES",
]

_SE_NAMES = re.compile(r"squeeze.?excit|^se(module|layer|block)?$|^effectivese", re.IGNORECASE)


def is_squeeze_excitation(module: nn.Module) -> bool:
    """Whether ``module`` is a squeeze-excitation gate, recognised by class name
    (``SqueezeExcitation``, ``SqueezeExcite``, ``SEModule``, ``SELayer``,
    ``EffectiveSEModule``, ...)."""
    return bool(_SE_NAMES.search(type(module).__name__))

RuleSpec = Union[Rule, Callable[[float], Rule]]
LayerKey = Union[str, nn.Module]
TypeKey = Union[Type[nn.Module], Tuple[Type[nn.Module], ...]]

#: Modules whose plain gradient is their LRP rule: they get no hook.
PLAIN_GRADIENT_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip

#: Element-wise activations, given the pass-through rule by default.
ACTIVATION_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.SiLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.SELU, nn.CELU, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.ReLU6, nn.Mish, nn.Softplus, nn.PReLU,
)  # fmt: skip

#: Module types reported as unsupported unless a user rule covers them (none
#: by default: ``nn.MultiheadAttention`` and PyTorch's transformer layers are
#: explained through the functional attention rule).
UNSUPPORTED_TYPES: Tuple[Type[nn.Module], ...] = ()

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Composite:
    r"""Assigns an LRP rule to each layer of a model.

    Args:
        layer_rules (Mapping): Layer type (or tuple of types) to a
            :class:`~captum_similarity.lrp.rules.Rule`, or to a function of the
            relative depth returning one (see :func:`depth_gamma`). Checked in
            order with ``isinstance``; the first match wins. Squeeze-excitation
            modules (recognised by class name) get ``Pass()`` unless a type
            rule or user rule says otherwise.
        rules (Mapping, optional): User rules by module name, glob pattern or
            module object; they take precedence over everything else. Values
            may also be Captum rules.
            Default: None
        input_rule (Rule, optional): Rule for a Linear/Conv layer that reads
            the model input directly, e.g. ``ZBox(0.0, 1.0)``.
            Default: None
        fold_batchnorm (bool, optional): Merge a BatchNorm into the conv or
            linear layer that feeds it (the merged layer takes the conv's
            rule). When False, BatchNorm gets its own type rule.
            Default: True
    """

    def __init__(
        self,
        layer_rules: Mapping[TypeKey, RuleSpec],
        rules: Optional[Mapping[LayerKey, RuleLike]] = None,
        input_rule: Optional[Rule] = None,
        fold_batchnorm: bool = True,
    ) -> None:
        self.layer_rules: Dict[TypeKey, RuleSpec] = dict(layer_rules)
        self.rules: Dict[LayerKey, Rule] = {}
        for key, rule in (rules or {}).items():
            self.set_rule(key, rule)
        if input_rule is not None and not isinstance(input_rule, Rule):
            raise TypeError(f"input_rule must be a Rule, got {type(input_rule).__name__}")
        self.input_rule = input_rule
        self.fold_batchnorm = bool(fold_batchnorm)

    def copy(self) -> "Composite":
        """A copy whose user rules can change without touching this one."""
        return Composite(self.layer_rules, self.rules, self.input_rule, self.fold_batchnorm)

    def set_rule(self, layer: LayerKey, rule: RuleLike) -> None:
        r"""Gives the module named ``layer`` (name, glob pattern or module) a rule.

        Raises:
            TypeError: ``layer`` is neither a string nor a module, or ``rule`` is
                not a rule.
        """
        if not isinstance(layer, (str, nn.Module)):
            raise TypeError(
                f"a rule is keyed by a module name or a module, got {type(layer).__name__}"
            )
        self.rules[layer] = as_rule(rule)

    def user_rule(self, name: str, module: nn.Module, attribute: bool = True) -> Optional[Rule]:
        """The rule the user set for ``module`` (by name, pattern, module or,
        with ``attribute``, a ``rule`` attribute), or None."""
        for key, rule in self.rules.items():
            if key is module or (isinstance(key, str) and key == name):
                return rule
        for key, rule in self.rules.items():
            if isinstance(key, str) and fnmatchcase(name, key):
                return rule
        declared = getattr(module, "rule", None) if attribute else None
        if declared is not None:
            try:
                return as_rule(declared)
            except TypeError as err:
                raise TypeError(
                    f"module {name or '<root>'!r} has a `rule` attribute: {err}"
                ) from None
        return None

    def rule_for(self, name: str, module: nn.Module, depth: float) -> Optional[Rule]:
        """The rule of ``module`` (named ``name``), or None if it has none."""
        rule = self.user_rule(name, module)
        if rule is not None:
            return rule
        for types, spec in self.layer_rules.items():
            if isinstance(module, types):
                return spec if isinstance(spec, Rule) else spec(depth)
        if is_squeeze_excitation(module):
            return Pass()
        return None

    def plan(self, model: nn.Module) -> List[Tuple[str, nn.Module, Optional[Rule]]]:
        r"""``(name, module, rule)`` for every module that needs a hook.

        A module with a rule is not descended into (its rule replaces its
        internals); modules whose plain gradient is their rule are skipped;
        a leaf with neither is listed with rule None (unsupported).
        """
        linear = [m for m in model.modules() if isinstance(m, LINEAR_TYPES)]
        depth = {id(m): i / len(linear) for i, m in enumerate(linear)}
        entries: List[Tuple[str, nn.Module, Optional[Rule]]] = []

        def visit(name: str, module: nn.Module) -> None:
            rule = self.rule_for(name, module, depth.get(id(module), 0.0))
            if rule is not None:
                entries.append((name, module, rule))
                return
            if isinstance(module, LINEAR_TYPES + BATCHNORM_TYPES + UNSUPPORTED_TYPES):
                entries.append((name, module, None))
                return
            if isinstance(module, PLAIN_GRADIENT_TYPES):
                return
            children = list(module.named_children())
            if not children:
                entries.append((name, module, None))
            for child_name, child in children:
                visit(f"{name}.{child_name}" if name else child_name, child)

        visit("", model)
        return entries

    def __repr__(self) -> str:
        layer_rules = ", ".join(f"{_type_name(k)}: {v!r}" for k, v in self.layer_rules.items())
        return (
            f"Composite({{{layer_rules}}}, rules={self.rules!r}, input_rule={self.input_rule!r}, "
            f"fold_batchnorm={self.fold_batchnorm})"
        )


def _type_name(key: TypeKey) -> str:
    if isinstance(key, tuple):
        return "(" + ", ".join(t.__name__ for t in key) + ")"
    return key.__name__


def _with_defaults(linear_rules: Mapping[TypeKey, RuleSpec], **kwargs: object) -> Composite:
    rules: Dict[TypeKey, RuleSpec] = dict(linear_rules)
    rules.update({ACTIVATION_TYPES: Pass(), nn.Softmax: Hold()})
    return Composite(rules, **kwargs)  # type: ignore[arg-type]


def lrp0(**kwargs: object) -> Composite:
    """LRP-0 (``Epsilon(0)``) for every Linear and Conv layer (BatchNorm folded in)."""
    return epsilon(0.0, **kwargs)


def epsilon(epsilon: float = 1e-6, **kwargs: object) -> Composite:
    """LRP-epsilon for every Linear and Conv layer (BatchNorm folded in)."""
    return _with_defaults({LINEAR_TYPES: Epsilon(epsilon), BATCHNORM_TYPES: Pass()}, **kwargs)


def epsilon_plus(epsilon: float = 1e-6, **kwargs: object) -> Composite:
    """z+ for convolutions, LRP-epsilon for Linear layers (the composite
    PAIR-X uses)."""
    return _with_defaults(
        {_CONV_TYPES: ZPlus(), nn.Linear: Epsilon(epsilon), BATCHNORM_TYPES: Pass()}, **kwargs
    )


def depth_gamma(
    gammas: Sequence[float] = (0.5, 0.25, 0.1, 0.0), epsilon: float = 1e-6
) -> Callable[[float], Rule]:
    r"""LRP-gamma whose ``gamma`` decreases with depth.

    The model's Linear/Conv layers are cut into ``len(gammas)`` equal parts
    by relative depth; part ``i`` gets ``Gamma(gammas[i], epsilon)``. The
    default follows the BiLRP paper (Eberle et al., 2020): 0.5, 0.25, 0.1, 0.

    Returns:
        Callable: relative depth in ``[0, 1)`` -> rule.
    """
    values = [float(g) for g in gammas]
    if not values or min(values) < 0:
        raise ValueError(
            f"gammas must be a non-empty sequence of non-negative values, got {gammas!r}"
        )
    rules = [Gamma(g, epsilon) for g in values]

    def schedule(depth: float) -> Rule:
        return rules[min(int(depth * len(rules)), len(rules) - 1)]

    return schedule


def gamma(
    gammas: Sequence[float] = (0.5, 0.25, 0.1, 0.0), epsilon: float = 1e-6, **kwargs: object
) -> Composite:
    """Depth-dependent LRP-gamma (:func:`depth_gamma`) for Linear and Conv
    layers; with ``input_rule=ZBox(...)`` this is the BiLRP paper's setting."""
    return _with_defaults(
        {LINEAR_TYPES: depth_gamma(gammas, epsilon), BATCHNORM_TYPES: Pass()}, **kwargs
    )


#: Preset composites by name.
COMPOSITES: Dict[str, Callable[..., Composite]] = {
    "lrp0": lrp0,
    "epsilon": epsilon,
    "epsilon_plus": epsilon_plus,
    "gamma": gamma,
}


def resolve_composite(composite: Union[str, Composite]) -> Composite:
    r"""A fresh :class:`Composite` for a preset name, or a copy of ``composite``.

    Raises:
        ValueError: unknown name.
        TypeError: neither a name nor a Composite.
    """
    if isinstance(composite, Composite):
        return composite.copy()
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            known = ", ".join(repr(k) for k in COMPOSITES)
            raise ValueError(
                f"unknown composite {composite!r}; expected one of {known} or a Composite"
            )
        return COMPOSITES[composite]()
    raise TypeError(
        f"composite must be a preset name or a Composite, got {type(composite).__name__}"
    )
