"""What every job of the command line does before explaining: the device,
the model from its ``--model`` specification, the input size and
preparation, the explained layer, reading images, and the versions recorded
with the results.

``captum-similarity explain`` (:mod:`captum_similarity.cli`) and
``captum-similarity explain-dataset`` (:mod:`captum_similarity.runs`) both
set up their model and images here; every problem with what the user asked
for is one :class:`UsageError`.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._version import __version__
from .candidates import default_layer
from .data.files import load_image
from .data.prepare import ImagePreparation, parse_normalization
from .models.loading import DLIB_FACE, LoadedModel, load_model
from .similarity import SIMILARITIES

__all__ = [
    "UsageError",
    "DEFAULT_SIZE",
    "resolve_device",
    "load_job_model",
    "read_source",
    "input_size",
    "preparation",
    "check_similarity",
    "choose_layer",
    "as_numpy",
    "error_text",
    "versions",
]

#: Input size of models that do not fix one.
DEFAULT_SIZE = (224, 224)


class UsageError(ValueError):
    """A problem with what the user asked for (arguments, images, model): one
    line on the command line, exit status 2."""


def resolve_device(device: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UsageError(f"--device must be cpu, cuda or auto, got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda: this PyTorch has no CUDA device available (use cpu or auto)"
        )
    return dev


def load_job_model(spec: str, weights: Union[None, str, Path], device: torch.device) -> LoadedModel:
    """:func:`~captum_similarity.models.loading.load_model`, its errors as :class:`UsageError`."""
    try:
        return load_model(spec, weights, device)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        raise UsageError(str(err)) from err


def read_source(source: str) -> Tuple[str, np.ndarray]:
    """``(name, RGB array)`` of an image file or ``sample:NAME``; errors as :class:`UsageError`."""
    try:
        return load_image(source)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err


def input_size(size: Optional[Sequence[int]], loaded: LoadedModel) -> Tuple[int, int]:
    """``--size``, checked against the model's own; else the model's, else :data:`DEFAULT_SIZE`."""
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if min(size) < 1:
            raise UsageError(f"--size must be two positive integers, got {size}")
        if loaded.input_size is not None and size != tuple(loaded.input_size):
            raise UsageError(
                f"--size {size[0]} {size[1]}: {loaded.spec} takes {loaded.input_size[0]}x"
                f"{loaded.input_size[1]} inputs"
            )
        return size
    return tuple(loaded.input_size) if loaded.input_size is not None else DEFAULT_SIZE


def choose_layer(loaded: LoadedModel, layer: Optional[str], example: Tensor) -> Dict[str, Any]:
    """``{"layer", "layer_choice", "layer_grid"}``: ``--layer`` checked, or the
    model's measured default (:attr:`LoadedModel.layer`), or the default layer
    (:func:`~captum_similarity.candidates.default_layer`), or None with the
    reason."""
    if not loaded.layers:
        if layer:
            raise UsageError(
                f"--layer {layer}: the layers of a {loaded.kind} model cannot be hooked"
            )
        return {
            "layer": None,
            "layer_choice": f"a {loaded.kind} model's layers cannot be hooked",
            "layer_grid": None,
        }
    model = loaded.embedder
    if layer:
        try:
            model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise UsageError(
                f"--layer {layer!r} is not a submodule of the model; some are: {', '.join(names[-8:])}"
            ) from None
        grid = _grid_of(model, layer, example)
        return {"layer": layer, "layer_choice": "given with --layer", "layer_grid": grid}
    if loaded.layer is not None:
        return {
            "layer": loaded.layer,
            "layer_choice": f"the measured default of {loaded.kind} (--layer to change it)",
            "layer_grid": _grid_of(model, loaded.layer, example),
        }
    try:
        chosen = default_layer(model, example)
    except ValueError:
        chosen = None
    except Exception as err:  # a model whose layers cannot be listed
        return {
            "layer": None,
            "layer_choice": f"no layer could be listed ({error_text(err)})",
            "layer_grid": None,
        }
    if chosen is None:
        return {
            "layer": None,
            "layer_choice": "no layer of the model outputs a grid of cells: pass --layer",
            "layer_grid": None,
        }
    return {
        "layer": chosen.name,
        "layer_choice": "chosen by default: the last block of the stage of stride 16 or "
        "the nearest below it, a ViT's penultimate block (captum_similarity.default_layer)",
        "layer_grid": list(chosen.grid),
    }


def _grid_of(model, layer: str, example: Tensor) -> Optional[List[int]]:
    try:
        from .candidates import candidate_layers

        for c in candidate_layers(model, example):
            if c.name == layer:
                return list(c.grid)
    except Exception:
        return None
    return None


def as_numpy(t: Any) -> np.ndarray:
    """A tensor as a numpy array on the CPU (floating point as float32)."""
    if isinstance(t, Tensor):
        t = t.detach().cpu()
        return t.numpy().astype(np.float32) if t.is_floating_point() else t.numpy()
    return np.asarray(t)


def error_text(err: BaseException) -> str:
    """One line naming an exception's type and message (at most 400 characters)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:400]}"


def versions() -> Dict[str, str]:
    """Versions of the library, torch, Captum, numpy and Python, and the platform."""
    import captum

    return {
        "captum_similarity": __version__,
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "captum": getattr(captum, "__version__", "?"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def preparation(loaded: LoadedModel, size: Optional[Sequence[int]], normalize: str) -> ImagePreparation:
    """The :class:`ImagePreparation` of ``--size`` and ``--normalize`` for a
    loaded model (dlib's face chips for ``dlib-face``)."""
    try:
        mean_std = parse_normalization(normalize)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return ImagePreparation(
        input_size(size, loaded), faces=loaded.kind == DLIB_FACE, mean_std=mean_std
    )


def check_similarity(similarity: Optional[str], loaded: LoadedModel) -> str:
    """``--similarity``, or the model's own when None."""
    similarity = similarity or loaded.similarity
    if similarity not in SIMILARITIES:
        raise UsageError(
            f"--similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}"
        )
    return similarity
