"""Any torchvision or timm backbone: the default layer, LRP with its measured
conservation, and PAIR-X's matches, without a rule or a layer written for it.

Usage: python examples/backbones.py [--model torchvision/swin_t] [--size 224] [--k 5]
       [--out docs/figures/backbone_pairx.png]

The model comes from captum_similarity.models.backbones (random weights, a
128-d linear head, BatchNorm statistics calibrated on four bundled images;
any name of BACKBONES, e.g. timm/vit_small_patch16_224 or
torchvision/convnext_tiny). The pair: a bundled image the calibration did not
see and a copy of it shifted by a sixteenth of its size. Needs torchvision
and timm. Prints the default layer and its layout, the conservation of
first-order LRP and of PAIR-X, and writes the PAIR-X figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from captum_similarity import (
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    default_layer,
    visualize_matches,
)
from captum_similarity.models.backbones import BACKBONES, backbone, held_out_images

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="torchvision/swin_t", choices=sorted(BACKBONES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=int, default=5, help="matches explained down to the pixels")
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "backbone_pairx.png"))
    args = parser.parse_args()

    model = backbone(args.model, image_size=args.size)
    x1 = held_out_images(args.size)[:1]
    x2 = torch.roll(x1, shifts=(args.size // 16, args.size // 16), dims=(-2, -1))
    layer = default_layer(model, x1)
    print(f"{args.model}: default layer {layer.name} ({layer.type}), {layer.layout}, "
          f"cells {layer.grid}, reshape_transform {layer.reshape_transform}")  # fmt: skip

    lrp = LRPRelevancePairing(model, "cosine")
    (r1, r2), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
    s = float(lrp.conservation.explained[0])
    print(f"LRP: s = {s:.4f}, sum R1 = {float(r1.sum()):.4f}, sum R2 = {float(r2.sum()):.4f}, "
          f"conservation error {lrp.conservation.max_relative_error:.2%}")  # fmt: skip

    pairx = PairwiseIntermediateMatching(model, similarity="cosine")
    (match,) = pairx.explain(x1, x2, k=args.k)
    print(f"PAIR-X: {len(match)} matches, {match.pixel_relevance1.shape[0]} explained; "
          f"conservation error at the layer {match.layer_conservation_error:.2%}, "
          f"of the per-match maps {match.pixel_conservation_error:.2%}")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    visualize_matches(x1, x2, match, lines=args.k, suptitle=f"{args.model}, {layer.name}", path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
