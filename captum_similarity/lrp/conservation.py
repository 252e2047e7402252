"""How much of the explained relevance reaches the input, and where the rest went.

LRP's rules redistribute relevance layer by layer; a perfect pass hands the
input exactly the relevance it was seeded with (the score, for a similarity
explained from its output). Biases and the stabilisers ``epsilon`` absorb a
share by design; rules that do not fit an operation lose or create
relevance. Every LRP-family call of the library measures the result
(:class:`Conservation`: what was explained, what reached the input, and the
error relative to the seed's magnitude ``sum |seed|``) and, when the error
exceeds the engine's ``conservation_bound`` (:data:`CONSERVATION_BOUND`
unless set), warns with a :class:`ConservationWarning` that names the layers
where the relevance went.

Naming the layers takes one more pass (:func:`module_losses`), run only
when the bound is exceeded: the model runs again with every module call
recorded, the summed seed is propagated once, and for each call the
relevance at its output is compared with the relevance that entered its
inputs *through it* (read off the gradient on each edge of the autograd
graph that leaves the call's own nodes). The difference, less that of the
calls nested in it, is what the module's own rule or forward code absorbed
(biases, stabilisers) or lost and created (an operation whose rule does not
conserve).
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "CONSERVATION_BOUND",
    "Conservation",
    "ConservationWarning",
    "LayerLoss",
    "ModuleRecorder",
    "module_losses",
    "report",
]

#: Default bound on the conservation error ``|explained - reached| / sum |seed|``
#: of a call, above which it warns.
CONSERVATION_BOUND = 0.1


class ConservationWarning(UserWarning):
    """The relevance that reached the input differs from the explained
    relevance by more than the bound (see :mod:`~captum_similarity.lrp.conservation`)."""


@dataclass
class LayerLoss:
    """Relevance a module's own rule or forward code did not pass on.

    Attributes:
        name (str): The module's dotted name (``""``: the model's own forward
            code, outside its submodules).
        type (str): Its class name.
        lost (float): Relevance at its output minus the relevance it passed
            to its inputs, less what its submodules lost (positive: absorbed
            or lost; negative: created).
        absorbed (bool): Whether the module is a linear layer with an LRP
            rule, whose bias and stabiliser absorb relevance by design.
    """

    name: str
    type: str
    lost: float
    absorbed: bool


@dataclass
class Conservation:
    r"""The conservation of one LRP call.

    Attributes:
        explained (Tensor): ``(N,)`` relevance seeded per row (the score).
        reached (Tensor): ``(N,)`` relevance that reached the target (the
            input, or the layer for a relevance pass that stops there).
        magnitude (Tensor): ``(N,)`` ``sum |seed|`` per row, the scale of the
            error.
        bound (float): The bound the call was checked against.
        layers (list of LayerLoss): Where the relevance went, largest first;
            filled only when the bound was exceeded.
        what (str): What was explained.
    """

    explained: Tensor
    reached: Tensor
    magnitude: Tensor
    bound: float = CONSERVATION_BOUND
    layers: List[LayerLoss] = field(default_factory=list)
    what: str = "relevance"

    @property
    def error(self) -> Tensor:
        """``(N,)`` ``explained - reached``."""
        return self.explained - self.reached

    @property
    def relative_error(self) -> Tensor:
        """``(N,)`` ``|explained - reached| / sum |seed|``."""
        tiny = torch.finfo(self.magnitude.dtype).tiny
        return self.error.abs() / self.magnitude.clamp_min(tiny)

    @property
    def max_relative_error(self) -> float:
        """The largest relative error over the rows (NaN for a NaN result)."""
        errors = self.relative_error
        if not bool(torch.isfinite(errors).all()):
            return float("nan")
        return float(errors.max()) if errors.numel() else 0.0

    @property
    def exceeded(self) -> bool:
        """Whether the error exceeds the bound (or is not finite)."""
        worst = self.max_relative_error
        return not worst <= self.bound

    def summary(self) -> str:
        """One paragraph: the error and where the relevance went."""
        worst = self.max_relative_error
        rows = self.relative_error.argmax() if self.explained.numel() else 0
        text = (
            f"{self.what} is not conserved: the relevance reaching the input sums to "
            f"{float(self.reached.flatten()[rows]):.4g} for an explained "
            f"{float(self.explained.flatten()[rows]):.4g} (error {worst:.1%} of the seed's "
            f"magnitude, bound {self.bound:.0%})"
        )
        if self.layers:
            absorbed = [entry for entry in self.layers if entry.absorbed]
            other = [entry for entry in self.layers if not entry.absorbed]
            if absorbed:
                total = sum(entry.lost for entry in absorbed)
                text += (
                    f". The rules of linear layers (biases, stabilisers, z+ outputs without "
                    f"positive contributions) absorbed {total:.4g} (most: {_names(absorbed)})"
                )
            if other:
                text += f". Lost (+) or created (-) by: {_names(other)}"
        return text + "."


def _names(entries: Sequence[LayerLoss], count: int = 4) -> str:
    ranked = sorted(entries, key=lambda e: -abs(e.lost))[:count]
    return ", ".join(f"{e.name or '<model>'} ({e.type}) {e.lost:+.3g}" for e in ranked)


def report(
    explained: Tensor,
    reached: Tensor,
    magnitude: Tensor,
    bound: float,
    what: str,
    diagnose: Optional[Callable[[], List[LayerLoss]]] = None,
    stacklevel: Optional[int] = None,
) -> Conservation:
    r"""Builds the :class:`Conservation` of a call and warns when it exceeds ``bound``.

    Args:
        explained (Tensor): ``(N,)`` seeded relevance per row.
        reached (Tensor): ``(N,)`` relevance at the target per row.
        magnitude (Tensor): ``(N,)`` ``sum |seed|`` per row.
        bound (float): Relative error above which to warn.
        what (str): What was explained (starts the message).
        diagnose (Callable, optional): Called when the bound is exceeded;
            returns the :class:`LayerLoss` entries that name the layers.
        stacklevel (int, optional): Of the warning. None: the first frame
            outside this package (the user's call, however many of the
            package's frames are between it and this function).
            Default: None

    Returns:
        Conservation: with ``layers`` filled when the bound was exceeded.
    """
    result = Conservation(
        explained.detach().double(),
        reached.detach().double(),
        magnitude.detach().double(),
        float(bound),
        what=what,
    )
    if result.exceeded:
        if diagnose is not None:
            result.layers = diagnose()
        level = _user_stacklevel() if stacklevel is None else stacklevel
        warnings.warn(result.summary(), ConservationWarning, stacklevel=level)
    return result


def _user_stacklevel() -> int:
    """The ``stacklevel`` that, given to ``warnings.warn`` in :func:`report`,
    names the first frame outside this package and Captum's logging wrapper
    (which every entry point carries)."""
    import captum.log

    inside = (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
        os.path.dirname(os.path.abspath(captum.log.__file__)) + os.sep,
    )
    frame, level = sys._getframe(1), 1  # report's frame
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


# -- naming the layers ------------------------------------------------------------


def _probe() -> int:
    """The sequence number of a node created now (autograd numbers nodes in
    creation order)."""
    with torch.enable_grad():
        node = torch.empty(0, requires_grad=True).view(0).grad_fn
    return int(node._sequence_nr())  # type: ignore[union-attr]


def _sequence(node: object) -> int:
    try:
        return int(node._sequence_nr())  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return -1


def _external(node: object, start: int) -> bool:
    seq = _sequence(node)
    return seq <= start or seq >= 2**63 or type(node).__name__ == "AccumulateGrad"


@dataclass
class _Call:
    name: str
    type: str
    absorbed: bool
    parent: Optional[int]
    start: int
    end: int = -1
    output: Optional[Tuple[object, int]] = None
    children: List[int] = field(default_factory=list)


class ModuleRecorder:
    r"""Records every module call of one forward pass: its graph nodes (by
    autograd sequence numbers) and the values of its inputs and output.

    Used as a context manager around the forward pass, with the hooks
    registered after the rules' (so that it sees the rules' outputs).

    Args:
        model (nn.Module): The model.
        absorbs (Callable): ``absorbs(module)``: whether the module is a
            linear layer with a linear rule.
    """

    def __init__(self, model: nn.Module, absorbs: Callable[[nn.Module], bool]) -> None:
        self.model = model
        self.absorbs = absorbs
        self.calls: List[_Call] = []
        self.values: Dict[Tuple[object, int], Tensor] = {}
        self._stack: List[int] = []
        self._handles: List[Any] = []

    def __enter__(self) -> "ModuleRecorder":
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post()))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep(self, t: Any) -> Optional[Tuple[object, int]]:
        if not isinstance(t, Tensor) or not t.requires_grad:
            return None
        node = t.grad_fn
        if node is None:  # a leaf: its gradient arrives at its AccumulateGrad node
            node = t.view_as(t).grad_fn.next_functions[0][0]  # type: ignore[union-attr]
        key = (node, t.output_nr if t.grad_fn is not None else 0)
        if key not in self.values:
            self.values[key] = t.detach().clone()
        return key

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Tuple[Any, ...]) -> None:
            for t in inputs:
                self._keep(t)
            parent = self._stack[-1] if self._stack else None
            call = _Call(name, type(module).__name__, self.absorbs(module), parent, _probe())
            self.calls.append(call)
            index = len(self.calls) - 1
            if parent is not None:
                self.calls[parent].children.append(index)
            self._stack.append(index)

        return hook

    def _post(self) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Tuple[Any, ...], output: Any) -> None:
            if not self._stack:
                return
            call = self.calls[self._stack.pop()]
            call.end = _probe()
            call.output = self._keep(output) if isinstance(output, Tensor) else None

        return hook


def module_losses(
    recorder: ModuleRecorder,
    roots: Sequence[Tensor],
    targets: Sequence[Tensor],
    grad_seeds: Sequence[Tensor],
) -> List[LayerLoss]:
    r"""Propagates the seeds once and returns, per module, the relevance its
    own rule or forward code did not pass on (:class:`LayerLoss`), largest
    first, modules that lost less than a millionth of the largest left out.

    Args:
        recorder (ModuleRecorder): The recorded forward pass.
        roots (sequence of Tensor): Where the seeds are placed.
        targets (sequence of Tensor): Where the propagation stops.
        grad_seeds (sequence of Tensor): The gradients (``R / a``) at ``roots``.
    """
    calls = [c for c in recorder.calls if c.output is not None and c.end >= 0]
    # the propagation stops at the targets: an edge into one leaves every call
    stops = {(t.grad_fn, t.output_nr) for t in targets if t.grad_fn is not None}
    for t in targets:
        if t.grad_fn is not None:
            recorder.values.setdefault((t.grad_fn, t.output_nr), t.detach())
    # relevance seeded inside a call (at a recorded layer) enters it there
    seeded = [
        (_sequence(r.grad_fn), (r.grad_fn, r.output_nr), float((r.detach().double() * g.double()).sum()))
        for r, g in zip(roots, grad_seeds)
        if r.grad_fn is not None
    ]
    grads_out: Dict[Tuple[object, int], Tensor] = {}
    edges: Dict[int, List[Tuple[object, int, int]]] = {}  # call -> (node, next index, nr)
    edge_grads: Dict[Tuple[object, int], Tensor] = {}
    hooked: Dict[object, List[int]] = {}
    for index, call in enumerate(calls):
        node, _ = call.output  # type: ignore[misc]
        if _external(node, call.start):
            continue  # an identity: its output is one of its inputs
        found = []
        stack, seen = [node], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            for j, (nxt, nr) in enumerate(current.next_functions):  # type: ignore[attr-defined]
                if nxt is None:
                    continue
                if _external(nxt, call.start) or (nxt, nr) in stops:
                    found.append((current, j, nr))
                    hooked.setdefault(current, []).append(j)
                else:
                    stack.append(nxt)
        edges[index] = found
    handles = []
    out_nodes: Dict[object, List[int]] = {}
    for call in calls:
        node, nr = call.output  # type: ignore[misc]
        out_nodes.setdefault(node, []).append(nr)

    def prehook(node: object) -> Callable[..., None]:
        def hook(grad_outputs: Tuple[Optional[Tensor], ...]) -> None:
            for nr in out_nodes[node]:
                g = grad_outputs[nr]
                if g is not None:
                    grads_out[(node, nr)] = g.detach()

        return hook

    def posthook(node: object) -> Callable[..., None]:
        def hook(grad_inputs: Tuple[Optional[Tensor], ...], grad_outputs: Any) -> None:
            for j in hooked[node]:
                g = grad_inputs[j]
                if g is not None:
                    edge_grads[(node, j)] = g.detach()

        return hook

    try:
        for node in out_nodes:
            if hasattr(node, "register_prehook"):
                handles.append(node.register_prehook(prehook(node)))  # type: ignore[attr-defined]
        for node in hooked:
            handles.append(node.register_hook(posthook(node)))  # type: ignore[attr-defined]
        torch.autograd.grad(
            list(roots), list(targets), list(grad_seeds), retain_graph=True, allow_unused=True
        )
    finally:
        for handle in handles:
            handle.remove()

    def relevance(key: Tuple[object, int], grad: Optional[Tensor]) -> float:
        if grad is None or key not in recorder.values:
            return 0.0
        values = recorder.values[key]
        if grad.shape != values.shape:
            return 0.0
        return float((values.double() * grad.double()).sum())

    loss: Dict[int, float] = {}
    by_call = {id(call): i for i, call in enumerate(calls)}
    for index, call in enumerate(calls):
        if index not in edges:
            loss[index] = 0.0
            continue
        r_out = relevance(call.output, grads_out.get(call.output))  # type: ignore[arg-type]
        r_out += sum(
            r for seq, key, r in seeded if call.start < seq <= call.end and key != call.output
        )
        r_in = sum(
            relevance((node.next_functions[j][0], nr), edge_grads.get((node, j)))  # type: ignore[attr-defined]
            for node, j, nr in edges[index]
        )
        loss[index] = r_out - r_in
    totals: Dict[str, LayerLoss] = {}
    for index, call in enumerate(calls):
        children = [
            by_call[id(recorder.calls[c])] for c in call.children if id(recorder.calls[c]) in by_call
        ]
        own = loss[index] - sum(loss[c] for c in children)
        entry = totals.setdefault(call.name, LayerLoss(call.name, call.type, 0.0, call.absorbed))
        entry.lost += own
    ranked = sorted(totals.values(), key=lambda e: -abs(e.lost))
    if not ranked:
        return []
    largest = abs(ranked[0].lost)
    return [e for e in ranked if abs(e.lost) > 1e-6 * largest]
