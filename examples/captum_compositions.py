"""The library's methods inside Captum's NoiseTunnel, sensitivity_max and
infidelity, each checked against the same computation done by hand, and one
of Captum's layer methods that cannot run on two image sides, with the error
that says what to do (docs/captum-methods.md).

Usage: python examples/captum_compositions.py [--out smoothgrad.png] [--samples 8]
"""

import argparse
import warnings

import torch
from captum.attr import LayerConductance, NoiseTunnel
from captum.metrics import infidelity, sensitivity_max

from captum_similarity import (
    BranchLayerAttribution,
    EmbeddingGradCAM,
    LRPRelevancePairing,
    SiameseSimilarity,
    visualize_pair,
)
from captum_similarity.data import stereo_crops
from captum_similarity.models import SimpleCNN


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="smoothgrad.png")
    parser.add_argument("--samples", type=int, default=8, help="noisy copies per image")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)
    sim = SiameseSimilarity(SimpleCNN().double().eval(), "cosine")  # random weights: mechanics
    left, right, _ = stereo_crops(3, size=32, seed=0)
    x, ref = left.double(), right[:1].double()
    cam = EmbeddingGradCAM(sim, "features.4")

    # SmoothGrad of Grad-CAM maps, and the same by hand from the same noisy inputs
    torch.manual_seed(1)
    smooth = NoiseTunnel(cam).attribute(
        x, nt_type="smoothgrad", nt_samples=args.samples, stdevs=0.05,
        additional_forward_args=(ref,),
    )
    torch.manual_seed(1)  # NoiseTunnel's draw: one normal sample per element of the repeated batch
    noisy = x.repeat_interleave(args.samples, 0)
    noisy = noisy + torch.normal(0, torch.tensor(0.05).repeat(noisy.shape))
    per_sample = cam.attribute(noisy, additional_forward_args=(ref,))
    by_hand = per_sample.view(3, args.samples, *per_sample.shape[1:]).mean(1)
    print(f"NoiseTunnel(EmbeddingGradCAM) equals the mean over the same noisy inputs: "
          f"{torch.allclose(smooth, by_hand)}")

    # max-sensitivity of LRP maps, and its infidelity, with Captum's metrics
    lrp = LRPRelevancePairing(sim)
    sens = sensitivity_max(lrp.attribute, x, additional_forward_args=(ref,), n_perturb_samples=4)
    relevance = lrp.attribute(x, additional_forward_args=(ref,))

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.02
        return noise, inputs - noise

    infid = infidelity(
        sim, perturb, x, relevance, additional_forward_args=(ref,), n_perturb_samples=4
    )
    print(f"LRP max-sensitivity per query: {[round(float(v), 4) for v in sens]}")
    print(f"LRP infidelity per query: {[f'{float(v):.2e}' for v in infid]}")

    # a layer method that perturbs the layer batch: refused on two image sides
    layer = sim.embedder.features[4]
    try:
        LayerConductance(sim, layer).attribute(x, additional_forward_args=(ref,))
    except ValueError as error:
        print(f"LayerConductance with an image reference: ValueError: {str(error)[:90]}...")
    c1, c2 = BranchLayerAttribution(LayerConductance, sim, layer).attribute((x, ref), n_steps=16)
    print(f"through BranchLayerAttribution: shapes {tuple(c1.shape)} and {tuple(c2.shape)}")

    # both images of the pairs: NoiseTunnel adds noise to each side of a tuple input
    pairs = (x, ref.expand_as(x))
    torch.manual_seed(2)
    smooth_pair = NoiseTunnel(cam).attribute(pairs, nt_samples=args.samples, stdevs=0.05)
    visualize_pair(*pairs, {"Grad-CAM": cam.attribute(pairs), "SmoothGrad Grad-CAM": smooth_pair},
                   suptitle="embedding Grad-CAM, and its SmoothGrad (random weights)",
                   path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
