"""Cost of explaining through SiameseSimilarity, as ratios to one forward+backward.

Compares, on the ResNet reference model at 64x64 with 16 pairs:
- IntegratedGradients (32 steps) against a batch-1 reference given as an
  image (embedded once per call: no hook watches the encoder), as a
  precomputed embedding, and through a naive hand-written wrapper that runs
  the encoder twice with the reference repeated for every query;
- Grad-CAM of both images from one interleaved pass (LayerGradCam +
  split_branches) against two per-branch calls (BranchLayerAttribution);
- one query against a gallery of 256: similarity_matrix against a loop of
  forward calls.

Usage: python benchmarks/methods/bench_wrapper.py [--out benchmarks/results/wrapper.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from captum.attr import IntegratedGradients, LayerGradCam

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from captum_similarity import BranchLayerAttribution, SiameseSimilarity, split_branches  # noqa: E402
from captum_similarity.models import ResNetEmbedder  # noqa: E402
from timing import forward_backward, machine, median_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "wrapper.md")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNetEmbedder().eval()
    sim = SiameseSimilarity(model, "cosine")
    n = args.pairs
    x, ref = torch.rand(n, 3, 64, 64), torch.rand(1, 3, 64, 64)
    ref_emb = sim.embed(ref).detach()
    unit = median_seconds(forward_backward(sim, x, ref.expand(n, -1, -1, -1)), args.repeats)

    def naive(a, b):
        return torch.cosine_similarity(model(a), model(b))

    ig = IntegratedGradients(sim)
    rows = []

    def add(name, fn, note=""):
        t = median_seconds(fn, args.repeats)
        rows.append((name, t, t / unit, note))

    add("IG, reference as image (batch 1)", lambda: ig.attribute(x, additional_forward_args=(ref,), n_steps=32))
    add("IG, reference as embedding", lambda: ig.attribute(x, additional_forward_args=(ref_emb,), n_steps=32))
    add("IG, naive wrapper, reference repeated", lambda: IntegratedGradients(naive).attribute(
        x, additional_forward_args=(ref.expand(n, -1, -1, -1).contiguous(),), n_steps=32))
    x2 = torch.rand(n, 3, 64, 64)
    add("Grad-CAM both images, one pass + split_branches",
        lambda: split_branches(LayerGradCam(sim, model.layer3).attribute(x, additional_forward_args=(x2,))))
    add("Grad-CAM both images, BranchLayerAttribution (2 calls)",
        lambda: BranchLayerAttribution(LayerGradCam, sim, model.layer3).attribute((x, x2)))
    gallery = torch.rand(256, 3, 64, 64)
    with torch.no_grad():
        add("1 query vs 256: similarity_matrix", lambda: sim.similarity_matrix(ref, gallery), "no grad")
        add("1 query vs 256: loop of forward calls", lambda: [sim(ref, g[None]) for g in gallery], "no grad")

    lines = [
        "# SiameseSimilarity cost",
        "",
        f"Command: `python benchmarks/methods/bench_wrapper.py` ({n} pairs, ResNetEmbedder, 64x64, "
        f"median of {args.repeats}). Machine: {machine()}.",
        "",
        f"Unit: one forward+backward of the {n} pairs through the wrapper = {unit * 1000:.1f} ms.",
        "",
        "| what | seconds | x forward+backward | note |",
        "| --- | ---: | ---: | --- |",
    ] + [f"| {name} | {t:.3f} | {r:.1f} | {note} |" for name, t, r, note in rows]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
