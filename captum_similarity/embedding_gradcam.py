"""Embedding Grad-CAM (Zheng et al. 2020): Grad-CAM for similarity models."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution, LayerAttribution
from torch import Tensor

from ._utils.batching import batch_slices
from ._utils.entry import attribution_entry
from ._utils.hooks import recording
from ._utils import inputs as contract
from ._utils.inputs import check_float_tensor
from ._utils.layers import LayerSpec, feature_grid, resolve_layer
from .candidates import default_layer_module
from .siamese import Embedder, SiameseSimilarity, as_siamese
from .similarity import Similarity, SimilarityLike

__all__ = ["EmbeddingGradCAM", "WEIGHTINGS"]

_METHOD = "EmbeddingGradCAM"

#: The weightings :meth:`EmbeddingGradCAM.attribute` accepts.
WEIGHTINGS = ("pair", "similarity", "triplet")

Weights = Tuple[Tensor, ...]


class EmbeddingGradCAM(LayerAttribution, GradientAttribution):
    r"""Grad-CAM for similarity models, from the embeddings alone.

    Zheng, Karanam, Chen, Radke and Wu, *Towards Visually Explaining
    Similarity Models* (2020; earlier *Learning Similarity Attention*,
    2019). A similarity model has no class logit; the explained scalar of
    each image is built from the embeddings instead. With ``A`` the layer's
    feature map of an image (``C x h x w``, ``n = h w`` cells), ``f`` its
    embedding and ``S`` the explained scalar, the map is Grad-CAM's

    .. math::

        \alpha_k = \frac{1}{n} \sum_{cells} \frac{\partial S}{\partial A^k},
        \qquad M = \sum_k \alpha_k A^k .

    Each weighting defines ``S`` through ``g = dS/df``, the gradient of the
    explained scalar with respect to the image's own embedding
    (``alpha = (1/n) sum_cells (df/dA)^T g`` by the chain rule):

    - ``"pair"`` (the paper's pair weighting; the default in single-image
      mode): the weight vector
      ``w = c(f1, f2)`` is the per-dimension contribution to the similarity
      (:meth:`Similarity.contribution`: ``f1 * f2`` for the dot product,
      ``f1/|f1| * f2/|f2|`` for cosine), held fixed; each image's sample
      score is ``S_i = <w, f_i>``, so ``g1 = g2 = w``. Dimensions on which
      both embeddings are large drive both maps. This also avoids the
      zero-sum pitfall of the cosine similarity on globally average-pooled
      features of the explained layer: there the gradient of the cosine is
      orthogonal to ``f`` and the un-ReLU'd ``"similarity"`` map sums to
      zero, while the pair map sums to ``<w, f>``.
    - ``"similarity"`` (the default for pairs, references and galleries, the
      most faithful weighting on the benchmark runner:
      ``benchmarks/results/gradcam_weighting.md``): ``S_1 = s(f1, f2)`` with ``f2`` held fixed and
      ``S_2 = s(f1, f2)`` with ``f1`` held fixed: plain Grad-CAM of the
      similarity for each image, equal to Captum's ``LayerGradCam`` run on
      each branch with the other embedding fixed. On a GAP + linear + dot
      model its un-ReLU'd maps equal the exact decomposition's marginals
      (:class:`~captum_similarity.SimilarityDecomposition`).
    - ``"triplet"`` (anchor, positive, negative; the paper's triplet
      weighting as read by a third party, the paper's own text was not
      available): with L2-normalised embeddings ``a, p, q`` (anchor,
      positive, negative), ``w = (1 - |a - p|) * |a - q|`` element-wise,
      held fixed; each image's sample score is ``S_i = <w, f_i>``, so
      ``g = w`` for all three. Dimensions on which the anchor agrees with the
      positive and differs from the negative drive the three maps.

    Both images of a pair (or the three of a triplet) are embedded in one
    forward pass of the shared embedder (rows interleaved, as
    :class:`~captum_similarity.SiameseSimilarity` does) and all maps come
    from one backward pass from the embeddings to the layer. The model runs
    in eval mode, so rows are independent (its training flags are restored
    after the call; see ``docs/reliability.md`` for this and the other
    guarantees every method gives: one call at a time per model, autograd
    under ``torch.no_grad()`` and ``torch.inference_mode()``, non-finite
    inputs refused).

    Args:
        embedder (nn.Module, Callable or SiameseSimilarity): Maps images
            ``(N, C, H, W)`` to embeddings ``(N, D)``, or a
            :class:`~captum_similarity.SiameseSimilarity` wrapping one.
        layer (nn.Module or str, optional): The explained layer inside the
            embedder, or its dotted name (``"layer3"``, ``"features.5"``). Its
            output (or input, see ``attribute_to_layer_input``) must be a
            feature map ``(N, C, h, w)``, or become one through
            ``reshape_transform`` (a channels-last map ``(N, h, w, C)`` is
            refused without one). None: chosen on the first call by
            :func:`~captum_similarity.candidates.default_layer`, with its
            ``reshape_transform`` unless one is given; ``self.layer`` then
            holds it.
            Default: None
        similarity (str, Callable or Similarity, optional): The similarity
            (``"cosine"``, ``"dot"``, ``"euclidean"``,
            ``"squared_euclidean"``, or see
            :func:`~captum_similarity.resolve_similarity`). Not allowed when
            ``embedder`` is a SiameseSimilarity, whose similarity is used.
            Default: None (``"cosine"``)
        reshape_transform (Callable, optional): Turns the layer's tensor into
            a feature map ``(N, C, h, w)``; applied to the activations and to
            their gradients. For transformer blocks pass
            :class:`~captum_similarity.models.TokenGrid` (e.g.
            ``vit.token_grid``).
            Default: None
        device_ids (list of int, optional): As in Captum's layer methods;
            unused (the layer must run in this process).
            Default: None

    Example::

        >>> from captum_similarity import EmbeddingGradCAM
        >>> from captum_similarity.models import ResNetEmbedder
        >>> model = ResNetEmbedder().eval()
        >>> cam = EmbeddingGradCAM(model, model.layer3, similarity="cosine")
        >>> m1, m2 = cam.attribute((x1, x2), relu_attributions=True)
        >>> m1.shape                                   # (N, 1, 8, 8) for 32x32 inputs
        >>> up1 = LayerAttribution.interpolate(m1, x1.shape[-2:], "bilinear")
        >>> q_maps, g_maps = cam.attribute_gallery(query, gallery)   # (G, 1, 8, 8) each
    """

    def __init__(
        self,
        embedder: Union[Embedder, SiameseSimilarity],
        layer: Optional[LayerSpec] = None,
        similarity: Optional[SimilarityLike] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        device_ids: Optional[List[int]] = None,
    ) -> None:
        model = as_siamese(embedder, similarity, "EmbeddingGradCAM")
        resolved = None if layer is None else resolve_layer(model.embedder, layer)
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError(
                f"reshape_transform must be callable, got {type(reshape_transform).__name__}"
            )
        LayerAttribution.__init__(self, model, resolved, device_ids)
        GradientAttribution.__init__(self, model)
        self.model = model
        self.reshape_transform = reshape_transform

    @property
    def similarity(self) -> Similarity:
        """The similarity the maps explain."""
        return self.model.similarity

    @attribution_entry()
    def attribute(  # type: ignore[override]
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        additional_forward_args: Optional[Any] = None,
        weighting: Optional[str] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""Maps of each image at the layer's resolution.

        Args:
            inputs (Tensor or tuple of Tensor): What to explain:

                - ``(x1, x2)``: a pair of image batches; returns ``(M1, M2)``.
                  A batch-1 (or identical-rows) side is broadcast.
                - ``(anchors, positives, negatives)`` with
                  ``weighting="triplet"``: returns ``(Ma, Mp, Mn)``.
                - ``x``: one image batch ``(N, C, H, W)``; returns ``M``.
                  With a reference in ``additional_forward_args`` the pair
                  ``(x, reference)`` is explained on ``x``'s side, with the
                  reference's embedding fixed (as ``M1`` of the pair). With
                  no reference (single-image mode) the image is its own
                  reference: ``"pair"`` weighting with ``w = c(f, f)``
                  explains the embedding itself.
                - ``(x,)``: as ``x``; returns ``(M,)``.
            additional_forward_args (Tensor or tuple, optional): Only with a
                single image batch: the reference, an image batch or a
                precomputed embedding ``(N, D)``, as a tensor or a 1-tuple.
                Its batch is ``N``, 1 or ``N`` identical rows (broadcast), or
                ``R`` references for a batch-1 query (one map per reference).
                Default: None
            weighting (str, optional): ``"pair"``, ``"similarity"`` or
                ``"triplet"`` (see the class docstring for the formulas).
                None picks ``"similarity"`` when there is a reference (the
                most faithful on the benchmark runner) and ``"pair"`` in
                single-image mode (where the similarity of an image with
                itself is constant).
                Default: None
            attribute_to_layer_input (bool, optional): Explain the layer's
                input instead of its output.
                Default: False
            relu_attributions (bool, optional): Apply a ReLU to the maps, as
                the original Grad-CAM does.
                Default: False
            grad_kwargs (dict, optional): Keyword arguments of the backward
                pass (``torch.autograd.grad``); ``{"create_graph": True}``
                makes the maps differentiable, for training losses such as
                :class:`~captum_similarity.training.SimilarityAttentionLoss`.
                Default: None

        Returns:
            Tensor or tuple of Tensor: one map ``(N, 1, h, w)`` per explained
            image batch, ``h x w`` being the (reshaped) layer's spatial size;
            a tensor for a tensor input, a tuple for a tuple input. Upsample
            with ``LayerAttribution.interpolate(m, x.shape[-2:], "bilinear")``.
        """
        images, reference, is_tuple = contract.format_inputs(
            inputs, additional_forward_args, _METHOD, sizes=(2, 3), needs_reference=False
        )
        single_image = len(images) == 1 and reference is None
        if weighting is None:
            weighting = "pair" if single_image else "similarity"
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
        grad_kwargs = dict(grad_kwargs or {})
        if len(images) > 1:
            maps = self._attribute_group(
                images, weighting, attribute_to_layer_input, relu_attributions, grad_kwargs
            )
            return contract.format_output(maps, is_tuple)
        x = contract.check_images(images[0], "inputs", _METHOD, self.model)
        self._choose_layer(x)
        if weighting == "triplet":
            raise ValueError("weighting='triplet' explains a tuple (anchors, positives, negatives)")
        if reference is not None:
            # a reference of batch 1 (or of identical rows, as Captum's wrappers
            # expand it) is broadcast; one query is explained against each reference
            x, reference = contract.broadcast_pair(x, reference)
        with recording(self.layer, attribute_to_layer_input) as rec:
            f = self.model.embed(_grad_leaf(x))
        if reference is None:
            if weighting == "similarity":
                raise ValueError(
                    "weighting='similarity' needs a reference: the similarity of an image with "
                    "itself has no gradient to explain; pass additional_forward_args or use 'pair'"
                )
            f_ref = f.detach()
        else:
            with torch.no_grad():
                f_ref = contract.check_embedding(
                    self.model.embed(reference), name="the embedding of the reference"
                )
        create_graph = bool(grad_kwargs.get("create_graph", False))
        g = self._weights(weighting, (f, f_ref), create_graph)[0]
        maps = self._cams([f], [g], rec.tensors, 1, relu_attributions, grad_kwargs, x.shape[-2:])
        return contract.format_output(maps, is_tuple)

    @attribution_entry()
    def attribute_gallery(
        self,
        query: Tensor,
        references: Tensor,
        weighting: str = "similarity",
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        batch_size: Optional[int] = None,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        r"""Maps of one query against each of ``G`` references, in one batch.

        The query's map for reference ``r`` is Grad-CAM of the pair
        ``(query, reference r)``; Grad-CAM's channel weights are linear in
        ``g_r = dS_r/df_q``, so with ``J`` the spatially averaged Jacobian of
        the query's embedding with respect to its feature map (``D x C``,
        one backward pass batched over the ``D`` embedding dimensions) every
        map is a contraction, ``alpha_r = J^T g_r``. When the embedder is a
        linear head after global average pooling, ``J = W / n``. The
        references' maps come from one forward and one backward pass of the
        ``G`` references (or of chunks of ``batch_size``). The result equals a
        loop of :meth:`attribute` calls on the pairs ``(query, reference r)``.

        Args:
            query (Tensor): One image ``(1, C, H, W)``.
            references (Tensor): ``G`` images ``(G, C', H', W')`` or their
                precomputed embeddings ``(G, D)`` (then only the query's maps
                are computed, the cheapest form for a cached gallery).
            weighting (str, optional): ``"pair"`` or ``"similarity"``.
                Default: ``"similarity"``
            attribute_to_layer_input (bool, optional): As in :meth:`attribute`.
                Default: False
            relu_attributions (bool, optional): As in :meth:`attribute`.
                Default: False
            batch_size (int, optional): Run image references through the
                embedder in chunks of at most this many (large batches of
                large images can be slower per image on a CPU, and need memory
                for the activations of the whole batch).
                Default: None (one batch)

        Returns:
            tuple: ``(query maps, reference maps)``, each ``(G, 1, h, w)``;
            the reference maps are None for precomputed embeddings.
        """
        if weighting not in ("pair", "similarity"):
            raise ValueError(
                f"gallery mode takes weighting 'pair' or 'similarity', got {weighting!r}"
            )
        query = contract.check_images(query, "query", _METHOD, self.model)
        if query.shape[0] != 1:
            raise ValueError(f"the query must be one image (1, ...), got batch {query.shape[0]}")
        references = check_float_tensor(references, "references")
        contract.check_finite(references, "references")
        self._choose_layer(query)
        with recording(self.layer, attribute_to_layer_input) as rec:
            f_q = contract.check_embedding(
                self.model.embed(_grad_leaf(query)), name="the embedding of the query"
            )
        a_q = rec.single()
        ref_images = not self.model.is_embedding(references)
        r_maps: List[Tensor] = []
        if ref_images:
            embedded = []
            for chunk in batch_slices(references.shape[0], batch_size):
                with recording(self.layer, attribute_to_layer_input) as rec_r:
                    f_r = self.model.embed(_grad_leaf(references[chunk]))
                g_r = self._weights(weighting, (f_q.expand(len(f_r), -1), f_r), False)[1]
                size = references.shape[-2:]
                r_maps += self._cams([f_r], [g_r], rec_r.tensors, 1, relu_attributions, {}, size)
                embedded.append(f_r.detach())
            f_r = torch.cat(embedded)
        else:
            f_r = references.detach()
        g_q = self._weights(weighting, (f_q.expand(len(f_r), -1), f_r), False)[0]
        eye = torch.eye(f_q.shape[1], dtype=f_q.dtype, device=f_q.device)[:, None, :]
        (jac,) = torch.autograd.grad(
            f_q, a_q, grad_outputs=eye, is_grads_batched=True, retain_graph=False
        )
        activation, jac = (self._grid(t, query.shape[-2:]) for t in (a_q, jac[:, 0]))
        alpha = g_q @ jac.mean((2, 3))  # (G, C)
        q_maps = torch.einsum("gc,chw->ghw", alpha, activation[0])[:, None]
        q_maps = F.relu(q_maps) if relu_attributions else q_maps
        return q_maps.detach(), torch.cat(r_maps) if ref_images else None

    def _attribute_group(
        self,
        inputs: Tuple[Tensor, ...],
        weighting: str,
        attribute_to_layer_input: bool,
        relu: bool,
        grad_kwargs: Dict[str, Any],
    ) -> Tuple[Tensor, ...]:
        expected = 3 if weighting == "triplet" else 2
        if len(inputs) != expected:
            raise ValueError(
                f"weighting={weighting!r} explains a tuple of {expected} image batches, "
                f"got {len(inputs)}"
                + ("; pass (anchors, positives, negatives)" if expected == 3 else "; pass (x1, x2)")
            )
        xs = [contract.check_images(x, f"inputs[{i}]", _METHOD, self.model) for i, x in enumerate(inputs)]
        self._choose_layer(xs[0])
        with recording(self.layer, attribute_to_layer_input) as rec:
            if expected == 2:
                x1, x2 = contract.broadcast_pair(*xs)
                fs = list(self.model.embed_pair(_grad_leaf(x1), _grad_leaf(x2)))
            else:
                if len({x.shape for x in xs}) != 1:
                    raise ValueError(
                        "anchors, positives and negatives must have the same shape, got "
                        + ", ".join(str(tuple(x.shape)) for x in xs)
                    )
                both = self.model.embed(_grad_leaf(torch.stack(xs, dim=1).flatten(0, 1)))
                fs = [both[i::3] for i in range(3)]
        create_graph = bool(grad_kwargs.get("create_graph", False))
        gs = self._weights(weighting, tuple(fs), create_graph)
        size = xs[0].shape[-2:]
        return tuple(self._cams(fs, list(gs), rec.tensors, expected, relu, grad_kwargs, size))

    def _weights(self, weighting: str, fs: Tuple[Tensor, ...], create_graph: bool) -> Weights:
        """``g_i = dS_i/df_i`` for each image of the group (``(N, D)`` each)."""
        if not create_graph:
            fs = tuple(f.detach() for f in fs)
        if weighting == "pair":
            w = self.similarity.contribution(*fs)
            return w, w
        if weighting == "triplet":
            a, p, q = (F.normalize(f, dim=1) for f in fs)
            w = (1 - (a - p).abs()) * (a - q).abs()
            return w, w, w
        leaves = tuple(f if f.requires_grad else f.detach().clone().requires_grad_() for f in fs)
        score = self.similarity(*leaves).sum()
        return tuple(torch.autograd.grad(score, leaves, create_graph=create_graph))

    def _cams(
        self,
        embeddings: Sequence[Tensor],
        weights: Sequence[Tensor],
        activations: Sequence[Tensor],
        groups: int,
        relu: bool,
        grad_kwargs: Dict[str, Any],
        image_size: Sequence[int],
    ) -> List[Tensor]:
        """One backward pass from the embeddings to the recorded activations;
        the Grad-CAM map of each image, split into ``groups`` when the
        activations hold the groups' rows interleaved."""
        for f in embeddings:
            contract.check_embedding(f, name="the embeddings")
        rows = [f.shape[0] for f in embeddings]
        if [a.shape[0] for a in activations] not in ([sum(rows)], rows):
            raise ValueError(
                f"layer {type(self.layer).__name__} ran {len(activations)} time(s) with batch "
                f"sizes {[a.shape[0] for a in activations]} while embedding batches of {rows}; "
                "explain a layer that runs exactly once per image"
            )
        grads = torch.autograd.grad(embeddings, activations, grad_outputs=weights, **grad_kwargs)
        keep_graph = bool(grad_kwargs.get("create_graph", False))
        maps = []
        for act, grad in zip(activations, grads):
            act, grad = self._grid(act, image_size), self._grid(grad, image_size)
            if not keep_graph:
                act, grad = act.detach(), grad.detach()
            cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True)
            maps.append(F.relu(cam) if relu else cam)
        if len(maps) == 1 and groups > 1:
            return [maps[0][i::groups] for i in range(groups)]
        return maps

    def _grid(self, t: Tensor, image_size: Sequence[int]) -> Tensor:
        return feature_grid(t, self.reshape_transform, "EmbeddingGradCAM", image_size)

    def _choose_layer(self, example: Tensor) -> None:
        """Resolves ``layer=None`` to the default layer for these images."""
        if self.layer is None:
            embedder, transform = self.model.embedder, self.reshape_transform
            self.layer, self.reshape_transform = default_layer_module(embedder, example, transform)


def _grad_leaf(x: Tensor) -> Tensor:
    """``x`` itself if it requires grad, else a detached copy that does, so the
    layer's activations are part of the graph even for a frozen model."""
    return x if x.requires_grad else x.detach().requires_grad_()
