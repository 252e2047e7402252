"""SiameseSimilarity: an embedder and a similarity as one scalar-output model."""

from __future__ import annotations

import inspect
import sys
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import captum.attr as captum_attr
from captum.attr import GuidedGradCam, LayerAttribution, NeuronAttribution, NoiseTunnel
from captum.metrics import sensitivity_max
from torch import Tensor, nn

from ._utils.batching import batch_slices
from ._utils.hooks import has_hooks
from ._utils.inputs import (
    broadcast_pair,
    check_dtype,
    check_float_tensor,
    embedder_call,
    rows_identical,
)
from .head import SimilarityHead
from .similarity import Similarity, SimilarityLike, resolve_similarity

__all__ = ["SiameseSimilarity", "as_siamese", "DEFAULT_SIMILARITIES"]

#: The similarity each method explains when it is given a bare embedder and
#: no ``similarity``. LRP relevance and the exact decomposition default to the
#: dot product (bilinear: relevance is conserved exactly on bias-free
#: networks); Grad-CAM and PAIR-X to the cosine (PAIR-X's reference uses it).
#: A :class:`SiameseSimilarity` brings its own similarity to every method.
DEFAULT_SIMILARITIES = {
    "EmbeddingGradCAM": "cosine",
    "PairwiseIntermediateMatching": "cosine",
    "LRPRelevancePairing": "dot",
    "SimilarityDecomposition": "dot",
}

Embedder = Union[nn.Module, Callable[[Tensor], Tensor]]


class SiameseSimilarity(nn.Module):
    r"""Turns an embedder ``f`` into the model ``s(x1, x2) = sim(f(x1), f(x2))``.

    The result is an ``nn.Module`` whose ``forward(x1, x2)`` returns one score
    per pair, shape ``(N,)``, so every Captum attribution method can explain a
    similarity: pass ``x1`` as ``inputs`` and the reference as
    ``additional_forward_args``, or pass ``(x1, x2)`` as inputs to explain both
    images at once.

    Behaviour that makes Captum's methods correct on a similarity model:

    - **Broadcasting.** A side with batch size 1, or whose rows are all equal
      (what Captum's expansion of a batch-1 ``additional_forward_args`` entry
      produces inside IntegratedGradients, Occlusion, NoiseTunnel or
      GradientShap), is broadcast against the other side. Any other pair of
      unequal batch sizes raises a ``ValueError``.
    - **Precomputed embeddings.** A 2-D tensor ``(N, D)`` or ``(1, D)`` passed
      where an image would go is taken as an embedding and the embedder is not
      run on it (see ``input_ndim``). Passing the reference as an embedding is
      also the cheapest way to explain one side: the embedder runs on the
      queries only.
    - **One encoder call.** When both sides are images of the same shape,
      dtype and device, the embedder runs once per forward on the two batches
      interleaved row by row, ``[x1[0], x2[0], x1[1], x2[1], ...]``. Captum's
      hook-based methods (LayerGradCam, LayerActivation, DeepLift, LRP) then see
      both branches in one call instead of silently keeping the last one, and
      the interleaving keeps DeepLift's inputs/baselines halves aligned. Split a
      layer attribution computed this way with
      :func:`captum_similarity.split_branches`. A broadcast side is part of
      that call (one copy per row) whenever a hook watches the embedder; with
      no hook, an embedder in eval mode and a side that is one row (or
      identical rows that need no gradient), that row is embedded once and its
      embedding broadcast, which is what makes gradient and perturbation
      methods with a batch-1 image reference cheaper.
    - **A similarity head module.** The score is computed by ``self.head``, a
      :class:`~captum_similarity.head.SimilarityHead` carrying an LRP rule, so
      Captum's ``LRP`` conserves relevance through the similarity: each
      image's relevance sums to the score (bias-free ReLU networks, LRP-0).

    Args:
        embedder (nn.Module or Callable): Maps a batch of inputs to embeddings
            of shape ``(N, D)``. A module is registered as a submodule named
            ``embedder``.
        similarity (str, Callable or Similarity, optional): ``"cosine"``,
            ``"dot"``, ``"euclidean"`` (negative L2 distance) or
            ``"squared_euclidean"`` (negative squared distance), so that larger
            is always more similar; or a callable mapping two ``(N, D)`` tensors
            to ``(N,)``; or a :class:`~captum_similarity.Similarity`.
            Default: ``"cosine"``
        input_ndim (int, optional): Number of dimensions of a batch of inputs
            the embedder takes. When None, every 2-D tensor is treated as a
            precomputed embedding and every other tensor is run through the
            embedder. When given, inputs must have exactly this many
            dimensions; if it is 2 (an embedder of vectors), 2-D tensors are
            inputs and precomputed embeddings cannot be passed.
            Default: None

    Examples::

        >>> import torch
        >>> from captum.attr import IntegratedGradients
        >>> from captum_similarity import SiameseSimilarity
        >>> from captum_similarity.models import SimpleCNN
        >>> sim = SiameseSimilarity(SimpleCNN().eval(), "cosine")
        >>> query, reference = torch.rand(4, 3, 32, 32), torch.rand(1, 3, 32, 32)
        >>> sim(query, reference).shape
        torch.Size([4])
        >>> attr = IntegratedGradients(sim).attribute(
        ...     query, additional_forward_args=(reference,))
        >>> a1, a2 = IntegratedGradients(sim).attribute(
        ...     (query, reference.expand(4, -1, -1, -1)))
    """

    #: Marks the wrapper for ``_utils.layers.unwrap_embedder``: the embedder is ``.embedder``.
    wraps_embedder = True

    def __init__(
        self,
        embedder: Embedder,
        similarity: SimilarityLike = "cosine",
        input_ndim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not callable(embedder):
            raise TypeError(
                f"embedder must be an nn.Module or a callable, got {type(embedder).__name__}"
            )
        if input_ndim is not None and (not isinstance(input_ndim, int) or input_ndim < 1):
            raise ValueError(f"input_ndim must be a positive integer or None, got {input_ndim!r}")
        self.embedder = embedder
        self.head = SimilarityHead(resolve_similarity(similarity))
        self.input_ndim = input_ndim

    @property
    def similarity(self) -> Similarity:
        """The resolved :class:`~captum_similarity.Similarity`."""
        return self.head.similarity

    def is_embedding(self, x: Tensor) -> bool:
        """Whether ``x`` is taken as a precomputed embedding rather than an input."""
        if self.input_ndim == 2:
            return False
        return x.dim() == 2

    def embed(self, x: Tensor, batch_size: Optional[int] = None) -> Tensor:
        r"""Embeds a batch of inputs; a precomputed embedding is returned as is.

        Args:
            x (Tensor): Inputs ``(N, ...)`` or embeddings ``(N, D)``.
            batch_size (int, optional): Run the embedder on chunks of at most
                this many inputs.
                Default: None (one call)

        Returns:
            Tensor: embeddings of shape ``(N, D)``.
        """
        x = self._check_side(x, "x")
        if self.is_embedding(x):
            return x
        return torch.cat(
            [self._run_embedder(x[s], x) for s in batch_slices(x.shape[0], batch_size)]
        )

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        r"""Similarity of each pair ``(x1[i], x2[i])``.

        Args:
            x1 (Tensor): Inputs ``(N1, ...)`` or embeddings ``(N1, D)``.
            x2 (Tensor): Inputs ``(N2, ...)`` or embeddings ``(N2, D)``. One of
                ``N1``, ``N2`` may differ from the other if that side has batch
                size 1 or identical rows; it is then broadcast.

        Returns:
            Tensor: similarities of shape ``(max(N1, N2),)``.
        """
        f1, f2 = self.embed_pair(x1, x2)
        if f1.shape[1] != f2.shape[1]:
            raise ValueError(
                f"embedding widths differ: x1 gives {f1.shape[1]}, x2 gives {f2.shape[1]}; "
                "a precomputed embedding must come from the same embedder"
            )
        return self.head(f1, f2)

    def similarity_matrix(
        self, query: Tensor, gallery: Tensor, batch_size: Optional[int] = None
    ) -> Tensor:
        r"""Scores every query against every gallery item.

        Each query and each gallery item is embedded once (precomputed
        embeddings are used as they are), then all pairs are scored.

        Args:
            query (Tensor): Inputs ``(N, ...)`` or embeddings ``(N, D)``.
            gallery (Tensor): Inputs ``(G, ...)`` or embeddings ``(G, D)``.
            batch_size (int, optional): Embed the gallery in chunks of at most
                this many items.
                Default: None (one call)

        Returns:
            Tensor: similarities of shape ``(N, G)``. For a single query, row 0
            (or ``self(query, gallery)``, which broadcasts) gives ``(G,)``.
        """
        f_query = self.embed(query)
        f_gallery = self.embed(gallery, batch_size=batch_size)
        if f_query.shape[1] != f_gallery.shape[1]:
            raise ValueError(
                f"embedding widths differ: query gives {f_query.shape[1]}, "
                f"gallery gives {f_gallery.shape[1]}"
            )
        return self.similarity.pairs(f_query, f_gallery)

    def _check_side(self, x: Tensor, name: str) -> Tensor:
        x = check_float_tensor(x, name)
        if self.input_ndim is not None and x.dim() != self.input_ndim and not self.is_embedding(x):
            raise ValueError(
                f"{name} has {x.dim()} dimensions (shape {tuple(x.shape)}); the embedder "
                f"takes {self.input_ndim}-D inputs, and a precomputed embedding is 2-D"
            )
        if not self.is_embedding(x):
            check_dtype(x, self, name)
        return x

    def _run_embedder(self, x: Tensor, side: Optional[Tensor] = None, name: str = "x") -> Tensor:
        """The embedder's output for ``x``, checked; errors name ``side`` (the
        tensor the user gave, when ``x`` is made from it)."""
        with embedder_call(x if side is None else side, name):
            out = self.embedder(x)
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"the embedder must return a Tensor of shape (N, D), got {type(out).__name__}"
                )
            if out.dim() != 2 or out.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the embedder must return a 2-D tensor (N, D) with N = {x.shape[0]}, "
                    f"got shape {tuple(out.shape)}; flatten or pool its output"
                )
        return out

    def embed_pair(self, x1: Tensor, x2: Tensor) -> Tuple[Tensor, Tensor]:
        r"""Embeddings of both sides, as :meth:`forward` computes them.

        The sides are broadcast to a common batch size; when both are images
        of the same shape, dtype and device, the embedder runs once on their
        interleaved rows (so hooks on its layers see both branches). A
        broadcast one-row side is embedded once instead when no hook watches
        the embedder and it is in eval mode (see the class docstring).

        Args:
            x1 (Tensor): Inputs ``(N1, ...)`` or embeddings ``(N1, D)``.
            x2 (Tensor): Inputs ``(N2, ...)`` or embeddings ``(N2, D)``.

        Returns:
            tuple: ``(f1, f2)``, each ``(N, D)`` with ``N = max(N1, N2)``.
        """
        x1, x2 = self._check_side(x1, "x1"), self._check_side(x2, "x2")
        shared = self._embed_shared(x1, x2)
        if shared is not None:
            return shared
        x1, x2 = broadcast_pair(x1, x2)
        one_call = (
            not self.is_embedding(x1)
            and not self.is_embedding(x2)
            and x1.shape[1:] == x2.shape[1:]
            and x1.dtype == x2.dtype
            and x1.device == x2.device
        )
        if one_call:
            if isinstance(self.embedder, nn.Module) and has_hooks(self.embedder):
                _check_captum_layer_method()
            both = self._run_embedder(torch.stack((x1, x2), dim=1).flatten(0, 1), x1, "x1 and x2")
            return both[0::2], both[1::2]
        return self.embed(x1), self.embed(x2)

    def _embed_shared(self, x1: Tensor, x2: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """Both embeddings with a one-row side embedded once and broadcast, or
        None where that could change a result: a hook watches the embedder (it
        must see both branches row by row), the embedder is in training mode
        (batch statistics) or not a module (its hooks cannot be seen), or the
        repeated rows need their own gradients."""
        n1, n2 = x1.shape[0], x2.shape[0]
        embedder = self.embedder
        if n1 == n2 or not isinstance(embedder, nn.Module):
            return None
        if any(m.training for m in embedder.modules()):
            return None
        one, many = (x2, x1) if n2 < n1 else (x1, x2)
        if one.shape[0] > 1 and (one.requires_grad or not rows_identical(one)):
            return None  # broadcast_pair raises for rows that differ
        if has_hooks(embedder):
            return None
        f_one = self.embed(one[:1]).expand(many.shape[0], -1)
        f_many = self.embed(many)
        return (f_many, f_one) if n2 < n1 else (f_one, f_many)


#: Captum's layer and neuron methods that explain a SiameseSimilarity with two
#: image sides correctly although the encoder runs once on both images: the
#: layer attribution holds both branches row-interleaved (split it with
#: :func:`~captum_similarity.split_branches`; the scaled or shifted side is
#: the explained one, the other half is zero for LayerIntegratedGradients and
#: LayerDeepLift), or the input attribution is the queries' own. The other
#: layer and neuron methods perturb, scale or multiply the layer batch as if
#: it were the inputs' batch, and are refused (they returned wrong rows,
#: wrong shapes or raw shape errors).
TWO_BRANCH_LAYER_METHODS = tuple(
    getattr(captum_attr, name)
    for name in (
        "LayerActivation",
        "LayerDeepLift",
        "LayerGradCam",
        "LayerGradientXActivation",
        "LayerIntegratedGradients",
        "NeuronDeconvolution",
        "NeuronDeepLift",
        "NeuronDeepLiftShap",
        "NeuronGradient",
        "NeuronGradientShap",
        "NeuronGuidedBackprop",
        "NeuronIntegratedGradients",
    )
)

#: Captum code that needs a layer attribution with one row per input: it
#: averages the wrapped method's result over noise samples (NoiseTunnel),
#: multiplies it by the input's guided backpropagation (GuidedGradCam) or
#: compares it row by row (sensitivity_max).
_ROW_WISE_CALLERS: Dict[object, str] = {
    inspect.unwrap(NoiseTunnel.attribute).__code__: "NoiseTunnel",
    inspect.unwrap(GuidedGradCam.attribute).__code__: "GuidedGradCam",
    inspect.unwrap(sensitivity_max).__code__: "sensitivity_max",
}

_FIX = (
    "pass the reference as a precomputed embedding, "
    "additional_forward_args=(sim.embed(reference).detach(),), so that the encoder runs on "
    "the inputs only; or explain each image with BranchLayerAttribution({}, sim, layer)"
)


def _check_captum_layer_method() -> None:
    """Raises when one of Captum's layer or neuron methods is about to see both
    image sides in one layer batch (``2N`` rows) and cannot use it: the method
    is not one of :data:`TWO_BRANCH_LAYER_METHODS`, or Captum code that needs
    one row per input (:data:`_ROW_WISE_CALLERS`) called a layer method.
    Read off the call stack (the outermost of Captum's layer or neuron
    ``attribute`` calls), since Captum calls the model the same way for each."""
    method = None
    caller = None
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        owner = frame.f_locals.get("self") if code.co_name == "attribute" else None
        if isinstance(owner, (LayerAttribution, NeuronAttribution)) and type(
            owner
        ).__module__.startswith("captum."):
            method, caller = owner, None  # the outermost one wins
        elif method is not None and caller is None and code in _ROW_WISE_CALLERS:
            caller = _ROW_WISE_CALLERS[code]
        frame = frame.f_back
    if method is None:
        return
    name = type(method).__name__
    if type(method) not in TWO_BRANCH_LAYER_METHODS:  # subclasses (the Shap variants) differ
        raise ValueError(
            f"{name} cannot explain a SiameseSimilarity whose two sides are images: the "
            "shared encoder runs once on both images, so the layer's batch holds both "
            f"branches (2N rows) while {name} perturbs or scales it as the inputs' batch; "
            + _FIX.format(name)
        )
    if caller is not None and isinstance(method, LayerAttribution):
        raise ValueError(
            f"{caller} needs one attribution row per input, but {name} on a SiameseSimilarity "
            "with two image sides sees both images in one layer batch (2N rows, see "
            "split_branches); " + _FIX.format(name)
        )


def as_siamese(
    embedder: Union[Embedder, "SiameseSimilarity"], similarity: Optional[SimilarityLike], method: str
) -> SiameseSimilarity:
    """The similarity model a method explains.

    A :class:`SiameseSimilarity` is used as it is, with its own similarity;
    giving a ``similarity`` as well is an error (one model, one similarity).
    A bare embedder is wrapped with ``similarity``, or with the method's
    default (:data:`DEFAULT_SIMILARITIES`).

    Raises:
        ValueError: ``similarity`` given together with a SiameseSimilarity.
    """
    if isinstance(embedder, SiameseSimilarity):
        if similarity is not None:
            raise ValueError(
                f"{method}: the model is a SiameseSimilarity, whose similarity "
                f"({embedder.similarity.name!r}) is used; do not pass similarity (wrap the "
                "embedder in a SiameseSimilarity with the similarity you want instead)"
            )
        return embedder
    return SiameseSimilarity(
        embedder, DEFAULT_SIMILARITIES.get(method, "cosine") if similarity is None else similarity
    )
