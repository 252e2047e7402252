"""SANE's attribute explanations: which attribute explains why two images match.

Plummer, Vasileva, Petsiuk, Saenko, Forsyth, *Why do These Match? Explaining
the Behavior of Image Similarity Models* (ECCV 2020). An attribute head on a
feature map of the embedder gives one spatial heatmap per attribute; the
attribute that explains a match is one the head is confident both images show
and whose heatmap agrees with the similarity saliency map of the pair.

- :class:`AttributeHeatmapHead`: heatmaps ``(N, A, h, w)`` and logits
  ``(N, A)`` (the heatmaps' spatial mean);
- :func:`fit_attribute_head`: trains it on the frozen features with binary
  cross-entropy, plus SANE's saliency-matching term
  (:func:`saliency_matching_loss`);
- :class:`SalientAttributes`: ranks the attributes for each pair
  (:meth:`~SalientAttributes.explain`), and gives the chosen attribute's
  heatmap in Captum's form (:meth:`~SalientAttributes.attribute`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import Attribution, LayerAttribution
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._utils import inputs as contract
from ._utils.batching import batch_slices
from ._utils.entry import attribution_entry
from ._utils.hooks import recording
from ._utils.inputs import check_float_tensor
from ._utils.layers import LayerSpec, feature_grid, resolve_layer
from ._utils.state import explaining, preserved_state
from .embedding_gradcam import EmbeddingGradCAM
from .metrics.insertion_deletion import pixel_scores
from .metrics.retrieval import average_precision
from .rise import SimilarityRISE
from .siamese import Embedder, SiameseSimilarity, as_siamese
from .similarity import SimilarityLike

__all__ = [
    "AttributeMaps",
    "AttributeHeatmapHead",
    "AttributeHeadFit",
    "fit_attribute_head",
    "saliency_matching_loss",
    "saliency_distribution",
    "heatmap_agreement",
    "AttributeExplanation",
    "SalientAttributes",
    "AGREEMENTS",
    "CONFIDENCES",
    "SALIENCY_METHODS",
    "DEFAULT_SALIENCY_METHOD",
    "ATTRIBUTE_WEIGHT",
]

_METHOD = "SalientAttributes"

#: How a heatmap's agreement with a saliency map is measured (:func:`heatmap_agreement`).
AGREEMENTS = ("correlation", "overlap")

#: How an attribute's confidence is read off the two images (:class:`SalientAttributes`).
CONFIDENCES = ("query", "pair")

#: Saliency methods :class:`SalientAttributes` runs by name.
SALIENCY_METHODS = ("EmbeddingGradCAM", "SimilarityRISE")

#: The default saliency method of :class:`SalientAttributes`: the most faithful
#: (insertion and deletion) of those measured on the ground-truth benchmark, and
#: the cheapest: ``benchmarks/results/sane_attributes.md``.
DEFAULT_SALIENCY_METHOD = "EmbeddingGradCAM"

#: The default trade-off between confidence and agreement (``attribute_weight``):
#: with the default confidence ("pair") and agreement ("correlation"), the most
#: weight on the map that cost at most 0.01 of top-1 accuracy against the
#: ground truth for every saliency method measured on the benchmark
#: (``benchmarks/results/sane_attributes.md``).
ATTRIBUTE_WEIGHT = 0.75

SaliencyLike = Union[Tensor, Tuple[Tensor, Tensor]]


class AttributeMaps(NamedTuple):
    """What :class:`AttributeHeatmapHead` returns.

    Attributes:
        heatmaps (Tensor): ``(N, A, h, w)`` per-attribute heatmaps (logit maps).
        logits (Tensor): ``(N, A)`` per-attribute logits, the spatial mean of
            each heatmap.
    """

    heatmaps: Tensor
    logits: Tensor


class AttributeHeatmapHead(nn.Module):
    r"""SANE's attribute predictor on a feature map of an embedder.

    A ``kernel_size x kernel_size`` convolution (stride 1, "same" padding)
    maps the feature map ``(N, C, h, w)`` to one heatmap per attribute
    ``(N, A, h, w)``; each attribute's logit is the spatial mean of its
    heatmap (global average pooling), so ``sigmoid(logit)`` is the
    probability that the image shows the attribute. Explanations compare the
    heatmaps after a spatial softmax.

    Args:
        in_channels (int): Channels ``C`` of the feature map (the hooked
            layer's width).
        num_attributes (int): Number of attributes ``A``.
        kernel_size (int, optional): Odd side of the convolution.
            Default: 3 (SANE)
        bias (bool, optional): A per-attribute bias (a prior; it does not
            change the spatial softmax). SANE's convolution has none.
            Default: True
        attribute_names (sequence of str, optional): One name per attribute,
            carried into explanations.
            Default: None (``"attribute 0"``, ...)

    Example::

        >>> head = AttributeHeatmapHead(64, 13)
        >>> maps = head(torch.rand(2, 64, 8, 8))
        >>> maps.heatmaps.shape, maps.logits.shape     # (2, 13, 8, 8), (2, 13)
    """

    def __init__(
        self,
        in_channels: int,
        num_attributes: int,
        kernel_size: int = 3,
        bias: bool = True,
        attribute_names: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_attributes", num_attributes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        self.in_channels = in_channels
        self.num_attributes = num_attributes
        self.attribute_names = _names(attribute_names, num_attributes)
        self.conv = nn.Conv2d(
            in_channels, num_attributes, kernel_size, padding=kernel_size // 2, bias=bias
        )

    def forward(self, features: Tensor) -> AttributeMaps:
        """Heatmaps and logits of a feature map ``(N, C, h, w)``."""
        check_features(features, self)
        heatmaps = self.conv(features)
        return AttributeMaps(heatmaps, heatmaps.mean((2, 3)))


def _names(names: Optional[Sequence[str]], count: int) -> Tuple[str, ...]:
    if names is None:
        return tuple(f"attribute {i}" for i in range(count))
    names = tuple(str(n) for n in names)
    if len(names) != count:
        raise ValueError(f"attribute_names has {len(names)} names for {count} attributes")
    return names


def check_features(features: Any, head: AttributeHeatmapHead) -> Tensor:
    """``features`` if it is a feature map the head takes.

    Raises:
        ValueError: not ``(N, C, h, w)``, or ``C`` is not the head's
            ``in_channels`` (a layer of the wrong width).
    """
    features = check_float_tensor(features, "features")
    if features.dim() != 4:
        raise ValueError(
            f"the attribute head takes a feature map (N, C, h, w), got shape "
            f"{tuple(features.shape)}; for transformer tokens pass reshape_transform"
        )
    if features.shape[1] != head.in_channels:
        raise ValueError(
            f"the layer gives {features.shape[1]} channels but the attribute head takes "
            f"{head.in_channels}: hook the layer the head was built for, or build "
            f"AttributeHeatmapHead({features.shape[1]}, {head.num_attributes})"
        )
    return features


def check_attribute_labels(labels: Any, n: int, num_attributes: int) -> Tensor:
    """Multi-label attribute labels ``(n, A)`` in {0, 1}, as float.

    Raises:
        TypeError: not a tensor.
        ValueError: wrong shape, values other than 0 and 1, or a number of
            attributes other than the head's.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor (N, A) of 0/1, got {type(labels).__name__}")
    if labels.dim() != 2 or labels.shape[0] != n:
        raise ValueError(
            f"labels must be (N, A) = ({n}, {num_attributes}), one row of 0/1 per image, got "
            f"shape {tuple(labels.shape)}"
        )
    if labels.shape[1] != num_attributes:
        raise ValueError(
            f"labels have {labels.shape[1]} attributes but the head predicts {num_attributes}; "
            "build the head with num_attributes equal to the label width"
        )
    values = labels.detach().double()
    if not ((values == 0) | (values == 1)).all():
        bad = values[(values != 0) & (values != 1)].unique()[:5].tolist()
        raise ValueError(
            f"labels must be 0 or 1 (multi-label attribute presence), found values {bad}"
        )
    return labels.detach().float()


def saliency_distribution(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    r"""Saliency maps as spatial probability distributions at the heatmaps' resolution.

    Channels are summed (Captum's convention for images), maps are brought to
    ``size`` (averaged over blocks when larger, bilinearly upsampled when
    smaller), shifted so that their minimum is 0 (a RISE map carries the mean
    masked score as an offset; a Grad-CAM map can be negative) and divided
    by their sum; a constant map becomes uniform.

    Args:
        maps (Tensor): ``(N, C, H, W)`` input-shaped attributions, a layer map
            ``(N, 1, h', w')`` or ``(N, H, W)``.
        size (tuple of int): ``(h, w)``.

    Returns:
        Tensor: ``(N, h, w)``, non-negative, each summing to 1.

    Raises:
        ValueError: not 3-D or 4-D, or NaN/infinite values.
    """
    maps = check_float_tensor(maps, "saliency").detach()
    if maps.dim() not in (3, 4):
        raise ValueError(
            "a saliency map must be (N, C, H, W), a layer map (N, 1, h, w) or (N, H, W); got "
            f"shape {tuple(maps.shape)}"
        )
    if not torch.isfinite(maps).all():
        raise ValueError("the saliency maps contain NaN or infinite values")
    larger = maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]
    maps = pixel_scores(maps, tuple(size), "sum", "area" if larger else "bilinear")
    maps = maps - maps.amin((1, 2), keepdim=True)
    total = maps.sum((1, 2), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / (size[0] * size[1]))
    return torch.where(total > 0, maps / total.clamp_min(torch.finfo(maps.dtype).tiny), uniform)


def saliency_matching_loss(heatmaps: Tensor, saliency: Tensor, labels: Tensor) -> Tensor:
    r"""SANE's saliency-matching term: KL divergence of present attributes' heatmaps.

    With ``Q_n`` image ``n``'s saliency distribution and
    ``P_{na} = softmax(H_{na})`` the spatial softmax of attribute ``a``'s
    heatmap,

    .. math::

        L = \frac{1}{|\{(n, a): y_{na} = 1\}|} \sum_{y_{na} = 1}
            \mathrm{KL}(Q_n \,\|\, P_{na})
          = \frac{1}{|\cdot|} \sum_{y_{na} = 1} \sum_p Q_{np}
            (\log Q_{np} - \log P_{nap}),

    the mean over the attributes each image shows (0 when none is shown).
    This is ``torch.nn.functional.kl_div(log P, Q)`` summed over cells: the
    saliency map is the target.

    Args:
        heatmaps (Tensor): ``(N, A, h, w)`` heatmaps (before the softmax).
        saliency (Tensor): ``(N, h, w)`` distributions
            (:func:`saliency_distribution`).
        labels (Tensor): ``(N, A)`` in {0, 1}.

    Returns:
        Tensor: the scalar loss.
    """
    log_p = F.log_softmax(heatmaps.flatten(2), dim=2)
    q = saliency.flatten(1)[:, None, :].to(log_p.dtype)
    # 0 log 0 = 0: cells the saliency map gives no mass do not count
    cross = torch.where(q > 0, q * log_p, torch.zeros_like(log_p))
    kl = (torch.xlogy(q, q) - cross).sum(2)
    return (kl * labels).sum() / labels.sum().clamp_min(1)


def heatmap_agreement(heatmaps: Tensor, saliency: Tensor, measure: str = "correlation") -> Tensor:
    r"""How well each attribute's heatmap agrees with the saliency map, in [0, 1].

    With ``P_a`` the spatial softmax of heatmap ``a`` and ``Q`` the saliency
    distribution (:func:`saliency_distribution`):

    - ``"correlation"``: ``(1 + r) / 2`` with ``r`` the Pearson correlation of
      ``P_a`` and ``Q`` over cells (0.5 when either is constant); it ignores
      how peaked the two maps are, only where they are high and low;
    - ``"overlap"``: the histogram intersection ``sum_p min(P_a(p), Q(p))``
      (1 when the two distributions are equal, 0 when their supports are
      disjoint); a broad saliency map (RISE's) overlaps a broad heatmap (a
      background's) more than a peaked one.

    Args:
        heatmaps (Tensor): ``(N, A, h, w)``.
        saliency (Tensor): ``(N, h, w)`` distributions.
        measure (str, optional): ``"correlation"`` or ``"overlap"``.
            Default: ``"correlation"``

    Returns:
        Tensor: ``(N, A)``.
    """
    if measure not in AGREEMENTS:
        raise ValueError(f"agreement must be one of {AGREEMENTS}, got {measure!r}")
    p = F.softmax(heatmaps.flatten(2), dim=2)
    q = saliency.flatten(1)[:, None, :].to(p.dtype)
    if measure == "overlap":
        return torch.minimum(p, q).sum(2)
    p, q = p - p.mean(2, keepdim=True), q - q.mean(2, keepdim=True)
    norm = (p.norm(dim=2) * q.norm(dim=2)).clamp_min(torch.finfo(p.dtype).tiny)
    r = (p * q).sum(2) / norm
    return (1 + r) / 2


def _layer_features(
    model: SiameseSimilarity,
    layer: nn.Module,
    x: Tensor,
    reshape_transform: Optional[Callable[[Tensor], Tensor]],
    attribute_to_layer_input: bool,
    batch_size: Optional[int],
    method: str = _METHOD,
) -> Tuple[Tensor, Tensor]:
    """The layer's feature maps ``(N, C, h, w)`` and the embeddings ``(N, D)`` of
    ``x``, without gradients, inside :func:`explaining` (one explanation at a
    time per model, eval mode, restored after)."""
    features, embeddings = [], []
    with explaining(model, gradients=False, method=method):
        for chunk in batch_slices(x.shape[0], batch_size):
            with recording(layer, attribute_to_layer_input) as rec:
                embeddings.append(model.embed(x[chunk]))
            features.append(feature_grid(rec.single(), reshape_transform, _METHOD))
    return torch.cat(features), torch.cat(embeddings)


@dataclass
class AttributeHeadFit:
    """What :func:`fit_attribute_head` returns.

    Attributes:
        head (AttributeHeatmapHead): The fitted head (trained in place, in
            eval mode).
        average_precision (Tensor): ``(A,)`` validation average precision of
            each attribute's logit (NaN for an attribute with no positive
            validation image, or without validation).
        mean_average_precision (float): Mean of the defined entries.
        thresholds (Tensor): ``(A,)`` SANE's calibration: the median
            probability the head gives to the validation images that show
            the attribute (NaN where none does).
        losses (list of float): Training loss of each step.
        seconds (float): Training time (features included).
    """

    head: AttributeHeatmapHead
    average_precision: Tensor
    mean_average_precision: float
    thresholds: Tensor
    losses: List[float] = field(default_factory=list)
    seconds: float = 0.0


def fit_attribute_head(
    embedder: Union[Embedder, SiameseSimilarity],
    layer: LayerSpec,
    head: AttributeHeatmapHead,
    images: Tensor,
    labels: Tensor,
    saliency: Optional[Tensor] = None,
    heatmap_weight: float = 5e-3,
    validation: Optional[Tuple[Tensor, Tensor]] = None,
    validation_fraction: float = 0.2,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    attribute_to_layer_input: bool = False,
    feature_batch_size: Optional[int] = 128,
    show_progress: bool = False,
) -> AttributeHeadFit:
    r"""Trains an attribute head on the frozen features of an embedder's layer.

    The layer's feature maps of all images are computed once (no gradients,
    the embedder in eval mode, left exactly as found). The head is trained
    with Adam on minibatches drawn from a generator seeded with ``seed`` (the
    global random state is neither used nor changed), minimising

    .. math::

        \mathrm{BCE}(\text{logits}, y)
        + \lambda \, L_{\text{sal}}(\text{heatmaps}, Q, y),

    binary cross-entropy on the multi-label attributes plus, when saliency
    maps are given, SANE's saliency-matching term
    (:func:`saliency_matching_loss`, ``lambda = heatmap_weight``): the KL
    divergence between each image's similarity saliency distribution ``Q``
    and the spatial softmax of each attribute the image shows.

    Args:
        embedder (nn.Module, Callable or SiameseSimilarity): The embedder
            ``(N, C, H, W) -> (N, D)`` (or a SiameseSimilarity wrapping it).
        layer (nn.Module or str): The layer the head reads (module or dotted
            name); its output (or input, see ``attribute_to_layer_input``) is
            a feature map ``(N, C, h, w)`` or becomes one through
            ``reshape_transform``.
        head (AttributeHeatmapHead): The head to train, in place. Its
            ``in_channels`` must equal the layer's width.
        images (Tensor): Training images ``(N, C, H, W)``.
        labels (Tensor): ``(N, A)`` in {0, 1} (bool, integer or float), ``A``
            the head's ``num_attributes``.
        saliency (Tensor, optional): One similarity saliency map per image
            (any Captum-shaped map: ``(N, C, H, W)``, ``(N, 1, h, w)`` or
            ``(N, H, W)``), e.g. each image explained against another image
            of its identity; normalised with :func:`saliency_distribution`.
            Default: None (no saliency term)
        heatmap_weight (float, optional): ``lambda``, the weight of the
            saliency term.
            Default: 5e-3 (SANE's code)
        validation (tuple of Tensor, optional): ``(images, labels)`` on which
            the average precision and the thresholds are measured.
            Default: None (a random ``validation_fraction`` of ``images`` is
            held out of training)
        validation_fraction (float, optional): The share held out when
            ``validation`` is None, in [0, 1); 0 trains on everything and
            reports NaN.
            Default: 0.2
        epochs (int, optional): Passes over the training images.
            Default: 30
        batch_size (int, optional): Images per step.
            Default: 64
        lr (float, optional): Adam's learning rate.
            Default: 1e-2
        weight_decay (float, optional): Adam's weight decay.
            Default: 1e-4
        seed (int, optional): Seed of the validation split and of the
            minibatch order; the same seed (and the same initial head) gives
            the same head.
            Default: 0
        reshape_transform (Callable, optional): Turns the layer's tensor into
            ``(N, C, h, w)`` (:class:`~captum_similarity.models.TokenGrid` for
            ViT tokens).
            Default: None
        attribute_to_layer_input (bool, optional): Read the layer's input
            instead of its output.
            Default: False
        feature_batch_size (int, optional): Images per forward pass when
            computing the features; None for one pass.
            Default: 128
        show_progress (bool, optional): Show a progress bar over epochs.
            Default: False

    Returns:
        AttributeHeadFit: the head, per-attribute validation average
        precision, its mean, SANE's calibrated thresholds, the losses and the
        time.

    Raises:
        ValueError: labels of the wrong shape, with values outside {0, 1} or
            a number of attributes other than the head's; a layer whose width
            is not the head's ``in_channels``; saliency maps of another batch
            size; a validation fraction outside [0, 1).

    Example::

        >>> head = AttributeHeatmapHead(64, world.labels.shape[1])
        >>> fit = fit_attribute_head(model, "features.10", head, world.images, world.labels)
        >>> fit.mean_average_precision
    """
    start = time.perf_counter()
    model = as_siamese(embedder, None, _METHOD)
    resolved = resolve_layer(model.embedder, layer)
    images = contract.check_images(images, "images", "fit_attribute_head", image_dim=4)
    n = images.shape[0]
    labels = check_attribute_labels(labels, n, head.num_attributes)
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if saliency is not None and (not isinstance(saliency, Tensor) or saliency.shape[0] != n):
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must hold one map per image ({n}), got {shape}")

    def features_of(x: Tensor) -> Tensor:
        grid = _layer_features(
            model, resolved, x, reshape_transform, attribute_to_layer_input, feature_batch_size,
            "fit_attribute_head",
        )[0]
        return check_features(grid, head)

    features = features_of(images)
    targets = None
    if saliency is not None:
        targets = saliency_distribution(saliency, tuple(features.shape[-2:]))
    generator = torch.Generator().manual_seed(seed)
    train = torch.arange(n)
    if validation is not None:
        val_x = contract.check_images(validation[0], "validation images", "fit_attribute_head", image_dim=4)
        val_features = features_of(val_x)
        val_labels = check_attribute_labels(validation[1], val_x.shape[0], head.num_attributes)
    elif validation_fraction > 0:
        order = torch.randperm(n, generator=generator)
        held = max(1, int(round(validation_fraction * n)))
        train, held_out = order[held:], order[:held]
        val_features, val_labels = features[held_out], labels[held_out]
    else:
        val_features = val_labels = None

    params = [p for p in head.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    losses: List[float] = []
    head.train()
    try:
        for _ in tqdm(range(epochs), desc="attribute head", disable=not show_progress, leave=False):
            shuffled = train[torch.randperm(len(train), generator=generator)]
            for chunk in batch_slices(len(shuffled), batch_size):
                rows = shuffled[chunk]
                maps = head(features[rows])
                loss = F.binary_cross_entropy_with_logits(maps.logits, labels[rows])
                if targets is not None and heatmap_weight:
                    loss = loss + heatmap_weight * saliency_matching_loss(
                        maps.heatmaps, targets[rows], labels[rows]
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    finally:
        head.eval()
        for p in params:
            p.grad = None
    ap, thresholds = _validation(head, val_features, val_labels)
    defined = ap[~torch.isnan(ap)]
    return AttributeHeadFit(
        head, ap, float(defined.mean()) if len(defined) else float("nan"), thresholds, losses,
        time.perf_counter() - start,
    )


def _validation(
    head: AttributeHeatmapHead, features: Optional[Tensor], labels: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Per-attribute average precision and median positive probability."""
    count = head.num_attributes
    if features is None or labels is None:
        nan = torch.full((count,), float("nan"))
        return nan, nan.clone()
    with torch.no_grad():
        probs = torch.sigmoid(head(features).logits)
    ap = torch.tensor([average_precision(probs[:, a], labels[:, a]) for a in range(count)])
    thresholds = torch.tensor(
        [
            float(probs[labels[:, a] > 0, a].median()) if (labels[:, a] > 0).any() else math.nan
            for a in range(count)
        ]
    )
    return ap, thresholds


@dataclass
class AttributeExplanation:
    """The attributes that explain one pair, best first.

    Attributes:
        ranking (list of int): Attribute indices, best first (``top_k`` of them).
        names (list of str): Their names.
        scores (Tensor): ``(k,)`` combined scores
            ``w * confidence + (1 - w) * agreement``.
        confidence1 (Tensor): ``(k,)`` the head's probability that ``x1``
            shows each attribute.
        confidence2 (Tensor): ``(k,)`` the same for ``x2``.
        agreement1 (Tensor): ``(k,)`` agreement of each attribute's heatmap on
            ``x1`` with ``x1``'s saliency map.
        agreement2 (Tensor or None): ``(k,)`` the same on ``x2``, when a map
            of ``x2`` was given or computed.
        similarity (float): The pair's similarity score.
        attribute_weight (float): ``w``.
        saliency1 (Tensor): ``(H', W')`` x1's saliency map as given
            (channels summed), for figures.
        saliency2 (Tensor or None): x2's, when there is one.
        heatmap1 (Tensor): ``(h, w)`` spatial softmax of the chosen
            attribute's heatmap on x1.
        heatmap2 (Tensor): ``(h, w)`` the same on x2.
    """

    ranking: List[int]
    names: List[str]
    scores: Tensor
    confidence1: Tensor
    confidence2: Tensor
    agreement1: Tensor
    agreement2: Optional[Tensor]
    similarity: float
    attribute_weight: float
    saliency1: Tensor
    saliency2: Optional[Tensor]
    heatmap1: Tensor
    heatmap2: Tensor

    @property
    def attribute(self) -> int:
        """The chosen attribute (``ranking[0]``)."""
        return self.ranking[0]

    @property
    def name(self) -> str:
        """The chosen attribute's name."""
        return self.names[0]


class _PairScores(NamedTuple):
    confidence1: Tensor  # (N, A)
    confidence2: Tensor
    agreement1: Optional[Tensor]
    agreement2: Optional[Tensor]
    heatmaps1: Tensor  # (N, A, h, w)
    heatmaps2: Tensor
    similarity: Tensor  # (N,)
    saliency: Tuple[Optional[Tensor], Optional[Tensor]]  # as given, (N, H', W')


class SalientAttributes(Attribution):
    r"""SANE's attribute explanation of a similarity: which attribute explains the match.

    Plummer et al., ECCV 2020. An :class:`AttributeHeatmapHead` on the
    feature map of the embedder's ``layer`` gives, for each image, the
    probability ``p_a`` that it shows attribute ``a`` and a heatmap ``H_a``.
    For a pair ``(x1, x2)`` with similarity saliency maps ``S1`` (of ``x1``
    for ``s(., x2)``) and, optionally, ``S2``, each attribute gets

    .. math::

        c_a = \sqrt{p_a(x_1)\, p_a(x_2)}, \qquad
        g_a = \tfrac12 \big(\mathrm{agr}(H_a(x_1), S_1) + \mathrm{agr}(H_a(x_2), S_2)\big),
        \qquad \mathrm{score}_a = w\, c_a + (1 - w)\, g_a,

    where ``c_a`` (confidence: the geometric mean, high only when both images
    show the attribute; with ``confidence="query"``, SANE's ``p_a(x1)``)
    and ``g_a`` (agreement, :func:`heatmap_agreement`, only ``x1``'s term
    when there is no map of ``x2``) are in [0, 1], and
    ``w = attribute_weight`` is SANE's trade-off: ``w = 1`` ranks by
    confidence alone (SANE's script default, which ignores the map),
    ``w = 0`` by agreement alone. The best-scoring attribute is the
    explanation.

    The saliency maps are given (any Captum-shaped map: ``SimilarityRISE``,
    ``EmbeddingGradCAM``, Captum's methods through
    :class:`~captum_similarity.SiameseSimilarity`) or computed with
    ``saliency_method``. The embedder runs in eval mode and is left exactly as
    found.

    Args:
        embedder (nn.Module, Callable or SiameseSimilarity): The embedder, or
            a SiameseSimilarity wrapping it (its similarity is then used).
        layer (nn.Module or str): The layer the head reads (as in
            :func:`fit_attribute_head`).
        head (AttributeHeatmapHead): A fitted head.
        saliency_method (str, Attribution or Callable, optional): What
            computes the saliency maps when ``explain``/``attribute`` get
            none: ``"EmbeddingGradCAM"`` (at ``layer``, weighting
            ``"similarity"``), ``"SimilarityRISE"`` (SANE's 2000 masks of 8 x 8 cells, seed 0), an
            attribution object whose ``attribute((x1, x2))`` returns
            ``(a1, a2)``, or a callable ``f(x1, x2) -> (a1, a2)``.
            Default: None (``"EmbeddingGradCAM"``, the most faithful of the
            methods measured on the benchmark, by insertion and deletion, and
            the cheapest: ``benchmarks/results/sane_attributes.md``)
        similarity (str, Callable or Similarity, optional): The similarity
            of a bare embedder.
            Default: None (``"cosine"``)
        reshape_transform (Callable, optional): Turns the layer's tensor into
            ``(N, C, h, w)``.
            Default: None
        attribute_names (sequence of str, optional): Names of the attributes.
            Default: None (the head's)
        attribute_to_layer_input (bool, optional): Read the layer's input.
            Default: False

    Example::

        >>> explainer = SalientAttributes(model, "features.10", head)
        >>> result = explainer.explain(x1, x2)[0]
        >>> result.name, result.scores[0]              # the explanation and its score
        >>> maps = explainer.attribute((x1, x2))       # the chosen heatmap on each image
    """

    def __init__(
        self,
        embedder: Union[Embedder, SiameseSimilarity],
        layer: LayerSpec,
        head: AttributeHeatmapHead,
        saliency_method: Union[None, str, Attribution, Callable[..., Any]] = None,
        similarity: Optional[SimilarityLike] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        attribute_names: Optional[Sequence[str]] = None,
        attribute_to_layer_input: bool = False,
    ) -> None:
        model = as_siamese(embedder, similarity, _METHOD)
        Attribution.__init__(self, model)
        if not isinstance(head, AttributeHeatmapHead):
            raise TypeError(f"head must be an AttributeHeatmapHead, got {type(head).__name__}")
        if isinstance(saliency_method, str) and saliency_method not in SALIENCY_METHODS:
            raise ValueError(
                f"unknown saliency_method {saliency_method!r}; expected one of "
                f"{SALIENCY_METHODS}, an attribution object or a callable"
            )
        if not (saliency_method is None or isinstance(saliency_method, str) or callable(saliency_method)
                or hasattr(saliency_method, "attribute")):
            raise TypeError(
                "saliency_method must be a name, an attribution object or a callable, got "
                f"{type(saliency_method).__name__}"
            )
        self.model = model
        self.layer = resolve_layer(model.embedder, layer)
        self.head = head
        self.saliency_method = (
            DEFAULT_SALIENCY_METHOD if saliency_method is None else saliency_method
        )
        self.reshape_transform = reshape_transform
        self.attribute_to_layer_input = attribute_to_layer_input
        self.attribute_names = (
            head.attribute_names if attribute_names is None
            else _names(attribute_names, head.num_attributes)
        )

    @attribution_entry()
    def saliency(self, x1: Tensor, x2: Tensor) -> Tuple[Tensor, Tensor]:
        """The saliency maps ``(a1, a2)`` of a batch of pairs, from ``saliency_method``."""
        method = self.saliency_method
        if method == "EmbeddingGradCAM":
            maps = EmbeddingGradCAM(
                self.model, self.layer, reshape_transform=self.reshape_transform
            ).attribute((x1, x2), attribute_to_layer_input=self.attribute_to_layer_input)
        elif method == "SimilarityRISE":
            # SANE's own setting (its paper's maps), not the registry's
            maps = SimilarityRISE(self.model).attribute(
                (x1, x2), n_masks=2000, mask_cells=8, seed=0
            )
        elif hasattr(method, "attribute"):
            maps = method.attribute((x1, x2))
        else:
            maps = method(x1, x2)
        if not isinstance(maps, (tuple, list)) or len(maps) != 2:
            raise TypeError(
                "the saliency method must return a pair of maps (a1, a2) for inputs (x1, x2), "
                f"got {type(maps).__name__}"
            )
        return maps[0].detach(), maps[1].detach()

    def _pair_scores(
        self, x1: Tensor, x2: Tensor, saliency: Optional[SaliencyLike], agreement: Optional[str]
    ) -> _PairScores:
        """Confidences, agreements and heatmaps of every attribute for each pair."""
        x1 = contract.check_images(x1, "x1", _METHOD, self.model, image_dim=4, reference_ok=False)
        x2 = contract.check_images(x2, "x2", _METHOD, self.model, image_dim=4, reference_ok=False)
        x1, x2 = contract.broadcast_pair(x1, x2)
        n = x1.shape[0]
        with preserved_state(self.model.embedder, eval_mode=True):
            features, embeddings = _layer_features(
                self.model, self.layer, torch.cat([x1, x2]), self.reshape_transform,
                self.attribute_to_layer_input, None,
            )
            check_features(features, self.head)
            with torch.no_grad():
                maps = self.head(features)
                similarity = self.model.similarity(embeddings[:n], embeddings[n:])
            if agreement is None:
                given: Tuple[Optional[Tensor], Optional[Tensor]] = (None, None)
            elif saliency is None:
                given = self.saliency(x1, x2)
            else:
                given = _given_saliency(saliency, n)
        probs = torch.sigmoid(maps.logits)
        size = tuple(maps.heatmaps.shape[-2:])
        agreements = [
            None if m is None else heatmap_agreement(heats, saliency_distribution(m, size), agreement)
            for m, heats in zip(given, (maps.heatmaps[:n], maps.heatmaps[n:]))
        ]
        pixels = tuple(None if m is None else _channel_sum(m) for m in given)
        return _PairScores(
            probs[:n], probs[n:], agreements[0], agreements[1], maps.heatmaps[:n],
            maps.heatmaps[n:], similarity, pixels,
        )

    @attribution_entry()
    def explain(
        self,
        x1: Tensor,
        x2: Tensor,
        saliency: Optional[SaliencyLike] = None,
        top_k: Optional[int] = 5,
        attribute_weight: float = ATTRIBUTE_WEIGHT,
        agreement: str = "correlation",
        confidence: str = "pair",
    ) -> List[AttributeExplanation]:
        r"""Ranks the attributes that explain each pair ``(x1[i], x2[i])``.

        Args:
            x1 (Tensor): First images ``(N, C, H, W)``.
            x2 (Tensor): Second images ``(N, C, H, W)``; a batch-1 side is
                broadcast.
            saliency (Tensor or tuple of Tensor, optional): x1's saliency
                maps, or a pair ``(maps1, maps2)`` of both images' maps; each
                ``(N, C, H, W)``, ``(N, 1, h, w)`` or ``(N, H, W)`` (any
                Captum-shaped map). With x1's maps only, the agreement is
                x1's.
                Default: None (computed with ``saliency_method``, both sides)
            top_k (int, optional): How many attributes each result lists.
                Default: 5 (None lists all)
            attribute_weight (float, optional): ``w`` in [0, 1]: 1 ranks by
                confidence alone, 0 by heatmap agreement alone.
                Default: :data:`ATTRIBUTE_WEIGHT` (0.75, measured on the
                ground-truth benchmark)
            agreement (str, optional): ``"correlation"`` or ``"overlap"``
                (:func:`heatmap_agreement`).
                Default: ``"correlation"``
            confidence (str, optional): ``"pair"``: ``sqrt(p_a(x1) p_a(x2))``,
                high only when both images show the attribute; or
                ``"query"``: ``p_a(x1)``, SANE's.
                Default: ``"pair"``

        Returns:
            list of AttributeExplanation: one per pair, each with
            ``ranking``, ``names``, ``scores``, the confidences and
            agreements of the listed attributes, the similarity, the
            saliency maps and the chosen attribute's heatmaps.

        Raises:
            ValueError: images that are not ``(N, C, H, W)``, batch sizes that
                cannot be paired, ``attribute_weight`` outside [0, 1], a bad
                ``top_k``, saliency maps of another batch size, or a layer
                whose width is not the head's.
        """
        _check_options(attribute_weight, confidence)
        count = self.head.num_attributes
        if top_k is None:
            top_k = count
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        top_k = min(top_k, count)
        parts = self._pair_scores(x1, x2, saliency, agreement)
        scores = _combine(parts, attribute_weight, confidence)
        ranking = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :top_k]
        results = []
        for i, order in enumerate(ranking):
            chosen = int(order[0])
            results.append(AttributeExplanation(
                ranking=order.tolist(),
                names=[self.attribute_names[a] for a in order.tolist()],
                scores=scores[i, order],
                confidence1=parts.confidence1[i, order],
                confidence2=parts.confidence2[i, order],
                agreement1=parts.agreement1[i, order],
                agreement2=None if parts.agreement2 is None else parts.agreement2[i, order],
                similarity=float(parts.similarity[i]),
                attribute_weight=float(attribute_weight),
                saliency1=parts.saliency[0][i],
                saliency2=None if parts.saliency[1] is None else parts.saliency[1][i],
                heatmap1=_spatial_softmax(parts.heatmaps1[i, chosen]),
                heatmap2=_spatial_softmax(parts.heatmaps2[i, chosen]),
            ))
        return results

    @attribution_entry()
    def scores(
        self,
        x1: Tensor,
        x2: Tensor,
        saliency: Optional[SaliencyLike] = None,
        attribute_weight: float = ATTRIBUTE_WEIGHT,
        agreement: str = "correlation",
        confidence: str = "pair",
    ) -> Dict[str, Optional[Tensor]]:
        r"""Every attribute's scores for each pair, as tensors (for evaluations).

        Arguments as in :meth:`explain`.

        Returns:
            dict: ``"score"``, ``"confidence"``, ``"confidence1"``,
            ``"confidence2"``, ``"agreement"``, ``"agreement1"``,
            ``"agreement2"`` (None without a map of x2), each ``(N, A)``;
            ``"heatmaps1"``, ``"heatmaps2"`` ``(N, A, h, w)`` (before the
            softmax) and ``"similarity"`` ``(N,)``.
        """
        _check_options(attribute_weight, confidence)
        parts = self._pair_scores(x1, x2, saliency, agreement)
        return {
            "score": _combine(parts, attribute_weight, confidence),
            "confidence": _confidence(parts, confidence),
            "confidence1": parts.confidence1,
            "confidence2": parts.confidence2,
            "agreement": _agreement(parts),
            "agreement1": parts.agreement1,
            "agreement2": parts.agreement2,
            "heatmaps1": parts.heatmaps1,
            "heatmaps2": parts.heatmaps2,
            "similarity": parts.similarity,
        }

    @attribution_entry()
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Any = None,
        target: Union[None, int, Tensor] = None,
        saliency: Optional[SaliencyLike] = None,
        attribute_weight: float = ATTRIBUTE_WEIGHT,
        agreement: str = "correlation",
        confidence: str = "pair",
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""The explaining attribute's heatmap on each image, upsampled to the input.

        Args:
            inputs (Tensor or tuple of Tensor): ``x1`` ``(N, C, H, W)``
                explained against the reference in
                ``additional_forward_args``, a 1-tuple ``(x1,)`` (the same,
                returning a 1-tuple), or a pair ``(x1, x2)`` (a map on each).
            additional_forward_args (Tensor or tuple, optional): With a single
                image batch: the reference images ``(N or 1, C, H, W)`` (as a
                tensor or a 1-tuple); the head needs their pixels, so
                precomputed embeddings are refused.
                Default: None
            target (int or Tensor, optional): The attribute whose heatmap to
                return, one for all pairs or ``(N,)`` one per pair; no
                saliency map is needed then.
                Default: None (each pair's best-ranked attribute)
            saliency (Tensor or tuple of Tensor, optional): As in
                :meth:`explain`.
                Default: None
            attribute_weight (float, optional): As in :meth:`explain`.
                Default: :data:`ATTRIBUTE_WEIGHT`
            agreement (str, optional): As in :meth:`explain`.
                Default: ``"correlation"``
            confidence (str, optional): As in :meth:`explain`.
                Default: ``"pair"``

        Returns:
            Tensor or tuple of Tensor: for each explained image batch, the
            spatial softmax of the attribute's heatmap, upsampled bilinearly
            to ``(H, W)`` and repeated over the input's channels:
            ``(N, C, H, W)``, the input's shape (a tensor for a tensor, a
            tuple for a tuple).
        """
        images, reference, is_tuple = contract.format_inputs(
            inputs, additional_forward_args, _METHOD
        )
        x1, x2 = images if len(images) == 2 else (images[0], reference)
        _check_options(attribute_weight, confidence)
        parts = self._pair_scores(x1, x2, saliency, None if target is not None else agreement)
        n = parts.heatmaps1.shape[0]
        if target is None:
            chosen = _combine(parts, attribute_weight, confidence).argmax(1)
        else:
            chosen = torch.as_tensor(target, dtype=torch.long).reshape(-1).expand(n)
            if ((chosen < 0) | (chosen >= self.head.num_attributes)).any():
                raise ValueError(
                    f"target must be attribute indices in [0, {self.head.num_attributes}), "
                    f"got {target!r}"
                )
        rows = torch.arange(n)
        outputs = []
        for heats, x in zip((parts.heatmaps1, parts.heatmaps2), images):
            heat = _spatial_softmax(heats[rows, chosen])[:, None]
            up = LayerAttribution.interpolate(heat, tuple(x.shape[-2:]), "bilinear")
            outputs.append(up.expand(n, x.shape[1], *x.shape[-2:]).contiguous())
        return contract.format_output(outputs, is_tuple)


def _check_options(weight: float, confidence: str) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"attribute_weight must be a number in [0, 1], got {weight!r}")
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")


def _confidence(parts: _PairScores, mode: str) -> Tensor:
    if mode == "query":
        return parts.confidence1
    return torch.sqrt(parts.confidence1 * parts.confidence2)


def _agreement(parts: _PairScores) -> Optional[Tensor]:
    if parts.agreement1 is None:
        return None
    if parts.agreement2 is None:
        return parts.agreement1
    return (parts.agreement1 + parts.agreement2) / 2


def _combine(parts: _PairScores, weight: float, mode: str) -> Tensor:
    confidence, agreement = _confidence(parts, mode), _agreement(parts)
    if agreement is None:
        return confidence
    return weight * confidence + (1 - weight) * agreement


def _spatial_softmax(heatmaps: Tensor) -> Tensor:
    """The softmax over the last two (spatial) dimensions."""
    return F.softmax(heatmaps.flatten(-2), dim=-1).view(heatmaps.shape)


def _channel_sum(maps: Tensor) -> Tensor:
    """``(N, H, W)``: a Captum-shaped map with its channels summed."""
    return maps.detach().sum(1) if maps.dim() == 4 else maps.detach()


def _given_saliency(saliency: SaliencyLike, n: int) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    maps = tuple(saliency) if isinstance(saliency, (tuple, list)) else (saliency, None)
    if len(maps) != 2:
        raise ValueError(
            f"saliency must be x1's maps or a pair (maps1, maps2), got a tuple of {len(maps)}"
        )
    for side, m in zip(("x1", "x2"), maps):
        if m is None:
            continue
        if not isinstance(m, Tensor):
            raise TypeError(f"the saliency maps of {side} must be a tensor, got {type(m).__name__}")
        if m.shape[0] != n:
            raise ValueError(
                f"the saliency maps of {side} have batch size {m.shape[0]}; expected {n}, one "
                "per pair"
            )
    return maps[0], maps[1]
