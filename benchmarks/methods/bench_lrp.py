"""Speed of LRPRelevancePairing, as ratios to one forward+backward pass.

For each reference model (float32, eval) and a batch of N image pairs, times:

- ``fwd+bwd``: one forward and backward pass of ``SiameseSimilarity`` on the
  batch (the unit of every ratio);
- ``attribute``: first-order relevance of both images;
- ``Captum LRP``: Captum's own ``LRP`` on the same ``SiameseSimilarity``
  (the alternative; it fails on models it cannot handle, reported as such);
- ``BiLRP``: ``attribute_pairwise`` with all D embedding dimensions, and with a
  random projection to K dimensions;
- 1-vs-N BiLRP: one query against N gallery images, with the query's maps
  computed once, against the same N pairs explained one at a time.

Run from the repository root::

    python benchmarks/methods/bench_lrp.py            # writes benchmarks/results/lrp.md
    python benchmarks/methods/bench_lrp.py --quick    # fewer repeats, no file
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, List

import torch
from captum.attr import LRP

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shared_models import LRP_MODELS as MODELS  # noqa: E402  # the reference models, by kind
from timing import forward_backward, machine, median_ratio, median_seconds  # noqa: E402

from captum_similarity import LRPRelevancePairing, SiameseSimilarity  # noqa: E402


def captum_lrp(sim: SiameseSimilarity, x1: torch.Tensor, x2: torch.Tensor) -> None:
    LRP(sim).attribute((x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)))


def bench(kind: str, n: int, size: int, k: int, repeats: int) -> List[str]:
    torch.manual_seed(0)
    embedder = MODELS[kind](size).eval()
    sim = SiameseSimilarity(embedder, "cosine")
    lrp = LRPRelevancePairing(sim)
    x1, x2 = torch.rand(n, 3, size, size), torch.rand(n, 3, size, size)
    unit = forward_backward(sim, x1, x2)

    def ratio(fn: Callable[[], object]) -> float:
        return median_ratio(fn, unit, repeats)

    try:
        captum = f"{ratio(lambda: captum_lrp(sim, x1, x2)):.1f}x"
    except Exception as err:  # Captum's LRP refuses most models: report why
        found = re.search(r"\.(\w+)'>", str(err))
        captum = f"fails: no rule for {found.group(1)}" if found else f"fails: {type(err).__name__}"
    first = ratio(lambda: lrp.attribute((x1, x2)))
    full = ratio(lambda: lrp.attribute_pairwise((x1, x2)))
    proj = ratio(lambda: lrp.attribute_pairwise((x1, x2), projection_dim=k))
    query = x1[:1]
    reuse = ratio(lambda: lrp.attribute_pairwise((query, x2)))
    one_by_one = ratio(lambda: [lrp.attribute_pairwise((query, x2[i : i + 1])) for i in range(n)])
    d = embedder(x1[:1]).shape[1]
    return [
        f"| {kind} | {median_seconds(unit, repeats) * 1e3:.1f} ms | {first:.1f}x | {captum} "
        f"| {full:.1f}x (D={d}) | {proj:.1f}x (K={k}) | {reuse:.1f}x | {one_by_one:.1f}x |"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--projection", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 repeats, print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else args.repeats
    lines = [
        "# LRPRelevancePairing speed",
        "",
        f"Command: `python benchmarks/methods/bench_lrp.py --pairs {args.pairs} --size {args.size} "
        f"--projection {args.projection} --repeats {repeats} --threads {args.threads}`",
        "",
        f"Machine: {machine()}. float32, cosine similarity, composite `epsilon_plus`. "
        f"Batch: {args.pairs} pairs of {args.size}x{args.size} RGB images. Times are medians "
        f"of {repeats} rounds of the ratio to one forward+backward pass of the same pairs, "
        "timed back to back (the fwd+bwd column is its median time).",
        "",
        "| model | fwd+bwd | attribute | Captum LRP | BiLRP | BiLRP projected "
        "| BiLRP 1-vs-N, query reused | BiLRP 1-vs-N, pair by pair |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in MODELS:
        lines += bench(kind, args.pairs, args.size, args.projection, repeats)
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if not args.quick:
        out = ROOT / "benchmarks" / "results" / "lrp.md"
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
