"""The command line: ``captum-similarity explain`` (also ``python -m captum_similarity``).

``captum-similarity explain QUERY REFERENCE [REFERENCE ...] --model SPEC``
explains why a similarity model scores a query image against reference
images, or against a gallery folder (every image is scored, ranked, and the
top ``--top-k`` are explained), with the registered methods picked by their
short names, and writes ``report.html`` (self-contained),
``results.json`` and ``maps.npz`` to ``--out``.
``captum-similarity explain-dataset PAIRS --model SPEC --out DIR`` explains
a list of pairs, sharded under ``torchrun`` and resumable
(:mod:`captum_similarity.runs`). ``captum-similarity samples DIR`` writes
the images that ship with the install as files.

From Python, :func:`explain_images` runs the same job and returns the
results that :func:`captum_similarity.report.build_report` draws.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._utils.progress import Progress
from ._utils.state import preserved_state
from ._version import __version__
from .data.files import SAMPLE_PREFIX, gallery_files, sample_image, sample_names
from .data.prepare import ImagePreparation, display_image
from .data.pair_lists import draw_identity_pairs, parse_pair_counts, read_pairs_csv
from .explainers import SELECTIONS, explain_pair_detailed, explainers, resolve_methods, short_names
from .job import (
    DEFAULT_SIZE,
    UsageError,
    as_numpy,
    check_similarity,
    choose_layer,
    error_text,
    load_job_model,
    preparation,
    read_source,
    resolve_device,
    versions,
)
from .metrics.insertion_deletion import insertion_deletion
from .metrics.match_plausibility import match_plausibility
from .models.loading import MODEL_SPEC_FORMS, LoadedModel
from .report import build_report, save_results
from .runs import CHUNK, explain_dataset
from .siamese import SiameseSimilarity
from .similarity import SIMILARITIES

__all__ = ["main", "explain_images", "near_identical", "NEAR_IDENTICAL_COSINE", "UsageError"]

#: Cosine similarity from which a pair counts as near-identical (the report
#: then says what gradient maps of the similarity show there).
NEAR_IDENTICAL_COSINE = 0.99

#: How many references are explained by default.
DEFAULT_TOP_K = 5

#: Gallery images read, prepared and embedded at a time.
GALLERY_BATCH = 32

#: Pairs explained per call of a method (the query runs once per call).
PAIR_BATCH = 4

#: Insertion/deletion steps of ``--faithfulness`` (SANE's 101).
FAITHFULNESS_STEPS = 101

SCORE_MEANINGS = {
    "cosine": "cosine similarity of the two embeddings, in [-1, 1] (1: same direction)",
    "dot": "dot product of the two embeddings (larger: more similar)",
    "euclidean": "minus the Euclidean distance d between the embeddings (0: identical)",
    "squared_euclidean": "minus the squared Euclidean distance between the embeddings (0: identical)",
}


# -- the job -------------------------------------------------------------------


def explain_images(
    query: Union[str, Path],
    references: Sequence[Union[str, Path]],
    model: Union[str, LoadedModel],
    weights: Union[None, str, Path] = None,
    layer: Optional[str] = None,
    methods: Union[str, Sequence[str]] = "default",
    similarity: Optional[str] = None,
    size: Optional[Tuple[int, int]] = None,
    normalize: str = "none",
    device: str = "cpu",
    top_k: Optional[int] = None,
    faithfulness: bool = False,
    seed: int = 0,
    progress: Optional[bool] = None,
    command: Optional[str] = None,
) -> Dict[str, Any]:
    r"""Explains a query image against references or a gallery folder.

    Args:
        query (str or Path): An image file or ``"sample:NAME"``.
        references (sequence): Image files, ``"sample:NAME"`` entries or
            folders (their images, recursively, form a gallery).
        model (str or LoadedModel): A ``--model`` specification (see
            :func:`captum_similarity.models.loading.load_model`), loaded onto
            ``device``, or a loaded model, used on the device it is on; it
            runs in eval mode and is left as found (training flags,
            ``requires_grad``, ``.grad``).
        weights (str or Path, optional): Weights for a ``module:callable`` model.
            Default: None
        layer (str, optional): Dotted name of the layer for layer methods.
            Default: None (:func:`captum_similarity.candidates.default_layer`)
        methods (str or sequence of str, optional): Short or registered names,
            ``"default"`` or ``"all"`` (see
            :func:`captum_similarity.explainers.resolve_methods`).
            Default: ``"default"``
        similarity (str, optional): ``"cosine"``, ``"dot"``, ``"euclidean"`` or
            ``"squared_euclidean"``.
            Default: None (the model's own: Euclidean for ``dlib-face``, else cosine)
        size (tuple of int, optional): ``(H, W)`` the images are resized to.
            Default: None (the model's fixed size, else 224 x 224)
        normalize (str, optional): ``"imagenet"``, ``"none"`` or
            ``"MEAN,STD"`` (one value each, or three means then three stds).
            Default: ``"none"``
        device (str, optional): ``"cpu"``, ``"cuda"`` (or ``"cuda:1"``) or
            ``"auto"`` (CUDA when present).
            Default: ``"cpu"``
        top_k (int, optional): How many of the best ranked references are
            explained.
            Default: None (5)
        faithfulness (bool, optional): Also score every map with insertion
            and deletion curves.
            Default: False
        seed (int, optional): Seed of torch's and numpy's generators.
            Default: 0
        progress (bool, optional): Progress bars (True) or plain lines
            (False) on standard error.
            Default: None (bars on a terminal)
        command (str, optional): The command line, for the record.
            Default: None

    Returns:
        dict: the results, as :mod:`captum_similarity.report` documents them.

    Raises:
        UsageError: bad arguments, images or model (one line each).

    Example::

        >>> results = explain_images("query.png", ["gallery/"], "my_model.py:build",
        ...                          methods="gradcam,lrp", size=(224, 224), normalize="imagenet")
        >>> results["pairs"][0]["reference"], results["pairs"][0]["score"]
        >>> build_report(results, "report.html")
    """
    start = time.perf_counter()
    seconds: Dict[str, float] = {}
    torch.manual_seed(seed)
    np.random.seed(seed)
    chosen = _methods(methods)
    dev = resolve_device(device)
    say = Progress(progress)

    tick = time.perf_counter()
    if isinstance(model, LoadedModel):  # the caller's: used where it is, left as found
        loaded = model
        dev = next((t.device for t in loaded.embedder.parameters()), torch.device("cpu"))
    else:
        loaded = load_job_model(model, weights, dev)
    seconds["model"] = time.perf_counter() - tick
    with preserved_state(loaded.embedder, eval_mode=True):
        return _explain(
            loaded,
            dev,
            chosen,
            say,
            seconds,
            start,
            query=query,
            references=references,
            layer=layer,
            methods=methods,
            similarity=similarity,
            size=size,
            normalize=normalize,
            top_k=top_k,
            faithfulness=faithfulness,
            seed=seed,
            command=command,
        )


def _explain(
    loaded: LoadedModel,
    dev: torch.device,
    chosen: List[str],
    say: Progress,
    seconds: Dict[str, float],
    start: float,
    *,
    query,
    references,
    layer,
    methods,
    similarity,
    size,
    normalize,
    top_k,
    faithfulness,
    seed,
    command,
) -> Dict[str, Any]:
    """:func:`explain_images` with the model loaded and in eval mode."""
    similarity = check_similarity(similarity, loaded)
    sim = SiameseSimilarity(loaded.embedder, similarity)
    say.line(f"model: {loaded.description}")

    tick = time.perf_counter()
    query_source, sources, gallery_given = _sources(query, references)
    pre = preparation(loaded, size, normalize)
    query_item = read_source(query_source)
    q_input, q_seen, q_note = pre([query_item[1]])
    q_input = q_input.to(dev)
    seconds["images"] = time.perf_counter() - tick

    tick = time.perf_counter()
    with torch.no_grad():
        probe = loaded.embedder(q_input)
    if probe.dim() != 2:
        raise UsageError(
            f"the model returns shape {tuple(probe.shape)} for one image; an embedder must return "
            "(N, D) embeddings (flatten or pool its output)"
        )
    scores = _scores(sim, q_input, sources, pre, dev, say)
    order = torch.argsort(scores, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, len(order) + 1)
    seconds["scoring"] = time.perf_counter() - tick
    k = min(len(order), DEFAULT_TOP_K if top_k is None else top_k)
    if k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    explained = order[:k].tolist()
    # the explained references, read again (a gallery is never held in memory)
    explained_items = [read_source(sources[i]) for i in explained]
    ref_inputs, ref_seen, ref_notes = pre([img for _, img in explained_items])
    ref_inputs = ref_inputs.to(dev)

    layer_info = choose_layer(loaded, layer, q_input)
    layer_module = (
        loaded.embedder.get_submodule(layer_info["layer"]) if layer_info["layer"] else None
    )

    decision = _decision(loaded, similarity)
    results: Dict[str, Any] = {
        "format": "captum-similarity results 1",
        "command": command or "(from Python: captum_similarity.cli.explain_images)",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(),
        "device": str(dev),
        "seed": seed,
        "model": {
            "spec": loaded.spec,
            "kind": loaded.kind,
            "description": loaded.description,
            "weights": loaded.weights,
            "notes": list(loaded.notes) + ["run in eval mode"],
            **layer_info,
            "similarity": similarity,
            "score_meaning": SCORE_MEANINGS.get(similarity, similarity),
            "decision": decision,
        },
        "preprocessing": pre.description,
        "methods": [
            {
                "short": explainers()[n].short,
                "name": n,
                "cost": explainers()[n].cost,
                "default": explainers()[n].default,
            }
            for n in chosen
        ],
        "query": {
            "name": query_item[0],
            "image": display_image(query_item[1]),
            "size": list(query_item[1].shape[:2]),
            "input": q_seen[0],
            "note": q_note[0],
        },
        "gallery": [
            {
                "name": name,
                "score": float(scores[i]),
                "rank": int(ranks[i]),
                "explained": i in explained,
                **_verdict(float(scores[i]), decision),
            }
            for i, name in enumerate(sources)
        ],
        "gallery_folders": gallery_given,
        "top_k": k,
        "faithfulness": {"steps": FAITHFULNESS_STEPS, "fill": None} if faithfulness else None,
        "pairs": [],
        "warnings": [],
        "errors": [],
        "seconds": seconds,
    }
    for j, i in enumerate(explained):
        name, image = explained_items[j]
        score = float(scores[i])
        pair = {
            "rank": int(ranks[i]),
            "reference": name,
            "reference_index": i,
            "score": score,
            **_verdict(score, decision),
            "reference_image": display_image(image),
            "reference_size": list(image.shape[:2]),
            "reference_input": ref_seen[j],
            "reference_note": ref_notes[j],
            "notes": _pair_notes(score, similarity, decision["threshold"] if decision else None),
            "methods": {},
        }
        results["pairs"].append(pair)

    tick = time.perf_counter()
    named = _named(methods)
    failed: List[str] = []
    for name in chosen:
        spec = explainers()[name]
        short = spec.short or name
        entries = _run_method(
            name, sim, q_input, ref_inputs, results["pairs"], layer_module, layer_info, say
        )
        for p, entry in enumerate(entries):
            maps = entry["maps"]
            if maps is not None and not (np.isfinite(maps[0]).all() and np.isfinite(maps[1]).all()):
                results["warnings"].append(
                    f"{short} on pair {p}: the maps contain NaN or infinite values"
                )
        for text in sorted({e["error"] for e in entries} - {None}):
            message = f"{short} ({name}): {text}"
            (results["errors"] if name in named else results["warnings"]).append(message)
            if name in named and short not in failed:
                failed.append(short)
    seconds["explaining"] = time.perf_counter() - tick

    if faithfulness:
        tick = time.perf_counter()
        results["faithfulness"]["fill"] = _faithfulness(results, sim, q_input, ref_inputs, say)
        seconds["faithfulness"] = time.perf_counter() - tick
    results["failed_methods"] = failed
    seconds["total"] = time.perf_counter() - start
    return results


def _named(methods: Union[str, Sequence[str]]) -> List[str]:
    """The registered names of the methods named one by one (not through
    ``default`` or ``all``): one of those failing is a failure of the command."""
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    single = [i for i in (str(m).strip() for m in items) if i and i not in SELECTIONS]
    return resolve_methods(single) if single else []


def _run_method(
    name: str,
    sim: SiameseSimilarity,
    q_input: Tensor,
    ref_inputs: Tensor,
    pairs: List[Dict[str, Any]],
    layer_module: Any,
    layer_info: Dict[str, Any],
    say: Progress,
) -> List[Dict[str, Any]]:
    """Runs one registered method on every explained pair, :data:`PAIR_BATCH`
    pairs per call (the query's rows are identical, so methods run it once),
    and stores each pair's entry under the method's short name."""
    spec = explainers()[name]
    short = spec.short or name
    entries = []
    for pair in pairs:
        entry: Dict[str, Any] = {"name": name, "seconds": None, "maps": None, "error": None}
        pair["methods"][short] = entry
        entries.append(entry)
        if spec.needs_layer and layer_module is None:
            entry["error"] = f"skipped: {name} explains a layer, and {layer_info['layer_choice']}"
    todo = [p for p, e in enumerate(entries) if e["error"] is None]
    say.start(short, len(todo))
    for begin in range(0, len(todo), PAIR_BATCH):
        chunk = todo[begin : begin + PAIR_BATCH]
        x2 = ref_inputs[chunk]  # the explained references, in the pairs' order
        x1 = q_input.expand(len(chunk), *q_input.shape[1:])
        began = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a1, a2, extra = explain_pair_detailed(sim, x1, x2, layer_module, name)
            error = None
        except Exception as err:  # a method that cannot explain this model says so
            error = error_text(err)
        took = (time.perf_counter() - began) / len(chunk)  # per pair, averaged over the batch
        for j, p in enumerate(chunk):
            entry = entries[p]
            entry["seconds"], entry["error"] = took, error
            if error is None:
                entry["maps"] = [as_numpy(a1[j]), as_numpy(a2[j])]
                _extra(entry, extra, j)
        say.advance(len(chunk))
    say.done(entries)
    return entries


def _methods(methods: Union[str, Sequence[str]]) -> List[str]:
    try:
        return resolve_methods(methods)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _sources(
    query: Union[str, Path], references: Sequence[Union[str, Path]]
) -> Tuple[str, List[str], List[str]]:
    """The query's and the references' sources (files or ``sample:NAME``),
    folders expanded to their image files, and the folders given."""
    if not references:
        raise UsageError("give at least one REFERENCE image or gallery folder")
    if not str(query).startswith(SAMPLE_PREFIX) and Path(query).is_dir():
        raise UsageError(
            f"QUERY must be one image, but {query} is a folder (folders go after it, as galleries)"
        )
    sources: List[str] = []
    folders: List[str] = []
    for ref in references:
        if not str(ref).startswith(SAMPLE_PREFIX) and Path(ref).is_dir():
            folders.append(str(ref))
            try:
                sources.extend(str(f) for f in gallery_files(ref))
            except (ValueError, FileNotFoundError) as err:
                raise UsageError(str(err)) from err
        else:
            sources.append(str(ref))
    return str(query), sources, folders


def _scores(
    sim: SiameseSimilarity,
    q_input: Tensor,
    sources: List[str],
    pre: ImagePreparation,
    dev: torch.device,
    say: Progress,
) -> Tensor:
    """The query's score against every reference, read, prepared and embedded
    :data:`GALLERY_BATCH` at a time."""
    batches = range(0, len(sources), GALLERY_BATCH)
    big = len(sources) > GALLERY_BATCH
    if big:
        say.start("scoring the gallery", len(sources), unit="image")
    scores = []
    with torch.no_grad():
        q_emb = sim.embed(q_input)
        for begin in batches:
            chunk = sources[begin : begin + GALLERY_BATCH]
            inputs, _, _ = pre([read_source(src)[1] for src in chunk])
            scores.append(sim(q_emb, sim.embed(inputs.to(dev))).cpu())
            if big:
                say.advance(len(chunk))
    if big:
        say.done([])
    return torch.cat(scores).float()


def _decision(loaded: LoadedModel, similarity: str) -> Optional[Dict[str, Any]]:
    if loaded.threshold is None or similarity != "euclidean":
        return None
    t = loaded.threshold
    return {
        "threshold": t,
        "rule": f"dlib's verification rule: the same person when the distance d = -s is below {t}",
        "accept": f"same person (d < {t})",
        "reject": f"different people (d >= {t})",
    }


def _verdict(score: float, decision: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if decision is None:
        return {"verdict": None, "accepted": None}
    accepted = -score < decision["threshold"]
    return {
        "verdict": decision["accept" if accepted else "reject"],
        "accepted": accepted,
        "distance": -score,
    }


def near_identical(score: float, similarity: str, threshold: Optional[float]) -> bool:
    """Whether a pair is so similar that gradient maps of the similarity show
    how to raise it further rather than the evidence for it: a cosine of at
    least :data:`NEAR_IDENTICAL_COSINE`, or a Euclidean distance under half
    the model's verification threshold."""
    if similarity == "cosine":
        return score >= NEAR_IDENTICAL_COSINE
    if similarity == "euclidean" and threshold is not None:
        return -score < threshold / 2
    return False


def _pair_notes(score: float, similarity: str, threshold: Optional[float]) -> List[str]:
    if not near_identical(score, similarity, threshold):
        return []
    why = (
        f"cosine {score:.4f} >= {NEAR_IDENTICAL_COSINE}: the cosine's gradient "
        "(f2/|f2| - s f1/|f1|)/|f1| nearly vanishes"
        if similarity == "cosine"
        else f"distance {-score:.3f} < half the threshold {threshold}: the distance's gradient "
        "points along the small difference f1 - f2"
    )
    return [
        f"Near-identical pair ({why}). Gradient maps of the similarity (gradcam-signed, "
        "captum-gradcam, saliency, smoothgrad, ig) then show what would make the images even "
        "more alike, not the evidence for the match: opposite colours on the two images do not "
        "mean that one image argues against the match. gradcam (ReLU) has no negative part to "
        "misread; for cosine models it uses the pair weighting, which does not vanish."
    ]


def _extra(entry: Dict[str, Any], extra: Any, j: int) -> None:
    """Stores pair ``j``'s part of a method's detailed result (PAIR-X's
    matches, BiLRP's links) in its entry."""
    if extra is None:
        return
    if isinstance(extra, list) and extra and hasattr(extra[0], "points1"):
        result = extra[j]
        plausibility = (
            {k: float(v[0]) for k, v in match_plausibility(result).items()} if len(result) else {}
        )
        entry["matches"] = {
            "count": len(result),
            "plausibility": plausibility,
            **{
                f: as_numpy(getattr(result, f))
                for f in (
                    "points1",
                    "points2",
                    "cells1",
                    "cells2",
                    "distance",
                    "relevance",
                    "layer_relevance1",
                    "layer_relevance2",
                )
            },
            # per-match pixel maps summed over channels (what the figure draws), (k, 1, H, W)
            **{
                f: as_numpy(getattr(result, f).sum(1, keepdim=True))
                for f in ("pixel_relevance1", "pixel_relevance2")
            },
        }
    elif isinstance(extra, dict) and "relevance" in extra:
        entry["links"] = {
            "relevance": as_numpy(extra["relevance"][j]),
            "patch_size": int(extra["patch_size"]),
        }


def _faithfulness(results, sim, q_input, ref_inputs, say) -> str:
    """Insertion and deletion curves of every map, both sides of each pair;
    returns what removed pixels become."""
    side = min(q_input.shape[-2:])
    sigma = max(1.0, round(side / 30, 1))
    fill = f"the image blurred (Gaussian, sigma {sigma:g} px)"
    shorts = list(results["pairs"][0]["methods"]) if results["pairs"] else []
    for short in shorts:
        pairs = results["pairs"]
        todo = [p for p, pair in enumerate(pairs) if pair["methods"][short]["maps"] is not None]
        say.start(f"faithfulness {short}", len(todo))
        for p in todo:
            entry = pairs[p]["methods"][short]
            x1 = q_input
            x2 = ref_inputs[p : p + 1]
            curves = {}
            for which, x, a, ref in (
                ("query", x1, entry["maps"][0], x2),
                ("reference", x2, entry["maps"][1], x1),
            ):
                r = insertion_deletion(
                    sim,
                    x,
                    torch.as_tensor(a)[None].to(x),
                    ref,
                    n_steps=FAITHFULNESS_STEPS,
                    baselines="blur",
                    blur_sigma=sigma,
                    max_examples_per_batch=64,
                )
                curves[which] = {
                    "fractions": as_numpy(r.fractions),
                    "insertion_curve": as_numpy(r.insertion_curve[0]),
                    "deletion_curve": as_numpy(r.deletion_curve[0]),
                    "insertion_auc_normalized": float(r.insertion_auc_normalized[0]),
                    "deletion_auc_normalized": float(r.deletion_auc_normalized[0]),
                    "insertion_auc": float(r.insertion_auc[0]),
                    "deletion_auc": float(r.deletion_auc[0]),
                }
            entry["faithfulness"] = curves
            say.advance(1)
        say.done([])
    return fill


# -- the command line ------------------------------------------------------------


def _method_help() -> str:
    rows = []
    for short, name in short_names().items():
        spec = explainers()[name]
        flag = " [default]" if spec.default else (" [baseline]" if spec.baseline else "")
        rows.append(f"  {short:<15}{name}{flag}: {spec.cost}")
    return "\n".join(rows)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments ``explain`` and ``explain-dataset`` share: the model, layer,
    methods, image preparation, device, seed, threads."""
    parser.add_argument("--model", required=True, metavar="SPEC", help=MODEL_SPEC_FORMS)
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="state dict or checkpoint with 'state_dict' for a module:callable "
        "model (read with torch.load(weights_only=True))",
    )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="dotted name of the layer for layer methods (default: the last block "
        "of the stage of stride 16 or the nearest below it; a ViT's penultimate block)",
    )
    parser.add_argument(
        "--methods",
        default="default",
        metavar="M,...",
        help="methods by short name (listed below); default: the fast ones",
    )
    parser.add_argument(
        "--similarity",
        choices=list(SIMILARITIES),
        default=None,
        help="default: euclidean for dlib-face, else cosine",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=None,
        help=f"resize images to H W (default: the model's size, else "
        f"{DEFAULT_SIZE[0]} {DEFAULT_SIZE[1]})",
    )
    parser.add_argument(
        "--normalize",
        default="none",
        metavar="imagenet|none|MEAN,STD",
        help="input normalisation after resizing (default: none)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        metavar="cpu|cuda|auto",
        help="where the model and every method run (default: cpu)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of torch and numpy (default: 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of torch (default: torch's own, one per core; 1 is "
        "faster on a machine busy with other jobs)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-similarity",
        description="Explain why a similarity model scores images alike.",
    )
    parser.add_argument("--version", action="version", version=f"captum-similarity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain = sub.add_parser(
        "explain",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="explain a query image against reference images or a gallery folder",
        description="Explain a query image against reference images or a gallery folder, and "
        "write report.html, results.json and maps.npz.",
        epilog="methods (--methods, comma-separated; 'default' or 'all'):\n"
        + _method_help()
        + "\n\nsample images (sample:NAME, ship with the install):\n  "
        + ", ".join(sample_names()),
    )
    explain.add_argument("query", metavar="QUERY", help="an image file, or sample:NAME")
    explain.add_argument(
        "references",
        metavar="REFERENCE",
        nargs="+",
        help="image files, sample:NAME entries or folders (a gallery: every image, "
        "recursively, is scored against the query and ranked)",
    )
    _model_arguments(explain)
    explain.add_argument(
        "--top-k",
        type=int,
        default=None,
        metavar="K",
        help=f"explain the K best ranked references (default: {DEFAULT_TOP_K})",
    )
    explain.add_argument(
        "--faithfulness",
        action="store_true",
        help="also draw insertion/deletion curves of every map (about "
        f"{4 * FAITHFULNESS_STEPS} forward passes per method and pair)",
    )
    explain.add_argument(
        "--out",
        type=Path,
        default=Path("captum_similarity_report"),
        metavar="DIR",
        help="output folder (default: captum_similarity_report)",
    )
    dataset = sub.add_parser(
        "explain-dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="explain a list of pairs (PAIRS.csv or an identity folder), sharded under torchrun "
        "and resumable",
        description="Explain every pair of PAIRS.csv (image1,image2[,label], paths relative to "
        "the file) or of pairs drawn from a folder with one sub-folder per identity (--pairs), "
        "with every method, one unit (a chunk of pairs x a method) at a time; write each "
        "unit's rows and maps to --out as it finishes and, at the end, table.csv. Under "
        "torchrun every process takes its share of the units; re-running the same command "
        "skips the finished ones.",
        epilog="examples:\n"
        "  captum-similarity explain-dataset pairs.csv --model my_model.py:build --methods "
        "gradcam,rise --out run1\n"
        "  torchrun --nproc-per-node 2 -m captum_similarity explain-dataset faces/ --pairs "
        "same:50,different:50 --model dlib-face --methods gradcam --faithfulness --out run2\n\n"
        "methods (--methods, comma-separated; 'default' or 'all'):\n" + _method_help(),
    )
    dataset.add_argument(
        "pairs_source",
        metavar="PAIRS",
        help="a CSV file with columns image1,image2[,label], or a folder of identity folders "
        "(with --pairs)",
    )
    dataset.add_argument(
        "--pairs",
        dest="pair_counts",
        metavar="same:N,different:M",
        default=None,
        help="draw this many pairs from an identity folder (reproducibly, with --seed)",
    )
    _model_arguments(dataset)
    dataset.add_argument(
        "--faithfulness",
        action="store_true",
        help="also score every map with insertion and deletion (columns per --fill)",
    )
    dataset.add_argument(
        "--fill",
        default="blur",
        metavar="blur|VALUE,...",
        help="with --faithfulness: what removed pixels become, comma-separated: 'blur' "
        "(Gaussian, --blur-sigma) or a constant in the model's input (default: blur)",
    )
    dataset.add_argument(
        "--blur-sigma", type=float, default=None, metavar="PX",
        help="blur of the 'blur' fill (default: the image side / 30)",
    )
    dataset.add_argument(
        "--steps", type=int, default=FAITHFULNESS_STEPS,
        help=f"insertion/deletion steps (default: {FAITHFULNESS_STEPS})",
    )
    dataset.add_argument(
        "--chunk", type=int, default=CHUNK, help=f"pairs per unit (default: {CHUNK})"
    )
    dataset.add_argument(
        "--image-threads", type=int, default=1, metavar="N",
        help="threads per process that read and prepare images, each a chunk ahead, where "
        "preparing (e.g. dlib's face alignment) is slower than the methods and cores are "
        "free (default: 1)",
    )
    dataset.add_argument(
        "--image-cache", type=Path, default=None, metavar="DIR",
        help="keep prepared images in DIR, by file content and preparation, so that each is "
        "prepared once for all processes and for later runs (worth it where preparing is "
        "slow, e.g. dlib's face alignment; results are the same)",
    )
    dataset.add_argument("--out", type=Path, required=True, metavar="DIR", help="the run folder")
    samples = sub.add_parser(
        "samples",
        help="write the images that ship with the install to a folder",
        description="Write the sample images (astronaut, an altered copy, another face and a few "
        "scikit-image photos) to a folder, as PNG files.",
    )
    samples.add_argument("out", type=Path, metavar="DIR")
    samples.add_argument(
        "--names",
        nargs="+",
        default=None,
        choices=list(sample_names()),
        metavar="NAME",
        help=f"which (default: {', '.join(SAMPLE_SET)})",
    )
    return parser


#: What ``captum-similarity samples`` writes by default: three faces and two
#: photos without one.
SAMPLE_SET = ("astronaut", "astronaut-altered", "cameraman", "chelsea", "coffee")


def _run_samples(args: argparse.Namespace) -> int:
    from skimage import io

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or SAMPLE_SET:
        path = args.out / f"{name}.png"
        io.imsave(path, sample_image(name), check_contrast=False)
        print(f"wrote {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``captum-similarity``; returns the exit status (0: done,
    1: a requested method failed or nothing could be explained, 2: bad
    arguments, images or model)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "samples":
        return _run_samples(args)
    command = "captum-similarity " + " ".join(shlex.quote(a) for a in argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.command == "explain-dataset":
        return _run_dataset(args)
    try:
        results = explain_images(
            args.query,
            args.references,
            args.model,
            weights=args.weights,
            layer=args.layer,
            methods=args.methods,
            similarity=args.similarity,
            size=args.size,
            normalize=args.normalize,
            device=args.device,
            top_k=args.top_k,
            faithfulness=args.faithfulness,
            seed=args.seed,
            command=command,
        )
        tick = time.perf_counter()
        args.out.mkdir(parents=True, exist_ok=True)
        json_path, npz_path = save_results(results, args.out)
        report = build_report(results, args.out / "report.html")
        results["seconds"]["report"] = time.perf_counter() - tick
        save_results(results, args.out)  # with the report's time
    except Exception as err:
        return _failure(err, args.debug)
    _summary(results, report, json_path, npz_path)
    explained = any(
        e["maps"] is not None for pair in results["pairs"] for e in pair["methods"].values()
    )
    if results["failed_methods"] or not explained:
        return 1
    return 0


def _failure(err: BaseException, debug: bool) -> int:
    """One line on standard error (the traceback with ``--debug``); the exit
    status: 2 for a :class:`UsageError`, else 1."""
    if debug:
        traceback.print_exc()
    if isinstance(err, UsageError):
        print(f"captum-similarity: error: {err}", file=sys.stderr)
        return 2
    print(
        f"captum-similarity: error: {error_text(err)} (run with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1


def _run_dataset(args: argparse.Namespace) -> int:
    """``captum-similarity explain-dataset``: the pairs, the methods, then
    :func:`captum_similarity.runs.explain_dataset`."""
    try:
        source = Path(args.pairs_source)
        if source.is_dir():
            if not args.pair_counts:
                raise UsageError(
                    f"{source} is a folder: give --pairs same:N,different:M to draw pairs from "
                    "its identity sub-folders (or a PAIRS.csv file)"
                )
            n_same, n_different = parse_pair_counts(args.pair_counts)
            pairs = draw_identity_pairs(source, n_same, n_different, args.seed)
            drawn = {"drawn": args.pair_counts, "from": str(source)}
        else:
            if args.pair_counts:
                raise UsageError("--pairs draws pairs from an identity folder, not from a CSV file")
            pairs = read_pairs_csv(source)
            drawn = {}
        fills: Dict[str, Union[str, float]] = {}
        if args.faithfulness:
            for item in filter(None, (f.strip() for f in args.fill.split(","))):
                try:
                    fills[item] = item if item == "blur" else float(item)
                except ValueError:
                    raise UsageError(f"--fill takes blur or numbers, got {item!r}") from None
        chosen = _methods(args.methods)
        result = explain_dataset(
            pairs,
            args.model,
            {name: explainers()[name] for name in chosen},
            args.out,
            weights=args.weights,
            layer=args.layer,
            similarity=args.similarity,
            size=args.size,
            normalize=args.normalize,
            device=args.device,
            fills=fills,
            steps=args.steps,
            blur_sigma=args.blur_sigma,
            seed=args.seed,
            chunk=args.chunk,
            image_threads=args.image_threads,
            image_cache=args.image_cache,
            options=drawn,
        )
    except (ValueError, FileNotFoundError) as err:  # the pairs' list: the user's to fix
        return _failure(UsageError(str(err)) if not isinstance(err, UsageError) else err, args.debug)
    except Exception as err:
        return _failure(err, args.debug)
    if result["table"] is not None:
        print(
            f"{result['units']} units ({len(result['skipped'])} finished before this launch), "
            f"{result['failed']} failed rows; table: {result['table']}"
        )
    return 0


def _summary(results: Dict[str, Any], report: Path, json_path: Path, npz_path: Path) -> None:
    for pair in results["pairs"]:
        verdict = f", {pair['verdict']}" if pair.get("verdict") else ""
        print(f"rank {pair['rank']}: {pair['reference']}  s = {pair['score']:.4f}{verdict}")
    for text in results["warnings"]:
        print(f"warning: {text}", file=sys.stderr)
    for text in results["errors"]:
        print(f"error: {text}", file=sys.stderr)
    print(
        f"done in {results['seconds']['total'] + results['seconds'].get('report', 0.0):.1f} s; "
        f"results: {json_path}, maps: {npz_path}"
    )
    print(f"report: {report.resolve()}")


if __name__ == "__main__":
    sys.exit(main())
