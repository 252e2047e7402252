"""One registry of pair explainers, shared by the demo and the benchmarks.

An explainer maps a :class:`~captum_similarity.SiameseSimilarity`, a batch of
pairs ``(x1, x2)`` and the explained layer to one map per image. Every method
of the library, and the Captum baselines run through the wrapper, are
registered here, in this one module (the methods themselves know nothing of
the registry); the demo draws all of them and the benchmark runner measures
all of them. Other code adds explainers with :func:`register`.

:data:`EXCLUDED` names the library's attribution classes that are not
registered, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from captum.attr import LRP, IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from torch import Tensor, nn

from .branches import split_branches
from .embedding_gradcam import EmbeddingGradCAM
from .pairwise_matching import PairwiseIntermediateMatching
from .relevance_pairing import LRPRelevancePairing
from .rise import SimilarityRISE
from .siamese import SiameseSimilarity

__all__ = [
    "PairExplainer",
    "register",
    "explainers",
    "explain_pair",
    "RISE_MASKS",
    "EXCLUDED",
]

#: Attribution classes of the library that are not registered, with the reason.
EXCLUDED = {
    "SimilarityDecomposition": (
        "exact only for embedders that end in global pooling of the explained layer and a "
        "linear map, with a dot or cosine similarity; it raises on other models, so it "
        "cannot run on every model the registry serves (its marginals equal "
        "EmbeddingGradCAM's 'similarity' maps where it applies)"
    ),
}

#: Where maps of a registered explainer survived model randomisation (measured).
_DLIB = ("dlib face ResNet",)

#: Masks of the registered SimilarityRISE: SANE's 2000. Lower it for quick checks.
RISE_MASKS = 2000

ExplainFn = Callable[[SiameseSimilarity, Tensor, Tensor, Optional[nn.Module]], Tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class PairExplainer:
    """A registered explainer.

    Attributes:
        name (str): Display name.
        fn (Callable): ``fn(model, x1, x2, layer) -> (a1, a2)``; maps are
            input-shaped ``(N, C, H, W)`` or layer maps ``(N, 1, h, w)``.
        needs_layer (bool): Whether ``layer`` must be given.
        black_box (bool): Uses only forward passes.
        baseline (bool): A reference point for benchmarks (e.g. a random
            map), not an explanation; the demo leaves it out.
        survives_randomization (tuple of str): The models on which the
            explainer's maps survived the model-parameter randomisation test
            (they barely changed with every layer random, so there they do
            not explain the model), as measured by
            ``benchmarks/methods/sanity_checks.py`` (docs/sanity-checks.md).
    """

    name: str
    fn: ExplainFn
    needs_layer: bool = False
    black_box: bool = False
    baseline: bool = False
    survives_randomization: Tuple[str, ...] = ()


_REGISTRY: Dict[str, PairExplainer] = {}


def register(
    name: str,
    needs_layer: bool = False,
    black_box: bool = False,
    baseline: bool = False,
    survives_randomization: Tuple[str, ...] = (),
) -> Callable[[ExplainFn], ExplainFn]:
    """Decorator adding ``fn`` to the registry under ``name`` (the arguments
    are :class:`PairExplainer`'s fields)."""

    def add(fn: ExplainFn) -> ExplainFn:
        if name in _REGISTRY:
            raise ValueError(f"an explainer named {name!r} is already registered")
        _REGISTRY[name] = PairExplainer(
            name, fn, needs_layer, black_box, baseline, tuple(survives_randomization)
        )
        return fn

    return add


def explainers() -> Dict[str, PairExplainer]:
    """All registered explainers, by name, in registration order."""
    return dict(_REGISTRY)


def explain_pair(
    model: SiameseSimilarity,
    x1: Tensor,
    x2: Tensor,
    layer: Optional[nn.Module] = None,
    methods: Optional[Iterable[str]] = None,
    include_baselines: bool = True,
) -> Dict[str, Tuple[Tensor, Tensor]]:
    r"""Runs registered explainers on the pairs ``(x1[i], x2[i])``.

    Args:
        model (SiameseSimilarity): The similarity model.
        x1 (Tensor): First images ``(N, C, H, W)``.
        x2 (Tensor): Second images ``(N, C, H, W)``.
        layer (nn.Module, optional): Layer for layer methods; those are
            skipped when it is None.
            Default: None
        methods (iterable of str, optional): Names to run.
            Default: None (all registered)
        include_baselines (bool, optional): With ``methods=None``, also run
            the explainers registered as baselines (the random map).
            Default: True

    Returns:
        dict: ``{name: (a1, a2)}`` with maps detached.
    """
    if methods is None:
        chosen = [n for n, spec in _REGISTRY.items() if include_baselines or not spec.baseline]
    else:
        chosen = list(methods)
    unknown = [m for m in chosen if m not in _REGISTRY]
    if unknown:
        raise ValueError(f"unknown explainers {unknown}; registered: {list(_REGISTRY)}")
    out = {}
    for name in chosen:
        spec = _REGISTRY[name]
        if spec.needs_layer and layer is None:
            continue
        a1, a2 = spec.fn(model, x1, x2, layer)
        out[name] = (a1.detach(), a2.detach())
    return out


@register("Captum IntegratedGradients")
def _integrated_gradients(model, x1, x2, layer):
    return IntegratedGradients(model).attribute(
        (x1, x2), baselines=(torch.zeros_like(x1), torch.zeros_like(x2)), n_steps=32,
        internal_batch_size=64,
    )


@register("Captum Saliency")
def _saliency(model, x1, x2, layer):
    return Saliency(model).attribute((x1, x2))


@register("Captum Saliency (SmoothGrad)")
def _smoothgrad(model, x1, x2, layer):
    torch.manual_seed(0)
    return NoiseTunnel(Saliency(model)).attribute(
        (x1, x2), nt_type="smoothgrad", nt_samples=16, stdevs=0.1, nt_samples_batch_size=16
    )


@register("Captum Occlusion", black_box=True)
def _occlusion(model, x1, x2, layer):
    side = max(2, x1.shape[-1] // 8)
    channels = x1.shape[1]
    return Occlusion(model).attribute(
        (x1, x2), sliding_window_shapes=((channels, side, side), (channels, side, side)),
        strides=(side // 2, side // 2), perturbations_per_eval=16,
    )


@register("Captum LayerGradCam", needs_layer=True)
def _layer_gradcam(model, x1, x2, layer):
    maps = LayerGradCam(model, layer).attribute(x1, additional_forward_args=(x2,))
    return split_branches(maps)


@register("Captum LRP")
def _lrp(model, x1, x2, layer):
    return LRP(model).attribute((x1, x2))


@register("LRPRelevancePairing (epsilon_plus)", survives_randomization=_DLIB)
def _lrp_pairing(model, x1, x2, layer):
    return LRPRelevancePairing(model).attribute((x1, x2))


@register("SimilarityRISE", black_box=True, survives_randomization=_DLIB)
def _rise(model, x1, x2, layer):
    maps = SimilarityRISE(model).attribute((x1, x2), n_masks=RISE_MASKS, seed=0)
    # drop each map's offset (about the mean masked score) so that figures show contrast;
    # the ranking of pixels, all the benchmark uses, is unchanged
    return tuple(m - m.amin(dim=(1, 2, 3), keepdim=True) for m in maps)


@register("Random map (baseline)", black_box=True, baseline=True)
def _random_map(model, x1, x2, layer):
    # independent uniform noise per pixel, the same for every run: the chance level
    generator = torch.Generator().manual_seed(0)
    return tuple(
        torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator, dtype=x.dtype).to(x.device)
        for x in (x1, x2)
    )


@register("EmbeddingGradCAM", needs_layer=True)
def _embedding_gradcam(model, x1, x2, layer):
    return EmbeddingGradCAM(model, layer).attribute((x1, x2))


@register("PairwiseIntermediateMatching (PAIR-X)", needs_layer=True, survives_randomization=_DLIB)
def _pairx(model, x1, x2, layer):
    return PairwiseIntermediateMatching(model, layer).attribute((x1, x2))
