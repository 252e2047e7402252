"""The input contract every method of the library shares.

Captum's methods read ``inputs`` (a tensor or a tuple of tensors) and
``additional_forward_args`` through one formatter; the library's methods
read them through this module, so that each accepted form and each error
message exists once:

- ``inputs`` is a tensor ``x`` (explained against the reference in
  ``additional_forward_args``), a 1-tuple ``(x,)`` (the same, and the result
  is a 1-tuple, as Captum's metrics call methods), or a tuple of image
  batches ``(x1, x2)`` (both explained, each against the other; a triplet
  where a method takes one): :func:`format_inputs`, and
  :func:`format_output` for tensor in, tensor out and tuple in, tuple out;
- the reference is ``additional_forward_args`` as a tensor or a 1-tuple
  holding one (:func:`reference_from_args`);
- two sides of unequal batch sizes are broadcast when one has batch 1 or
  identical rows, which is what Captum's expansion of a batch-1 argument
  produces (``cat`` repeats in IntegratedGradients and Occlusion,
  ``repeat_interleave`` repeats in NoiseTunnel and GradientShap):
  :func:`broadcast_pair`;
- images and precomputed embeddings are told apart by the model
  (``model.is_embedding``) and checked (:func:`check_images`,
  :func:`check_embedding`);
- a similarity used to split a score over embedding dimensions must define
  contributions (:func:`require_contributions`);
- non-finite images, references, embeddings and scores are refused, naming
  the side and the rows (:func:`check_finite`); images of another dtype than
  the model's parameters are refused, naming both (:func:`check_dtype`); an
  embedder failing on (or mis-shaping) a 3-D tensor is reported as a missing
  batch dimension (:func:`embedder_call`);
- tensors are checked to be floating point with a batch
  (:func:`check_float_tensor`), batches of identical rows recognised
  (:func:`rows_identical`) and baselines broadcast to the inputs
  (:func:`broadcast_baselines`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "MissingReferenceError",
    "broadcast_baselines",
    "broadcast_pair",
    "check_float_tensor",
    "check_dtype",
    "check_embedding",
    "check_finite",
    "check_images",
    "embedder_call",
    "format_inputs",
    "format_output",
    "reference_from_args",
    "require_contributions",
    "rows_identical",
]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def check_float_tensor(value: Any, name: str) -> Tensor:
    """Returns ``value`` if it is a floating-point tensor with a batch dimension.

    Raises:
        TypeError: ``value`` is not a tensor, or not of a floating-point dtype.
        ValueError: ``value`` is 0-dimensional or has an empty batch.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {value.dtype}; "
            "convert images with .float() (and scale them) first"
        )
    if value.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    if value.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch")
    return value


def rows_identical(x: Tensor) -> bool:
    """Whether every row of ``x`` equals its first row (what Captum's expansion
    of a batch-1 argument produces)."""
    if x.shape[0] <= 1:
        return True
    return bool((x == x[:1]).all())


def broadcast_baselines(baselines: Any, inputs: Tensor, name: str = "baselines") -> Tensor:
    """``baselines`` as a tensor of shape ``(1 or N, *inputs.shape[1:])`` (an expanded view).

    Accepts a number, or a tensor broadcastable to one input (``inputs.shape[1:]``,
    with or without a leading 1) or to the whole batch ``(N, ...)``.

    Raises:
        TypeError: ``baselines`` is neither a number nor a tensor.
        ValueError: the tensor does not broadcast to ``inputs``.
    """
    if isinstance(baselines, bool) or not isinstance(baselines, (int, float, Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(baselines).__name__}")
    value = torch.as_tensor(baselines, dtype=inputs.dtype, device=inputs.device)
    while value.dim() < inputs.dim():
        value = value[None]
    batch = value.shape[0]
    if value.dim() != inputs.dim() or batch not in (1, inputs.shape[0]):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} do not broadcast to inputs of shape "
            f"{tuple(inputs.shape)}: give one input's shape, batch 1, or batch {inputs.shape[0]}"
        )
    try:
        return torch.broadcast_to(value, (batch,) + tuple(inputs.shape[1:]))
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} do not broadcast to inputs of shape "
            f"{tuple(inputs.shape)}"
        ) from None


class MissingReferenceError(ValueError, TypeError):
    """A single image batch was given without the reference to explain it against.

    It is a ``ValueError`` (a value is missing) and a ``TypeError`` (the call's
    form is incomplete), so code catching either sees it.
    """


def reference_from_args(additional_forward_args: Any, method: str) -> Optional[Tensor]:
    """The reference in ``additional_forward_args``: a tensor, or a 1-tuple (or
    1-list) holding one; None when it is None.

    Raises:
        ValueError: the tuple holds more than one item.
        TypeError: the item is not a floating-point tensor.
    """
    args = additional_forward_args
    if isinstance(args, (tuple, list)):
        if len(args) != 1:
            raise ValueError(
                f"{method}: additional_forward_args must hold exactly one tensor, the "
                f"reference (as a tensor or a 1-tuple); got {len(args)} items"
            )
        args = args[0]
    if args is None:
        return None
    if not isinstance(args, Tensor):
        raise TypeError(
            f"{method}: additional_forward_args must hold the reference, an image batch or "
            f"an embedding (as a tensor or a 1-tuple), got {type(args).__name__}"
        )
    name = "the reference (additional_forward_args)"
    return check_finite(check_float_tensor(args, name), name)


def format_inputs(
    inputs: Any,
    additional_forward_args: Any,
    method: str,
    sizes: Sequence[int] = (2,),
    needs_reference: bool = True,
) -> Tuple[Tuple[Tensor, ...], Optional[Tensor], bool]:
    """Reads ``inputs`` and ``additional_forward_args`` in the library's one form.

    Args:
        inputs: A tensor, a 1-tuple ``(x,)`` or a tuple of ``k`` tensors with
            ``k`` in ``sizes``.
        additional_forward_args: The reference of a single image batch (see
            :func:`reference_from_args`); must be None with a tuple of several
            image batches.
        method (str): The method's name, for messages.
        sizes (sequence of int, optional): The tuple lengths (besides 1) the
            method explains.
            Default: ``(2,)``
        needs_reference (bool, optional): Whether a single image batch must
            come with a reference.
            Default: True

    Returns:
        tuple: ``(images, reference, is_tuple)``: the image batches (one for a
        tensor or a 1-tuple), the reference (None with several batches, or
        when none was given and none is needed) and whether ``inputs`` was a
        tuple (the result must then be a tuple too).

    Raises:
        TypeError: ``inputs`` is neither a tensor nor a tuple.
        ValueError: a tuple of a length the method does not take, or a
            reference given with several image batches.
        MissingReferenceError: a single batch without the reference it needs.
    """
    if isinstance(inputs, Tensor):
        images, is_tuple = (inputs,), False
    elif isinstance(inputs, tuple):
        images, is_tuple = inputs, True
    else:
        raise TypeError(
            f"{method}: inputs must be a tensor or a tuple (x1, x2) of image batches, "
            f"got {type(inputs).__name__}"
        )
    if len(images) == 1:
        reference = reference_from_args(additional_forward_args, method)
        if reference is None and needs_reference:
            raise MissingReferenceError(
                f"{method} needs a reference: pass additional_forward_args=(reference,) "
                "with a single image batch, or inputs=(x1, x2)"
            )
        return images, reference, is_tuple
    if len(images) not in sizes:
        expected = " or ".join(f"{k} tensors" for k in sizes)
        raise ValueError(
            f"{method}: tuple inputs must be a pair (x1, x2) of image batches"
            + (f" (or {expected})" if tuple(sizes) != (2,) else "")
            + f", or a 1-tuple; got a tuple of {len(images)}"
        )
    if additional_forward_args is not None:
        raise ValueError(
            f"{method}: with inputs=(x1, x2) each image is the other's reference; "
            "additional_forward_args must be None"
        )
    return images, None, is_tuple


def format_output(results: Sequence[Tensor], is_tuple: bool) -> Union[Tensor, Tuple[Tensor, ...]]:
    """Tensor in, tensor out; tuple in, tuple out (Captum's convention)."""
    if is_tuple:
        return tuple(results)
    (result,) = results
    return result


def broadcast_pair(x1: Tensor, x2: Tensor) -> Tuple[Tensor, Tensor]:
    """Expands a batch-1 (or identical-rows) side to the other side's batch size.

    Raises:
        ValueError: the batch sizes differ and neither side can be broadcast.
    """
    n1, n2 = x1.shape[0], x2.shape[0]
    if n1 == n2:
        return x1, x2
    if rows_identical(x2):
        return x1, x2[:1].expand(n1, *x2.shape[1:])
    if rows_identical(x1):
        return x1[:1].expand(n2, *x1.shape[1:]), x2
    hint = ""
    if abs(x1.dim() - x2.dim()) == 1:
        short = "x1" if x1.dim() < x2.dim() else "x2"
        hint = (
            f"; {short} has one dimension less than the other side: a batch dimension is "
            f"missing if it is one image (C, H, W): pass x[None]"
        )
    raise ValueError(
        f"cannot broadcast batch sizes {n1} (x1) and {n2} (x2): a reference must have the "
        f"queries' batch size, batch size 1, or identical rows (x1 has batch {n1}, x2 "
        f"batch {n2}){hint}"
    )


def check_images(
    x: Any,
    name: str,
    method: str,
    model: Any = None,
    image_dim: Optional[int] = None,
    reference_ok: bool = True,
) -> Tensor:
    """``x`` if it is a batch of inputs the method can explain.

    Args:
        x: The candidate.
        name (str): Its name in messages (``"x1"``, ``"inputs"``).
        method (str): The method's name, for messages.
        model (optional): A :class:`~captum_similarity.SiameseSimilarity`
            (anything with ``is_embedding``); a tensor it takes as a
            precomputed embedding is refused.
            Default: None
        image_dim (int, optional): The number of dimensions the method needs
            (4 for image batches ``(N, C, H, W)``).
            Default: None (any)
        reference_ok (bool, optional): Whether the method takes an embedding
            reference in ``additional_forward_args`` (the message says so).
            Default: True

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: an empty batch, a precomputed embedding, or the wrong
            number of dimensions (a missing batch dimension is named).
    """
    x = check_finite(check_float_tensor(x, name), name)
    if (model is not None and model.is_embedding(x)) or (image_dim is not None and x.dim() == 2):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, a batch of precomputed embeddings, but both "
            f"sides must be images: {method} explains pixels"
            + (
                "; pass a single image batch as inputs and the embedding reference as "
                "additional_forward_args"
                if reference_ok
                else ""
            )
        )
    if image_dim is not None and x.dim() != image_dim:
        hint = (
            "; add a batch dimension (x[None] or x.unsqueeze(0))"
            if x.dim() == image_dim - 1
            else ""
        )
        raise ValueError(
            f"{name} must be images (N, C, H, W), got shape {tuple(x.shape)}{hint}"
            if image_dim == 4
            else f"{name} must have {image_dim} dimensions, got shape {tuple(x.shape)}{hint}"
        )
    if isinstance(model, nn.Module):
        check_dtype(x, model, name)
    return x


def nonfinite_rows(x: Tensor) -> List[int]:
    """Indices of the rows of a batch ``x`` holding a NaN or an infinite value."""
    bad = ~torch.isfinite(x.detach())
    if x.dim() == 0:
        return [0] if bool(bad) else []
    return bad.reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()


def _rows_text(rows: List[int], n: int) -> str:
    shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
    return f"row{'s' if len(rows) > 1 else ''} {shown} of {n}"


def check_finite(x: Tensor, name: str) -> Tensor:
    """``x`` if it holds no NaN or infinite value.

    Args:
        x (Tensor): Batched ``(N, ...)``.
        name (str): What it is, in the message (``"inputs"``, ``"x2"``, ``"the
            reference (additional_forward_args)"``, ``"the embeddings of x1"``).

    Raises:
        ValueError: naming ``name`` and the offending rows.
    """
    rows = nonfinite_rows(x)
    if rows:
        raise ValueError(
            f"NaN or infinite values in {name} ({_rows_text(rows, len(x) if x.dim() else 1)}): "
            "an explanation of a non-finite value is undefined; clean or drop those rows "
            "(or check the model's weights when the inputs are finite)"
        )
    return x


def module_dtypes(module: nn.Module) -> set:
    """The floating-point dtypes of ``module``'s parameters."""
    return {p.dtype for p in module.parameters() if p.is_floating_point()}


def check_dtype(x: Tensor, module: nn.Module, name: str) -> Tensor:
    """``x`` if its dtype is that of ``module``'s parameters (or if the model
    has none, mixes several, or runs under autocast, which casts for it).

    Raises:
        TypeError: naming both dtypes and the two ways to make them agree.
    """
    dtypes = module_dtypes(module)
    if len(dtypes) != 1 or x.dtype in dtypes or torch.is_autocast_enabled(x.device.type):
        return x
    (dtype,) = dtypes
    raise TypeError(
        f"{name} has dtype {x.dtype} but the model's parameters are {dtype}: convert the "
        f"inputs (x.to({dtype})) or the model (model.to({x.dtype}))"
    )


@contextmanager
def embedder_call(x: Tensor, name: str) -> Iterator[None]:
    """Runs the embedder on ``x``; if it fails on a 3-D ``x``, says that a batch
    dimension is probably missing (a single image ``(C, H, W)``)."""
    try:
        yield
    except (RuntimeError, ValueError) as error:
        if x.dim() == 3:
            raise ValueError(
                f"the embedder failed on {name} of shape {tuple(x.shape)} ({error}); a batch "
                "dimension is missing if that is one image (C, H, W): pass x[None] "
                "(or x.unsqueeze(0))"
            ) from error
        raise


def check_embedding(f: Any, where: str = "the embedder", name: Optional[str] = None) -> Tensor:
    """``f`` if it is a batch of finite embeddings ``(N, D)`` (``where``
    produced it; ``name`` names it in the message about non-finite values,
    by default ``where``'s output).

    Raises:
        ValueError: ``f`` is not 2-D, or holds NaN or infinite values (the
            rows are named).
    """
    if not isinstance(f, Tensor) or f.dim() != 2:
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(
            f"{where} must return (N, D) embeddings, got {shape}; flatten or pool its output"
        )
    return check_finite(f, name or f"{where}'s output")


def require_contributions(similarity: Any, method: str) -> None:
    """Raises unless ``similarity`` (a :class:`~captum_similarity.Similarity`)
    splits its score over embedding dimensions.

    Raises:
        ValueError: the similarity defines no ``contributions``.
    """
    if similarity.contributions is None:
        raise ValueError(
            f"similarity {similarity.name!r} defines no per-dimension contributions, so "
            f"{method} cannot split its score over the embedding; use 'cosine', 'dot', "
            "'euclidean' or 'squared_euclidean', or a Similarity with `contributions`"
        )
