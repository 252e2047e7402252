"""Exact point-to-point decomposition of a similarity (Stylianou et al. 2019;
Zhu et al. 2019) for embedders that end in global pooling and a linear map."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import torch
from captum.attr import LayerAttribution
from torch import Tensor, nn

from ._utils.entry import attribution_entry
from ._utils.hooks import recording
from ._utils import inputs as contract
from ._utils.layers import LayerSpec, resolve_layer
from .siamese import Embedder, SiameseSimilarity, as_siamese
from .similarity import COSINE_EPS, SimilarityLike

__all__ = ["SimilarityDecomposition"]

_METHOD = "SimilarityDecomposition"

POOLINGS = ("avg", "max")

Decomposition = Union[Tensor, Tuple[Tensor, ...], Tuple[Any, ...]]


class SimilarityDecomposition(LayerAttribution):
    r"""Splits a similarity exactly over pairs of cells of the two feature maps.

    Stylianou, Souvenir and Pless, *Visualizing Deep Similarity Networks*
    (2019); Zhu, Yang and Chen, *Visual Explanation for Deep Metric Learning*
    (2019). For an embedder that ends in global pooling of the layer's
    feature map ``A`` (``C x h x w``, cells ``a_i``, ``n = h w``) followed by
    a linear projection ``f = W pool(A) + b`` (or the identity), the
    embedding is a sum of per-cell embeddings ``f = sum_i u_i``:

    - average pooling: ``u_i = (W a_i + b) / n``;
    - max pooling: each channel ``k`` is credited to its argmax cell, ``u_i =
      W a~_i + b / n`` with ``a~_i^k = A^k_i`` if ``i`` is channel ``k``'s
      (first) argmax, else 0.

    The bias ``b`` is spread evenly over the cells, ``b / n`` each, so that
    the cells' embeddings sum to ``f`` exactly. The dot product is bilinear,
    so ``s = <f1, f2> = sum_{i,j} P_ij`` with

    .. math::

        P_{ij} = \langle u^1_i, u^2_j \rangle \quad \text{(dot)}, \qquad
        P_{ij} = \frac{\langle u^1_i, u^2_j \rangle}{\lVert f_1\rVert \lVert f_2\rVert}
        \quad \text{(cosine)} .

    ``P_ij`` says how much cell ``i`` of image 1 and cell ``j`` of image 2
    contribute together: point-to-point correspondences. Its row sums (the
    map of image 1) and column sums (image 2) are the marginal maps. With
    ``include_bias=False`` the bias is left out of the cells (``u_i = W a_i /
    n`` or ``W a~_i``), and the part of ``s`` due to the bias, ``<b, f2> +
    <f1, b> - <b, b>`` (divided by the norms for cosine), is what
    ``return_convergence_delta`` reports.

    On a bias-free GAP + linear + dot model the marginals equal the
    un-ReLU'd maps of :class:`~captum_similarity.EmbeddingGradCAM` with
    ``weighting="similarity"`` (factor 1 with this normalisation).

    The structure is checked on every call: the pooled and projected layer
    tensor must reproduce the embedder's output, else a ``ValueError`` says
    the embedder cannot be decomposed at this layer.

    Args:
        embedder (nn.Module or SiameseSimilarity): The embedder, or a
            :class:`~captum_similarity.SiameseSimilarity` wrapping one.
        layer (nn.Module or str): The layer whose output (or input, see
            ``attribute_to_layer_input``) is globally pooled, ``(N, C, h, w)``.
        similarity (str, optional): ``"dot"`` or ``"cosine"``. Not allowed
            when ``embedder`` is a SiameseSimilarity (its similarity is used,
            and must be one of these).
            Default: None (``"dot"``)
        pooling (str, optional): ``"avg"`` or ``"max"``.
            Default: None (found by checking which reproduces the embedding)
        projection (nn.Module, str, optional): The ``nn.Linear`` after the
            pooling (module or dotted name), or ``"identity"``.
            Default: None (found among the embedder's ``nn.Linear`` modules
            of matching shape, and the identity)

    Example::

        >>> from captum_similarity import SimilarityDecomposition
        >>> from captum_similarity.models import SimpleCNN
        >>> model = SimpleCNN().eval()
        >>> dec = SimilarityDecomposition(model, model.features[-1], "cosine")
        >>> P, (m1, m2) = dec.attribute((x1, x2), return_marginals=True)
        >>> P.shape, m1.shape                      # (N, 64, 64), (N, 1, 8, 8)
        >>> where = dec.point_matches((x1, x2), point=(3, 4))   # (N, 1, 8, 8)
    """

    def __init__(
        self,
        embedder: Union[Embedder, SiameseSimilarity],
        layer: LayerSpec,
        similarity: Optional[SimilarityLike] = None,
        pooling: Optional[str] = None,
        projection: Union[None, str, nn.Module] = None,
    ) -> None:
        model = as_siamese(embedder, similarity, _METHOD)
        if model.similarity.name not in ("dot", "cosine"):
            raise ValueError(
                f"the decomposition needs the 'dot' or 'cosine' similarity, got "
                f"{model.similarity.name!r}: other similarities are not bilinear"
            )
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be 'avg', 'max' or None, got {pooling!r}")
        resolved = resolve_layer(model.embedder, layer)
        super().__init__(model, resolved)
        self.model = model
        self.pooling = pooling
        if projection is None or projection == "identity":
            self.projection: Union[None, str, nn.Module] = projection
        else:
            proj = resolve_layer(model.embedder, projection)
            if not isinstance(proj, nn.Linear):
                raise TypeError(
                    f"projection must be an nn.Linear or 'identity', got {type(proj).__name__}"
                )
            self.projection = proj

    def has_convergence_delta(self) -> bool:
        return True

    def compute_convergence_delta(self, attributions: Tensor, output: Tensor) -> Tensor:
        r"""``output - attributions.sum((1, 2))``: what the matrix misses of the score.

        Args:
            attributions (Tensor): A matrix ``(N, n1, n2)`` from :meth:`attribute`
                (or a 1-tuple holding one).
            output (Tensor): The similarities ``(N,)`` of the pairs.

        Returns:
            Tensor: ``(N,)``.
        """
        if isinstance(attributions, tuple):
            (attributions,) = attributions
        return output.to(attributions.dtype) - attributions.sum((1, 2))

    @attribution_entry(gradients=False)
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Optional[Any] = None,
        attribute_to_layer_input: bool = False,
        include_bias: bool = True,
        return_marginals: bool = False,
        return_convergence_delta: bool = False,
    ) -> Decomposition:
        r"""The point-to-point matrix of each pair.

        Args:
            inputs (Tensor or tuple of Tensor): ``(x1, x2)``, image batches
                ``(N, C, H, W)`` (a batch-1 or identical-rows side is
                broadcast); or ``x1`` (or a 1-tuple ``(x1,)``) with ``x2`` in
                ``additional_forward_args``.
            additional_forward_args (Tensor or tuple, optional): With a single
                image batch: the second images (batch ``N``, 1 or identical
                rows), as a tensor or a 1-tuple. They must be images: the
                decomposition needs their feature maps. Not accepted with a
                pair ``inputs``.
                Default: None
            attribute_to_layer_input (bool, optional): Decompose at the
                layer's input instead of its output.
                Default: False
            include_bias (bool, optional): Spread the projection's bias over
                the cells (the matrix then sums to the similarity). When
                False, the bias terms are left out of the matrix and make up
                the convergence delta.
                Default: True
            return_marginals (bool, optional): Also return the marginal maps.
                Default: False
            return_convergence_delta (bool, optional): Also return ``s -
                P.sum((1, 2))`` per pair: rounding error with
                ``include_bias=True``, the bias terms otherwise.
                Default: False

        Returns:
            The matrix, then the marginals, then the delta, each only when asked for:

            - **matrix** (*Tensor*, or a 1-tuple of it for a 1-tuple input):
                ``(N, h1 * w1, h2 * w2)``, cells in row-major order;
                ``matrix.sum((1, 2))`` is the similarity.
            - **marginals** (with ``return_marginals``): ``(M1, M2)`` for a
                pair, ``(N, 1, h1, w1)`` and ``(N, 1, h2, w2)``, the row and
                column sums of the matrix; ``M1`` for a tensor input, ``(M1,)``
                for a 1-tuple.
            - **delta** (*Tensor*, with ``return_convergence_delta``): ``(N,)``.
        """
        images, reference, is_tuple = contract.format_inputs(
            inputs, additional_forward_args, _METHOD
        )
        pair = tuple(images) if len(images) == 2 else (images[0], reference)
        matrix, f1, f2, grids = self._decompose(pair, attribute_to_layer_input, include_bias)
        single = len(images) == 1
        out: List[object] = [(matrix,) if single and is_tuple else matrix]
        if return_marginals:
            n = matrix.shape[0]
            marginals = [matrix.sum(2).view(n, 1, *grids[0]), matrix.sum(1).view(n, 1, *grids[1])]
            out.append(contract.format_output(marginals[:1] if single else marginals, is_tuple))
        if return_convergence_delta:
            out.append(self.model.similarity(f1, f2) - matrix.sum((1, 2)))
        return out[0] if len(out) == 1 else tuple(out)  # type: ignore[return-value]

    @attribution_entry(gradients=False)
    def point_matches(
        self,
        inputs: Tuple[Tensor, Tensor],
        point: Tuple[int, int],
        attribute_to_layer_input: bool = False,
        include_bias: bool = True,
    ) -> Tensor:
        r"""Where one cell of image 1 matches in image 2.

        Args:
            inputs (tuple of Tensor): ``(x1, x2)`` as in :meth:`attribute`.
            point (tuple of int): ``(row, column)`` of the cell of image 1 in
                the layer's ``h1 x w1`` grid (an input pixel ``(y, x)`` lies
                in cell ``(y * h1 // H, x * w1 // W)``).
            attribute_to_layer_input (bool, optional): As in :meth:`attribute`.
                Default: False
            include_bias (bool, optional): As in :meth:`attribute`.
                Default: True

        Returns:
            Tensor: ``(N, 1, h2, w2)``, the row of the matrix for that cell:
            its contribution together with each cell of image 2.
        """
        matrix, _, _, ((h1, w1), (h2, w2)) = self._decompose(
            inputs, attribute_to_layer_input, include_bias
        )
        row, col = point
        if not (0 <= row < h1 and 0 <= col < w1):
            raise ValueError(f"point {tuple(point)} is outside the layer's {h1}x{w1} grid")
        return matrix[:, row * w1 + col].view(-1, 1, h2, w2)

    def _decompose(
        self, inputs: Tuple[Tensor, Tensor], to_input: bool, include_bias: bool
    ) -> Tuple[Tensor, Tensor, Tensor, List[Tuple[int, int]]]:
        """The matrix, both embeddings and both grid sizes."""
        if not isinstance(inputs, tuple) or len(inputs) != 2:
            raise TypeError("inputs must be a tuple (x1, x2) of image batches")
        x1, x2 = (
            contract.check_images(x, name, _METHOD, self.model, reference_ok=False)
            for name, x in zip(("x1", "x2"), inputs)
        )
        x1, x2 = contract.broadcast_pair(x1, x2)
        with recording(self.layer, to_input) as rec:
            f1, f2 = self.model.embed_pair(x1, x2)
        for name, f in (("x1", f1), ("x2", f2)):
            contract.check_embedding(f, name=f"the embeddings of {name}")
        maps = rec.tensors
        if len(maps) == 1 and maps[0].shape[0] == 2 * f1.shape[0]:
            maps = [maps[0][0::2], maps[0][1::2]]
        if len(maps) != 2 or any(a.dim() != 4 for a in maps):
            raise ValueError(
                f"the layer must run once per image with a (N, C, h, w) output; it ran "
                f"{len(rec.tensors)} time(s) with shapes {[tuple(a.shape) for a in rec.tensors]}"
            )
        weight, bias, pooling = self._structure(maps, (f1, f2))
        cells = []
        for a in maps:
            n = a.shape[2] * a.shape[3]
            flat = a.flatten(2)  # (N, C, n)
            if pooling == "max":
                top = flat.argmax(2, keepdim=True)
                flat = torch.zeros_like(flat).scatter(2, top, flat.gather(2, top))
                u = flat.transpose(1, 2) @ weight.T
            else:
                u = flat.transpose(1, 2) @ weight.T / n
            cells.append(u + bias / n if include_bias else u)
        matrix = cells[0] @ cells[1].transpose(1, 2)
        if self.model.similarity.name == "cosine":
            norms = f1.norm(dim=1).clamp_min(COSINE_EPS) * f2.norm(dim=1).clamp_min(COSINE_EPS)
            matrix = matrix / norms[:, None, None]
        return matrix, f1, f2, [(a.shape[2], a.shape[3]) for a in maps]

    def _structure(
        self, maps: List[Tensor], embeddings: Tuple[Tensor, Tensor]
    ) -> Tuple[Tensor, Tensor, str]:
        """``(W, b, pooling)`` that reproduce the embeddings from the layer's tensors."""
        channels, dim = maps[0].shape[1], embeddings[0].shape[1]
        if isinstance(self.projection, nn.Linear) or self.projection == "identity":
            candidates: List[Union[str, nn.Linear]] = [self.projection]
        else:
            candidates = [
                m for m in self.model.embedder.modules()
                if isinstance(m, nn.Linear) and m.in_features == channels and m.out_features == dim
            ] + (["identity"] if channels == dim else [])
        poolings = [self.pooling] if self.pooling is not None else list(POOLINGS)
        for candidate in candidates:
            if isinstance(candidate, nn.Linear):
                weight = candidate.weight.detach().to(maps[0])
                bias = (
                    torch.zeros_like(weight[:, 0]) if candidate.bias is None
                    else candidate.bias.detach().to(maps[0])
                )
            else:
                weight = torch.eye(channels).to(maps[0])
                bias = torch.zeros_like(weight[:, 0])
            for pooling in poolings:
                if all(_reproduces(a, f, weight, bias, pooling) for a, f in zip(maps, embeddings)):
                    return weight, bias, pooling
        raise ValueError(
            f"cannot decompose: the {dim}-dimensional embedding is not a linear (or identity) "
            f"projection of the {'/'.join(poolings)}-pooled {channels}-channel layer tensor "
            f"(tried {len(candidates)} projection(s)); the decomposition needs the layer that "
            "is globally pooled right before a linear or identity head"
        )


def _reproduces(a: Tensor, f: Tensor, weight: Tensor, bias: Tensor, pooling: str) -> bool:
    pooled = a.mean((2, 3)) if pooling == "avg" else a.amax((2, 3))
    recon = pooled @ weight.T + bias
    tol = torch.finfo(f.dtype).eps ** 0.5 * (1 + float(f.abs().max()))
    return recon.shape == f.shape and bool((recon - f).abs().max() <= tol)
