"""Every recipe of docs/siamese-wrapper.md, run on a reference model, with the
property each one guarantees printed next to it.

Usage: python examples/siamese_wrapper.py [--out pair.png]
"""

import argparse
import warnings

import torch
from captum.attr import (
    LRP,
    DeepLift,
    IntegratedGradients,
    LayerConductance,
    LayerGradCam,
)

from captum_similarity import (
    BranchLayerAttribution,
    SiameseSimilarity,
    split_branches,
    visualize_pair,
)
from captum_similarity.data import stereo_crops
from captum_similarity.models import ResNetEmbedder, SimpleCNN


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="pair.png")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)
    model = ResNetEmbedder().double().eval()  # random weights: this shows the mechanics
    sim = SiameseSimilarity(model, "cosine")
    left, right, _ = stereo_crops(4, size=32, seed=0)  # corresponding crops of a stereo pair
    x1, x2 = left.double(), right.double()
    ref = x2[:1]

    ig = IntegratedGradients(sim)
    attr, delta = ig.attribute(x1, additional_forward_args=(ref,), n_steps=64, return_convergence_delta=True)
    print(f"IG against a batch-1 reference: completeness error {delta.abs().max():.1e}")
    same = ig.attribute(x1, additional_forward_args=(sim.embed(ref).detach(),), n_steps=64)
    print(f"  ... reference as an embedding gives the same: {torch.allclose(attr, same)}")

    (a1, a2), delta = ig.attribute((x1, x2), baselines=(x1 * 0, x2 * 0), return_convergence_delta=True)
    print(f"IG on both images: completeness error {delta.abs().max():.1e}")

    m1, m2 = split_branches(LayerGradCam(sim, model.layer2).attribute(x1, additional_forward_args=(x2,)))
    fixed = sim.embed(x2).detach()
    oracle = LayerGradCam(lambda x: sim(x, fixed), model.layer2).attribute(x1)
    print(f"Grad-CAM of both branches in one pass equals the fixed-branch oracle: {torch.allclose(m1, oracle)}")

    c1, c2 = BranchLayerAttribution(LayerConductance, sim, model.layer2).attribute((x1, x2), n_steps=64)
    print(f"LayerConductance per branch: shapes {tuple(c1.shape)} and {tuple(c2.shape)}")

    dot = SiameseSimilarity(model, "dot")
    _, delta = DeepLift(dot).attribute(x1, baselines=x1 * 0.5, additional_forward_args=(ref,),
                                       return_convergence_delta=True)
    print(f"DeepLift, dot product against a fixed reference: summation error {delta.abs().max():.1e}")

    relu_net = SiameseSimilarity(SimpleCNN(bias=False).double().eval(), "cosine")
    r1, r2 = LRP(relu_net).attribute((x1, x2))
    s = relu_net(x1, x2)
    print(f"LRP through the cosine head: |sum R1 - s| = {(r1.sum((1, 2, 3)) - s).abs().max():.1e}, "
          f"|sum R2 - s| = {(r2.sum((1, 2, 3)) - s).abs().max():.1e}")

    with torch.no_grad():
        scores = sim.similarity_matrix(x1[:1], x2)[0]
        first = float(sim(x1[:1], x2[:1]))
    print(f"one query against {x2.shape[0]} gallery items: scores {scores.numpy().round(4)}")

    visualize_pair(x1, x2, {"IG": (a1, a2), "Grad-CAM": (m1, m2), "LRP (bias-free CNN)": (r1, r2)},
                   titles=("left view", "right view"),
                   suptitle=f"s = {first:.3f} (random weights: mechanics only)", path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
