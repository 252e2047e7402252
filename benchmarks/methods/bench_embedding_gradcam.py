"""Cost of EmbeddingGradCAM, as ratios to one forward+backward and to per-pair loops.

On the ResNet reference model at 64x64 (float32, eval mode):
- maps of both images of 16 pairs (pair and similarity weightings, and
  Captum's LayerGradCam + split_branches for comparison), divided by one
  forward+backward pass of the same 16 pairs through SiameseSimilarity
  (target <= 1.2);
- gallery mode, one query against 256 references, against a loop of 256
  per-pair ``attribute`` calls (target >= 20x), with the references given as
  precomputed embeddings (query maps only) and as images (maps of both).

Usage: python benchmarks/methods/bench_embedding_gradcam.py
       [--out benchmarks/results/embedding_gradcam.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from captum.attr import LayerGradCam

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from captum_similarity import EmbeddingGradCAM, SiameseSimilarity, split_branches  # noqa: E402
from captum_similarity.models import ResNetEmbedder  # noqa: E402
from timing import forward_backward, machine, median_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "embedding_gradcam.md"
    )
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--gallery", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNetEmbedder().eval()
    sim = SiameseSimilarity(model, "cosine")
    cam = EmbeddingGradCAM(sim, model.layer3)
    n = args.pairs
    x1, x2 = torch.rand(n, 3, 64, 64), torch.rand(n, 3, 64, 64)
    unit = median_seconds(forward_backward(sim, x1, x2), args.repeats)

    pair_rows = []
    for name, fn in (
        ("EmbeddingGradCAM, pair weighting", lambda: cam.attribute((x1, x2))),
        ("EmbeddingGradCAM, similarity weighting", lambda: cam.attribute((x1, x2), weighting="similarity")),
        ("Captum LayerGradCam + split_branches", lambda: split_branches(
            LayerGradCam(sim, model.layer3).attribute(x1, additional_forward_args=(x2,)))),
    ):
        t = median_seconds(fn, args.repeats)
        pair_rows.append((name, t, t / unit))

    query, refs = torch.rand(1, 3, 64, 64), torch.rand(args.gallery, 3, 64, 64)
    with torch.no_grad():
        ref_emb = sim.embed(refs)
    loops = max(1, args.repeats // 2)
    gallery_rows = []
    for label, gallery, chunk, per_pair in (
        ("references as embeddings (query maps)", ref_emb, None,
         lambda r: cam.attribute(query, additional_forward_args=(ref_emb[r : r + 1],))),
        ("references as images (maps of both), one batch", refs, None,
         lambda r: cam.attribute((query, refs[r : r + 1]))),
        ("references as images (maps of both), batch_size=32", refs, 32,
         lambda r: cam.attribute((query, refs[r : r + 1]))),
    ):
        batched = median_seconds(
            lambda g=gallery, c=chunk: cam.attribute_gallery(query, g, batch_size=c), args.repeats)
        looped = median_seconds(lambda f=per_pair: [f(r) for r in range(len(refs))], loops)
        gallery_rows.append((label, batched, looped, looped / batched))

    with torch.no_grad():
        floor = median_seconds(lambda: sim.embed(refs, batch_size=32), args.repeats)

    lines = [
        "# EmbeddingGradCAM cost",
        "",
        "Command: `python benchmarks/methods/bench_embedding_gradcam.py` "
        "(ResNetEmbedder, 64x64, float32, "
        f"median of {args.repeats}; loops median of {loops}). Machine: {machine()}.",
        "",
        f"Unit: one forward+backward of the {n} pairs through SiameseSimilarity = {unit * 1000:.1f} ms.",
        "",
        f"## Both maps of {n} pairs",
        "",
        "| what | seconds | x forward+backward |",
        "| --- | ---: | ---: |",
    ] + [f"| {name} | {t:.4f} | {r:.2f} |" for name, t, r in pair_rows] + [
        "",
        f"## One query against {args.gallery} references",
        "",
        "| references | attribute_gallery (s) | loop of per-pair attribute calls (s) | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ] + [f"| {label} | {b:.4f} | {lp:.3f} | {r:.0f}x |" for label, b, lp, r in gallery_rows] + [
        "",
        f"For scale: embedding the {args.gallery} reference images alone (forward pass in "
        f"batches of 32, no gradient) takes {floor:.4f} s, the floor of any method that maps the "
        "references; a loop of pairs embeds 2 images per reference.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
