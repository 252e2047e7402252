"""PairwiseIntermediateMatching (PAIR-X): matched cells of an intermediate layer,
ranked by LRP relevance, each explained down to the pixels."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from torch import Tensor, nn

from ._utils.batching import batch_slices
from ._utils.entry import attribution_entry
from ._utils import inputs as contract
from ._utils.layers import LayerSpec, feature_grid, resolve_layer
from .candidates import CandidateLayer, candidate_layers, default_layer_module
from .lrp.composites import Composite
from .lrp.conservation import Conservation, LayerLoss, report
from .lrp.engine import SEED_BATCHING, LRPEngine, RelevancePass
from .lrp.rules import RuleLike
from .siamese import Embedder, SiameseSimilarity, as_siamese
from .similarity import Similarity, SimilarityLike

__all__ = [
    "PairwiseIntermediateMatching",
    "PairMatches",
    "CandidateLayer",
    "candidate_layers",
    "mutual_nearest_neighbours",
    "DISTANCES",
]

#: Descriptor distances :class:`PairwiseIntermediateMatching` matches cells with.
DISTANCES = ("l2", "cosine")

_METHOD = "PairwiseIntermediateMatching"

#: Entries of the distance matrices computed at once (pairs are chunked to fit).
_DISTANCE_BUDGET = 2**25

ReshapeTransform = Callable[[Tensor], Tensor]


@dataclass
class PairMatches:
    r"""PAIR-X explanation of one pair, as returned by
    :meth:`PairwiseIntermediateMatching.explain`.

    ``M`` is the number of matches (mutual nearest neighbours between the two
    images' cells at the layer), ``k'`` = ``min(k, M)`` the number of matches
    explained down to the pixels. Matches are ranked by ``relevance``, largest
    first; row ``j`` of every per-match field belongs to the same match.

    Attributes:
        score (float): The similarity of the pair.
        layer_relevance1 (Tensor): ``(h1, w1)``, ``|sum_c R|``: the absolute
            channel sum of image 1's LRP relevance at the layer.
        layer_relevance2 (Tensor): ``(h2, w2)``, the same for image 2.
        cells1 (Tensor): ``(M, 2)`` long, ``(row, col)`` of each match's cell
            in image 1's layer grid.
        cells2 (Tensor): ``(M, 2)`` long, the matched cells of image 2.
        points1 (Tensor): ``(M, 2)``, ``(x, y)`` input pixel coordinates of
            the centres of ``cells1`` (``x = (col + 0.5) W / w``).
        points2 (Tensor): ``(M, 2)``, the same for ``cells2``.
        distance (Tensor): ``(M,)`` descriptor distance of each match (L2 or
            cosine distance, as configured).
        relevance (Tensor): ``(M,)`` ``layer_relevance1[cell1] *
            layer_relevance2[cell2]``, in decreasing order.
        pixel_relevance1 (Tensor): ``(k', C, H, W)``: LRP relevance of image 1's
            pixels for each of the top ``k'`` matches, seeded at the layer with
            the match's cell activation (all channels), zero elsewhere.
        pixel_relevance2 (Tensor): ``(k', C, H, W)``, the same for image 2.
        layer_conservation_error (float): How far the relevance that reached
            the layer is from the score, ``|s - sum R| / sum |c|`` (``c``:
            the seeded contributions), the larger of the two images.
        pixel_conservation_error (float): The same for the per-match maps:
            ``|sum seed - sum map| / sum |seed|``, the largest over the top
            ``k'`` matches of both images (0 with ``k = 0``).
    """

    score: float
    layer_relevance1: Tensor
    layer_relevance2: Tensor
    cells1: Tensor
    cells2: Tensor
    points1: Tensor
    points2: Tensor
    distance: Tensor
    relevance: Tensor
    pixel_relevance1: Tensor
    pixel_relevance2: Tensor
    layer_conservation_error: float = float("nan")
    pixel_conservation_error: float = float("nan")

    def __len__(self) -> int:
        return int(self.relevance.shape[0])

    @property
    def image_size1(self) -> Tuple[int, int]:
        """``(H, W)`` of image 1."""
        return _image_size(self.pixel_relevance1)

    @property
    def image_size2(self) -> Tuple[int, int]:
        """``(H, W)`` of image 2."""
        return _image_size(self.pixel_relevance2)


def _image_size(maps: Tensor) -> Tuple[int, int]:
    return int(maps.shape[-2]), int(maps.shape[-1])


def mutual_nearest_neighbours(
    descriptors1: Tensor, descriptors2: Tensor, distance: str = "l2"
) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Mutual nearest neighbours between two sets of descriptors, batched.

    Cell ``i`` of set 1 and cell ``j`` of set 2 match when ``j`` is the
    nearest neighbour of ``i`` in set 2 and ``i`` the nearest neighbour of
    ``j`` in set 1 (OpenCV's brute-force matcher with ``crossCheck``; no ratio
    test). Ties go to the lowest index.

    Args:
        descriptors1 (Tensor): ``(N, n1, C)``.
        descriptors2 (Tensor): ``(N, n2, C)``.
        distance (str, optional): ``"l2"`` (Euclidean) or ``"cosine"``
            (``1 - cos``).
            Default: ``"l2"``

    Returns:
        tuple: ``(mutual, nearest, distance)``: ``mutual`` ``(N, n1)`` bool,
        whether cell ``i`` of set 1 has a match; ``nearest`` ``(N, n1)`` long,
        its nearest neighbour in set 2; ``distance`` ``(N, n1)`` the distance
        to it.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
    if descriptors1.dim() != 3 or descriptors2.dim() != 3:
        raise ValueError(
            f"descriptors must be (N, n, C), got {tuple(descriptors1.shape)} and "
            f"{tuple(descriptors2.shape)}"
        )
    if (
        descriptors1.shape[0] != descriptors2.shape[0]
        or descriptors1.shape[2] != descriptors2.shape[2]
    ):
        raise ValueError(
            f"descriptor batches and channels must agree, got {tuple(descriptors1.shape)} and "
            f"{tuple(descriptors2.shape)}"
        )
    n, n1, n2 = descriptors1.shape[0], descriptors1.shape[1], descriptors2.shape[1]
    mutual, nearest, dist = [], [], []
    for rows in batch_slices(n, max(1, _DISTANCE_BUDGET // max(1, n1 * n2))):
        d1, d2 = descriptors1[rows], descriptors2[rows]
        if distance == "l2":
            matrix = torch.cdist(d1, d2)
        else:
            matrix = 1.0 - F.normalize(d1, dim=2) @ F.normalize(d2, dim=2).transpose(1, 2)
        best12 = matrix.argmin(2)
        best21 = matrix.argmin(1)
        mutual.append(best21.gather(1, best12) == torch.arange(n1, device=d1.device))
        nearest.append(best12)
        dist.append(
            _exact_distance(
                d1, d2.gather(1, best12[..., None].expand(-1, -1, d2.shape[2])), distance
            )
        )
    return torch.cat(mutual), torch.cat(nearest), torch.cat(dist)


def _exact_distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    """Distance between corresponding rows (``cdist`` may use a matrix product)."""
    if distance == "l2":
        return (a - b).norm(dim=-1)
    return 1.0 - F.cosine_similarity(a, b, dim=-1)


class PairwiseIntermediateMatching(GradientAttribution):
    r"""PAIR-X (Shrack, Haucke, Salaun, Subramonian, Beery, 2025): which parts of
    two images does a similarity model match, and which pixels make each match?

    For a pair ``(x1, x2)`` and an intermediate ``layer``:

    1. Both images run through the embedder once (one batch), with LRP rules
       (:class:`~captum_similarity.lrp.engine.LRPEngine`); the layer's feature
       maps ``A1``, ``A2`` (``C x h x w``) are recorded.
    2. The similarity is split over the embedding dimensions with its
       per-dimension contributions ``c = contribution(f1, f2)``
       (:meth:`~captum_similarity.Similarity.contribution`, summing to ``s``)
       and ``c`` is propagated from each embedding down to the layer; the
       cell relevance is ``r = |sum_c R|``, one ``h x w`` map per image.
    3. Every cell of ``A1`` is matched to its nearest cell of ``A2`` (the
       channel vectors as descriptors, L2 or cosine distance) and kept when
       the match is mutual.
    4. Matches are ranked by ``r1[cell1] * r2[cell2]``.
    5. For each of the top ``k`` matches, each image's cell activation (all
       channels, zero elsewhere) is propagated from the layer down to the
       pixels: one relevance map per match and image. The layers above are not
       run again; all matches share the one forward pass, and each match's
       backward pass is computed only on its receptive field, all matches at
       once (exact; see
       :meth:`~captum_similarity.lrp.engine.RelevancePass.propagate_each`).

    :meth:`explain` returns everything per pair (:class:`PairMatches`);
    :meth:`attribute` returns, Captum-style, the sum of the top ``k`` per-match
    maps of each image (computed in one backward pass: the propagation is
    linear in its seed).

    Differences from the reference implementation: the seed is the
    similarity's contribution vector (relevance summing to ``s``) rather
    than the cosine's gradient; any backbone the LRP engine supports (BatchNorm
    folding, residual additions, squeeze-excitation, ViT token grids) is
    accepted; pairs are batched, matching runs in torch on the model's device,
    and pairs with different match counts keep all of their matches.

    Args:
        embedder (nn.Module or SiameseSimilarity): Maps images ``(N, C, H, W)``
            to embeddings ``(N, D)``, or a
            :class:`~captum_similarity.SiameseSimilarity` wrapping one.
        layer (nn.Module or str, optional): The layer whose cells are
            matched, or its dotted name (see :func:`candidate_layers`). It must
            run once per forward pass; its output must be a feature map
            ``(N, C, h, w)`` or become one through ``reshape_transform`` (a
            channels-last map ``(N, h, w, C)`` is refused without one). A conv
            followed by BatchNorm reports the BatchNorm's output (LRP folds the
            two): pick a block or stage output. None: chosen on the first call
            by :func:`~captum_similarity.candidates.default_layer` (a stride-16
            stage output, a ViT's penultimate block), with its
            ``reshape_transform`` unless one is given; ``self.layer`` then
            holds it.
            Default: None
        similarity (str, Callable or Similarity, optional): The similarity
            (``"cosine"``, ``"dot"``, ``"euclidean"``, ...), which must define
            per-dimension contributions. Not allowed with a SiameseSimilarity,
            whose similarity is used.
            Default: None (``"cosine"``, the reference's)
        composite (str or Composite, optional): LRP rules, as in
            :class:`~captum_similarity.LRPRelevancePairing`. The passes run
            on ``self.engine`` (:class:`~captum_similarity.lrp.engine.LRPEngine`),
            which on a CPU runs models with grouped (e.g. depthwise)
            convolutions channels-last (same values, faster; set
            ``self.engine.channels_last`` to choose).
            Default: ``"epsilon_plus"`` (the reference's EpsilonPlus: z+ for
            convolutions, epsilon for linear layers)
        rules (Mapping, optional): Extra rules by module name or module.
            Default: None
        reshape_transform (Callable, optional): Turns the layer's output into
            ``(N, C, h, w)``, e.g. ``vit.token_grid`` for a transformer block
            (:class:`~captum_similarity.models.TokenGrid`). It must only move
            and select elements (reshape, transpose, slicing): the seeds of
            step 5 are mapped back through it.
            Default: None
        distance (str, optional): Descriptor distance, ``"l2"`` (the
            reference's) or ``"cosine"``.
            Default: ``"l2"``
        batching (str, optional): How the per-match maps share backward
            passes (:data:`~captum_similarity.lrp.engine.SEED_BATCHING`):
            ``"windowed"``, one backward pass restricted to each match's
            receptive field where the graph allows it, packed dense passes
            otherwise; ``"packed"``, dense passes shared by matches whose
            receptive fields do not overlap, one after another; ``"vmap"``,
            those passes issued as one vmapped backward (``is_grads_batched``);
            ``"each"``, one dense pass per match (the reference
            implementation's way). All give the same maps; their costs are
            measured in ``benchmarks/results/pairx_speed.md``.
            Default: ``"windowed"``

    Example::

        >>> import torch
        >>> from captum_similarity import PairwiseIntermediateMatching
        >>> from captum_similarity.models import ResNetEmbedder
        >>> model = ResNetEmbedder().eval()
        >>> pairx = PairwiseIntermediateMatching(model, "layer2")
        >>> x1, x2 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        >>> result = pairx.explain(x1, x2, k=5)[0]     # the first pair's PairMatches
        >>> result.cells1.shape                        # (M, 2): all M matches, ranked
        >>> result.pixel_relevance1.shape              # (5, 3, 32, 32): top 5 matches
        >>> a1, a2 = pairx.attribute((x1, x2), k=5)   # (2, 3, 32, 32) each
    """

    def __init__(
        self,
        embedder: Union[Embedder, SiameseSimilarity],
        layer: Optional[LayerSpec] = None,
        similarity: Optional[SimilarityLike] = None,
        composite: Union[str, Composite] = "epsilon_plus",
        rules: Optional[Mapping[LayerSpec, RuleLike]] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        distance: str = "l2",
        batching: str = "windowed",
        batched_backward: Optional[bool] = None,
    ) -> None:
        model = as_siamese(embedder, similarity, _METHOD)
        if not isinstance(model.embedder, nn.Module):
            raise TypeError(
                "PAIR-X needs the embedder as an nn.Module (LRP rules live on its layers), got "
                f"{type(model.embedder).__name__}"
            )
        super().__init__(model)
        self.model = model
        self.layer = None if layer is None else resolve_layer(model.embedder, layer)
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(
                f"reshape_transform must be callable, got {type(reshape_transform).__name__}"
            )
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; expected one of {DISTANCES}")
        contract.require_contributions(model.similarity, _METHOD)
        if batched_backward is not None:
            warnings.warn(
                "batched_backward is deprecated; use batching='vmap' (True) or "
                "batching='windowed' (False)",
                DeprecationWarning,
                stacklevel=2,
            )
            batching = "vmap" if batched_backward else "windowed"
        if batching not in SEED_BATCHING:
            raise ValueError(f"batching must be one of {SEED_BATCHING}, got {batching!r}")
        self.reshape_transform = reshape_transform
        self.distance = distance
        self.batching = batching
        self.engine = LRPEngine(model.embedder, composite)
        for key, rule in (rules or {}).items():
            self.engine.set_rule(key, rule)
        #: The :class:`~captum_similarity.lrp.conservation.Conservation` of the
        #: last relevance propagation (to the layer, or of the per-match maps).
        self.conservation: Optional[Conservation] = None
        #: That of the last propagation of the similarity to the layer.
        self.layer_conservation: Optional[Conservation] = None

    @property
    def similarity(self) -> Similarity:
        """The similarity being explained."""
        return self.model.similarity

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @attribution_entry()
    def explain(
        self, x1: Tensor, x2: Tensor, k: int = 10, internal_batch_size: Optional[int] = 4
    ) -> List[PairMatches]:
        r"""Matches, their ranking and the top ``k`` per-match pixel maps, per pair.

        Args:
            x1 (Tensor): First images ``(N, C, H, W)``.
            x2 (Tensor): Second images ``(N, C, H', W')``; either side may have
                batch size 1 (or identical rows) and is then broadcast.
            k (int, optional): Matches per pair explained down to the pixels
                (the best ranked); 0 computes matches and ranking only.
                Default: 10
            internal_batch_size (int, optional): Pairs processed at once, or
                None for all at once; results do not depend on it. The rule
                pass keeps every activation of its batch for the backward
                passes, so large batches are memory-bound and cost more per
                pair than small chunks (measured in
                ``benchmarks/results/pairx_speed.md``).
                Default: 4

        Returns:
            list of :class:`PairMatches`: one per pair; each keeps all of its
            matches (pairs with different match counts do not truncate each
            other).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        x1, x2 = self._images(x1, x2)
        results = []
        for rows in batch_slices(x1.shape[0], internal_batch_size):
            results.extend(self._explain(x1[rows], x2[rows], k))
        return results

    @attribution_entry()
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, Tensor]],
        additional_forward_args: Optional[Any] = None,
        k: int = 10,
        internal_batch_size: Optional[int] = 4,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Input relevance of the top ``k`` matches: the sum of their per-match maps.

        Args:
            inputs (Tensor or tuple of Tensor): ``(x1, x2)``, two batches of
                images ``(N, C, H, W)`` (a batch-1 side is broadcast); or a
                single batch ``x1`` (or a 1-tuple ``(x1,)``) with the other
                images in ``additional_forward_args``.
            additional_forward_args (Tensor or tuple, optional): With a single
                image batch: the second images (batch ``N``, 1 or identical
                rows), as a tensor or a 1-tuple. They must be images: matching
                needs their feature maps. Not accepted with a pair ``inputs``.
                Default: None
            k (int, optional): Matches per pair whose maps are summed.
                Default: 10
            internal_batch_size (int, optional): Pairs processed at once, as
                in :meth:`explain`.
                Default: 4

        Returns:
            *tuple of Tensor* or *Tensor*: ``(A1, A2)``, each shaped like its
            (broadcast) input ``(N, C, H, W)``, for a pair; ``A1`` for a
            tensor input; ``(A1,)`` for a 1-tuple. ``A1[i]`` equals
            ``explain(...)[i].pixel_relevance1.sum(0)``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        images, reference, is_tuple = contract.format_inputs(inputs, additional_forward_args, _METHOD)
        x1, x2 = self._images(*images) if len(images) == 2 else self._images(images[0], reference)
        parts = [
            self._pixel_maps(self._analyse(x1[rows], x2[rows]), k, summed=True)
            for rows in batch_slices(x1.shape[0], internal_batch_size)
        ]
        a1, a2 = (torch.cat(side) for side in zip(*parts))
        return contract.format_output([a1, a2] if len(images) == 2 else [a1], is_tuple)

    # -- internals ---------------------------------------------------------

    def _explain(self, x1: Tensor, x2: Tensor, k: int) -> List[PairMatches]:
        analysis = self._analyse(x1, x2)
        maps = self._pixel_maps(analysis, k, summed=False) if k else None
        results = []
        for p in range(x1.shape[0]):
            top = min(k, int(analysis.counts[p]))
            sides = []
            for side, x in enumerate((x1, x2)):
                if maps is None:
                    sides.append(x.new_zeros((0, *x.shape[1:])))
                else:
                    sides.append(maps[side][:top, p])
            results.append(analysis.pair(p, sides[0], sides[1]))
        return results

    def _images(self, x1: Any, x2: Any) -> Tuple[Tensor, Tensor]:
        x1, x2 = (
            contract.check_images(x, name, _METHOD, self.model, image_dim=4, reference_ok=False)
            for name, x in (("x1", x1), ("x2", x2))
        )
        if x1.shape[1] != x2.shape[1]:
            raise ValueError(
                f"x1 has {x1.shape[1]} channels and x2 has {x2.shape[1]}: both images go "
                "through the same embedder"
            )
        self._choose_layer(x1)
        return contract.broadcast_pair(x1, x2)

    def _grid(self, t: Tensor, image_size: Sequence[int]) -> Tensor:
        return feature_grid(t, self.reshape_transform, "PAIR-X", image_size)

    def _choose_layer(self, example: Tensor) -> None:
        """Resolves ``layer=None`` to the default layer for these images."""
        if self.layer is None:
            embedder, transform = self.model.embedder, self.reshape_transform
            self.layer, self.reshape_transform = default_layer_module(embedder, example, transform)

    def _check(
        self,
        pass_: RelevancePass,
        seeds: Tensor,
        relevance: Tensor,
        what: str,
        source: Optional[LayerSpec] = None,
        target: Optional[LayerSpec] = None,
    ) -> Tensor:
        """Measures the conservation of ``seeds`` ``(K, N, ...)`` propagated to
        ``relevance`` ``(K, N, ...)``, sets :attr:`conservation` and returns the
        relative error of each of the ``K * N`` rows."""
        k, n = seeds.shape[:2]
        flat = seeds.reshape(k * n, -1)
        explained, magnitude = flat.sum(1), flat.abs().sum(1)
        reached = relevance.reshape(k * n, -1).sum(1)

        def diagnose() -> List[LayerLoss]:
            errors = ((explained - reached).abs() / magnitude.clamp_min(1e-30)).nan_to_num(1e30)
            seed, row = divmod(int(errors.argmax()), n)
            image = pass_.input[row : row + 1]
            return self.engine.diagnose(image, seeds[seed, row : row + 1], source, target)

        self.conservation = report(
            explained,
            reached,
            magnitude,
            self.engine.conservation_bound,
            f"{_METHOD}: {what}",
            diagnose,
        )
        return self.conservation.relative_error.to(seeds.dtype)

    def _to_layer(self, seeds: Tensor, like: Tensor) -> Tensor:
        """Grid-shaped seeds ``(B, C, h, w)`` in the layer's own layout: the
        adjoint of ``reshape_transform`` (for a pure rearrangement, the seed
        values put back where they came from)."""
        if self.reshape_transform is None:
            return seeds
        z = like.new_zeros((seeds.shape[0], *like.shape[1:])).requires_grad_(True)
        with torch.enable_grad():
            (raw,) = torch.autograd.grad(self.reshape_transform(z), z, seeds)
        return raw

    def _analyse(self, x1: Tensor, x2: Tensor) -> "_Analysis":
        """Steps 1-4 for a batch of pairs."""
        n = x1.shape[0]
        if x1.shape[1:] == x2.shape[1:] and x1.device == x2.device and x1.dtype == x2.dtype:
            with contract.embedder_call(x1, "x1 and x2"):
                passes = [self.engine.forward(torch.cat([x1, x2]), record=[self.layer])]
            where = [(0, slice(0, n)), (0, slice(n, 2 * n))]
        else:
            passes = [self.engine.forward(x, record=[self.layer]) for x in (x1, x2)]
            where = [(0, slice(0, n)), (1, slice(0, n))]
        embeddings = []
        for (pass_, rows), name in zip(where, ("x1", "x2")):
            f = passes[pass_].output.detach()
            embeddings.append(contract.check_embedding(f, name=f"the embeddings of {name}")[rows])
        f1, f2 = embeddings
        contribution = self.similarity.contribution(f1, f2).detach()
        scores = self.similarity(f1, f2).detach()
        layer_relevance = []
        layer_errors = []
        for p, pass_ in enumerate(passes):
            seed = torch.cat([contribution for i, _ in where if i == p])
            raw = pass_.propagate(seed, target=self.layer)
            layer_errors.append(
                self._check(pass_, seed[None], raw[None], "the similarity", target=self.layer)
            )
            layer_relevance.append(self._grid(raw, pass_.input.shape[-2:]))
        self.layer_conservation = self.conservation
        layer_error = torch.maximum(*(layer_errors[i][rows] for i, rows in where))
        activations = [
            self._grid(p.activation(self.layer).detach(), p.input.shape[-2:]) for p in passes
        ]
        relevance = [layer_relevance[i][rows].sum(1).abs() for i, rows in where]
        acts = [activations[i][rows] for i, rows in where]
        if acts[0].shape[1] != acts[1].shape[1]:
            raise ValueError(
                f"the layer gives {acts[0].shape[1]} channels for x1 and {acts[1].shape[1]} for x2"
            )
        descriptors = [a.flatten(2).transpose(1, 2) for a in acts]
        mutual, nearest, distance = mutual_nearest_neighbours(*descriptors, self.distance)
        r1, r2 = relevance[0].flatten(1), relevance[1].flatten(1)
        match_relevance = r1 * r2.gather(1, nearest)
        ranked = torch.where(mutual, match_relevance, torch.full_like(match_relevance, -1.0))
        order = ranked.argsort(dim=1, descending=True, stable=True)
        return _Analysis(
            passes=passes,
            where=where,
            scores=scores,
            relevance=relevance,
            activations=acts,
            order=order,
            counts=mutual.sum(1),
            nearest=nearest,
            distance=distance,
            match_relevance=match_relevance,
            image_sizes=(tuple(x1.shape[-2:]), tuple(x2.shape[-2:])),
            layer_error=layer_error,
        )

    def _pixel_maps(self, analysis: "_Analysis", k: int, summed: bool) -> Tuple[Tensor, Tensor]:
        """Step 5: ``(k, N, C, H, W)`` per-match maps of each side, or with
        ``summed`` their sums ``(N, C, H, W)`` from one backward pass."""
        n = analysis.order.shape[0]
        k = min(k, int(analysis.counts.max()))  # every pair has at least one match
        rank = torch.arange(k, device=analysis.order.device)
        valid = rank[None, :] < analysis.counts[:, None]  # (N, k)
        cells1 = analysis.order[:, :k]  # (N, k') with k' = min(k, n1)
        cells2 = analysis.nearest.gather(1, cells1)
        masks = []
        for side, cells in enumerate((cells1, cells2)):
            acts = analysis.activations[side]
            h, w = acts.shape[-2:]
            mask = acts.new_zeros((k, n, h * w))
            kk = cells.shape[1]
            hits = valid[:, :kk].T.to(acts.dtype)  # (k', N)
            mask[:kk].scatter_(2, cells.T[..., None], hits[..., None])
            masks.append(mask.reshape(k, n, 1, h, w) * acts[None])  # grid seeds (k, N, C, h, w)
        outputs: List[List[Tensor]] = [[], []]
        errors: List[Tensor] = [torch.zeros(0)] * 2
        for p, pass_ in enumerate(analysis.passes):
            sides = [s for s, (i, _) in enumerate(analysis.where) if i == p]
            grid = torch.cat([masks[s] for s in sides], dim=1)  # (k, rows, C, h, w)
            like = pass_.activation(self.layer)
            if summed:
                seeds = self._to_layer(grid.sum(0), like)
                maps = pass_.propagate(seeds, source=self.layer)[None]
                seeds = seeds[None]
            else:
                seeds = self._to_layer(grid.flatten(0, 1), like).reshape(k, *like.shape)
                maps = pass_.propagate_each(seeds, self.layer, batching=self.batching)
            error = self._check(pass_, seeds, maps, "a match's relevance", source=self.layer)
            error = error.reshape(seeds.shape[:2]).amax(0)  # per image
            for s, part, e in zip(sides, maps.chunk(len(sides), dim=1), error.chunk(len(sides))):
                outputs[s].append(part)
                errors[s] = e
        analysis.pixel_error = torch.maximum(errors[0], errors[1])
        result = tuple(torch.cat(o, dim=1) for o in outputs)
        return (result[0][0], result[1][0]) if summed else (result[0], result[1])


@dataclass
class _Analysis:
    """Steps 1-4 for a batch of pairs (internal)."""

    passes: List[RelevancePass]
    where: List[Tuple[int, slice]]
    scores: Tensor
    relevance: List[Tensor]  # per side (N, h, w)
    activations: List[Tensor]  # per side (N, C, h, w)
    order: Tensor  # (N, n1) cells of image 1, matches first, by decreasing relevance
    counts: Tensor  # (N,) matches per pair
    nearest: Tensor  # (N, n1) nearest cell of image 2
    distance: Tensor  # (N, n1)
    match_relevance: Tensor  # (N, n1)
    image_sizes: Tuple[Tuple[int, ...], Tuple[int, ...]]
    layer_error: Tensor  # (N,) relative conservation error at the layer
    pixel_error: Optional[Tensor] = None  # (N,) of the per-match maps


    def pair(self, p: int, maps1: Tensor, maps2: Tensor) -> PairMatches:
        idx1 = self.order[p, : int(self.counts[p])]
        idx2 = self.nearest[p, idx1]
        grids = [tuple(r.shape[-2:]) for r in self.relevance]
        cells = [_cells(idx, grid[1]) for idx, grid in zip((idx1, idx2), grids)]
        points = [_centres(c, grid, size) for c, grid, size in zip(cells, grids, self.image_sizes)]
        return PairMatches(
            score=float(self.scores[p]),
            layer_relevance1=self.relevance[0][p],
            layer_relevance2=self.relevance[1][p],
            cells1=cells[0],
            cells2=cells[1],
            points1=points[0],
            points2=points[1],
            distance=self.distance[p, idx1],
            relevance=self.match_relevance[p, idx1],
            pixel_relevance1=maps1,
            pixel_relevance2=maps2,
            layer_conservation_error=float(self.layer_error[p]),
            pixel_conservation_error=0.0 if self.pixel_error is None else float(self.pixel_error[p]),
        )


def _cells(flat: Tensor, width: int) -> Tensor:
    return torch.stack((flat // width, flat % width), dim=1)


def _centres(cells: Tensor, grid: Sequence[int], size: Sequence[int]) -> Tensor:
    """``(x, y)`` input coordinates of cell centres."""
    scale_y, scale_x = size[0] / grid[0], size[1] / grid[1]
    rows, cols = cells[:, 0].double(), cells[:, 1].double()
    return torch.stack(((cols + 0.5) * scale_x, (rows + 0.5) * scale_y), dim=1)
