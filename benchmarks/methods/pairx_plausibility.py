"""Does the plausibility of PAIR-X matches tell correct from incorrect pairs
that the model finds equally similar?

For every pair of held-out ORL faces (subjects s31..s40, never seen in
training: 100 images, 4,950 pairs, 450 of the same person) the script runs
:class:`~captum_similarity.PairwiseIntermediateMatching` (matches and ranking,
no per-match maps) at the given layers and scores the matches with
:func:`~captum_similarity.metrics.match_plausibility`: the inlier ratio and the
mean residual of a robust affine fit to the top matches, and the fraction of
the layer relevance on matched cells. Each score's AUROC for "same person" is
reported over all pairs and within similarity bins
(:func:`~captum_similarity.metrics.auroc_at_equal_similarity`: pairs whose
similarity lies where same-person and different-person pairs overlap, in
narrow equal-width bins; the probability that a same-person pair scores above
a different-person pair of the same bin). A control row scores the pairs by
the similarity itself: its value at equal similarity is the confounding the
bins leave.

Models: the small ORL ResNet (:func:`captum_similarity.training.demo_models.orl_embedder`,
trained on s1..s30, cosine similarity) and, with ``--dlib``, dlib's
pretrained face ResNet (:func:`captum_similarity.models.dlib_face_resnet`,
never trained on ORL; chips by edge padding and resizing to 150x150;
similarity = minus the Euclidean distance, the metric it was trained for),
on a random subset of the pairs (``--dlib-pairs``; all same-person pairs are
kept) to bound the time.

Usage::

    python benchmarks/methods/pairx_plausibility.py --orl PATH/TO/orl_faces [--dlib]
        [--layers layer2 layer3] [--top 10] [--bins 50]
        [--out benchmarks/results/pairx_plausibility.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, machine  # noqa: E402

from captum_similarity import PairwiseIntermediateMatching, SiameseSimilarity  # noqa: E402
from captum_similarity.data import identity_split, load_orl_faces  # noqa: E402
from captum_similarity.metrics import (  # noqa: E402
    auroc,
    auroc_at_equal_similarity,
    match_plausibility,
)
from captum_similarity.training.demo_models import ORL_CONFIG, orl_embedder  # noqa: E402

#: The scores compared, each oriented so that larger means "more plausible".
SCORES = {
    "inlier ratio": lambda m: m["inlier_ratio"],
    "minus residual": lambda m: -m["residual"],
    "relevance on matches": lambda m: m["relevance_on_matches"],
    # how many mutual nearest neighbours there are at all
    "number of matches": lambda m: m["matches"],
    # the similarity itself: what binning leaves of it is the confounding left
    "similarity (control)": lambda m: m["similarity"],
}


def all_pairs(labels: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    i, j = torch.triu_indices(len(labels), len(labels), offset=1)
    return i, j, labels[i] == labels[j]


def evaluate(
    pairx: PairwiseIntermediateMatching,
    images: Tensor,
    i: Tensor,
    j: Tensor,
    top: int,
    batch: int,
) -> Tuple[Dict[str, Tensor], Tensor]:
    """Plausibility scores and similarities of the pairs ``(images[i], images[j])``."""
    scores: Dict[str, List[Tensor]] = {}
    similarity = []
    for start in range(0, len(i), batch):
        a, b = i[start : start + batch], j[start : start + batch]
        results = pairx.explain(images[a], images[b], k=0)
        for key, value in match_plausibility(results, top=top).items():
            scores.setdefault(key, []).append(value)
        similarity.append(torch.tensor([r.score for r in results], dtype=torch.float64))
    return {k: torch.cat(v) for k, v in scores.items()}, torch.cat(similarity)


def rows_for(
    model_name: str,
    pairx_for_layer,
    layers: Sequence[str],
    images: Tensor,
    i: Tensor,
    j: Tensor,
    same: Tensor,
    args: argparse.Namespace,
) -> List[str]:
    rows = []
    for layer in layers:
        start = time.perf_counter()
        plausibility, similarity = evaluate(
            pairx_for_layer(layer), images, i, j, args.top, args.batch
        )
        seconds = time.perf_counter() - start
        matches = plausibility["matches"]
        plausibility["similarity"] = similarity
        print(
            f"{model_name} {layer}: {len(i)} pairs in {seconds:.0f} s; "
            f"similarity AUROC {auroc(similarity, same):.3f}"
        )
        for name, score in SCORES.items():
            values = score(plausibility)
            keep = ~torch.isnan(values)
            binned = auroc_at_equal_similarity(values, same, similarity, bins=args.bins)
            rows.append(
                f"| {model_name} | {layer} | {name} | {auroc(similarity, same):.3f} | "
                f"{auroc(values[keep], same[keep]):.3f} | **{binned['auroc']:.3f}** | "
                f"{binned['pairs']} / {binned['couples']} | {float(matches[same].mean()):.0f} / "
                f"{float(matches[~same].mean()):.0f} |"
            )
            print(rows[-1])
    return rows


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orl", type=Path, default=ROOT.parent / "shared" / "data" / "orl_faces")
    parser.add_argument(
        "--layers", nargs="+", default=["layer2", "layer3"], help="layers of the ORL ResNet"
    )
    parser.add_argument("--dlib", action="store_true", help="add dlib's face ResNet")
    parser.add_argument("--dlib-layers", nargs="+", default=["layer2", "layer3"])
    parser.add_argument(
        "--dlib-pairs",
        type=int,
        default=1500,
        help="pairs for dlib (all same-person pairs + random others)",
    )
    parser.add_argument("--top", type=int, default=10, help="matches in the affine fit")
    parser.add_argument("--bins", type=int, default=50, help="equal-width similarity bins")
    parser.add_argument("--batch", type=int, default=32, help="pairs per explain call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "pairx_plausibility.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, info = orl_embedder(args.orl)
    faces = load_orl_faces(args.orl, size=tuple(ORL_CONFIG["size"]))
    _, held_out = identity_split(faces, ORL_CONFIG["n_train"])
    i, j, same = all_pairs(held_out.labels)
    rows = rows_for(
        f"ORL ResNet (held-out recall@1 {info['recall_at_1']:.2f})",
        lambda layer: PairwiseIntermediateMatching(model, layer, "cosine"),
        args.layers,
        held_out.images,
        i,
        j,
        same,
        args,
    )
    notes = []
    if args.dlib:
        from captum_similarity.models import dlib_face_resnet, face_chips

        dlib = SiameseSimilarity(dlib_face_resnet(), "euclidean")
        full = load_orl_faces(args.orl)
        _, held_full = identity_split(full, ORL_CONFIG["n_train"])
        chips = face_chips(list(held_full.images[:, 0].numpy()), align="pad_resize")
        g = torch.Generator().manual_seed(0)
        others = torch.nonzero(~same).flatten()
        chosen = others[
            torch.randperm(len(others), generator=g)[: max(0, args.dlib_pairs - int(same.sum()))]
        ]
        keep = torch.cat([torch.nonzero(same).flatten(), chosen]).sort().values
        rows += rows_for(
            "dlib face ResNet (pretrained, not on ORL)",
            lambda layer: PairwiseIntermediateMatching(dlib, layer),
            args.dlib_layers,
            chips,
            i[keep],
            j[keep],
            same[keep],
            args,
        )
        notes.append(
            f"dlib: {len(keep)} pairs ({int(same.sum())} same person, {len(chosen)} random "
            "different-person pairs), chips by edge padding + resize to 150x150."
        )
    command = command_line(__file__, argv)
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Pairs of the 100 images of the held-out subjects s31..s40 ({len(i)} pairs, "
        f"{int(same.sum())} of the same person). Matches: mutual nearest neighbours (L2) at "
        f"the layer; geometric scores from a RANSAC affine fit to the top {args.top} matches "
        "(threshold one cell, mirror images and scalings beyond 4x rejected). "
        f"AUROC at equal similarity: {args.bins} equal-width bins between the lowest "
        "same-person and the highest different-person similarity; the probability that a "
        "same-person pair scores above a different-person pair of the same bin. "
        "The control row scores pairs by the similarity itself: its AUROC at equal similarity "
        "is the confounding the bins leave (0.5 would be none).",
        *([""] + notes if notes else []),
        "",
        "| model | layer | score | AUROC of the similarity | AUROC of the score | "
        "**AUROC at equal similarity** | pairs in the overlap / couples compared | "
        "mean matches (same / different person) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
