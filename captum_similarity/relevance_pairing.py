"""LRPRelevancePairing: LRP relevance of both images for their similarity, and BiLRP."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn

from ._utils.batching import batch_slices
from ._utils.entry import attribution_entry
from ._utils import inputs as contract
from ._utils.inputs import rows_identical
from ._utils.layers import LayerSpec
from ._utils.patches import PatchSize, patch_centers, patch_pair, patch_sums
from .lrp.composites import Composite
from .lrp.conservation import Conservation, LayerLoss, report
from .lrp.engine import LRPEngine, RelevancePass
from .lrp.rules import RuleLike, ZBox
from .siamese import SiameseSimilarity, as_siamese
from .similarity import Similarity, SimilarityLike

__all__ = ["LRPRelevancePairing", "patch_centers"]

_METHOD = "LRPRelevancePairing"

Bound = Union[float, Tensor]


def _distinct(x: Tensor) -> Tuple[Tensor, bool]:
    """``x`` with a batch of identical rows reduced to one row."""
    if x.shape[0] > 1 and rows_identical(x):
        return x[:1], True
    return x, False


class LRPRelevancePairing(GradientAttribution):
    r"""Layer-wise relevance propagation of a similarity ``s(x1, x2)`` onto
    both images, and its second-order form BiLRP (Eberle et al., TPAMI 2020).

    **First order** (:meth:`attribute`). The score is split over the embedding
    dimensions with the similarity's per-dimension contributions
    (:meth:`~captum_similarity.Similarity.contribution`), ``R(f1)_j = R(f2)_j =
    c_j`` with ``sum_j c_j = s``, and each image's embedding relevance is
    propagated to its pixels by the LRP rules of ``composite``. Both images
    therefore receive the whole score: on a bias-free network with LRP-0,
    ``sum R1 = sum R2 = s``. For ``"dot"``, ``c = f1 * f2``; for ``"cosine"``,
    ``c = f1 / |f1| * f2 / |f2|``: the norms are held constant (as LRP holds
    LayerNorm's scale constant), whereas plain gradients through the
    normalisation would give relevance summing to zero.

    **Second order** (:meth:`attribute_pairwise`). For ``s = <phi(x), phi(x')>``
    the relevance of a pair of patches is
    ``R_pp' = sum_m R_p^(m)(x) R_p'^(m)(x')``, where ``R^(m)`` is the LRP
    explanation of embedding dimension ``m`` (seeded with its own value); for
    cosine each factor is divided by the embedding norm. ``R^(m)`` depends on
    one image only, so it is computed once per distinct image (a broadcast
    query in a 1-vs-N comparison costs one image), from one forward pass and
    batched backward passes over the ``D`` dimensions. An optional random
    projection of the embedding to ``K < D`` dimensions (as in the BiLRP paper)
    cuts the cost further.

    **Rules and model support.** Rules come from a
    :class:`~captum_similarity.lrp.composites.Composite` (presets ``"lrp0"``,
    ``"epsilon"``, ``"epsilon_plus"``, ``"gamma"``), overridable per module name
    with ``rules`` or :meth:`set_rule`; these user rules persist across calls.
    BatchNorm is folded into the preceding conv/linear layer, residual
    additions split relevance in proportion to each branch, squeeze-excitation
    gates and attention weights are held constant and LayerNorm's scale too,
    all without writing to the model; see :mod:`captum_similarity.lrp`.
    The embedder runs once per call on each side's distinct images, in eval
    mode, and is left exactly as found. Modules used several times are
    supported.

    Args:
        embedder (nn.Module or SiameseSimilarity): Maps a batch of images
            ``(N, C, H, W)`` (or any input) to embeddings ``(N, D)``. A
            :class:`~captum_similarity.SiameseSimilarity` contributes its
            embedder and similarity.
        similarity (str or Similarity, optional): ``"dot"`` or ``"cosine"``, or
            any :class:`~captum_similarity.Similarity` with per-dimension
            contributions (first order only; BiLRP needs dot or cosine).
            Default: None (the SiameseSimilarity's, else ``"dot"``)
        composite (str or Composite, optional): Rule assignment.
            ``"epsilon_plus"`` (z+ for convolutions, epsilon for linear layers)
            gives readable maps; ``"lrp0"`` conserves exactly on bias-free
            networks; ``"gamma"`` uses gamma decreasing with depth (0.5, 0.25,
            0.1, 0), the BiLRP paper's choice together with ``input_bounds``.
            Default: ``"epsilon_plus"``
        rules (Mapping, optional): Rules by module name (dotted, or a glob
            pattern like ``"blocks.*.act"``) or module object; values are rules
            of :mod:`captum_similarity.lrp.rules` or Captum's rule classes. A
            module's ``rule`` attribute (Captum's convention) is honoured too.
            Default: None
        input_bounds (tuple, optional): ``(low, high)`` pixel bounds, floats or
            tensors broadcastable to the input (e.g. ``(1, C, 1, 1)`` for
            normalised images); the layer reading the input then uses the
            bounded z^B rule.
            Default: None

    Examples::

        >>> import torch
        >>> from captum_similarity import LRPRelevancePairing
        >>> from captum_similarity.models import SimpleCNN
        >>> lrp = LRPRelevancePairing(SimpleCNN(bias=False), "dot", composite="lrp0")
        >>> x1, x2 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        >>> (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
        >>> r1.shape, delta.shape                 # delta ~ 0: both sums equal s
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 2]))
        >>> lrp.attribute_pairwise((x1, x2), patch_size=8).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        embedder: Union[nn.Module, SiameseSimilarity],
        similarity: Optional[SimilarityLike] = None,
        composite: Union[str, Composite] = "epsilon_plus",
        rules: Optional[Mapping[LayerSpec, RuleLike]] = None,
        input_bounds: Optional[Tuple[Bound, Bound]] = None,
    ) -> None:
        model = as_siamese(embedder, similarity, _METHOD)
        contract.require_contributions(model.similarity, _METHOD)
        super().__init__(model)
        self.model = model
        self.engine = LRPEngine(model.embedder, composite)
        #: The :class:`~captum_similarity.lrp.conservation.Conservation` of the
        #: last call (None before the first).
        self.conservation: Optional[Conservation] = None
        for layer, rule in (rules or {}).items():
            self.engine.set_rule(layer, rule)
        if input_bounds is not None:
            if not isinstance(input_bounds, tuple) or len(input_bounds) != 2:
                raise TypeError("input_bounds must be a tuple (low, high)")
            self.engine.composite.input_rule = ZBox(*input_bounds)

    @property
    def similarity(self) -> Similarity:
        """The resolved :class:`~captum_similarity.Similarity`."""
        return self.model.similarity

    @property
    def composite(self) -> Composite:
        """The rule assignment in use (holds the user rules)."""
        return self.engine.composite

    def set_rule(self, layer: LayerSpec, rule: RuleLike) -> None:
        r"""Gives a layer a rule for every later call.

        Args:
            layer (str or nn.Module): A module of the embedder, its dotted
                name, or a glob pattern over names.
            rule (Rule): A rule of :mod:`captum_similarity.lrp.rules` or a
                Captum rule (``EpsilonRule``, ``GammaRule``, ...).
        """
        self.engine.set_rule(layer, rule)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def compute_convergence_delta(
        self, attributions: Union[Tensor, Tuple[Tensor, ...]], output: Tensor
    ) -> Tensor:
        r"""``output - sum R`` per pair (and image): the relevance the rules did
        not conserve, as ``return_convergence_delta`` reports it.

        Args:
            attributions (Tensor or tuple of Tensor): What :meth:`attribute`
                returned: ``R1``, ``(R1,)`` or ``(R1, R2)``.
            output (Tensor): The similarities ``(N,)`` of the pairs.

        Returns:
            Tensor: ``(N,)`` for a tensor or a 1-tuple, ``(N, 2)`` for a pair.
        """
        if isinstance(attributions, Tensor):
            return output.to(attributions.dtype) - _total(attributions)
        totals = torch.stack([_total(r) for r in attributions], dim=1)
        delta = output.to(totals.dtype)[:, None] - totals
        return delta[:, 0] if len(attributions) == 1 else delta

    @attribution_entry()
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, Tensor]],
        additional_forward_args: Optional[Any] = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        r"""Relevance of each image for the similarity of each pair.

        Args:
            inputs (Tensor or tuple of Tensor): ``(x1, x2)``, two batches of
                images; one side may have batch size 1 or identical rows (a
                1-vs-N comparison), it is then broadcast and run only once.
                A single tensor ``x1`` (or a 1-tuple ``(x1,)``) explains only
                ``x1`` against the reference in ``additional_forward_args``.
            additional_forward_args (Tensor or tuple, optional): With a single
                image batch: the reference, an image batch or a precomputed
                embedding ``(N, D)`` / ``(1, D)``, as a tensor or a 1-tuple.
                Not accepted with a pair ``inputs``.
                Default: None
            return_convergence_delta (bool, optional): Also return
                ``s - sum R`` per pair (and image).
                Default: False

        Returns:
            *tuple of Tensor* or *Tensor*, and optionally a *Tensor*:
            - **attributions**: ``(R1, R2)`` shaped like the (broadcast) inputs
                ``(N, ...)`` for a pair; ``R1`` ``(N, ...)`` for a tensor;
                ``(R1,)`` for a 1-tuple.
            - **delta** (with ``return_convergence_delta``): ``(N, 2)``, column
                ``i`` is ``s - R_i.sum()`` of image ``i + 1`` (tuple inputs), or
                ``(N,)`` (tensor input).
        """
        images, reference, is_tuple = contract.format_inputs(inputs, additional_forward_args, _METHOD)
        if len(images) == 1:
            x1 = contract.check_images(images[0], "inputs", _METHOD, self.model)
            x1, reference = contract.broadcast_pair(x1, reference)
            with torch.no_grad():
                f2 = self.model.embed(reference).detach()
            contract.check_embedding(f2, name="the embedding of the reference")
            (r1,), scores = self._first_order((x1,), f2)
            result = contract.format_output([r1], is_tuple)
        else:
            x1, x2 = self._pair(images)
            (r1, r2), scores = self._first_order((x1, x2), None)
            result = (r1, r2)
        if return_convergence_delta:
            return result, self.compute_convergence_delta(result, scores)
        return result

    @attribution_entry()
    def attribute_pairwise(
        self,
        inputs: Tuple[Tensor, Tensor],
        patch_size: PatchSize = 8,
        projection_dim: Optional[int] = None,
        projection_seed: int = 0,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
    ) -> Any:
        r"""BiLRP: relevance of every pair of patches of the two images.

        Args:
            inputs (tuple of Tensor): ``(x1, x2)``, image batches
                ``(N, C, H, W)``; one side may have batch size 1 or identical
                rows (its per-dimension relevance is then computed once).
            patch_size (int or tuple of int, optional): Patch height and
                width; images are cut row by row from the top left, a last
                partial row or column of patches being padded with zeros.
                Default: 8
            projection_dim (int, optional): Project the embedding to this many
                dimensions with a random Gaussian matrix ``P`` (entries of
                variance ``1 / K``), so that ``K`` instead of ``D`` relevance
                maps are computed per image. The result then decomposes the
                projected similarity ``<P f1, P f2>`` (normalised for cosine),
                an unbiased estimate of ``s``.
                Default: None (no projection: exact)
            projection_seed (int, optional): Seed of ``P``.
                Default: 0
            internal_batch_size (int, optional): Relevance maps (one per image
                and embedding dimension) computed per batched backward pass;
                bounds memory and keeps tensors cache-sized.
                Default: None (maps worth about 2**20 input values, e.g. 85
                maps of 3x64x64 images)
            return_convergence_delta (bool, optional): Also return
                ``s - R.sum((1, 2))`` per pair.
                Default: False

        Returns:
            *Tensor* or (*Tensor*, *Tensor*):
            - **relevance** ``(N, P1, P2)``: ``P_i = ceil(H_i / ph) * ceil(W_i / pw)``
                patches of image ``i`` in row-major order (see
                :func:`patch_centers`); row sums are the first image's patch
                relevance, column sums the second's.
            - **delta** ``(N,)`` (with ``return_convergence_delta``).
        """
        if self.similarity.name not in ("dot", "cosine"):
            raise ValueError(
                f"BiLRP decomposes a dot product; similarity {self.similarity.name!r} is not "
                "supported (use 'dot' or 'cosine')"
            )
        images, _, _ = contract.format_inputs(inputs, None, _METHOD)
        if len(images) != 2:
            raise TypeError("attribute_pairwise explains a pair: inputs must be a tuple (x1, x2)")
        x1, x2 = self._pair(images, image_dim=4)
        patch = patch_pair(patch_size)
        n = x1.shape[0]
        (rows1, shared1), (rows2, shared2) = _distinct(x1), _distinct(x2)
        with torch.no_grad():
            width = self.model.embed(rows1[:1]).shape[1]
        projection = _projection(width, rows1, projection_dim, projection_seed)
        budget = internal_batch_size or _budget(rows1)
        maps1, f1 = self._dimension_maps(rows1, projection, patch, budget)
        maps2, f2 = self._dimension_maps(rows2, projection, patch, budget)
        self._check_pairwise([(rows1, maps1, f1), (rows2, maps2, f2)], projection)
        a1, f1 = _per_pair(maps1, f1, shared1, n)
        a2, f2 = _per_pair(maps2, f2, shared2, n)
        if self.similarity.name == "cosine":
            a1 = a1 / _norm(f1)[None, :, None]
            a2 = a2 / _norm(f2)[None, :, None]
        relevance = torch.einsum("knp,knq->npq", a1, a2)
        if return_convergence_delta:
            return relevance, self.similarity(f1, f2) - relevance.sum((1, 2))
        return relevance

    # -- internals ---------------------------------------------------------

    def _pair(
        self, images: Tuple[Tensor, ...], image_dim: Optional[int] = None
    ) -> Tuple[Tensor, Tensor]:
        x1, x2 = (
            contract.check_images(x, f"x{i + 1}", _METHOD, self.model, image_dim=image_dim)
            for i, x in enumerate(images)
        )
        return contract.broadcast_pair(x1, x2)

    def _first_order(
        self, sides: Tuple[Tensor, ...], f2_fixed: Optional[Tensor]
    ) -> Tuple[Tuple[Tensor, ...], Tensor]:
        """Input relevance of each side for its pairs. Each side runs once on its
        distinct rows; a shared row gets one seed per pair in a batched backward.
        Sets :attr:`conservation` (and warns when it exceeds the engine's bound)."""
        n = sides[0].shape[0]
        passes = []
        embeddings = []
        for x in sides:
            rows, shared = _distinct(x)
            with contract.embedder_call(x, "the input"):
                p = self.engine.forward(rows)
            contract.check_embedding(p.output, name="the embeddings")
            passes.append((p, shared))
            embeddings.append(p.output.detach().expand(n, -1) if shared else p.output.detach())
        if f2_fixed is not None:
            embeddings.append(f2_fixed.expand(n, -1))
        f1, f2 = embeddings
        contributions = self.similarity.contribution(f1, f2).detach()
        relevance = []
        for p, shared in passes:
            if shared:
                relevance.append(_batched(p, contributions[:, None, :], _budget(p.input))[:, 0])
            else:
                relevance.append(p.propagate(contributions))
        scores = self.similarity(f1, f2).detach()
        self._check(passes, contributions, scores, relevance)
        return tuple(relevance), scores

    def _check(
        self,
        passes: List[Tuple[RelevancePass, bool]],
        contributions: Tensor,
        scores: Tensor,
        relevance: List[Tensor],
    ) -> None:
        """Measures the first-order conservation of both sides (rows side by side)."""
        reached = torch.stack([_total(r) for r in relevance])  # (sides, N)
        explained = contributions.sum(1).expand_as(reached)
        magnitude = contributions.abs().sum(1).expand_as(reached)

        def diagnose() -> List[LayerLoss]:
            errors = ((explained - reached).abs() / magnitude.clamp_min(1e-30)).nan_to_num(1e30)
            side, row = divmod(int(errors.argmax()), errors.shape[1])
            p, shared = passes[side]
            image = p.input[:1] if shared else p.input[row : row + 1]
            return self.engine.diagnose(image, contributions[row : row + 1])

        self.conservation = report(
            explained.flatten(),
            reached.flatten(),
            magnitude.flatten(),
            self.engine.conservation_bound,
            f"{_METHOD}: the similarity",
            diagnose,
        )

    def _check_pairwise(
        self, sides: List[Tuple[Tensor, Tensor, Tensor]], projection: Tensor
    ) -> None:
        """Measures the conservation of every (projected) dimension's map of
        every distinct image: rows ``(side, dimension, image)``."""
        explained, reached, magnitude, where = [], [], [], []
        for side, (rows, maps, f) in enumerate(sides):
            seeds = f[None] * projection[:, None, :]  # (K, B, D)
            explained.append(seeds.sum(2).flatten())
            magnitude.append(seeds.abs().sum(2).flatten())
            reached.append(maps.sum(2).flatten())
            k, b = seeds.shape[:2]
            where.extend((side, i // b, i % b) for i in range(k * b))
        explained_t, reached_t, magnitude_t = (torch.cat(t) for t in (explained, reached, magnitude))

        def diagnose() -> List[LayerLoss]:
            errors = (explained_t - reached_t).abs() / magnitude_t.clamp_min(1e-30)
            side, k, b = where[int(errors.nan_to_num(1e30).argmax())]
            rows, _, f = sides[side]
            return self.engine.diagnose(rows[b : b + 1], (f[b] * projection[k])[None])

        self.conservation = report(
            explained_t,
            reached_t,
            magnitude_t,
            self.engine.conservation_bound,
            f"{_METHOD}.attribute_pairwise: an embedding dimension's relevance",
            diagnose,
        )

    def _dimension_maps(
        self, x: Tensor, projection: Tensor, patch: Tuple[int, int], budget: int
    ) -> Tuple[Tensor, Tensor]:
        """``(K, B, P)`` patch relevance of each (projected) embedding dimension,
        seeded with its own value, for the ``B`` images ``x``, and their
        embeddings ``(B, D)``. Images go through in groups so that each
        batched backward computes about ``budget`` maps."""
        maps: List[Tensor] = []
        embeddings: List[Tensor] = []
        for rows in batch_slices(len(x), max(1, budget // projection.shape[0])):
            p = self.engine.forward(x[rows])
            contract.check_embedding(p.output, name="the embeddings")
            f = p.output.detach()
            relevance = _batched(p, f[None] * projection[:, None, :], budget, per_seed=len(f))
            maps.append(patch_sums(relevance.sum(2), patch))
            embeddings.append(f)
        return torch.cat(maps, dim=1), torch.cat(embeddings)


def _budget(x: Tensor) -> int:
    """Relevance maps per batched backward: about 2**20 input values, which keeps
    the batched backward's tensors cache-sized (larger batches run slower per map
    on a CPU) and bounds memory."""
    return max(1, _MAP_BUDGET // max(1, x[0].numel()))


_MAP_BUDGET = 2**20


def _batched(p: RelevancePass, seeds: Tensor, budget: int, per_seed: int = 1) -> Tensor:
    """``p.propagate(seeds, batching="vmap")`` in chunks of about ``budget`` maps."""
    chunk = max(1, budget // per_seed)
    return torch.cat(
        [p.propagate(seeds[s], batching="vmap") for s in batch_slices(len(seeds), chunk)]
    )


def _per_pair(maps: Tensor, f: Tensor, shared: bool, n: int) -> Tuple[Tensor, Tensor]:
    if shared:
        return maps.expand(-1, n, -1), f.expand(n, -1)
    return maps, f


def _total(r: Tensor) -> Tensor:
    return r.reshape(r.shape[0], -1).sum(1)


def _norm(f: Tensor) -> Tensor:
    return f.norm(dim=1).clamp_min(torch.finfo(f.dtype).tiny)


def _projection(width: int, like: Tensor, dim: Optional[int], seed: int) -> Tensor:
    """``(K, width)`` Gaussian projection with entries of variance ``1 / K``, or the
    identity when ``dim`` is None."""
    if dim is None:
        return torch.eye(width, dtype=like.dtype, device=like.device)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"projection_dim must be a positive integer or None, got {dim!r}")
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randn(dim, width, generator=g, dtype=torch.float64) / dim**0.5).to(like)
