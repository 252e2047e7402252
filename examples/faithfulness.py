"""Insertion/deletion scores of several maps on a model whose true saliency is known.

The embedder is a small conv net (random weights) that only looks at the centre of the image, so a
faithful map of s(x1, x2) must point at the centre. The script explains the
left view of stereo crops against the right view with SimilarityRISE, Captum's
IntegratedGradients and Occlusion (SANE's sliding window) through the wrapper,
the true map and a random map, and prints SANE's insertion/deletion numbers
(mean normalised AUC x 100) next to the raw areas.

Usage: python examples/faithfulness.py [--masks 1000] [--out faithfulness.png]
"""

import argparse
import warnings

import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn

from captum_similarity import SiameseSimilarity, SimilarityRISE, visualize_pair
from captum_similarity.data import stereo_crops
from captum_similarity.metrics import insertion_deletion

SIZE, CENTRE = 48, slice(16, 32)
GREY = 0.5  # what removed pixels become, for every method and the metric


class CentreOnly(nn.Module):
    """A small conv net (random weights) on the 16x16 centre of a 48x48 image:
    the rest of the image has no influence on the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(256, 32),
        )

    def forward(self, x):
        return self.net(x[:, :, CENTRE, CENTRE] - 0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--masks", type=int, default=1000, help="SimilarityRISE masks (SANE: 2000)")
    parser.add_argument("--out", default="faithfulness.png")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)
    sim = SiameseSimilarity(CentreOnly().eval(), "cosine")
    x1, x2, _ = stereo_crops(6, size=SIZE, seed=0)  # corresponding crops of the two views
    n = x1.shape[0]

    truth = torch.zeros(n, 1, SIZE, SIZE)
    truth[:, :, CENTRE, CENTRE] = 1
    truth = truth + 1e-3 * torch.rand(n, 1, SIZE, SIZE)  # break ties inside and outside at random
    maps = {
        "true map (centre)": truth,
        "SimilarityRISE": SimilarityRISE(sim).attribute(
            x1, additional_forward_args=(x2,), n_masks=args.masks, baselines=GREY, seed=0
        ),
        "Captum IntegratedGradients": IntegratedGradients(sim).attribute(
            x1, baselines=GREY, additional_forward_args=(x2,), n_steps=32
        ),
        "Captum Occlusion (sliding window)": Occlusion(sim).attribute(
            x1,
            sliding_window_shapes=(3, 12, 12),
            strides=(3, 2, 2),
            baselines=GREY,
            additional_forward_args=(x2,),
            perturbations_per_eval=64,
        ),
        "random map": torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)),
    }
    with torch.no_grad():
        print(
            f"s(x1, x2) for {n} stereo pairs: {sim(x1, x2).numpy().round(3)}; "
            f"mismatched: {sim(x1, x2.roll(1, 0)).numpy().round(3)}"
        )
    print(f"{'map':36s} {'insertion':>10s} {'deletion':>9s} {'ins. raw':>9s} {'del. raw':>9s}")
    for name, attr in maps.items():
        r = insertion_deletion(sim, x1, attr.detach(), x2, baselines=GREY)
        print(
            f"{name:36s} {100 * r.insertion_auc_normalized.mean():10.1f} "
            f"{100 * r.deletion_auc_normalized.mean():9.1f} {r.insertion_auc.mean():9.3f} "
            f"{r.deletion_auc.mean():9.3f}"
        )
    print("(insertion: higher is better; deletion: lower is better)")
    rise = SimilarityRISE(sim)
    rise_both = rise.attribute(
        (x1[:2], x2[:2]), n_masks=args.masks, baselines=GREY, seed=0, stop_tolerance=0.05
    )
    print(f"SimilarityRISE stopped after {rise.masks_used} masks (of {args.masks}; stop_tolerance 0.4)")
    # RISE maps carry the mean score as an offset: subtract each map's minimum to draw them
    shown = tuple(m - m.amin(dim=(1, 2, 3), keepdim=True) for m in rise_both)
    visualize_pair(
        x1[:2],
        x2[:2],
        {"SimilarityRISE": shown},
        path=args.out,
        titles=("left view", "right view"),
        suptitle="SimilarityRISE on a centre-only embedder",
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
