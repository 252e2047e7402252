"""The main job: explain why a trained embedder matches a pair of images.

Run ``captum-similarity-demo --out demo_figures`` (or ``python -m
captum_similarity.demo``). It trains the small demo embedder on scikit-image's
bundled images at first use (cached afterwards; see
:func:`captum_similarity.models.trained.demo_embedder`), then explains, with
every registered explainer, two pairs from the stereo motorcycle views that
the embedder never saw in training: corresponding crops of the left and right
camera (a match), and two different parts of the scene (a mismatch). It also
ranks a small gallery of right-view crops for a left-view query and draws the
Grad-CAM maps of the top hits. Figures are written to the output folder.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from captum.attr import LayerGradCam
from matplotlib.figure import Figure
from torch import Tensor

from .branches import split_branches
from .data.samples import resize_crop, stereo_pair
from .explainers import explain_pair
from .models.trained import DEMO_CONFIG, demo_embedder
from .siamese import SiameseSimilarity
from .visualization import to_visualizer_arrays, visualize_pair

#: (top, left, side) of the explained region in the left view: tank and engine.
MATCH_BOX = (150, 330, 192)
#: A region of the right view showing a different part of the scene (rear wheel).
MISMATCH_BOX = (250, 90, 192)


def _stereo_inputs(size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, List[Tuple[int, int]]]:
    left, right, disparity = stereo_pair()
    top, col, side = MATCH_BOX
    d = disparity[top : top + side, col : col + side]
    shift = int(round(float(d[torch.isfinite(d)].median())))
    query = resize_crop(left, top, col, side, side, (size, size))[None]
    match = resize_crop(right, top, col - shift, side, side, (size, size))[None]
    mtop, mcol, mside = MISMATCH_BOX
    mismatch = resize_crop(right, mtop, mcol, mside, mside, (size, size))[None]
    # a gallery of right-view crops on a grid, the true match among them
    boxes = [(top, col - shift)] + [
        (t, c) for t in (40, 150, 280) for c in (60, 260, 480) if abs(t - top) + abs(c - col) > 120
    ]
    gallery = torch.stack([resize_crop(right, t, c, side, side, (size, size)) for t, c in boxes])
    return query, match, mismatch, gallery, boxes


def _gallery_figure(sim: SiameseSimilarity, query: Tensor, gallery: Tensor, layer, path: Path, top: int = 4) -> List[float]:
    with torch.no_grad():
        scores = sim.similarity_matrix(query, gallery)[0]
    order = torch.argsort(scores, descending=True)[:top]
    hits = gallery[order]
    maps = LayerGradCam(sim, layer).attribute(
        query.expand(len(hits), -1, -1, -1), additional_forward_args=(hits,), relu_attributions=True
    )
    q_maps, g_maps = split_branches(maps.detach())
    fig = Figure(figsize=(2.2 * (top + 1), 4.6))
    axes = fig.subplots(2, top + 1, squeeze=False)
    q_img = to_visualizer_arrays(q_maps[0], query[0])[1]
    axes[0, 0].imshow(q_img)
    axes[0, 0].set_title("query (left view)", fontsize=9)
    axes[1, 0].axis("off")
    axes[0, 0].axis("off")
    for k, idx in enumerate(order.tolist()):
        attr, img = to_visualizer_arrays(g_maps[k], hits[k])
        axes[0, k + 1].imshow(img)
        label = "true match" if idx == 0 else f"gallery #{idx}"
        axes[0, k + 1].set_title(f"{label}\ns = {float(scores[idx]):.3f}", fontsize=9)
        axes[1, k + 1].imshow(img)
        axes[1, k + 1].imshow(attr[..., 0], cmap="jet", alpha=0.5)
        axes[1, k + 1].set_title("Grad-CAM of the hit", fontsize=9)
        for ax in axes[:, k + 1]:
            ax.axis("off")
    fig.suptitle("Query against a gallery of right-view crops: top hits", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return [float(s) for s in scores]


def run(out: Path, methods: Optional[Sequence[str]] = None, steps: Optional[int] = None) -> Dict[str, object]:
    """Trains or loads the demo embedder, explains the demo pairs, writes figures.

    Returns:
        dict: scores, timings and the figure paths.
    """
    out.mkdir(parents=True, exist_ok=True)
    model, info = demo_embedder(progress=True, steps=steps)
    size = DEMO_CONFIG["size"]
    sim = SiameseSimilarity(model, "cosine")
    layer = model.features[-1]
    query, match, mismatch, gallery, _ = _stereo_inputs(size)
    report: Dict[str, object] = {"embedder": info, "figures": []}
    with torch.no_grad():
        scores = sim(torch.cat([query, query]), torch.cat([match, mismatch]))
    report["match_score"], report["mismatch_score"] = float(scores[0]), float(scores[1])
    timings: Dict[str, float] = {}
    for name, x2, score in (("match", match, scores[0]), ("mismatch", mismatch, scores[1])):
        start = time.perf_counter()
        maps = explain_pair(sim, query, x2, layer=layer, methods=methods)
        timings[name] = time.perf_counter() - start
        path = out / f"stereo_{name}.png"
        visualize_pair(
            query, x2, maps, titles=("left view", "right view"), path=path,
            suptitle=f"Why s = {float(score):.3f}? ({name}; cosine, demo embedder)",
        )
        report["figures"].append(str(path))
    report["seconds"] = timings
    gallery_path = out / "gallery_top_hits.png"
    report["gallery_scores"] = _gallery_figure(sim, query, gallery, layer, gallery_path)
    report["figures"].append(str(gallery_path))
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_figures"), help="folder for the figures")
    parser.add_argument("--methods", nargs="*", default=None, help="explainers to run (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the cached configuration)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
    warnings.filterwarnings("ignore", message=".*non-linear.*", category=UserWarning)
    report = run(args.out, args.methods, args.steps)
    info = report["embedder"]
    origin = f"loaded from {info['cache_file']}" if info["loaded_from_cache"] else "trained now"
    print(f"demo embedder: {info['config']['arch']}, held-out stereo top-1 under random views "
          f"{info['stereo_top1']:.2f} (untrained {info['stereo_top1_untrained']:.2f}, chance 0.02), "
          f"{info['train_seconds']:.0f} s of training, {origin}")
    print(f"s(query, true match) = {report['match_score']:.3f}; s(query, other part) = {report['mismatch_score']:.3f}")
    for fig in report["figures"]:
        print(f"wrote {fig}")
    print(f"figures are in {args.out.resolve()}")


if __name__ == "__main__":
    main()
