"""Sanity checks for explanations: do the maps depend on the model?

Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, *Sanity Checks for
Saliency Maps* (NeurIPS 2018). The model-parameter randomisation test
re-initialises the model's layers, from the top (the embedding head) down,
and compares the maps computed on the randomised model with the original
ones. A method whose maps barely change when the layers that make the
embedding are random does not explain the model (edge detectors pass this
test: their maps follow the image, not the weights).

:func:`model_randomization_check` works with any explainer: it takes a
callable that computes the maps with the model as it currently is (a Captum
method's ``attribute`` bound to its inputs, one of the library's methods, a
registered explainer), randomises the model's parameters in place, calls it
again after each step, and restores the model bit for bit afterwards (also
when the explainer raises).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity
from torch import Tensor, nn

from .._utils.layers import LayerSpec, resolve_layer
from .._utils.state import preserved_state

__all__ = [
    "RandomizationCheck",
    "model_randomization_check",
    "map_similarity",
    "SURVIVAL_THRESHOLD",
    "MODES",
]

#: The two orders of randomisation: ``"cascading"`` randomises layer after
#: layer from the top, keeping the earlier ones random; ``"independent"``
#: randomises one layer at a time, the others as trained.
MODES = ("cascading", "independent")

#: Maps "survive" randomisation (they do not explain the model) when, once
#: every layer is random, the median of their three similarities to the
#: original maps that ignore sign (rank correlation of the absolute maps,
#: SSIM and HOG correlation) is at least this much: at least two of the
#: three keep half of the original structure. One measure alone can be
#: inflated by the image (rank correlation by large uniform regions, HOG by
#: strong edges).
SURVIVAL_THRESHOLD = 0.5

Maps = Union[Tensor, Tuple[Tensor, ...]]

#: The similarities :func:`map_similarity` reports, in this order.
MEASURES = ("spearman", "spearman_abs", "ssim", "hog")


@dataclass
class RandomizationCheck:
    r"""The result of :func:`model_randomization_check`.

    Step ``s`` is the model with ``randomized[s]`` random (in cascading mode,
    every layer up to that one, from the top; in independent mode, that
    layer alone). Each similarity is a ``(S, M)`` tensor: ``S`` steps, ``M``
    maps (the explainer's maps of every image; with a tuple of maps, those
    of the first tensor, then the second, ...).

    Attributes:
        mode (str): ``"cascading"`` or ``"independent"``.
        layers (list of str): The layer randomised at each step.
        spearman (Tensor): ``(S, M)`` Spearman rank correlation of the maps.
        spearman_abs (Tensor): ``(S, M)`` the same of their absolute values.
        ssim (Tensor): ``(S, M)`` structural similarity of the absolute maps,
            each scaled to [0, 1].
        hog (Tensor): ``(S, M)`` Pearson correlation of the histograms of
            oriented gradients of the absolute maps (NaN where a map is too
            small for one HOG cell).
    """

    mode: str
    layers: List[str]
    spearman: Tensor
    spearman_abs: Tensor
    ssim: Tensor
    hog: Tensor

    def means(self) -> Dict[str, Tensor]:
        """``(S,)`` mean of each similarity over the maps (NaN entries left out)."""
        return {name: _nanmean(getattr(self, name)) for name in MEASURES}

    def survival(self) -> Tensor:
        """``(S,)`` per step, the median of the mean absolute-map rank
        correlation, SSIM and HOG correlation (NaN ones left out)."""
        means = self.means()
        stacked = torch.stack([means[k] for k in ("spearman_abs", "ssim", "hog")], dim=1)
        return stacked.nanmedian(dim=1).values

    @property
    def survives(self) -> bool:
        """Whether the maps survive randomisation: :meth:`survival` of the
        last step (in cascading mode, every layer random) is at least
        :data:`SURVIVAL_THRESHOLD`."""
        return bool(self.survival()[-1] >= SURVIVAL_THRESHOLD)


def model_randomization_check(
    model: nn.Module,
    explain: Callable[[], Maps],
    layers: Optional[Sequence[LayerSpec]] = None,
    mode: str = "cascading",
    seed: int = 0,
) -> RandomizationCheck:
    r"""Model-parameter randomisation test (Adebayo et al., NeurIPS 2018).

    Calls ``explain()`` once on the model as it is, then randomises the
    parameters of ``layers`` in place, from the first listed (the top of
    the model) on, calling ``explain()`` after each step and comparing its
    maps with the original ones by :func:`map_similarity`. Each layer is
    re-initialised with its own ``reset_parameters`` (PyTorch's default
    initialisation for Linear, convolution and normalisation layers, whose
    running statistics it resets too); a parameter of a module without one is
    redrawn from a normal distribution with its mean and standard deviation.
    The draws come from a generator seeded with ``seed + step``; the global
    random state is left as it was. The model is restored bit for bit
    afterwards (parameters, buffers, training flags, ``requires_grad``,
    ``.grad``), also when ``explain`` raises.

    Args:
        model (nn.Module): The model whose parameters are randomised (the
            embedder, or the :class:`~captum_similarity.SiameseSimilarity`
            wrapping it); ``explain`` must use it.
        explain (Callable): ``explain() -> maps``: computes the maps with the
            model as it is at the call. Maps are a tensor ``(N, ...)`` or a
            tuple of them (e.g. both images of the pairs), of the same shapes
            at every call; per map, channels (if any) are summed.
        layers (sequence of str or nn.Module, optional): The layers to
            randomise, top first (names as in ``model.named_modules()``, or
            modules). A container randomises every parameter inside it.
            Default: None (every module that owns parameters, in reverse
            order of registration, i.e. usually from the output down)
        mode (str, optional): ``"cascading"`` (each step adds the next
            layer to the random ones) or ``"independent"`` (each step
            randomises one layer, the others as trained).
            Default: ``"cascading"``
        seed (int, optional): Seed of the random weights.
            Default: 0

    Returns:
        RandomizationCheck: one row of similarities per step.

    Example::

        >>> ig = IntegratedGradients(sim)
        >>> check = model_randomization_check(
        ...     sim.embedder, lambda: ig.attribute(x1, additional_forward_args=(x2,)),
        ...     layers=["fc", "layer4", "layer3", "layer2", "layer1", "conv1"])
        >>> check.means()["spearman_abs"], check.survives
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(explain):
        raise TypeError(f"explain must be a callable returning maps, got {type(explain).__name__}")
    chosen = _layers(model, layers)
    saved = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
    rows: List[Tuple[Tensor, ...]] = []
    try:
        with preserved_state(model):
            original = _flat_maps(explain())
            for step, (name, module) in enumerate(chosen):
                if mode == "independent" and step:
                    _restore(model, saved)
                _randomize(module, seed + step)
                maps = _flat_maps(explain())
                if maps.shape != original.shape:
                    raise ValueError(
                        f"explain() returned maps of shape {tuple(maps.shape)} after randomising "
                        f"{name!r}, {tuple(original.shape)} before; it must return the same shapes"
                    )
                rows.append(map_similarity(original, maps))
    finally:
        _restore(model, saved)
    columns = [torch.stack([row[i] for row in rows]) for i in range(len(MEASURES))]
    return RandomizationCheck(mode, [name for name, _ in chosen], *columns)


def map_similarity(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""How alike two batches of maps are, map by map.

    Args:
        a (Tensor): ``(M, H, W)`` maps (or ``(M, P)``, flattened; SSIM and
            HOG then need 2-D maps and are NaN).
        b (Tensor): Maps of the same shape.

    Returns:
        tuple of Tensor: each ``(M,)`` float64: the Spearman rank correlation
        of the maps, that of their absolute values, the structural
        similarity (SSIM) of the absolute maps each scaled to [0, 1], and the
        Pearson correlation of their HOG features. A correlation with a
        constant map is undefined (NaN; a warning says so).
    """
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be compared")
    x = a.detach().double().cpu().numpy()
    y = b.detach().double().cpu().numpy()
    out = np.full((len(MEASURES), x.shape[0]), np.nan)
    constant = 0
    for i, (p, q) in enumerate(zip(x, y)):
        if np.ptp(p) == 0 or np.ptp(q) == 0:
            constant += 1
        else:
            out[0, i] = spearmanr(p.ravel(), q.ravel())[0]
        if np.ptp(np.abs(p)) > 0 and np.ptp(np.abs(q)) > 0:
            out[1, i] = spearmanr(np.abs(p).ravel(), np.abs(q).ravel())[0]
        if p.ndim == 2:
            sp, sq = _unit(np.abs(p)), _unit(np.abs(q))
            out[2, i] = _ssim(sp, sq)
            out[3, i] = _hog_correlation(sp, sq)
    if constant:
        warnings.warn(
            f"{constant} of {x.shape[0]} map pairs hold a constant map, whose rank correlation is "
            "undefined (NaN)",
            stacklevel=2,
        )
    return tuple(torch.from_numpy(row) for row in out)  # type: ignore[return-value]


# -- internals ----------------------------------------------------------------


def _layers(model: nn.Module, layers: Optional[Sequence[LayerSpec]]) -> List[Tuple[str, nn.Module]]:
    names = {id(m): n for n, m in model.named_modules()}
    if layers is None:
        owners = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
        if not owners:
            raise ValueError("the model has no parameters to randomise")
        return owners[::-1]
    if isinstance(layers, (str, nn.Module)):
        raise TypeError("layers must be a sequence of names or modules, top first")
    chosen = [resolve_layer(model, layer) for layer in layers]
    if not chosen:
        raise ValueError("layers is empty: name at least one layer to randomise")
    if any(not any(True for _ in m.parameters()) for m in chosen):
        empty = [names[id(m)] for m in chosen if not any(True for _ in m.parameters())]
        raise ValueError(f"layers without parameters cannot be randomised: {empty}")
    return [(names[id(m)], m) for m in chosen]


def _randomize(module: nn.Module, seed: int) -> None:
    """Re-initialises every parameter inside ``module`` (in place), from a
    generator seeded with ``seed``, leaving the global random state as it was."""
    devices = [p.device for p in module.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
        torch.manual_seed(seed)
        with torch.no_grad():
            for sub in module.modules():
                own = list(sub.parameters(recurse=False))
                if not own:
                    continue
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
                    continue
                for p in own:
                    std = float(p.std()) if p.numel() > 1 else 1.0
                    p.normal_(float(p.mean()), std if math.isfinite(std) and std > 0 else 1.0)


def _restore(model: nn.Module, saved: Dict[str, Tensor]) -> None:
    """Writes the saved parameters and buffers back into the same tensors."""
    current = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in saved.items():
            current[name].copy_(value)


def _flat_maps(maps: Maps) -> Tensor:
    """``(M, H, W)`` (or ``(M, P)``): every map of the tensor or tuple, channels summed."""
    parts = maps if isinstance(maps, tuple) else (maps,)
    if not parts or not all(isinstance(p, Tensor) for p in parts):
        raise TypeError("explain() must return a tensor or a tuple of tensors")
    flat = []
    for p in parts:
        p = p.detach()
        if p.dim() == 4:
            p = p.sum(1)
        elif p.dim() not in (2, 3):
            raise ValueError(
                f"maps must be (N, C, H, W), (N, H, W) or (N, P), got shape {tuple(p.shape)}"
            )
        flat.append(p.double().cpu())
    if len({p.shape[1:] for p in flat}) != 1:
        return torch.cat([p.flatten(1) for p in flat])
    return torch.cat(flat)


def _unit(m: np.ndarray) -> np.ndarray:
    span = np.ptp(m)
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    side = min(a.shape)
    if side < 3:
        return float("nan")
    window = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, win_size=window))


def _hog_correlation(a: np.ndarray, b: np.ndarray) -> float:
    cell = max(2, min(a.shape) // 8)
    if min(a.shape) < 2 * cell:
        return float("nan")
    options = dict(orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(1, 1))
    fa, fb = hog(a, **options), hog(b, **options)
    if np.ptp(fa) == 0 or np.ptp(fb) == 0:
        return float("nan")
    return float(np.corrcoef(fa, fb)[0, 1])


def _nanmean(t: Tensor) -> Tensor:
    finite = ~torch.isnan(t)
    counts = finite.sum(1)
    total = torch.where(finite, t, torch.zeros_like(t)).sum(1)
    return torch.where(counts > 0, total / counts.clamp_min(1), torch.full_like(total, math.nan))
