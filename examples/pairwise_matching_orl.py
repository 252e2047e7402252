"""PAIR-X on ORL faces with the trained ORL embedder: which parts of two faces
does the model match, which pixels make each match, and how plausible are
the matches geometrically?

Usage: python examples/pairwise_matching_orl.py [--orl PATH] [--layer layer2] [--k 5]
       [--out-dir docs/figures]
(--orl defaults to $CAPTUM_SIMILARITY_ORL, else ../shared/data/orl_faces)

The embedder (captum_similarity.training.demo_models.orl_embedder: a small ResNet
trained on subjects s1..s30, cached after the first run) never saw the
subjects shown here: two photos of s31, and s31 against the held-out person
whose first photo the model finds most similar to it (the hardest impostor).
Writes pairx_orl_same.png, pairx_orl_same_raw.png (overlay hidden) and
pairx_orl_different.png.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from captum_similarity import PairwiseIntermediateMatching, candidate_layers, visualize_matches
from captum_similarity.data import load_orl_faces
from captum_similarity.metrics import match_plausibility
from captum_similarity.training.demo_models import ORL_CONFIG, orl_embedder

ROOT = Path(__file__).resolve().parents[1]
ORL_DEFAULT = ROOT.parent / "shared" / "data" / "orl_faces"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orl", default=os.environ.get("CAPTUM_SIMILARITY_ORL", str(ORL_DEFAULT)))
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--k", type=int, default=5, help="matches explained down to the pixels")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "figures"))
    args = parser.parse_args()
    model, info = orl_embedder(args.orl)
    print(f"ORL embedder: held-out recall@1 {info['recall_at_1']:.3f}")
    faces = load_orl_faces(args.orl, size=tuple(ORL_CONFIG["size"]))

    def face(subject: int, image: int) -> torch.Tensor:
        return faces.images[faces.files.index(f"s{subject}/{image}.pgm")][None]

    for layer in candidate_layers(model, face(31, 1)):
        if "." not in layer.name:
            print(f"candidate layer {layer.name}: {layer.type}, cells {layer.grid}")
    pairx = PairwiseIntermediateMatching(model, args.layer, "cosine")
    query = face(31, 1)
    others = torch.cat([face(subject, 1) for subject in range(32, 41)])
    with torch.no_grad():
        other = 32 + int(pairx.model(query, others).argmax())
    pairs = {
        "same": ("same person (s31)", query, face(31, 6)),
        "different": (f"different people (s31, s{other})", query, face(other, 1)),
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, (title, x1, x2) in pairs.items():
        (result,) = pairx.explain(x1, x2, k=args.k)
        scores = {name: float(value[0]) for name, value in match_plausibility(result).items()}
        print(
            f"{title}: s = {result.score:.3f}, {len(result)} matches; top 10: inlier ratio "
            f"{scores['inlier_ratio']:.2f}, residual {scores['residual']:.1f} px; relevance on "
            f"matches {scores['relevance_on_matches']:.2f}"
        )
        for j in range(3):
            (r1, c1), (r2, c2) = result.cells1[j].tolist(), result.cells2[j].tolist()
            print(
                f"  match {j + 1}: cell ({r1}, {c1}) <-> ({r2}, {c2}), distance "
                f"{float(result.distance[j]):.2f}, relevance {float(result.relevance[j]):.2e}"
            )
        suptitle = (
            f"PAIR-X at {args.layer}, {title}: s = {result.score:.3f}; inlier ratio "
            f"{scores['inlier_ratio']:.2f}"
        )
        visualize_matches(
            x1, x2, result, titles=("s31/1", f"s{'31/6' if key == 'same' else f'{other}/1'}"),
            suptitle=suptitle, path=out / f"pairx_orl_{key}.png", width=5.0,
        )  # fmt: skip
        if key == "same":
            visualize_matches(
                x1, x2, result, overlay=False, titles=("s31/1", "s31/6"), suptitle=suptitle,
                path=out / "pairx_orl_same_raw.png", width=5.0,
            )  # fmt: skip
    print(f"figures in {out}")


if __name__ == "__main__":
    main()
