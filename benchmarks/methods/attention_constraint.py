"""Training with and without the similarity-attention constraint on ORL faces.

Trains the small ORL embedder (``captum_similarity.training.demo_models``: ResNet,
56x46 grey faces, subjects s1..s30, batch-hard triplet loss) from the
same initialisation, with the same seed, batches and number of steps: once
with the triplet loss alone, and once per weight with ``triplet + weight * L_sm``
(:class:`~captum_similarity.training.SimilarityAttentionLoss` on up to
``--triplets`` of each batch's batch-hard triplets). Reports, on the held-out
subjects s31..s40: leave-one-out Recall@1 and mAP, and the faithfulness of
each model's own EmbeddingGradCAM maps (pair weighting, ReLU) on held-out
positive pairs: insertion and deletion AUC of
:func:`captum_similarity.metrics.insertion_deletion` (101 steps, removed
pixels blurred, per-pair min-max normalised, x 100), next to the same AUCs
of a random map for that model (its chance level).

Usage: python benchmarks/methods/attention_constraint.py --orl ../shared/data/orl_faces
       [--steps 600] [--weights 0.5 0.1] [--out benchmarks/results/attention_constraint.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from captum_similarity import EmbeddingGradCAM, SiameseSimilarity  # noqa: E402
from captum_similarity.data import identity_split, load_orl_faces  # noqa: E402
from captum_similarity.metrics import insertion_deletion, retrieval_metrics  # noqa: E402
from captum_similarity.training.demo_models import ORL_CONFIG, fit_orl, orl_model  # noqa: E402
from captum_similarity.training import SimilarityAttentionLoss, batch_hard_triplets  # noqa: E402
from timing import machine  # noqa: E402

LAYER = "layer3"


def constraint_term(weight: float, max_triplets: int):
    """``extra_loss`` for ``fit_metric``: ``weight * L_sm`` on the batch's hardest triplets."""
    constraint = SimilarityAttentionLoss(LAYER)
    values = []

    def extra(net: nn.Module, batch: Tensor, labels: Tensor, z: Tensor) -> Tensor:
        a, p, n = batch_hard_triplets(z, labels)
        keep = torch.linspace(0, len(a) - 1, min(max_triplets, len(a))).round().long()
        value = constraint(net, batch[a[keep]], batch[p[keep]], batch[n[keep]])
        values.append(float(value.detach()))
        return weight * value

    return extra, values


def faithfulness(model: nn.Module, x1: Tensor, x2: Tensor) -> Dict[str, float]:
    """Normalised insertion/deletion AUC x 100 of the model's EmbeddingGradCAM
    maps of ``x1`` against ``x2``, and of a random map (chance level)."""
    sim = SiameseSimilarity(model, "cosine")
    maps, _ = EmbeddingGradCAM(sim, LAYER).attribute((x1, x2), relu_attributions=True)
    noise = torch.rand(x1.shape[0], 1, *x1.shape[2:], generator=torch.Generator().manual_seed(0))
    out = {}
    for name, attr in (("map", maps.detach()), ("random", noise)):
        r = insertion_deletion(sim, x1, attr, x2, baselines="blur")
        out[f"{name} insertion"] = 100 * float(r.insertion_auc_normalized.mean())
        out[f"{name} deletion"] = 100 * float(r.deletion_auc_normalized.mean())
    return out


def score_gap(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Mean cosine of same-identity pairs minus that of different-identity pairs."""
    with torch.no_grad():
        scores = SiameseSimilarity(model, "cosine").similarity_matrix(images, images)
    same = labels[:, None] == labels[None, :]
    same_off = same & ~torch.eye(len(labels), dtype=torch.bool)
    return float(scores[same_off].mean() - scores[~same].mean())


def positive_pairs(images: Tensor, labels: Tensor):
    """Pairs (0, 1), (2, 3), ... within each identity."""
    first, second = [], []
    for label in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == label).flatten()
        first += idx[0:-1:2].tolist()
        second += idx[1::2].tolist()
    return images[first], images[second]


def run(root: Path, steps: int, weights: Sequence[float], max_triplets: int):
    config = dict(ORL_CONFIG, steps=steps)
    faces = load_orl_faces(root, size=tuple(config["size"]))
    train, test = identity_split(faces, config["n_train"])
    x1, x2 = positive_pairs(test.images, test.labels)
    rows = {}
    for weight in [0.0, *weights]:
        variant = f"triplet + {weight} L_sm" if weight else "triplet loss alone"
        extra, values = constraint_term(weight, max_triplets) if weight else (None, [])
        model = orl_model(config)
        result = fit_orl(model, train.images, train.labels, config, extra_loss=extra)
        with torch.no_grad():
            metrics = retrieval_metrics(model(test.images), test.labels)
        rows[variant] = dict(
            metrics, seconds=result.seconds, final_loss=sum(result.losses[-20:]) / len(result.losses[-20:]),
            l_sm=(sum(values[-20:]) / len(values[-20:])) if values else None,
            gap=score_gap(model, test.images, test.labels), faith=faithfulness(model, x1, x2),
        )
        print(variant, rows[variant], flush=True)
    return rows, len(x1), config


def report(rows, n_pairs: int, config, max_triplets: int, command: str) -> str:
    def fmt(v: Optional[float], digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    lines = [
        "# Similarity-attention constraint on ORL faces",
        "",
        f"Command: `{command}`. Machine: {machine()}.",
        "",
        f"All runs: ResNetEmbedder (ORL_CONFIG), {config['steps']} steps of P x K = "
        f"{config['identities_per_batch']} x {config['images_per_identity']} batches, seed "
        f"{config['seed']}, same initialisation and batches. Constraint runs: triplet loss + "
        f"weight * L_sm on up to {max_triplets} of the batch-hard triplets of each step (layer "
        f"{LAYER}, scale 10, threshold 0.5). Held out: subjects s31..s40 (100 images).",
        "",
        f"Faithfulness over {n_pairs} held-out positive pairs (first and second, third and "
        "fourth... image of each held-out subject), each model explaining itself with "
        "EmbeddingGradCAM (pair weighting, ReLU) on image 1 against image 2: normalised "
        "insertion (higher is better) and deletion (lower is better) AUC x 100 of "
        "`captum_similarity.metrics.insertion_deletion` (101 steps, removed pixels blurred "
        "with sigma 5 px), and the same for a random map of that model (chance level).",
        "",
        "| run | Recall@1 | mAP | same-minus-different cosine gap | insertion AUC | deletion AUC | "
        "insertion AUC, random map | deletion AUC, random map | final loss (last 20 steps) | "
        "final L_sm | training seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        f = r["faith"]
        lines.append(
            f"| {name} | {r['recall_at_1']:.3f} | {r['mean_average_precision']:.3f} | {r['gap']:.4f} | "
            f"{f['map insertion']:.1f} | {f['map deletion']:.1f} | {f['random insertion']:.1f} | "
            f"{f['random deletion']:.1f} | {fmt(r['final_loss'], 4)} | {fmt(r['l_sm'], 4)} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orl", type=Path, required=True, help="ORL folder with s1..s40")
    parser.add_argument("--steps", type=int, default=ORL_CONFIG["steps"])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.5], help="weights of L_sm")
    parser.add_argument("--triplets", type=int, default=8, help="constraint triplets per step")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "attention_constraint.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, n_pairs, config = run(args.orl, args.steps, args.weights, args.triplets)
    command = (f"python benchmarks/methods/attention_constraint.py --orl {args.orl} "
               f"--steps {args.steps} "
               f"--weights {' '.join(str(w) for w in args.weights)} --triplets {args.triplets}")
    text = report(rows, n_pairs, config, args.triplets, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
