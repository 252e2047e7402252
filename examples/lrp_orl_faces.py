"""LRPRelevancePairing on ORL faces with the trained ORL embedder: the relevance
of both images (R1, R2) and the strongest BiLRP patch links, for a matching
pair (two photos of s31) and a non-matching pair (s31 and the held-out person
whose first photo is least similar to it).

Usage: python examples/lrp_orl_faces.py [--orl PATH] [--out docs/figures/lrp_orl.png]
(--orl defaults to $CAPTUM_SIMILARITY_ORL, else ../shared/data/orl_faces)

The embedder (captum_similarity.training.demo_models.orl_embedder: a small ResNet
trained on subjects s1..s30, cached after the first run) never saw the
subjects shown here (s31..s40).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from captum.attr import visualization as viz
from matplotlib.figure import Figure

from captum_similarity import LRPRelevancePairing, to_visualizer_arrays
from captum_similarity.data import load_orl_faces
from captum_similarity.figures import visualize_links
from captum_similarity.training.demo_models import ORL_CONFIG, orl_embedder

ROOT = Path(__file__).resolve().parents[1]
ORL_DEFAULT = ROOT.parent / "shared" / "data" / "orl_faces"
PATCH = 6


def face(faces, subject: int, image: int) -> torch.Tensor:
    return faces.images[faces.files.index(f"s{subject}/{image}.pgm")][None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orl", default=os.environ.get("CAPTUM_SIMILARITY_ORL", str(ORL_DEFAULT)))
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "lrp_orl.png"))
    parser.add_argument("--links", type=int, default=8)
    parser.add_argument("--composite", default="gamma", help="LRP preset (default: gamma + z^B)")
    args = parser.parse_args()
    model, info = orl_embedder(args.orl)
    print(f"ORL embedder: held-out recall@1 {info['recall_at_1']:.3f}")
    faces = load_orl_faces(args.orl, size=tuple(ORL_CONFIG["size"]))
    lrp = LRPRelevancePairing(model, "cosine", composite=args.composite, input_bounds=(0.0, 1.0))
    query = face(faces, 31, 1)
    others = torch.cat([face(faces, subject, 1) for subject in range(32, 41)])
    with torch.no_grad():
        other = 32 + int(lrp.forward_func(query, others).argmin())
    pairs = {
        "same person (s31)": (query, face(faces, 31, 6)),
        f"different people (s31, s{other})": (query, face(faces, other, 1)),
    }
    fig = Figure(figsize=(7.2, 2.5 * len(pairs)))
    axes = fig.subplots(len(pairs), 3, gridspec_kw={"width_ratios": [1, 1, 2.1]})
    for row, (title, (x1, x2)) in enumerate(pairs.items()):
        (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
        links, delta_links = lrp.attribute_pairwise(
            (x1, x2), patch_size=PATCH, return_convergence_delta=True
        )
        score = float(delta[0, 0] + r1.sum())
        print(
            f"{title}: s = {score:.3f}, s - sum R1 = {delta[0, 0]:.2e}, s - sum R2 = "
            f"{delta[0, 1]:.2e}, s - sum BiLRP = {delta_links[0]:.2e}"
        )
        for col, (x, r, name) in enumerate(((x1, r1, "R1"), (x2, r2, "R2"))):
            attr, img = to_visualizer_arrays(r, x)
            viz.visualize_image_attr(
                attr,
                img,
                method="blended_heat_map",
                sign="all",
                alpha_overlay=0.7,
                plt_fig_axis=(fig, axes[row, col]),
                use_pyplot=False,
            )
            axes[row, col].set_title(f"{name}, sum {float(r.sum()):.3f}", fontsize=8)
        visualize_links(x1, x2, links, PATCH, k=args.links, ax=axes[row, 2])
        axes[row, 2].set_title(f"{title}: s = {score:.3f}, strongest links", fontsize=8)
    fig.suptitle(
        f"LRP ({args.composite}, z^B input) of the cosine similarity, trained ORL embedder",
        fontsize=9,
    )
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
