"""Does a method explain the model? The model-parameter randomisation test
(Adebayo et al., NeurIPS 2018) on a few methods and a map that ignores the model.

Without --orl it runs on dlib's pretrained face ResNet (the ``faces`` extra)
and scikit-image's astronaut against an altered copy of her; with --orl on the
embedder trained on the ORL faces (trained at first use and cached).

Usage: python examples/sanity_checks.py [--orl ../shared/data/orl_faces] [--out sanity.png]
"""

import argparse
import warnings

import torch
from captum.attr import Saliency
from matplotlib.figure import Figure

from captum_similarity import EmbeddingGradCAM, LRPRelevancePairing, SiameseSimilarity
from captum_similarity.data import astronaut_pair, identity_split, load_orl_faces
from captum_similarity.metrics import SURVIVAL_THRESHOLD, model_randomization_check
from captum_similarity.models import dlib_face_resnet, face_chips
from captum_similarity.training.demo_models import orl_embedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orl", default=None, help="the ORL faces folder (optional)")
    parser.add_argument("--out", default=None, help="write the curves to this PNG")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    if args.orl:
        model, info = orl_embedder(args.orl, progress=True)
        faces = load_orl_faces(args.orl, size=tuple(info["config"]["size"]))
        _, test = identity_split(faces, info["config"]["n_train"])
        x1, x2 = test.images[[0, 10]], test.images[[1, 11]]  # two people, two photos each
        layers = ["head", "layer3", "layer2", "layer1", "stem"]  # top first
    else:
        model = dlib_face_resnet()  # pretrained: needs the faces extra
        chips = face_chips(list(astronaut_pair()), align="auto")  # (2, 3, 150, 150)
        x1, x2 = chips[:1], chips[1:]
        layers = ["head", "layer5", "layer4", "layer3", "layer2", "layer1", "stem"]
    # each model's own similarity: dlib's is the (negative) Euclidean distance
    sim = SiameseSimilarity(model, "cosine" if args.orl else "euclidean")
    fixed = torch.rand(x1.shape, generator=torch.Generator().manual_seed(0))
    methods = {
        "Captum Saliency": lambda: Saliency(sim).attribute((x1, x2)),
        "EmbeddingGradCAM": lambda: EmbeddingGradCAM(sim, "layer3").attribute((x1, x2)),
        "LRPRelevancePairing": lambda: LRPRelevancePairing(sim).attribute((x1, x2)),
        "a fixed map (ignores the model)": lambda: fixed,
    }
    curves = {}
    for name, explain in methods.items():
        check = model_randomization_check(model, explain, layers=layers)
        curves[name] = check.survival().tolist()
        steps = ", ".join(f"{v:.2f}" for v in curves[name])
        print(f"{name}: similarity as layers go random from the top: {steps}; "
              f"survives: {check.survives}")
    if args.out:
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot(1, 1, 1)
        for name, values in curves.items():
            ax.plot(range(len(values) + 1), [1.0] + values, marker="o", label=name)
        ax.axhline(SURVIVAL_THRESHOLD, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(layers) + 1))
        ax.set_xticklabels(["original"] + [f"+{x}" if i else x for i, x in enumerate(layers)])
        ax.set_ylabel("median of |rho|, SSIM, HOG")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=100)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
