"""One registry of pair explainers, shared by the demo and the benchmarks.

An explainer maps a :class:`~captum_similarity.SiameseSimilarity`, a batch of
pairs ``(x1, x2)`` and the explained layer to one map per image. Every method
of the library, and the Captum baselines run through the wrapper, are
registered here, in this one module (the methods themselves know nothing of
the registry); the demo draws all of them, the benchmark runner measures all
of them and the command line (``captum-similarity explain --methods``) picks
them by their short names (:func:`short_names`, :func:`resolve_methods`).
Other code adds explainers with :func:`register`.

:data:`EXCLUDED` names the library's attribution classes that are not
registered, and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from captum.attr import LRP, IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion, Saliency
from torch import Tensor, nn

from ._utils.patches import patch_sums
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
    "explain_pair_detailed",
    "short_names",
    "resolve_methods",
    "RISE_MASKS",
    "RISE_CELLS",
    "PAIRX_MATCHES",
    "LRP_PATCHES",
    "DISTANCE_SIMILARITIES",
    "white_box_model",
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
    "SalientAttributes": (
        "needs an attribute head fitted on the model's features with attribute labels "
        "(fit_attribute_head), which a model alone does not have; it explains a pair with "
        "named attributes on top of a saliency map from a registered method"
    ),
}

#: Where maps of a registered explainer survived model randomisation (measured).
_DLIB = ("dlib face ResNet",)

#: Masks of the registered SimilarityRISE (SANE used 2000; on dlib's face
#: ResNet 500 measured as faithful at a quarter of the cost,
#: benchmarks/results/tune_defaults.md). Lower it for quick checks.
RISE_MASKS = 500

#: Mask grid cells per side of the registered SimilarityRISE.
RISE_CELLS = 6

#: Similarities that are distances. For a model scored by one of them the
#: registered LRPRelevancePairing (all three forms), BiLRP and
#: "EmbeddingGradCAM (ReLU)" explain the cosine of the model's embeddings
#: (:func:`white_box_model`): a distance's per-dimension terms are all
#: negative, so its relevance ranks what separates the two images, which is
#: not what "why do these match?" asks.
DISTANCE_SIMILARITIES = ("euclidean", "squared_euclidean")

#: Per-match pixel maps of the registered PAIR-X (its maps are their sum).
PAIRX_MATCHES = 10

#: Selections that :func:`resolve_methods` accepts besides names: every
#: explainer that is not a baseline, and the default (fast) ones.
SELECTIONS = ("all", "default")

ExplainFn = Callable[[SiameseSimilarity, Tensor, Tensor, Optional[nn.Module]], Tuple[Tensor, Tensor]]
DetailFn = Callable[
    [SiameseSimilarity, Tensor, Tensor, Optional[nn.Module]], Tuple[Tensor, Tensor, Any]
]


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
        short (str, optional): The command line's name for it
            (``--methods gradcam,lrp``); None for none.
        default (bool): In the command line's default selection: the methods
            that cost a few forward and backward passes per pair.
        cost (str): What one pair costs, in passes of the model, as
            ``--help`` and the report say it.
        detail (Callable, optional): ``detail(model, x1, x2, layer) -> (a1,
            a2, extra)``: the same maps and the method's richer result
            (PAIR-X's matches, BiLRP's patch-pair relevance) from one run;
            see :func:`explain_pair_detailed`.
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
    short: Optional[str] = None
    default: bool = False
    cost: str = ""
    detail: Optional[DetailFn] = None
    survives_randomization: Tuple[str, ...] = ()


_REGISTRY: Dict[str, PairExplainer] = {}


def register(
    name: str,
    needs_layer: bool = False,
    black_box: bool = False,
    baseline: bool = False,
    short: Optional[str] = None,
    default: bool = False,
    cost: str = "",
    detail: Optional[DetailFn] = None,
    survives_randomization: Tuple[str, ...] = (),
) -> Callable[[ExplainFn], ExplainFn]:
    """Decorator adding ``fn`` to the registry under ``name`` (and the short
    name ``short``); the arguments are :class:`PairExplainer`'s fields."""
    valid = short is None or (short.replace("-", "").isalnum() and short not in SELECTIONS)
    if not valid:
        raise ValueError(
            f"short name {short!r} must be letters, digits and '-', and not one of {SELECTIONS}"
        )

    def add(fn: ExplainFn) -> ExplainFn:
        if name in _REGISTRY:
            raise ValueError(f"an explainer named {name!r} is already registered")
        if short is not None and short in short_names():
            taken = short_names()[short]
            raise ValueError(f"the short name {short!r} is already taken by {taken!r}")
        _REGISTRY[name] = PairExplainer(
            name, fn, needs_layer, black_box, baseline, short, default, cost, detail,
            tuple(survives_randomization),
        )
        return fn

    return add


def explainers() -> Dict[str, PairExplainer]:
    """All registered explainers, by name, in registration order."""
    return dict(_REGISTRY)


def short_names() -> Dict[str, str]:
    """``{short name: registered name}`` of the explainers that have one."""
    return {spec.short: name for name, spec in _REGISTRY.items() if spec.short is not None}


def resolve_methods(selection: Union[str, Iterable[str]]) -> List[str]:
    r"""Registered names of a selection of explainers.

    Args:
        selection (str or iterable of str): Short names (``"gradcam"``),
            registered names (``"EmbeddingGradCAM"``), ``"default"`` (the
            explainers registered with ``default=True``: a few passes per
            pair) or ``"all"`` (every explainer that is not a baseline), as
            a list or one comma-separated string (``"gradcam,lrp"``).

    Returns:
        list of str: registered names, in the order given (duplicates dropped).

    Raises:
        ValueError: an unknown name, naming the short names there are.
    """
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    shorts = short_names()
    chosen: List[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item == "all":
            names = [n for n, spec in _REGISTRY.items() if not spec.baseline]
        elif item == "default":
            names = [n for n, spec in _REGISTRY.items() if spec.default]
        elif item in shorts:
            names = [shorts[item]]
        elif item in _REGISTRY:
            names = [item]
        else:
            raise ValueError(
                f"unknown method {item!r}; choose from {', '.join(shorts)}, "
                f"{' or '.join(SELECTIONS)} (or a registered name)"
            )
        chosen.extend(n for n in names if n not in chosen)
    if not chosen:
        raise ValueError(
            f"no method selected; choose from {', '.join(shorts)} or {' or '.join(SELECTIONS)}"
        )
    return chosen


def white_box_model(model: SiameseSimilarity) -> SiameseSimilarity:
    r"""The similarity model the registered LRP, BiLRP and Grad-CAM explain.

    ``model`` itself, unless its similarity is a distance
    (:data:`DISTANCE_SIMILARITIES`): then the cosine of the same embedder's
    embeddings, ``SiameseSimilarity(model.embedder, "cosine")``. Its score
    rises where the distance falls for embeddings of similar norms (dlib's
    descriptors), and its relevance explains what the two images share; on
    dlib's face ResNet it raised LRP's insertion AUC by 43 points on training
    pairs (benchmarks/results/tune_defaults.md).

    Args:
        model (SiameseSimilarity): The similarity model.

    Returns:
        SiameseSimilarity: ``model`` or a cosine wrapper of its embedder.

    Example::

        >>> sim = SiameseSimilarity(embedder, "euclidean")
        >>> white_box_model(sim).similarity.name
        'cosine'
    """
    if model.similarity.name in DISTANCE_SIMILARITIES:
        return SiameseSimilarity(model.embedder, "cosine", model.input_ndim)
    return model


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


def explain_pair_detailed(
    model: SiameseSimilarity,
    x1: Tensor,
    x2: Tensor,
    layer: Optional[nn.Module],
    name: str,
) -> Tuple[Tensor, Tensor, Any]:
    r"""One registered explainer's maps and, where it has one, its richer result.

    Args:
        model (SiameseSimilarity): The similarity model.
        x1 (Tensor): First images ``(N, C, H, W)``.
        x2 (Tensor): Second images ``(N, C, H, W)``.
        layer (nn.Module, optional): Layer for layer methods.
        name (str): A registered name or short name.

    Returns:
        tuple: ``(a1, a2, extra)``, the maps as :func:`explain_pair` returns
        them and ``extra``: for PAIR-X the list of
        :class:`~captum_similarity.PairMatches` (one per pair), for BiLRP a
        dict with the ``(N, P1, P2)`` ``"relevance"`` and its
        ``"patch_size"``, None for the others.

    Raises:
        ValueError: an unknown name, or a layer method without ``layer``.
    """
    (registered,) = resolve_methods([name])
    spec = _REGISTRY[registered]
    if spec.needs_layer and layer is None:
        raise ValueError(f"{registered} explains a layer: pass layer")
    if spec.detail is None:
        a1, a2 = spec.fn(model, x1, x2, layer)
        extra = None
    else:
        a1, a2, extra = spec.detail(model, x1, x2, layer)
    return a1.detach(), a2.detach(), extra


@register(
    "Captum IntegratedGradients", short="ig",
    cost="32 forward+backward passes (integration steps)",
)
def _integrated_gradients(model, x1, x2, layer):
    return IntegratedGradients(model).attribute(
        (x1, x2), baselines=(torch.zeros_like(x1), torch.zeros_like(x2)), n_steps=32,
        internal_batch_size=64,
    )


@register("Captum Saliency", short="saliency", default=True, cost="1 forward+backward pass")
def _saliency(model, x1, x2, layer):
    return Saliency(model).attribute((x1, x2))


@register(
    "Captum Saliency (SmoothGrad)", short="smoothgrad",
    cost="16 forward+backward passes (noisy copies)",
)
def _smoothgrad(model, x1, x2, layer):
    torch.manual_seed(0)
    return NoiseTunnel(Saliency(model)).attribute(
        (x1, x2), nt_type="smoothgrad", nt_samples=16, stdevs=0.1, nt_samples_batch_size=16
    )


@register(
    "Captum Occlusion", black_box=True, short="occlusion",
    cost="about 450 forward passes (a window 1/8 of the image side, half-window strides, "
    "on each image)",
)
def _occlusion(model, x1, x2, layer):
    side = max(2, x1.shape[-1] // 8)
    channels = x1.shape[1]
    return Occlusion(model).attribute(
        (x1, x2), sliding_window_shapes=((channels, side, side), (channels, side, side)),
        strides=(side // 2, side // 2), perturbations_per_eval=16,
    )


@register(
    "Captum LayerGradCam", needs_layer=True, short="captum-gradcam",
    cost="1 forward+backward pass",
)
def _layer_gradcam(model, x1, x2, layer):
    maps = LayerGradCam(model, layer).attribute(x1, additional_forward_args=(x2,))
    return split_branches(maps)


@register("Captum LRP", short="captum-lrp", cost="1 forward+backward pass (Captum's rules)")
def _lrp(model, x1, x2, layer):
    # Captum's LRP gives layers a `rule` attribute and removes them when it ends, but not
    # when it raises midway (a layer without a rule): the rules left would then be read by
    # the next LRP method run on the model (captum_similarity.lrp honours `module.rule`)
    found = {id(m) for m in model.modules() if "rule" in vars(m)}
    try:
        return LRP(model).attribute((x1, x2))
    except Exception:
        for m in model.modules():
            if id(m) not in found and "rule" in vars(m):
                del m.rule
        raise


@register(
    "LRPRelevancePairing (epsilon_plus)", short="lrp", default=True,
    cost="1 forward and 1 relevance backward pass", survives_randomization=_DLIB,
)
def _lrp_pairing(model, x1, x2, layer):
    # a distance model's cosine (white_box_model): the distance's relevance is inverted
    return LRPRelevancePairing(white_box_model(model)).attribute((x1, x2))


#: Patches across the shorter image side of the registered "LRPRelevancePairing
#: (patches)": 6-pixel patches on dlib's 150-pixel chips.
LRP_PATCHES = 25


@register(
    "LRPRelevancePairing (patches)", short="lrp-patches",
    cost="1 forward and 1 relevance backward pass", survives_randomization=_DLIB,
)
def _lrp_pairing_patches(model, x1, x2, layer):
    # the registered LRP's maps summed over square patches, one value per patch (as
    # BiLRP's marginals): a coarser map, measured more faithful by deletion on dlib
    side = max(1, min(x1.shape[-2:]) // LRP_PATCHES)
    out = []
    for a in _lrp_pairing(model, x1, x2, layer):
        grid = [-(-d // side) for d in a.shape[-2:]]
        out.append(patch_sums(a.sum(1, keepdim=True), (side, side)).reshape(len(a), 1, *grid))
    return tuple(out)


@register(
    "LRPRelevancePairing (epsilon, magnitude)", short="lrp-abs",
    cost="1 forward and 1 relevance backward pass",
)
def _lrp_pairing_magnitude(model, x1, x2, layer):
    # LRP-epsilon's signs alternate from pixel to pixel, its magnitudes rank what matters;
    # unlike epsilon_plus (z+ convolutions), its maps change when the model's weights do
    a1, a2 = LRPRelevancePairing(white_box_model(model), composite="epsilon").attribute((x1, x2))
    return a1.abs(), a2.abs()


@register(
    "SimilarityRISE", black_box=True, short="rise",
    cost=f"{RISE_MASKS} masked forward passes per image: tens of seconds on a CPU",
    survives_randomization=_DLIB,
)
def _rise(model, x1, x2, layer):
    maps = SimilarityRISE(model).attribute(
        (x1, x2), n_masks=RISE_MASKS, mask_cells=RISE_CELLS, seed=0
    )
    # drop each map's offset (about the mean masked score) so that figures show contrast;
    # the ranking of pixels, all the benchmark uses, is unchanged
    return tuple(m - m.amin(dim=(1, 2, 3), keepdim=True) for m in maps)


@register("Random map (baseline)", black_box=True, baseline=True, short="random", cost="none")
def _random_map(model, x1, x2, layer):
    # independent uniform noise per pixel, the same for every run: the chance level
    generator = torch.Generator().manual_seed(0)
    return tuple(
        torch.rand(x.shape[0], 1, *x.shape[2:], generator=generator, dtype=x.dtype).to(x.device)
        for x in (x1, x2)
    )


@register(
    "EmbeddingGradCAM", needs_layer=True, short="gradcam-signed", cost="1 forward+backward pass"
)
def _embedding_gradcam(model, x1, x2, layer):
    return EmbeddingGradCAM(model, layer).attribute((x1, x2))


#: Similarities for which the registered "EmbeddingGradCAM (ReLU)" uses the
#: pair weighting (for the others: the similarity's gradient).
PAIR_WEIGHTED = ("cosine", "dot")


@register(
    "EmbeddingGradCAM (ReLU)", needs_layer=True, short="gradcam", default=True,
    cost="1 forward+backward pass",
)
def _embedding_gradcam_relu(model, x1, x2, layer):
    # what the command line's figures show (docs/embedding-gradcam.md, near-identical
    # pairs): no negative part to misread, and for cosine and dot the pair weighting,
    # whose weights do not vanish as s -> 1; a distance model's cosine (white_box_model)
    model = white_box_model(model)
    weighting = "pair" if model.similarity.name in PAIR_WEIGHTED else "similarity"
    return EmbeddingGradCAM(model, layer).attribute(
        (x1, x2), weighting=weighting, relu_attributions=True
    )


def _pairx_detail(model, x1, x2, layer):
    matches = PairwiseIntermediateMatching(model, layer).explain(x1, x2, k=PAIRX_MATCHES)
    maps = [torch.stack([m.pixel_relevance1.sum(0) for m in matches]),
            torch.stack([m.pixel_relevance2.sum(0) for m in matches])]
    return maps[0], maps[1], matches


@register(
    "PairwiseIntermediateMatching (PAIR-X)", needs_layer=True, short="pairx", default=True,
    cost=f"1 forward pass and relevance backward passes for {PAIRX_MATCHES} matches",
    detail=_pairx_detail, survives_randomization=_DLIB,
)
def _pairx(model, x1, x2, layer):
    return PairwiseIntermediateMatching(model, layer).attribute((x1, x2), k=PAIRX_MATCHES)


#: Patches across the shorter image side of the registered BiLRP.
BILRP_PATCHES = 12


def _bilrp_detail(model, x1, x2, layer):
    side = max(1, min(x1.shape[-2:]) // BILRP_PATCHES)
    # a distance is not a dot product: a distance model's cosine (white_box_model)
    relevance = LRPRelevancePairing(white_box_model(model)).attribute_pairwise(
        (x1, x2), patch_size=side
    )
    maps = []
    # row sums are image 1's patch relevance, column sums image 2's: a coarse map on each
    for x, marginal in ((x1, relevance.sum(2)), (x2, relevance.sum(1))):
        grid = [-(-d // side) for d in x.shape[-2:]]
        maps.append(marginal.reshape(x.shape[0], 1, *grid))
    return maps[0], maps[1], {"relevance": relevance.detach(), "patch_size": side}


@register(
    "BiLRP (LRPRelevancePairing.attribute_pairwise)", short="bilrp",
    cost="1 relevance backward pass per embedding dimension and image",
    detail=_bilrp_detail, survives_randomization=_DLIB,
)
def _bilrp(model, x1, x2, layer):
    a1, a2, _ = _bilrp_detail(model, x1, x2, layer)
    return a1, a2
