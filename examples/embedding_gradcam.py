"""EmbeddingGradCAM, gallery maps and the exact decomposition, end to end.

Part 1 runs anywhere in seconds (a small untrained ResNet, float64): maps of
both images of pairs, single-image and triplet maps, one query against a
gallery (checked against a loop of pairs), and the decomposition (checked to
sum to the similarity and to equal the Grad-CAM of the dot product).

Part 2, with ``--orl PATH``, explains a held-out ORL face pair with the
trained ORL embedder (trained on subjects s1..s30 at first use, about five
CPU minutes, then cached) and writes the figure of ``docs/embedding-gradcam.md``.

Usage: python examples/embedding_gradcam.py [--orl ../shared/data/orl_faces]
       [--out docs/figures/embedding_gradcam_orl.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captum_similarity import (  # noqa: E402
    EmbeddingGradCAM,
    SiameseSimilarity,
    SimilarityDecomposition,
    visualize_pair,
)
from captum_similarity.data import identity_split, load_orl_faces  # noqa: E402
from captum_similarity.models import ResNetEmbedder  # noqa: E402
from captum_similarity.training.demo_models import ORL_CONFIG, orl_embedder  # noqa: E402


def reference_model_tour() -> None:
    torch.manual_seed(0)
    model = ResNetEmbedder().double().eval()
    x1, x2, x3 = (torch.rand(4, 3, 32, 32, dtype=torch.float64) for _ in range(3))
    cam = EmbeddingGradCAM(model, "layer3", similarity="cosine")

    m1, m2 = cam.attribute((x1, x2), relu_attributions=True)           # pair weighting (default)
    print("pair maps:", tuple(m1.shape), tuple(m2.shape))
    ma, mp, mn = cam.attribute((x1, x2, x3), weighting="triplet")       # anchor, positive, negative
    alone = cam.attribute(x1)                                          # the embedding itself
    print("triplet maps:", tuple(ma.shape), "single-image map:", tuple(alone.shape))

    gallery = torch.rand(16, 3, 32, 32, dtype=torch.float64)
    q_maps, g_maps = cam.attribute_gallery(x1[:1], gallery)             # one batch, not 16 calls
    loop = [cam.attribute((x1[:1], gallery[r : r + 1])) for r in range(16)]
    gap = max(float((q_maps[r] - loop[r][0][0]).abs().max()) for r in range(16))
    print(f"gallery maps {tuple(q_maps.shape)}, max difference to a loop of pairs: {gap:.1e}")

    model.head.bias.data.zero_()
    dec = SimilarityDecomposition(model, "layer3", similarity="dot")
    matrix, (d1, d2) = dec.attribute((x1, x2), return_marginals=True)
    s = SiameseSimilarity(model, "dot")(x1, x2)
    g1, _ = EmbeddingGradCAM(model, "layer3", "dot").attribute((x1, x2), weighting="similarity")
    s = s.detach()
    print(f"decomposition {tuple(matrix.shape)}: |sum - s| = {float((matrix.sum((1, 2)) - s).abs().max()):.1e}, "
          f"|Grad-CAM(dot) - marginal| = {float((g1 - d1).abs().max()):.1e}")


def orl_figure(root: Path, out: Path) -> None:
    model, info = orl_embedder(root, progress=True)
    print(f"ORL embedder: held-out recall@1 {info['recall_at_1']:.2f}, mAP {info['mean_average_precision']:.2f}")
    faces = load_orl_faces(root, size=tuple(ORL_CONFIG["size"]))
    _, test = identity_split(faces, ORL_CONFIG["n_train"])
    sim = SiameseSimilarity(model, "cosine")
    # a held-out face with its most similar other photo of the same person, and
    # with the most similar face of another held-out person (the hardest negative)
    with torch.no_grad():
        row = sim.similarity_matrix(test.images[:1], test.images)[0]
    same = test.labels == test.labels[0]
    row[0] = -2.0
    x1 = test.images[[0, 0]]
    x2 = test.images[[int(row.masked_fill(~same, -2).argmax()), int(row.masked_fill(same, -2).argmax())]]
    with torch.no_grad():
        scores = sim(x1, x2)
    cam = EmbeddingGradCAM(sim, model.layer3)
    maps = {
        "EmbeddingGradCAM (pair)": cam.attribute((x1, x2), relu_attributions=True),
        "EmbeddingGradCAM (similarity)": cam.attribute((x1, x2), weighting="similarity", relu_attributions=True),
    }
    dec = SimilarityDecomposition(sim, model.layer3)
    _, marginals = dec.attribute((x1, x2), return_marginals=True)
    maps["decomposition marginals"] = marginals
    w = marginals[0].shape[-1]
    strongest = int(marginals[0][0].flatten().argmax())
    point = (strongest // w, strongest % w)  # image 1's cell with the largest share of s
    marker = torch.zeros_like(marginals[0])
    marker[:, :, point[0], point[1]] = 1.0
    maps[f"cell {point} and its matches"] = (marker, dec.point_matches((x1, x2), point).clamp_min(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    for index, label in ((0, "same person"), (1, "most similar other person")):
        path = out.with_name(f"{out.stem}_{index}{out.suffix}") if index else out
        visualize_pair(
            x1, x2, maps, index=index, sign="positive", titles=("held-out face", "other face"),
            suptitle=f"{label}: cosine s = {float(scores[index]):.3f} (ORL embedder, layer3)", path=path,
        )
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orl", type=Path, default=None, help="ORL folder (s1..s40) for the figure")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/embedding_gradcam_orl.png"))
    args = parser.parse_args()
    reference_model_tour()
    if args.orl is not None:
        orl_figure(args.orl, args.out)


if __name__ == "__main__":
    main()
