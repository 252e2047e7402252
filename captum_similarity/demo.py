"""The main job: explain why a trained similarity model matches a pair of images.

Run ``captum-similarity-demo --out demo_figures`` (or ``python -m
captum_similarity.demo``). Every explainer registered in
:mod:`captum_similarity.explainers` is drawn on both images of each pair.

Faces (needs the ``faces`` extra): dlib's pretrained face-recognition ResNet
(:func:`captum_similarity.models.dlib_face_resnet`) compares scikit-image's
astronaut with an altered copy of herself; with the ORL faces (``--orl``,
default ``../shared/data/orl_faces`` when present) it also explains a typical
correct match and the most confident wrong match of that set.

Stereo (no extra): a small CNN trained self-supervised on scikit-image's
bundled images at first use (cached; see
:func:`captum_similarity.training.demo_models.demo_embedder`) compares crops of the
stereo motorcycle views it never saw in training: corresponding crops of the
left and right camera (a match) and two different parts of the scene, and
ranks a gallery of right-view crops for a left-view query.

With PAIR-X selected (the default: all methods), each face pair and the
stereo match also get a figure of the cells the model matches between the
two images, with the pixels of the best matches (``*_pairx.png``).

Figures are written to the output folder.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from captum.attr import LayerGradCam
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from .branches import split_branches
from .data.orl import load_orl_faces
from .data.pairs import astronaut_pair, notable_pairs
from .data.samples import resize_crop, stereo_pair
from .explainers import explain_pair
from .metrics.match_plausibility import match_plausibility
from .models.dlib_resnet import dlib_face_resnet
from .models.face_preprocess import face_chips
from .figures import to_visualizer_arrays, visualize_matches, visualize_pair
from .figures.annotate import footnote, warn_on_axes
from .pairwise_matching import PairwiseIntermediateMatching
from .siamese import SiameseSimilarity
from .training.demo_models import DEMO_CONFIG, demo_embedder

#: The registered name of PAIR-X: with it selected (or all methods), the demo
#: also draws each pair's matches.
PAIRX = "PairwiseIntermediateMatching (PAIR-X)"

#: Where the ORL faces are in this project's layout (relative to the working directory).
DEFAULT_ORL = Path("../shared/data/orl_faces")

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
    fig = Figure(figsize=(2.2 * (top + 1) + 0.8, 5.4), layout="constrained")
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
        axes[0, k + 1].set_title(f"rank {k + 1}: {label}\ns = {float(scores[idx]):.3f}", fontsize=9)
        axes[1, k + 1].imshow(img)
        peak = float(attr.max())
        if peak > 0:
            axes[1, k + 1].imshow(attr[..., 0] / peak, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        else:
            warn_on_axes(axes[1, k + 1], "all-zero Grad-CAM map: nothing to draw")
        axes[1, k + 1].set_title("Grad-CAM of the hit", fontsize=9)
        for ax in axes[:, k + 1]:
            ax.axis("off")
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), "jet"), ax=axes[1, 1:].tolist(), shrink=0.8)
    bar.set_label("Grad-CAM (ReLU) / its maximum", fontsize=8)
    footnote(fig, "each hit's map is scaled to its own maximum; rank 1 = highest cosine similarity")
    fig.suptitle("Query against a gallery of right-view crops: top hits", fontsize=10)
    fig.savefig(path, dpi=110)
    return [float(s) for s in scores]


def _explain_and_draw(
    sim: SiameseSimilarity, x1: Tensor, x2: Tensor, layer, titles: Tuple[str, str],
    suptitle: str, path: Path, methods: Optional[Sequence[str]],
) -> float:
    start = time.perf_counter()
    maps = explain_pair(sim, x1, x2, layer=layer, methods=methods, include_baselines=False)
    visualize_pair(x1, x2, maps, titles=titles, sign="all", suptitle=suptitle, path=path)
    return time.perf_counter() - start


def _matches_figure(
    sim: SiameseSimilarity, layer, x1: Tensor, x2: Tensor, titles: Tuple[str, str],
    path: Path, methods: Optional[Sequence[str]],
) -> Optional[Dict[str, float]]:
    """PAIR-X's matches of one pair, drawn with the top 5 per-match maps; None
    when PAIR-X is not among ``methods``."""
    if methods is not None and PAIRX not in methods:
        return None
    (result,) = PairwiseIntermediateMatching(sim, layer).explain(x1, x2, k=5)
    plausibility = {key: float(v[0]) for key, v in match_plausibility(result).items()}
    visualize_matches(
        x1, x2, result, titles=titles, path=path, width=5.0,
        suptitle=f"PAIR-X: {len(result)} matches, top 10 agree with one affine map: "
        f"{plausibility['inlier_ratio']:.0%}",
    )  # fmt: skip
    return {"matches": float(len(result)), **plausibility}


def run_stereo(out: Path, methods: Optional[Sequence[str]] = None, steps: Optional[int] = None) -> Dict[str, object]:
    """The stereo section: trains or loads the demo embedder, explains a match,
    a mismatch and a gallery query, writes three figures."""
    model, info = demo_embedder(progress=True, steps=steps)
    sim = SiameseSimilarity(model, "cosine")
    layer = model.features[-1]
    query, match, mismatch, gallery, _ = _stereo_inputs(DEMO_CONFIG["size"])
    report: Dict[str, object] = {"embedder": info, "figures": [], "seconds": {}}
    with torch.no_grad():
        scores = sim(torch.cat([query, query]), torch.cat([match, mismatch]))
    report["match_score"], report["mismatch_score"] = float(scores[0]), float(scores[1])
    for name, x2, score in (("match", match, scores[0]), ("mismatch", mismatch, scores[1])):
        path = out / f"stereo_{name}.png"
        report["seconds"][name] = _explain_and_draw(
            sim, query, x2, layer, ("left view", "right view"),
            f"Why s = {float(score):.3f}? ({name}; cosine, demo embedder)", path, methods,
        )
        report["figures"].append(str(path))
        if name == "match":
            matches_path = out / "stereo_match_pairx.png"
            if _matches_figure(sim, layer, query, x2, ("left view", "right view"),
                               matches_path, methods) is not None:
                report["figures"].append(str(matches_path))
    gallery_path = out / "gallery_top_hits.png"
    report["gallery_scores"] = _gallery_figure(sim, query, gallery, layer, gallery_path)
    report["figures"].append(str(gallery_path))
    return report


def run_faces(out: Path, orl: Optional[Path] = None, methods: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """The face section: dlib's face ResNet on the astronaut pair and, with
    ``orl``, on ORL's typical correct and most confident wrong match."""
    model = dlib_face_resnet()
    sim = SiameseSimilarity(model, "euclidean")
    threshold = model.distance_threshold
    report: Dict[str, object] = {"figures": [], "pairs": {}}

    def draw(name: str, x1: Tensor, x2: Tensor, titles: Tuple[str, str]) -> None:
        with torch.no_grad():
            distance = -float(sim(x1, x2))
        verdict = "same person" if distance < threshold else "different people"
        path = out / f"faces_{name}.png"
        seconds = _explain_and_draw(
            sim, x1, x2, model.layer3, titles,
            f"distance {distance:.3f}: dlib says {verdict} (threshold {threshold})", path, methods,
        )
        report["pairs"][name] = {"titles": titles, "distance": distance, "seconds": seconds}
        report["figures"].append(str(path))
        matches_path = out / f"faces_{name}_pairx.png"
        if _matches_figure(sim, model.layer2, x1, x2, titles, matches_path, methods) is not None:
            report["figures"].append(str(matches_path))

    chips = face_chips(list(astronaut_pair()), align="auto")
    draw("astronaut", chips[:1], chips[1:], ("astronaut", "altered copy"))
    if orl is not None:
        faces = load_orl_faces(orl)
        chips = face_chips(list(faces.images[:, 0].numpy()), align="auto")
        with torch.no_grad():
            emb = sim.embed(chips, batch_size=50)
        for name, (i, j) in notable_pairs(emb, faces.labels, "euclidean").items():
            draw(name, chips[i : i + 1], chips[j : j + 1], (faces.files[i], faces.files[j]))
    return report


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_figures"), help="folder for the figures")
    parser.add_argument("--methods", nargs="*", default=None, help="explainers to run (default: all)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of the stereo embedder (default: the cached configuration)")
    parser.add_argument("--orl", type=Path, default=DEFAULT_ORL,
                        help=f"ORL faces folder for the face section (default: {DEFAULT_ORL}, used when present)")
    parser.add_argument("--skip", choices=["faces", "stereo"], default=None, help="leave one section out")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
    warnings.filterwarnings("ignore", message=".*non-linear.*", category=UserWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.skip != "faces":
        orl = args.orl if args.orl is not None and (args.orl / "s1").is_dir() else None
        if orl is None:
            print(f"ORL faces not found at {args.orl}: the face section shows the astronaut pair only")
        try:
            faces = run_faces(args.out, orl, args.methods)
        except ImportError as err:
            print(f"face section skipped: {err}")
        else:
            for name, pair in faces["pairs"].items():
                print(f"faces, {name}: {pair['titles'][0]} vs {pair['titles'][1]}, "
                      f"distance {pair['distance']:.3f} ({pair['seconds']:.0f} s to explain)")
            for fig in faces["figures"]:
                print(f"wrote {fig}")
    if args.skip != "stereo":
        print_stereo(run_stereo(args.out, args.methods, args.steps))
    print(f"figures are in {args.out.resolve()}")


def print_stereo(report: Dict[str, object]) -> None:
    info = report["embedder"]
    origin = f"loaded from {info['cache_file']}" if info["loaded_from_cache"] else "trained now"
    print(f"demo embedder: {info['config']['arch']}, held-out stereo top-1 under random views "
          f"{info['stereo_top1']:.2f} (untrained {info['stereo_top1_untrained']:.2f}, chance 0.02), "
          f"{info['train_seconds']:.0f} s of training, {origin}")
    print(f"s(query, true match) = {report['match_score']:.3f}; s(query, other part) = {report['mismatch_score']:.3f}")
    for fig in report["figures"]:
        print(f"wrote {fig}")


if __name__ == "__main__":
    main()
