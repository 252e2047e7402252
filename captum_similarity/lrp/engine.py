"""The LRP engine: one forward pass, any number of relevance backward passes.

:class:`LRPEngine` runs a model once with forward hooks that rewrite each
layer's gradient into its LRP rule (see :mod:`captum_similarity.lrp.rules`
for the gradient trick and :mod:`captum_similarity.lrp.canonizers` for
BatchNorm folding, residual additions, gates and transformer blocks). Hooks
are per call, so a module used several times (a Siamese encoder, a ReLU
reused in every block) is handled; they are removed, and the model's training
flags, ``requires_grad`` and ``.grad`` restored, before :meth:`LRPEngine.forward`
returns or raises. No parameter or buffer is ever written.

The result, a :class:`RelevancePass`, keeps the modified graph. Its one
primitive, :meth:`RelevancePass.propagate`, moves relevance from a *source*
(the model output, or a recorded layer) down to a *target* (the input, or a
recorded layer):

- first-order explanations: ``p.propagate(R_out)`` -> input relevance;
- embedding -> intermediate layer (PAIR-X's layer relevance):
  ``p.propagate(R_out, target=layer)`` -> the layer's relevance, computed
  without going below the layer;
- seeded layer -> pixels for many seeds at once (BiLRP's per-dimension maps):
  ``p.propagate(seeds, source=layer, batching="vmap")`` with ``seeds`` of
  shape ``(K, *layer_shape)``: one batched backward (``is_grads_batched``)
  instead of ``K``; layers above ``layer`` are not run again;
- many *local* seeds (a few cells each, PAIR-X's per-match maps):
  ``p.propagate_each(seeds, source=layer)``, which computes each seed's
  backward pass only on its input footprint (the receptive field of its
  cells, read off the graph), all seeds at once, or else gives seeds whose
  footprints do not overlap one shared backward pass and cuts the result
  apart afterwards (:mod:`captum_similarity.lrp.seeds` plans the passes).

How seeds share backward passes is chosen with one argument, ``batching``
(:data:`SEED_BATCHING`), in :meth:`RelevancePass.propagate`,
:meth:`RelevancePass.propagate_each` and the methods built on them.

A conv registered right before its BatchNorm (as torchvision, timm and the
reference models declare them) gets its rule once, from the fold, instead of
also on its own output; should its output reach anything besides the
BatchNorm, the engine notices after the pass (the unmodified output is still
in the graph), applies the conv's rule itself from then on and runs again.

Seeds are relevance (``R``, not gradients): the engine converts them to the
gradient ``R / a`` of the source activation ``a``; relevance placed on a zero
activation is dropped (a zero activation carries no relevance under any rule).

Example::

    >>> engine = LRPEngine(embedder, "epsilon_plus")
    >>> p = engine.forward(images, record=["layer2"])
    >>> r_layer = p.propagate(p.output.detach(), target="layer2")   # (N, C, h, w)
    >>> seeds = torch.stack([r_layer * mask for mask in cell_masks])  # (K, N, C, h, w)
    >>> r_pixels = p.propagate(seeds, source="layer2", batching="vmap")  # (K, N, 3, H, W)
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor, nn

from .._utils.hooks import LayerRecorder
from .._utils.layers import LayerSpec, resolve_layer
from .._utils.state import preserved_state
from .canonizers import fold_batchnorm
from .composites import UNSUPPORTED_TYPES, Composite, resolve_composite
from .conservation import CONSERVATION_BOUND, LayerLoss, ModuleRecorder, module_losses
from .functional import FunctionalRules, unruled_node
from .graph import fuse_factors, reachable
from .ops import ReceptiveField, receptive_field, windowable, windowed_backward
from .rules import (
    BATCHNORM_TYPES,
    LINEAR_TYPES,
    InputAffine,
    LinearRule,
    Pass,
    Rewired,
    Rule,
    divide_or_zero,
    linear_op,
)
from .seeds import WindowPlan, pack, plan_windows
from .windows import Windows, add, channels_last, crop, paste, times_saved

__all__ = ["LRPEngine", "RelevancePass", "SEED_BATCHING"]

#: How seeds share backward passes (the ``batching`` argument):
#:
#: - ``"windowed"``: one backward pass restricted to each seed's receptive
#:   field, all seeds at once, where the graph allows it; ``"packed"`` otherwise;
#: - ``"packed"``: seeds whose footprints do not overlap share a dense pass;
#:   the passes run one after another;
#: - ``"vmap"``: the same dense passes issued as one vmapped backward
#:   (``is_grads_batched``);
#: - ``"each"``: one dense backward pass per seed, one after another.
SEED_BATCHING = ("windowed", "packed", "vmap", "each")


class _Trace:
    """State of one forward pass, seen by the hooks and the rules."""

    def __init__(self, inputs: Tensor, composite: Composite) -> None:
        self.input = inputs
        self.composite = composite
        self.companions: List[Tensor] = []
        self.reads_input = False
        # id of a linear layer's rewired output -> (that output, the layer's input,
        # its rule, the layer, its raw output): what a following BatchNorm folds
        self.produced: Dict[int, Tuple[Tensor, Tensor, LinearRule, nn.Module, Tensor]] = {}
        self.recorders: List[LayerRecorder] = []
        # ids of linear layers expected to feed a BatchNorm: their rule is applied
        # once, by the fold, rather than also on their own output
        self.deferred: Set[int] = set()
        # id of a deferred layer's output alias -> (the alias, the layer), until folded
        self.pending: Dict[int, Tuple[Tensor, nn.Module]] = {}
        self.folded: List[Tuple[Tensor, nn.Module]] = []
        # the functional rules of this pass (attention, norms, products in forward code)
        self.functional = FunctionalRules()
        # id of an in-place module with a rule -> its inputs, while it runs on copies
        self.originals: Dict[int, List[Tensor]] = {}
        # id of a module without a rule -> the graph nodes of its inputs, while it runs
        self.inputs_seen: Dict[int, List[List[Any]]] = {}

        # id of a per-channel affine map of the input (an input normalisation) ->
        # (that tensor, its scale, its shift), see rules.InputAffine
        self.input_views: Dict[int, Tuple[Tensor, Tensor, Tensor]] = {}

    def input_view(self, x: Tensor) -> Union[None, bool, Tuple[Tensor, Tensor]]:
        """True if ``x`` is the model input, ``(scale, shift)`` if it is a
        per-channel affine map of it, else None."""
        if x is self.input:
            return True
        view = self.input_views.get(id(x))
        return view[1:] if view is not None and view[0] is x else None

    def add_input_view(self, x: Tensor, scale: Tensor, shift: Tensor) -> None:
        """Records ``x = scale * input + shift``."""
        self.input_views[id(x)] = (x, scale, shift)

    def redirect(self, old: Tensor, new: Tensor) -> None:
        """A folded conv reports its BatchNorm's output as its own."""
        for rec in self.recorders:
            rec.tensors = [new if t is old else t for t in rec.tensors]


def _unsupported(name: str, module: nn.Module, node: Optional[str] = None) -> ValueError:
    runs = f": its forward runs {node}, which no rule covers" if node else ""
    return ValueError(
        f"LRP has no rule for module {name!r} ({type(module).__name__}){runs}. Give it one by "
        f"name, e.g. LRPRelevancePairing(..., rules={{{name!r}: Pass()}}) or "
        f".set_rule({name!r}, rule), with a rule from captum_similarity.lrp.rules "
        "(Pass for element-wise maps and gates, Hold to block relevance, Epsilon/ZPlus/"
        "Gamma for linear layers), or add its type to a Composite's layer_rules"
    )


def _unsupported_hook(name: str):
    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        raise _unsupported(name, module)

    return hook


def _generic_hooks(name: str, trace: "_Trace"):
    """The hooks of a leaf module without a rule: its plain gradient stands
    (layout operations, identities, linear maps, and the functional rules'
    nodes), unless its graph holds an operation no rule covers. The pre-hook
    notes the graph nodes of the inputs before an in-place operation can
    replace them."""

    def pre(module: nn.Module, inputs: Tuple[Any, ...]) -> None:
        nodes = [t.grad_fn for t in inputs if isinstance(t, Tensor) and t.grad_fn is not None]
        trace.inputs_seen.setdefault(id(module), []).append(nodes)

    def hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
        seen = trace.inputs_seen.get(id(module))
        node = unruled_node(output, inputs, seen.pop() if seen else ())
        if node is not None:
            raise _unsupported(name, module, node)

    return pre, hook


def _suspend_hook(trace: "_Trace"):
    """Pre-hook of a module with a rule: its forward code keeps plain gradients
    (the rule replaces its graph) until the rule's hook has run. An in-place
    module (``inplace=True``) runs on a copy of its input, so that the rule
    still reads the input's values."""

    def hook(module: nn.Module, inputs: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
        trace.functional.suspend()
        if getattr(module, "inplace", False) and inputs and isinstance(inputs[0], Tensor):
            trace.originals.setdefault(id(module), []).append(inputs[0])
            return (inputs[0].clone(), *inputs[1:])
        return None

    return hook


def _grouped(model: nn.Module) -> bool:
    """Whether ``model`` holds a grouped (e.g. depthwise) 2-D convolution."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, BATCHNORM_TYPES) or callable(
        getattr(module, "lrp_channel_affine", None)
    )


def _rule_hook(name: str, rule: Optional[Rule], trace: _Trace):
    """The hook applying ``rule``; a BatchNorm is folded into the layer feeding it
    whenever it can be, and needs a rule of its own only otherwise."""

    def hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> Tensor:
        originals = trace.originals.get(id(module))
        if originals:  # an in-place module ran on a copy
            inputs = (originals.pop(), *inputs[1:])
        try:
            return apply(module, inputs, output)
        finally:
            trace.functional.resume()

    def apply(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> Tensor:
        if not isinstance(output, Tensor) or not inputs or not isinstance(inputs[0], Tensor):
            raise TypeError(
                f"LRP rules apply to modules mapping a tensor to a tensor; module {name!r} "
                f"({type(module).__name__}) returned {type(output).__name__}"
            )
        x = inputs[0]
        if trace.composite.fold_batchnorm and _foldable(module):
            entry = trace.produced.get(id(x))
            if entry is not None and entry[0] is x:
                _, conv_input, conv_rule, conv, conv_raw = entry
                op = fold_batchnorm(linear_op(conv, conv_raw), module, output)
                out = conv_rule.rewire(op, conv_input, trace)
                trace.redirect(x, out)
                if id(x) in trace.pending:
                    trace.folded.append(trace.pending.pop(id(x)))
                return out
        chosen = Pass() if rule is None else rule  # a BatchNorm with nothing to fold into
        if (
            x is trace.input
            and _foldable(module)
            and trace.composite.user_rule(name, module, attribute=False) is None
        ):
            # an input normalisation: each pixel keeps its normalised value's relevance
            chosen = InputAffine()
        elif trace.input_view(x) is not None and isinstance(module, LINEAR_TYPES):
            trace.reads_input = True
            if (
                trace.composite.input_rule is not None
                and trace.composite.user_rule(name, module) is None
            ):
                chosen = trace.composite.input_rule
        linear = isinstance(module, LINEAR_TYPES) and isinstance(chosen, LinearRule)
        if linear and id(module) in trace.deferred:
            # the BatchNorm that follows applies the rule to the fused layer; the
            # alias shows whether anything else reads the unmodified output
            out = output.view_as(output)
            trace.pending[id(out)] = (out, module)
        else:
            out = chosen.apply(module, inputs, output, trace)
        if linear:
            trace.produced[id(out)] = (out, x, chosen, module, output)
        return out

    return hook


class LRPEngine:
    r"""Runs a model with LRP rules in place of its gradients.

    Args:
        model (nn.Module): The model (an embedder). It is switched to eval mode
            for the pass and left exactly as found.
        composite (str or Composite, optional): Rule assignment: a preset name
            (``"lrp0"``, ``"epsilon"``, ``"epsilon_plus"``, ``"gamma"``) or a
            :class:`~captum_similarity.lrp.composites.Composite`. The engine
            keeps its own copy; change rules with :meth:`set_rule`.
            Default: ``"epsilon_plus"``
        channels_last (bool, optional): Whether to run the model on image
            batches ``(N, C, H, W)`` laid out channels-last (the values are the
            same). None: on a CPU, for models with grouped (e.g. depthwise)
            2-D convolutions, whose forward and backward passes run several
            times faster channels-last there, and as long as the model accepts
            it (one that cannot, e.g. one calling ``.view`` on a feature map, is
            then run on the layout it is given); other models keep the layout
            given (docs/lrp.md, "Memory layout").
            Default: None
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Union[str, Composite] = "epsilon_plus",
        channels_last: Optional[bool] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"LRP needs the model as an nn.Module (its layers carry the rules), got "
                f"{type(model).__name__}"
            )
        if channels_last not in (None, True, False):
            raise TypeError(f"channels_last must be None, True or False, got {channels_last!r}")
        self.model = model
        self.composite = resolve_composite(composite)
        self.channels_last = channels_last
        #: Relative conservation error above which the methods warn
        #: (:mod:`~captum_similarity.lrp.conservation`).
        self.conservation_bound = CONSERVATION_BOUND
        self._layout_refused = False  # the model failed on a channels-last batch
        # ids of linear layers found not to feed the BatchNorm registered after them
        self._eager: Set[int] = set()

    def set_rule(self, layer: LayerSpec, rule: Any) -> None:
        """Gives a layer (dotted name, glob pattern or module) a rule for all later passes."""
        self.composite.set_rule(layer, rule)

    def forward(self, inputs: Tensor, record: Sequence[LayerSpec] = ()) -> "RelevancePass":
        r"""Runs the model once with the rules in place.

        Args:
            inputs (Tensor): A batch of model inputs ``(N, ...)``.
            record (sequence of str or nn.Module, optional): Layers whose
                output relevance will be asked for (as source or target);
                each must run exactly once in the pass.
                Default: ()

        Returns:
            RelevancePass: the output and the modified graph.

        Raises:
            ValueError: a module without a rule ran, or a recorded layer did not
                run exactly once.
        """
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
            raise TypeError("inputs must be a floating-point tensor")
        layers = [resolve_layer(self.model, spec) for spec in record]
        x = inputs.detach()
        wanted = self.channels_last
        if wanted is None:
            wanted = x.device.type == "cpu" and not self._layout_refused and _grouped(self.model)
        if x.dim() == 4 and wanted:
            try:
                return self._forward(x.contiguous(memory_format=torch.channels_last), layers)
            except RuntimeError:
                if self.channels_last:
                    raise
                self._layout_refused = True  # and run on the layout as given
        return self._forward(x, layers)

    def _forward(self, x: Tensor, layers: List[nn.Module]) -> "RelevancePass":
        x = x.requires_grad_(True)
        while True:
            trace = _Trace(x, self.composite)
            trace.deferred = self._deferrable()
            output, recorded = self._run(x, layers, trace)
            misread = _misread(trace, output, recorded.values())
            if not misread:
                break
            # a layer's unmodified output reached something other than its BatchNorm:
            # from now on its rule is applied on its own output; run again
            self._eager.update(misread)
        if not isinstance(output, Tensor):
            raise TypeError(f"the model must return a tensor, got {type(output).__name__}")
        if not output.requires_grad:
            raise ValueError(
                "no relevance reaches the model output from its input: every path is held "
                "constant (check Hold rules) or the output does not depend on the input"
            )
        if self.composite.input_rule is not None and not trace.reads_input:
            warnings.warn(
                f"the input rule {self.composite.input_rule!r} was not applied: no Linear/Conv "
                "layer reads the model input directly (is the input transformed first?)",
                stacklevel=2,
            )
        fuse_factors([output, *recorded.values()], Rewired)
        return RelevancePass(self.model, x, output, trace.companions, recorded)

    def _deferrable(self) -> Set[int]:
        """Linear layers registered right before a foldable layer (a conv and its
        BatchNorm, as torchvision, timm and the reference models declare them)."""
        if not self.composite.fold_batchnorm:
            return set()
        modules = list(self.model.modules())
        return {
            id(m)
            for m, following in zip(modules, modules[1:])
            if isinstance(m, LINEAR_TYPES) and _foldable(following) and id(m) not in self._eager
        }

    def diagnose(
        self,
        inputs: Tensor,
        seed: Tensor,
        source: Optional[LayerSpec] = None,
        target: Optional[LayerSpec] = None,
    ) -> List[LayerLoss]:
        r"""Where relevance is absorbed, lost or created on its way from
        ``source`` to ``target``, module by module.

        Runs the model once more with every module call recorded and
        propagates ``seed`` once (see
        :func:`~captum_similarity.lrp.conservation.module_losses`). The
        methods call it when a call's conservation error exceeds
        :attr:`conservation_bound`.

        Args:
            inputs (Tensor): The model inputs of the pass ``(N, ...)``.
            seed (Tensor): One relevance seed at ``source`` (sum several).
            source (str or nn.Module, optional): A layer, or None for the output.
                Default: None
            target (str or nn.Module, optional): A layer below ``source``, or
                None for the input.
                Default: None

        Returns:
            list of :class:`~captum_similarity.lrp.conservation.LayerLoss`,
            largest first.
        """
        layers = [resolve_layer(self.model, spec) for spec in (source, target) if spec is not None]
        leaf = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            x = leaf.view_as(leaf)  # not a leaf: the model's own call records its node
        trace = _Trace(x, self.composite)
        trace.deferred = self._deferrable()
        recorder = ModuleRecorder(self.model, lambda m: isinstance(m, LINEAR_TYPES) or _foldable(m))
        output, recorded = self._run(x, layers, trace, recorder)
        src = output if source is None else recorded[id(resolve_layer(self.model, source))]
        if target is None:
            targets = [leaf, *trace.companions]
        else:
            targets = [recorded[id(resolve_layer(self.model, target))]]
        grad = divide_or_zero(seed.to(src.dtype), src.detach())
        return module_losses(recorder, [src], targets, [grad])

    def _run(
        self,
        x: Tensor,
        layers: List[nn.Module],
        trace: _Trace,
        recorder: Optional[ModuleRecorder] = None,
    ) -> Tuple[Any, Dict[int, Tensor]]:
        """One forward pass with the rules' hooks; returns the output and the
        recorded layer outputs by module id."""
        with preserved_state(self.model, eval_mode=True, freeze=True), ExitStack() as stack:
            for name, module, rule in self.composite.plan(self.model):
                if rule is None and isinstance(module, UNSUPPORTED_TYPES):
                    hook = _unsupported_hook(name)
                elif rule is None and not _foldable(module):
                    pre, hook = _generic_hooks(name, trace)
                    stack.callback(module.register_forward_pre_hook(pre).remove)
                else:
                    hook = _rule_hook(name, rule, trace)
                    pre = module.register_forward_pre_hook(_suspend_hook(trace))
                    stack.callback(pre.remove)
                stack.callback(module.register_forward_hook(hook).remove)
            for layer in layers:
                trace.recorders.append(stack.enter_context(LayerRecorder(layer)))
            if recorder is not None:
                stack.enter_context(recorder)
            with torch.enable_grad(), trace.functional:
                output = self.model(x)
            return output, {id(layer): rec.single() for layer, rec in zip(layers, trace.recorders)}


def _misread(trace: _Trace, output: Any, recorded: Iterable[Tensor]) -> Set[int]:
    """Ids of deferred layers whose rule was not applied everywhere: never folded,
    or their unmodified output (the alias) is still part of the graph."""
    misread = {id(module) for _, module in trace.pending.values()}
    aliases = {alias.grad_fn: module for alias, module in trace.folded if alias.grad_fn is not None}
    if not aliases:
        return misread
    roots = [t for t in (output, *recorded) if isinstance(t, Tensor) and t.grad_fn is not None]
    below = reachable(roots)
    return misread | {id(module) for node, module in aliases.items() if node in below}


class RelevancePass:
    r"""A forward pass with LRP rules; relevance can be propagated through it
    any number of times. Created by :meth:`LRPEngine.forward`.

    Attributes:
        input (Tensor): The input (a leaf) of the pass.
        output (Tensor): The model output, same values as the model gives.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        output: Tensor,
        companions: List[Tensor],
        recorded: Dict[int, Tensor],
    ) -> None:
        self._model = model
        self.input = inputs
        self.output = output
        self._companions = companions
        self._recorded = recorded

    @property
    def leaves(self) -> List[Tensor]:
        """The leaves whose relevance is input relevance: the input, then the
        input rules' companions (bounds of z^B, the shift of an input
        normalisation), each of the input's shape."""
        return [self.input, *self._companions]

    def activation(self, layer: LayerSpec) -> Tensor:
        """The recorded output of ``layer`` (in the graph; ``.detach()`` to read)."""
        module = resolve_layer(self._model, layer)
        if id(module) not in self._recorded:
            raise ValueError(
                f"layer {layer!r} was not recorded; pass it in LRPEngine.forward(..., record=[...])"
            )
        return self._recorded[id(module)]

    def propagate(
        self,
        seed: Tensor,
        source: Optional[LayerSpec] = None,
        target: Optional[LayerSpec] = None,
        batching: Optional[str] = None,
        **deprecated: Any,
    ) -> Tensor:
        r"""Propagates relevance ``seed`` from ``source`` down to ``target``.

        Args:
            seed (Tensor): Relevance at the source, of the source's shape, or
                ``(K, *source_shape)``: ``K`` independent seeds, when
                ``batching`` is given.
            source (str or nn.Module, optional): A recorded layer, or None for
                the model output.
                Default: None
            target (str or nn.Module, optional): A recorded layer below
                ``source``, or None for the input.
                Default: None
            batching (str, optional): None for one seed; ``"vmap"`` for ``K``
                seeds in one batched backward (``is_grads_batched``);
                ``"each"`` for ``K`` seeds in one backward pass each. (The
                other strategies of :data:`SEED_BATCHING` need local seeds:
                see :meth:`propagate_each`.)
                Default: None

        Returns:
            Tensor: relevance at the target, of the target's shape (with the
            leading ``K`` for several seeds). At the input it includes the
            relevance of input-rule bounds (z^B).
        """
        batching = _batching_argument(batching, deprecated, single=True)
        if batching not in (None, "vmap", "each"):
            raise ValueError(
                f"propagate takes batching None, 'vmap' or 'each', got {batching!r}; "
                "'windowed' and 'packed' need local seeds: use propagate_each"
            )
        src = self.output if source is None else self.activation(source)
        if not isinstance(seed, Tensor):
            raise TypeError(f"seed must be a Tensor, got {type(seed).__name__}")
        several = batching is not None
        expected = ((seed.shape[0],) if several and seed.dim() else ()) + tuple(src.shape)
        if tuple(seed.shape) != expected or seed.dim() == 0:
            raise ValueError(
                f"seed must have shape {'(K, ' if several else '('}"
                f"{', '.join(map(str, src.shape))}), got {tuple(seed.shape)}"
            )
        if batching == "each":
            return torch.stack([self.propagate(s, source, target) for s in seed])
        a = src.detach()
        grad_seed = divide_or_zero(seed, a)
        targets = self.leaves if target is None else [self.activation(target)]
        grads = torch.autograd.grad(
            src,
            targets,
            grad_seed.to(a.dtype),
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=batching == "vmap",
        )
        if grads[0] is None:
            raise ValueError(
                f"no relevance flows from {source or 'the output'!r} to "
                f"{target or 'the input'!r}: the target must lie below the source"
            )
        relevance = sum(t.detach() * g for t, g in zip(targets, grads) if g is not None)
        return relevance.contiguous()  # whatever layout the pass ran in

    def receptive_field(self, source: LayerSpec) -> Optional[ReceptiveField]:
        """The input positions each cell of the recorded layer ``source``
        ``(N, C, *spatial)`` can pass relevance to, or None when the graph below
        it holds an operation of unknown or global spatial reach (attention, a
        reshape, a global pooling, a gate that was not held constant)."""
        leaves = self.leaves
        return receptive_field(self.activation(source), leaves)

    def propagate_each(
        self, seeds: Tensor, source: LayerSpec, batching: str = "windowed", **deprecated: Any
    ) -> Tensor:
        r"""Propagates ``K`` seeds at the recorded layer ``source`` to the input,
        one result per seed, computing as little as their footprints allow.

        Each seed row (one image of the batch) touches a few cells of the
        layer; its relevance can only reach the receptive field of those cells
        (see :meth:`receptive_field`). Two exact ways use that:

        - *windowed*: one backward pass of our own through the graph that
          keeps, for each seed row, only the window of each intermediate
          tensor the seed can reach
          (:func:`~captum_similarity.lrp.ops.windowed_backward`).
          It applies when every node of the graph below ``source`` is one it
          reproduces (convolutions, pooling, slices, constant padding,
          concatenation, additions, ReLU and the LRP rules' functions) and
          the windows cover less input than the packed passes would;
        - *packed*: seeds of one image whose receptive fields do not overlap
          are summed into one dense backward pass, and each seed's map is cut
          out of the result by its receptive field; the number of passes is
          the largest number of groups any image needs (at most ``K``).

        Either way the result equals propagating the seeds one at a time (the
        backward pass is linear in its seed). When the receptive field is not
        known to be local, every seed gets its own dense pass. What each way
        costs is measured in ``benchmarks/results/pairx_speed.md``.

        Args:
            seeds (Tensor): ``(K, *source_shape)`` relevance at ``source``.
            source (str or nn.Module): A recorded layer with output
                ``(N, C, *spatial)``.
            batching (str, optional): ``"windowed"`` (windowed where it
                applies, packed dense passes otherwise), ``"packed"``,
                ``"vmap"`` (the packed passes as one vmapped backward) or
                ``"each"`` (one dense pass per seed); see
                :data:`SEED_BATCHING`.
                Default: ``"windowed"``

        Returns:
            Tensor: ``(K, *input_shape)`` input relevance per seed.
        """
        batching = _batching_argument(batching, deprecated, single=False)
        src = self.activation(source)
        if not isinstance(seeds, Tensor):
            raise TypeError(f"seeds must be a Tensor, got {type(seeds).__name__}")
        if seeds.dim() != src.dim() + 1 or seeds.shape[1:] != src.shape:
            raise ValueError(
                f"seeds must have shape (K, {', '.join(map(str, src.shape))}), "
                f"got {tuple(seeds.shape)}"
            )
        dense = "vmap" if batching == "vmap" else "each"
        field = self.receptive_field(source) if src.dim() > 2 and batching != "each" else None
        if field is None:
            return self.propagate(seeds, source=source, batching=dense)
        packing = pack(seeds, field)
        if batching == "windowed":
            plan = plan_windows(packing.support, field, self.input.shape[2:], packing.passes)
            if plan is not None and windowable(src, self.leaves):
                try:
                    maps = self._propagate_windowed(seeds, source, plan)
                except AttributeError:  # saved state this PyTorch names otherwise: dense passes
                    maps = None
                if maps is not None:
                    return maps
        if packing.passes == seeds.shape[0]:
            return self.propagate(seeds, source=source, batching=dense)
        maps = self.propagate(packing.packed(seeds), source=source, batching=dense)
        return packing.unpacked(maps)

    def _propagate_windowed(
        self, seeds: Tensor, source: LayerSpec, plan: WindowPlan
    ) -> Optional[Tensor]:
        """``propagate_each`` by backward passes on receptive-field windows, or
        None when nothing reaches the input (the dense path then says why)."""
        src = self.activation(source)
        leaves = self.leaves
        k, n = seeds.shape[:2]
        grad = divide_or_zero(seeds, src.detach()).flatten(0, 1)  # (K * N, C, *grid)
        out = self.input.new_zeros((k, n) + tuple(self.input.shape[1:]))
        for part_index in plan.chunks:
            part = plan.units[part_index]
            first = plan.first[part_index]
            values = crop(grad, part[:, 0] * n + part[:, 1], first, plan.size)
            if channels_last(src):
                values = values.contiguous(memory_format=torch.channels_last)
            reached = windowed_backward(src, leaves, Windows(values, first, part[:, 1], owned=True))
            relevance = [times_saved(leaf, w) for leaf, w in zip(leaves, reached) if w is not None]
            if not relevance:
                return None
            total = relevance[0]
            for other in relevance[1:]:
                total = add(total, other)
            for (seed, row), values, origin in zip(
                part.tolist(), total.values, total.origin.tolist()
            ):
                paste(out[seed, row], values, origin)
        return out


def _batching_argument(batching: Optional[str], deprecated: Dict[str, Any], single: bool) -> Any:
    """``batching``, or the strategy the deprecated arguments (``batched``,
    ``vectorize``, ``windowed``) asked for."""
    unknown = set(deprecated) - ({"batched"} if single else {"vectorize", "windowed"})
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(sorted(unknown))}")
    if deprecated:
        warnings.warn(
            f"{', '.join(sorted(deprecated))} is deprecated; use batching= "
            f"(one of {SEED_BATCHING})",
            DeprecationWarning,
            stacklevel=3,
        )
        if single:
            batching = "vmap" if deprecated["batched"] else None
        elif deprecated.get("windowed", True):
            batching = "windowed"
        else:
            batching = "vmap" if deprecated.get("vectorize", False) else "packed"
    if not single and batching not in SEED_BATCHING:
        raise ValueError(f"batching must be one of {SEED_BATCHING}, got {batching!r}")
    return batching
