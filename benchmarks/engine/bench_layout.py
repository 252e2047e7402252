"""Channels-last against the layout given, for the LRP engine's passes.

For each reference model (float32, eval, random weights) and a batch of 8
image pairs at 64x64, each entry is the median over rounds of the ratio
``time(channels_last=True) / time(channels_last=False)`` of one method, the
two timed back to back (below 1: channels-last is faster):

- ``attribute``: ``LRPRelevancePairing.attribute`` on the 8 pairs
  (first-order relevance, one backward pass);
- ``BiLRP, 8 pairs`` and ``BiLRP, 1 pair``: ``attribute_pairwise`` with all
  embedding dimensions (vmapped backward passes), on the batch and on its
  first pair;
- ``PAIR-X explain k=10``: ``PairwiseIntermediateMatching.explain`` on the
  first pair (ViT excluded: its token grid is no image layout).

It says where the engine's default (channels-last on a CPU only for models
with grouped convolutions) comes from. PAIR-X at 224x224 is in
``bench_pairx.py``.

Usage::

    python benchmarks/engine/bench_layout.py [--repeats 5] [--threads 1]
        [--out benchmarks/results/layout.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shared_models import LRP_MODELS as MODELS  # noqa: E402  # the reference models, by kind
from timing import command_line, machine, median_ratio  # noqa: E402

from captum_similarity import (  # noqa: E402
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
)

SIZE = 64
LAYERS: Dict[str, Optional[str]] = {
    "cnn": "features.3",
    "resnet": "layer2",
    "efficientnet": "blocks.2",
    "vit": None,
}
COLUMNS = ["attribute", "BiLRP, 8 pairs", "BiLRP, 1 pair", "PAIR-X explain k=10"]


def grouped(model: nn.Module) -> bool:
    """Whether ``model`` holds a grouped (e.g. depthwise) 2-D convolution: the
    models that ``LRPEngine(channels_last=None)`` runs channels-last on a CPU
    (its documented default)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def measure(kind: str, repeats: int) -> Dict[str, Optional[float]]:
    torch.manual_seed(0)
    model = MODELS[kind](SIZE).eval()
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(8, 3, SIZE, SIZE, generator=g) for _ in range(2))
    sim = SiameseSimilarity(model, "cosine")
    lrp = {flag: LRPRelevancePairing(sim) for flag in (True, False)}
    for flag, explainer in lrp.items():
        explainer.engine.channels_last = flag
    cases: Dict[str, Dict[bool, Callable[[], object]]] = {
        "attribute": {f: (lambda e=e: e.attribute((x1, x2))) for f, e in lrp.items()},
        "BiLRP, 8 pairs": {f: (lambda e=e: e.attribute_pairwise((x1, x2))) for f, e in lrp.items()},
        "BiLRP, 1 pair": {
            f: (lambda e=e: e.attribute_pairwise((x1[:1], x2[:1]))) for f, e in lrp.items()
        },
    }
    if LAYERS[kind] is not None:
        pairx = {flag: PairwiseIntermediateMatching(model, LAYERS[kind]) for flag in (True, False)}
        for flag, explainer in pairx.items():
            explainer.engine.channels_last = flag
        cases["PAIR-X explain k=10"] = {
            f: (lambda p=p: p.explain(x1[:1], x2[:1], k=10)) for f, p in pairx.items()
        }
    out: Dict[str, Optional[float]] = {c: None for c in COLUMNS}
    for case, fns in cases.items():
        out[case] = median_ratio(fns[True], fns[False], repeats=repeats)
        print(f"{kind}: {case} {out[case]:.2f}", flush=True)
    return out


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "layout.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {kind: measure(kind, args.repeats) for kind in MODELS}
    command = command_line(__file__, argv)
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}.",
        "",
        "Time channels-last / time on the layout given (medians of ratios timed back to "
        f"back; below 1: channels-last is faster). 8 pairs of {SIZE}x{SIZE} RGB images, "
        "float32, random weights.",
        "",
        "| model | grouped convolutions | " + " | ".join(COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for kind, r in results.items():
        model = MODELS[kind](SIZE)
        cells = " | ".join("-" if r[c] is None else f"{r[c]:.2f}" for c in COLUMNS)
        lines.append(f"| {kind} | {'yes' if grouped(model) else 'no'} | {cells} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
