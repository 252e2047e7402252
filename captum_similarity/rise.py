"""SimilarityRISE: randomized input sampling for similarity models (SANE).

A query is multiplied by many random smooth masks; each masked query is scored
against the reference, and a pixel's saliency is the average score of the
masks weighted by how much each mask keeps that pixel (Petsiuk et al. 2018,
for similarity as in Plummer et al., SANE, ECCV 2020).
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Tuple, Union, overload

import torch
import torch.nn.functional as F
from captum.attr import PerturbationAttribution
from torch import Tensor
from tqdm.auto import tqdm

from ._utils.batching import batch_slices
from ._utils.entry import attribution_entry
from ._utils import inputs as contract
from ._utils.inputs import broadcast_baselines, rows_identical
from .siamese import SiameseSimilarity

__all__ = ["SimilarityRISE", "random_masks"]

_METHOD = "SimilarityRISE"

BaselineLike = Union[float, int, Tensor]


class MaskPlan:
    """The random draws behind a set of RISE masks, rendered at any size on demand.

    Drawing the binary grids and the shifts once and rendering batches of masks
    from them makes the masks independent of how they are batched.
    """

    def __init__(
        self,
        n_masks: int,
        cells: Tuple[int, int],
        probability: float,
        generator: torch.Generator,
    ) -> None:
        self.cells = cells
        self.grids = (torch.rand(n_masks, 1, *cells, generator=generator) < probability).float()
        # shifts as fractions of a cell, so that one plan renders at any size
        self.shifts = torch.rand(n_masks, 2, generator=generator)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def render(
        self, index: slice, size: Tuple[int, int], dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Masks ``index`` of the plan at ``size = (H, W)``: ``(B, 1, H, W)`` in [0, 1]."""
        height, width = size
        cell_h, cell_w = math.ceil(height / self.cells[0]), math.ceil(width / self.cells[1])
        grids = self.grids[index].to(device=device, dtype=dtype)
        up = F.interpolate(
            grids,
            size=((self.cells[0] + 1) * cell_h, (self.cells[1] + 1) * cell_w),
            mode="bilinear",
            align_corners=False,
        )
        shifts = self.shifts[index].to(device)
        dy = (shifts[:, 0] * cell_h).long()
        dx = (shifts[:, 1] * cell_w).long()
        rows = (dy[:, None] + torch.arange(height, device=device))[:, :, None]
        cols = (dx[:, None] + torch.arange(width, device=device))[:, None, :]
        batch = torch.arange(up.shape[0], device=device)[:, None, None]
        return up[batch, 0, rows, cols][:, None]


def _cells(mask_cells: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    cells = (mask_cells, mask_cells) if isinstance(mask_cells, int) else tuple(mask_cells)
    if len(cells) != 2 or not all(isinstance(c, int) and c >= 1 for c in cells):
        raise ValueError(f"mask_cells must be a positive int or a pair of them, got {mask_cells!r}")
    return cells  # type: ignore[return-value]


def _check_probability(probability: float) -> None:
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"mask_probability must be in (0, 1], got {probability!r}")


def random_masks(
    n_masks: int,
    size: Tuple[int, int],
    mask_cells: Union[int, Tuple[int, int]] = 6,
    mask_probability: float = 0.5,
    seed: Optional[int] = None,
) -> Tensor:
    r"""RISE masks: random binary grids, upsampled bilinearly and randomly shifted.

    Each mask is a ``cells_h x cells_w`` grid of independent Bernoulli
    (``mask_probability``) cells, upsampled bilinearly to
    ``((cells_h + 1) * ceil(H / cells_h), (cells_w + 1) * ceil(W / cells_w))``
    and cropped to ``(H, W)`` at a random offset smaller than one cell. These
    are exactly the query masks :class:`SimilarityRISE` draws for the same
    seed.

    Args:
        n_masks (int): Number of masks.
        size (tuple of int): ``(H, W)``.
        mask_cells (int or tuple of int, optional): Grid cells per side, or
            ``(cells_h, cells_w)``.
            Default: 6 (:class:`SimilarityRISE`'s default)
        mask_probability (float, optional): Probability that a cell is kept.
            Default: 0.5
        seed (int, optional): Seed of the generator.
            Default: None (a fresh random seed)

    Returns:
        Tensor: masks of shape ``(n_masks, 1, H, W)``, float32 in [0, 1].
    """
    _check_probability(mask_probability)
    plan = MaskPlan(n_masks, _cells(mask_cells), mask_probability, _generator(seed))
    return plan.render(slice(0, n_masks), tuple(size), torch.float32, torch.device("cpu"))


def _generator(seed: Optional[int]) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


#: Batches of masks drawn before ``stop_tolerance`` can stop a map (the
#: standard error is estimated from the spread of the batches' maps).
STOP_MIN_BATCHES = 4


class SimilarityRISE(PerturbationAttribution):
    """RISE saliency of a similarity score, as in SANE (Plummer et al., ECCV 2020).

    For masks ``M_i`` (random low-resolution binary grids, upsampled
    bilinearly with a random shift, see :func:`random_masks`), the query ``x``
    is perturbed to ``x * M_i + b * (1 - M_i)`` (``b``: ``baselines``) and
    scored against the reference: ``s_i = s(x * M_i + b (1 - M_i), r)``. The
    saliency of pixel ``p`` is the score averaged over masks, weighted by how
    much each mask keeps ``p``: ``S(p) = sum_i s_i M_i(p) / sum_i M_i(p)``.

    **Variable reference** (``n_reference_masks = K > 0``): the reference is
    also masked with ``K`` further masks and ``s_i`` is the mean score of the
    masked query against the ``K`` masked references; by linearity this is the
    average of the fixed-reference saliencies over the masked references, as in
    SANE.

    **One query against many references**: when the query has batch size 1
    (or identical rows), its masked versions are embedded once and scored
    against every reference (``Similarity.pairs``); the cost is that of one
    reference plus a matrix product.

    The masks come from a generator seeded with ``seed``; the global random
    state is neither used nor changed. Only forward passes are run, without
    gradients, in eval mode; the model is left as found (see
    ``docs/reliability.md``).

    Args:
        forward_func (SiameseSimilarity or Callable): The similarity model. A
            :class:`~captum_similarity.SiameseSimilarity` embeds each masked
            image once and scores it against all references. Any other
            callable ``forward_func(x1, x2) -> (N,)`` is called once per
            reference (and masked reference) with the reference repeated.

    Attributes:
        masks_used (list of int): Masks drawn for each explained query in
            the last :meth:`attribute` call (all ``n_masks`` unless
            ``stop_tolerance`` stopped it earlier): one entry per query row,
            or one for a query whose rows are identical; for a pair, ``x1``'s
            entries, then ``x2``'s.

    Examples::

        >>> import torch
        >>> from captum_similarity import SiameseSimilarity, SimilarityRISE
        >>> from captum_similarity.models import SimpleCNN
        >>> sim = SiameseSimilarity(SimpleCNN().eval())
        >>> query, references = torch.rand(1, 3, 32, 32), torch.rand(5, 3, 32, 32)
        >>> rise = SimilarityRISE(sim)
        >>> maps = rise.attribute(query, additional_forward_args=(references,),
        ...                       n_masks=500, seed=0)   # (5, 3, 32, 32), one per reference
        >>> m1, m2 = rise.attribute((query, references[:1]), n_masks=500, seed=0)
    """

    def __init__(
        self, forward_func: Union[SiameseSimilarity, Callable[[Tensor, Tensor], Tensor]]
    ) -> None:
        if not callable(forward_func):
            raise TypeError(
                "forward_func must be a SiameseSimilarity or a callable, "
                f"got {type(forward_func).__name__}"
            )
        PerturbationAttribution.__init__(self, forward_func)
        self.masks_used: List[int] = []

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @overload
    def attribute(
        self, inputs: Tensor, additional_forward_args: Any = ..., **kwargs: Any
    ) -> Tensor: ...

    @overload
    def attribute(
        self, inputs: Tuple[Tensor, Tensor], additional_forward_args: Any = ..., **kwargs: Any
    ) -> Tuple[Tensor, Tensor]: ...

    @attribution_entry(gradients=False)
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, Tensor]],
        additional_forward_args: Any = None,
        baselines: Union[BaselineLike, Tuple[BaselineLike, BaselineLike]] = 0.0,
        n_masks: int = 500,
        mask_cells: Union[int, Tuple[int, int]] = 6,
        mask_probability: float = 0.5,
        n_reference_masks: int = 0,
        perturbations_per_eval: int = 100,
        seed: Optional[int] = None,
        show_progress: bool = False,
        stop_tolerance: Optional[float] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        r"""Saliency of the query (or of both images) for the similarity.

        Args:
            inputs (Tensor or tuple of Tensors): Either the queries
                ``(N, C, H, W)`` (or a 1-tuple holding them), explained against
                the reference given in ``additional_forward_args``; or a pair
                ``(x1, x2)`` of
                same-batch images, and then both are explained, each against
                the other unperturbed image: ``x1`` for ``s(., x2)`` and
                ``x2`` for ``s(x1, .)``.
            additional_forward_args (Tensor or tuple, optional): With a single
                batch of queries: the reference, a tensor or a 1-tuple holding it:
                images ``(R, ...)`` or, for a SiameseSimilarity, precomputed
                embeddings ``(R, D)``. ``R`` must equal ``N``, or one of ``N``
                and ``R`` must be 1 (that side is broadcast). With a tuple
                ``inputs`` it must be None.
                Default: None
            baselines (scalar or Tensor, or a tuple of them, optional): The
                value masked-out pixels take: a scalar, or a tensor
                broadcastable to one input ``(1, C, H, W)`` or of the inputs'
                batch size. With tuple inputs, a tuple of one per input. In
                variable-reference mode the masked references are filled with
                the same value (with tuple inputs, the reference side's).
                Default: 0.0
            n_masks (int, optional): Number of masks per query. SANE used
                2000; on dlib's face ResNet 500 masks of 6 x 6 cells were as
                faithful (insertion and deletion) at a quarter of the cost
                (docs/faithfulness.md, "Which method should I use?").
                Default: 500
            mask_cells (int or tuple of int, optional): Grid cells per side of
                a mask, or ``(cells_h, cells_w)``. SANE used 8.
                Default: 6
            mask_probability (float, optional): Probability that a grid cell
                keeps its pixels.
                Default: 0.5 (SANE)
            n_reference_masks (int, optional): ``K``. 0 explains against the
                fixed reference; ``K > 0`` averages over ``K`` masked copies of
                the reference (SANE's "variable reference"; its script uses
                30). Needs references given as images.
                Default: 0
            perturbations_per_eval (int, optional): Masked images per forward
                call.
                Default: 100
            seed (int, optional): Seed of the mask generator (query masks
                are drawn first, then reference masks); the same seed gives
                the same masks and maps.
                Default: None (a fresh random seed)
            show_progress (bool, optional): Show a progress bar over batches.
                Default: False
            stop_tolerance (float, optional): Stop drawing masks for a map
                once it has converged: after each batch of
                ``perturbations_per_eval`` masks (from the
                :data:`STOP_MIN_BATCHES`-th on), the map's standard error,
                estimated from the spread of the batches' own maps
                (``sqrt(var_j(S_j) / J)`` over ``J`` batches), is compared with
                the map's spread about its mean (Frobenius norms, every
                reference of the query), and the query's masks end when
                ``error <= stop_tolerance * spread``. The map is then
                exactly that of the first masks of the ``n_masks`` drawn
                for the seed; the numbers used are in :attr:`masks_used`.
                ``n_masks`` stays the maximum.
                Default: None (all ``n_masks`` masks)

        Returns:
            Tensor or tuple of Tensors: saliency maps with the input's
            channel, height and width, the per-pixel value repeated over
            channels. For a tensor input the batch size is ``max(N, R)``:
            ``(R, C, H, W)`` when one query is explained against ``R``
            references, row ``j`` for reference ``j``; a 1-tuple of it for a
            1-tuple input. For a pair, ``(a1, a2)`` with the shapes of ``x1``
            and ``x2``.

        Raises:
            ValueError: inputs are not ``(N, C, H, W)`` images, batch sizes
                cannot be paired, a tuple input has more than two tensors, a
                reference is missing or doubled, or variable-reference mode is
                asked for with embedding references.
            TypeError: inputs are not floating-point tensors.
        """
        _check_probability(mask_probability)
        cells = _cells(mask_cells)
        for name, value, low in (
            ("n_masks", n_masks, 1),
            ("n_reference_masks", n_reference_masks, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise ValueError(
                f"perturbations_per_eval must be a positive integer, got {perturbations_per_eval!r}"
            )
        if stop_tolerance is not None and not (
            isinstance(stop_tolerance, (int, float)) and 0 <= stop_tolerance < float("inf")
        ):
            raise ValueError(
                f"stop_tolerance must be a non-negative number or None, got {stop_tolerance!r}"
            )
        generator = _generator(seed)
        plan = MaskPlan(n_masks, cells, mask_probability, generator)
        ref_plan = (
            MaskPlan(n_reference_masks, cells, mask_probability, generator)
            if n_reference_masks
            else None
        )
        run = _RiseRun(
            self.forward_func, plan, ref_plan, perturbations_per_eval, show_progress, stop_tolerance
        )
        self.masks_used = run.masks_used
        images, references, is_tuple = contract.format_inputs(inputs, additional_forward_args, _METHOD)
        xs = [
            contract.check_images(x, "inputs" if len(images) == 1 else f"inputs[{i}]", _METHOD, image_dim=4)
            for i, x in enumerate(images)
        ]
        if len(xs) == 2:
            x1, x2 = xs
            if x1.shape[0] != x2.shape[0]:
                raise ValueError(
                    f"x1 and x2 must have the same batch size, got {x1.shape[0]} and {x2.shape[0]}"
                )
            b1, b2 = baselines if isinstance(baselines, tuple) else (baselines, baselines)
            return run.explain(x1, x2, b1, b2, second=False), run.explain(
                x2, x1, b2, b1, second=True
            )
        if isinstance(baselines, tuple):
            if len(baselines) != 1 or not is_tuple:
                raise ValueError("a tuple of baselines needs tuple inputs of the same length")
            (baselines,) = baselines
        saliency = run.explain(xs[0], references, baselines, baselines, second=False)
        return contract.format_output([saliency], is_tuple)


def _converged(current: Tensor, total: Tensor, squares: Tensor, batches: int, tolerance: float) -> bool:
    """Whether the standard error of the maps ``(R, H, W)``, estimated from
    the spread of ``batches`` per-batch maps (their sum ``total`` and sum of
    squares ``squares``), is at most ``tolerance`` times the maps' own spread
    about their mean (Frobenius norms, every reference)."""
    mean = total / batches
    variance = (squares / batches - mean * mean).clamp_min(0) * batches / (batches - 1)
    error = (variance / batches).sqrt().flatten(1).norm(dim=1)
    spread = (current - current.mean(dim=(1, 2), keepdim=True)).flatten(1).norm(dim=1)
    return bool((spread > 0).all()) and bool((error <= tolerance * spread).all())


def _row(t: Tensor, i: int) -> Tensor:
    """Row ``i`` of a batch tensor, or its only row."""
    return t if t.shape[0] == 1 else t[i : i + 1]


class _RiseRun:
    """One ``attribute`` call: masks, scoring and accumulation, shared by both sides."""

    def __init__(
        self,
        forward_func: Callable,
        plan: MaskPlan,
        ref_plan: Optional[MaskPlan],
        perturbations_per_eval: int,
        show_progress: bool,
        stop_tolerance: Optional[float] = None,
    ) -> None:
        self.forward_func = forward_func
        self.stop_tolerance = stop_tolerance
        self.masks_used: List[int] = []  # per explained query, in order
        self.siamese = forward_func if isinstance(forward_func, SiameseSimilarity) else None
        self.plan = plan
        self.ref_plan = ref_plan
        self.per_eval = perturbations_per_eval
        self.show_progress = show_progress

    def explain(
        self,
        queries: Tensor,
        references: Tensor,
        fill: BaselineLike,
        ref_fill: BaselineLike,
        second: bool,
    ) -> Tensor:
        n, r = queries.shape[0], references.shape[0]
        if r not in (1, n) and rows_identical(references):
            references, r = references[:1], 1  # a reference Captum's wrappers repeated
        if n != r and 1 not in (n, r):
            raise ValueError(
                f"cannot pair {n} queries with {r} references: give one reference per "
                "query, one reference, or one query"
            )
        n_out = max(n, r)
        query_fill = broadcast_baselines(fill, queries)
        one_query = rows_identical(queries) and rows_identical(query_fill)
        with torch.no_grad():
            targets = self._targets(references, ref_fill)
            bar = tqdm(
                total=len(self.plan) * (1 if one_query else n_out),
                desc="SimilarityRISE",
                unit="mask",
                disable=not self.show_progress,
            )
            if one_query:
                # the masked copies of the one query are scored against every reference
                maps = self._saliency(queries[:1], _row(query_fill, 0), targets, second, bar)
                maps = maps.expand(n_out, *maps.shape[1:])
            else:
                maps = torch.cat(
                    [
                        self._saliency(
                            queries[i : i + 1], _row(query_fill, i), _row(targets, i), second, bar
                        )
                        for i in range(n_out)
                    ]
                )
            bar.close()
        return maps[:, None].expand(n_out, *queries.shape[1:]).contiguous()

    def _targets(self, references: Tensor, fill: BaselineLike) -> Tensor:
        """What each masked query is scored against: ``(R, K, ...)``, embedded when possible."""
        is_embedding = self.siamese is not None and self.siamese.is_embedding(references)
        if self.ref_plan is None:
            targets = references[:, None]
        elif is_embedding or references.dim() != 4:
            raise ValueError(
                "variable-reference mode (n_reference_masks > 0) masks the reference: "
                f"pass it as images (R, C, H, W), got shape {tuple(references.shape)}"
            )
        else:
            k = len(self.ref_plan)
            masks = self.ref_plan.render(
                slice(0, k), references.shape[-2:], references.dtype, references.device
            )
            ref_fill = broadcast_baselines(fill, references, "baselines of the references")[:, None]
            targets = references[:, None] * masks[None] + ref_fill * (1 - masks[None])
        if self.siamese is not None and not is_embedding:
            flat = self.siamese.embed(targets.flatten(0, 1), batch_size=self.per_eval)
            contract.check_embedding(flat, name="the embeddings of the references")
            targets = flat.reshape(targets.shape[0], targets.shape[1], -1)
        return targets

    def _scores(self, masked: Tensor, targets: Tensor, second: bool) -> Tensor:
        """``(B, R)``: mean score of each masked query against each reference's targets."""
        flat = targets.flatten(0, 1)
        if self.siamese is not None:
            f = self.siamese.embed(masked)
            sim = self.siamese.similarity
            scores = sim.pairs(flat, f).T if second else sim.pairs(f, flat)
        else:
            columns = []
            for t in flat:
                other = t[None].expand(masked.shape[0], *t.shape)
                out = (
                    self.forward_func(other, masked) if second else self.forward_func(masked, other)
                )
                columns.append(out.reshape(masked.shape[0]))
            scores = torch.stack(columns, 1)
        contract.check_finite(scores, "the scores of the masked queries")
        return scores.reshape(masked.shape[0], targets.shape[0], targets.shape[1]).mean(2)

    def _saliency(
        self, query: Tensor, fill: Tensor, targets: Tensor, second: bool, bar: tqdm
    ) -> Tensor:
        size = tuple(query.shape[-2:])
        numerator = query.new_zeros(targets.shape[0], *size)
        coverage = query.new_zeros(size)
        tiny = torch.finfo(query.dtype).tiny
        used, batches, total, squares = 0, 0, 0.0, 0.0
        for index in batch_slices(len(self.plan), self.per_eval):
            masks = self.plan.render(index, size, query.dtype, query.device)
            scores = self._scores(query * masks + fill * (1 - masks), targets, second)
            batch = torch.einsum("br,bhw->rhw", scores, masks[:, 0])
            numerator += batch
            batch_coverage = masks[:, 0].sum(0)
            coverage += batch_coverage
            used += masks.shape[0]
            bar.update(masks.shape[0])
            if self.stop_tolerance is not None:
                # the batch's own map: the spread of these estimates gives the map's standard error
                own = batch / batch_coverage.clamp_min(tiny)
                batches, total, squares = batches + 1, total + own, squares + own * own
                if batches >= STOP_MIN_BATCHES and used < len(self.plan):
                    current = numerator / coverage.clamp_min(tiny)
                    if _converged(current, total, squares, batches, self.stop_tolerance):
                        bar.update(len(self.plan) - used)
                        break
        self.masks_used.append(used)
        # a pixel no mask keeps (only possible with very few masks) gets saliency 0
        return numerator / coverage.clamp_min(tiny)
