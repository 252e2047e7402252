"""Which attribute explains why two images match (SANE), on a world where the answer is known.

The attribute world's images show two identity objects, a distractor and a
background; an identity is the pair of identity objects. The script loads (or
trains, at first use, and caches) the small embedder trained to tell those
identities apart, fits SANE's attribute head on its last feature map with the
saliency-matching term, and explains pairs whose identities share exactly one
object: the explanation should be that object. It prints the accuracy
against that truth and against SANE's removal oracle, next to confidence
alone, and draws one explanation.

Usage: python examples/salient_attributes.py [--pairs 60] [--steps N] [--out salient_attributes.png]
"""

import argparse
import warnings

import torch

from captum_similarity import (
    AttributeHeatmapHead,
    EmbeddingGradCAM,
    SalientAttributes,
    SiameseSimilarity,
    fit_attribute_head,
    visualize_attributes,
)
from captum_similarity.data import (
    ATTRIBUTE_NAMES,
    IDENTITIES,
    RELEVANT,
    attribute_world,
    attribute_world_pairs,
)
from captum_similarity.metrics import attribute_removal
from captum_similarity.training.demo_models import attribute_embedder

LAYER = "features.10"  # the embedder's last feature map, 8x8 for 64x64 images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=60, help="held-out pairs to explain")
    parser.add_argument("--images", type=int, default=600, help="images to fit the head on")
    parser.add_argument("--steps", type=int, default=None, help="embedder training steps (default: its config)")
    parser.add_argument("--out", default="salient_attributes.png")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)

    model, info = attribute_embedder(progress=True, steps=args.steps)
    print(f"embedder: held-out recall@1 {info['recall_at_1']:.3f}; mean cosine similarity "
          f"{info['similarity_same']:.2f} (same identity), {info['similarity_share_one']:.2f} "
          f"(sharing one object), {info['similarity_share_none']:.2f} (sharing none)")
    sim = SiameseSimilarity(model, "cosine")

    # SANE's head, trained on the frozen features with the saliency-matching term:
    # each training image's map is its Grad-CAM against another image of its identity
    world = attribute_world(args.images, seed=10, identities=[i % len(IDENTITIES) for i in range(args.images)])
    saliency, _ = EmbeddingGradCAM(sim, LAYER).attribute((world.images, world.images[world.partners()]))
    torch.manual_seed(0)
    head = AttributeHeatmapHead(64, len(ATTRIBUTE_NAMES), attribute_names=ATTRIBUTE_NAMES)
    fit = fit_attribute_head(model, LAYER, head, world.images, world.labels, saliency=saliency)
    print(f"attribute head: validation mean AP {fit.mean_average_precision:.3f}")

    pairs = attribute_world_pairs(args.pairs, seed=12)
    x1, x2, truth = pairs.first.images, pairs.second.images, pairs.shared
    explainer = SalientAttributes(sim, LAYER, head)  # saliency maps: EmbeddingGradCAM at LAYER
    results = explainer.explain(x1, x2)
    chosen = torch.tensor([r.attribute for r in results])
    confidence_alone = torch.tensor([r.attribute for r in explainer.explain(x1, x2, attribute_weight=1.0)])
    relevant = torch.tensor(RELEVANT)
    print(f"top-1 against the shared object: {(chosen == truth).float().mean():.2f} "
          f"(confidence alone: {(confidence_alone == truth).float().mean():.2f}); "
          f"a nuisance attribute chosen for {(~relevant[chosen]).float().mean():.2f} of the pairs")

    scores = explainer.scores(x1, x2)
    candidates = torch.argsort(scores["confidence1"], dim=1, descending=True)[:, :4]
    removal = attribute_removal(sim, x1, x2, scores["heatmaps1"], attributes=candidates,
                                fraction=0.05, baselines="blur")
    print(f"top-1 against SANE's removal oracle: {(chosen == removal.oracle).float().mean():.2f}; "
          f"the oracle against the shared object: {(removal.oracle == truth).float().mean():.2f}")

    for r, answer in list(zip(results, truth.tolist()))[:3]:
        print(f"  shared: {ATTRIBUTE_NAMES[answer]:18s} explained by: {r.name:18s} "
              f"(score {r.scores[0]:.2f}, confidence {r.confidence1[0]:.2f} / {r.confidence2[0]:.2f}, "
              f"agreement {r.agreement1[0]:.2f} / {r.agreement2[0]:.2f})")
    visualize_attributes(x1, x2, results[0], index=0, titles=("x1", "x2"), path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
