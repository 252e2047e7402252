"""Supported architectures: every method on the torchvision and timm backbones.

For each backbone of ``captum_similarity.models.backbones.BACKBONES``
(random weights, a 128-d linear head, BatchNorm statistics calibrated on the
bundled calibration images at the benchmark's size) and one pair of bundled
images the statistics were not calibrated on, every method runs at the
default layer (``captum_similarity.default_layer``) and the table gives, per
model and method, the time as a ratio to one forward+backward pass of the
pair through ``SiameseSimilarity`` (timed back to back, median of
``--repeats``), the conservation error of the LRP methods
(``|explained - reached| / sum |seed|``, the largest over the rows), or the
error a method stops with. Writes ``benchmarks/results/backbones.md``, which
``docs/backbones.md`` includes.

Usage::

    python benchmarks/methods/backbone_table.py [--size 224] [--repeats 1]
        [--threads 1] [--models timm/resnet50d ...] [--out benchmarks/results/backbones.md]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, forward_backward, median_ratio, results_header, write_results  # noqa: E402

from captum_similarity import (  # noqa: E402
    EmbeddingGradCAM,
    GridView,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    SimilarityRISE,
    default_layer,
)
from captum_similarity.lrp.conservation import ConservationWarning  # noqa: E402
from captum_similarity.models.backbones import BACKBONES, backbone, held_out_images  # noqa: E402

#: Method -> (what the column shows).
METHODS = {
    "EmbeddingGradCAM": "pair of maps at the default layer",
    "LayerGradCam": "Captum's, through the wrapper, on the GridView of the default layer",
    "IntegratedGradients": "Captum's, through the wrapper, n_steps=32, both images",
    "LRPRelevancePairing": "first order, both images",
    "BiLRP": "attribute_pairwise, projection_dim=8",
    "PAIR-X": "explain, k=10, at the default layer",
    "SimilarityRISE": "100 masks",
    "Captum LRP": "captum.attr.LRP through the wrapper (first image)",
}


def _captum_lrp(sim: SiameseSimilarity, x1: torch.Tensor, x2: torch.Tensor) -> Callable[[], float]:
    from captum.attr import LRP

    def run() -> float:
        r = LRP(sim).attribute(x1, additional_forward_args=(x2,))
        with torch.no_grad():
            f1, f2 = sim.embed(x1), sim.embed(x2)
        c = sim.similarity.contribution(f1, f2)
        return float((c.sum(1) - r.sum((1, 2, 3))).abs().max() / c.abs().sum(1).max())

    return run


def cases(name: str, size: int) -> Tuple[Callable[[], None], Dict[str, Callable[[], Optional[float]]], str]:
    """The unit, the methods (each returning its conservation error or None) and
    the default layer, for one backbone."""
    from captum.attr import IntegratedGradients, LayerGradCam

    model = backbone(name, image_size=size)
    sim = SiameseSimilarity(model, "cosine")
    x1, x2 = held_out_images(size).split(1)
    layer = default_layer(model, x1)
    unit = forward_backward(sim, x1, x2)
    egc = EmbeddingGradCAM(sim)
    view = GridView(sim)
    lgc = LayerGradCam(view, view.grid)
    ig = IntegratedGradients(sim)
    lrp = LRPRelevancePairing(sim)
    pairx = PairwiseIntermediateMatching(sim)
    rise = SimilarityRISE(sim)

    def first_order() -> float:
        lrp.attribute((x1, x2))
        return lrp.conservation.max_relative_error

    def bilrp() -> float:
        lrp.attribute_pairwise((x1, x2), projection_dim=8)
        return lrp.conservation.max_relative_error

    def pairx_explain() -> float:
        (match,) = pairx.explain(x1, x2, k=10)
        return max(match.layer_conservation_error, match.pixel_conservation_error)

    methods = {
        "EmbeddingGradCAM": _no_error(lambda: egc.attribute((x1, x2))),
        "LayerGradCam": _no_error(lambda: lgc.attribute(x1, additional_forward_args=(x2,))),
        "IntegratedGradients": _no_error(lambda: ig.attribute((x1, x2), n_steps=32)),
        "LRPRelevancePairing": first_order,
        "BiLRP": bilrp,
        "PAIR-X": pairx_explain,
        "SimilarityRISE": _no_error(lambda: rise.attribute((x1, x2), n_masks=100, seed=0)),
        "Captum LRP": _captum_lrp(sim, x1, x2),
    }
    return unit, methods, f"`{layer.name}` {layer.layout.replace('_', '-')} {layer.grid[0]}x{layer.grid[1]}"


def _no_error(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` for a method without a conservation error to report."""

    def run() -> None:
        fn()

    return run


def _failure(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    found = re.search(r"Module of type <class '(?:[\w.]*\.)?(\w+)'> has no rule", text)
    if found:  # Captum's LRP
        return f"fails: no rule for {found.group(1)}"
    found = re.search(r"no rule for module '[^']*' \((\w+)\)", text)
    if found:
        return f"fails: no rule for {found.group(1)}"
    return f"fails: {type(err).__name__}: {text[:60]}"


def _percent(error: float) -> str:
    """``error`` as a percentage, in scientific notation when huge (Captum's LRP
    on models whose modules it handles wrongly without an error)."""
    return f"{error:.1%}" if error < 10 else f"{error * 100:.1e}%"


def measure(name: str, size: int, repeats: int) -> Dict[str, str]:
    start = time.perf_counter()
    unit, methods, layer = cases(name, size)
    row = {"layer": layer}
    unit()  # warm: the first call of a model pays one-time costs
    for method, fn in methods.items():
        errors: List[Optional[float]] = []  # each timed call's conservation error
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConservationWarning)
                ratio = median_ratio(lambda: errors.append(fn()), unit, repeats=repeats, warmup=0)
        except Exception as err:  # noqa: BLE001  (a failure is a result here)
            row[method] = _failure(err)
        else:
            error = errors[-1]
            row[method] = f"{ratio:.1f}x" + ("" if error is None else f", {_percent(error)}")
        print(f"{name}: {method} {row[method]}", flush=True)
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return row


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(BACKBONES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backbones.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {name: measure(name, args.size, args.repeats) for name in args.models}
    lines = results_header(command_line(__file__, argv)) + [
        "",
        f"One pair of {args.size}x{args.size} images, float32, cosine, random weights with "
        "calibrated BatchNorm statistics. Each cell: time as a ratio to one forward+backward "
        "pass of the pair, then for the LRP methods the conservation error "
        "(|explained - reached| / sum |seed|, largest over rows); \"fails\": the error the "
        "method stops with.",
        "",
        "| model | family | default layer | " + " | ".join(METHODS) + " |",
        "|---" * (len(METHODS) + 3) + "|",
    ]
    for name, row in rows.items():
        cells = " | ".join(row.get(m, "") for m in METHODS)
        lines.append(f"| {name} | {BACKBONES[name].family} | {row['layer']} | {cells} |")
    lines += ["", "Columns:", ""] + [f"- {m}: {what}." for m, what in METHODS.items()]
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
