"""SANE's attribute explanations checked against ground truth, on the attribute world.

The embedder (:func:`captum_similarity.training.demo_models.attribute_embedder`)
was trained to tell the attribute world's identities apart: an identity is a
pair of identity objects; distractor objects and backgrounds are nuisance.
Held-out pairs whose identities share exactly one object have a known
explanation of what they have in common: that object's attribute.

The script

1. fits :class:`~captum_similarity.AttributeHeatmapHead` on the embedder's
   last feature map (``features.10``, 8x8) with
   :func:`~captum_similarity.fit_attribute_head`, with and without SANE's
   saliency-matching term (training maps: EmbeddingGradCAM of each image
   against another image of its identity), over several head seeds, and
   reports the validation mean AP of each;
2. explains the held-out pairs with
   :class:`~captum_similarity.SalientAttributes` (head with the term) from
   the saliency maps of several methods, and reports top-1 / top-3 accuracy
   against the ground truth and against SANE's removal oracle
   (:func:`~captum_similarity.metrics.attribute_removal` on the head's
   heatmaps, candidates: x1's four most confident attributes), next to the
   baselines (confidence alone, random) and how often a nuisance attribute
   is chosen;
3. sweeps ``attribute_weight``, the agreement measure and the confidence
   (pair or query) for each saliency method, which sets the defaults;
4. measures each saliency method's faithfulness on the same pairs
   (insertion/deletion, blurred removal) and its time against one
   forward+backward pass.

Usage::

    python benchmarks/methods/sane_attributes.py [--pairs 150] [--rise-masks 1000]
        [--head-seeds 3] [--out benchmarks/results/sane_attributes.md] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, forward_backward, machine, median_ratio  # noqa: E402

from captum_similarity import (  # noqa: E402
    AttributeHeatmapHead,
    EmbeddingGradCAM,
    SalientAttributes,
    SiameseSimilarity,
    SimilarityRISE,
    fit_attribute_head,
)
from captum_similarity.attributes import (  # noqa: E402
    AGREEMENTS,
    ATTRIBUTE_WEIGHT,
    CONFIDENCES,
    DEFAULT_SALIENCY_METHOD as DEFAULT_SALIENCY,
)
from captum_similarity.data import (  # noqa: E402
    ATTRIBUTE_NAMES,
    IDENTITIES,
    RELEVANT,
    attribute_world,
    attribute_world_pairs,
)
from captum_similarity.metrics import (  # noqa: E402
    attribute_removal,
    gaussian_blur,
    insertion_deletion,
    mean_and_standard_error,
    paired_difference,
)
from captum_similarity.training.demo_models import ATTRIBUTE_CONFIG, attribute_embedder  # noqa: E402

LAYER = "features.10"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
REMOVAL_FRACTION = 0.05  # about one object's area
HEAT_WEIGHT = 5e-3  # SANE's heat_loss
TIMED_PAIRS = 8


def accuracy(rankings: Tensor, answer: Tensor) -> Tuple[float, float]:
    """Top-1 and top-3 accuracy of ``(N, A)`` rankings against ``(N,)`` answers."""
    top1 = (rankings[:, 0] == answer).float().mean().item()
    top3 = (rankings[:, :3] == answer[:, None]).any(1).float().mean().item()
    return top1, top3


def rank(scores: Tensor) -> Tensor:
    return torch.argsort(scores, dim=1, descending=True, stable=True)


def whole_attribute_removal(sim: SiameseSimilarity, pairs) -> Tensor:
    """``(N,)`` which of x1's four true attributes, its pixels blurred (sigma 5 px),
    lowers s(x1, x2) most: the ground-truth version of the removal oracle."""
    x1, x2 = pairs.first.images, pairs.second.images
    shown = pairs.first.labels.nonzero()[:, 1].view(-1, 4)
    blurred = gaussian_blur(x1, 5.0)
    rows = torch.arange(len(x1))
    with torch.no_grad():
        score = sim(x1, x2)
        drops = torch.stack([
            score - sim(torch.where(pairs.first.masks[rows, shown[:, k]][:, None], blurred, x1), x2)
            for k in range(4)
        ], 1)
    return shown[rows, drops.argmax(1)]


def fit_heads(model, world, val, seeds: int, epochs: int) -> Dict[str, list]:
    """Heads fitted without and with the saliency term, one per seed."""
    sim = SiameseSimilarity(model)
    maps, _ = EmbeddingGradCAM(sim, LAYER).attribute((world.images, world.images[world.partners()]))
    fits: Dict[str, list] = {"without": [], "with": []}
    for seed in range(seeds):
        for name, saliency in (("without", None), ("with", maps)):
            torch.manual_seed(seed)
            head = AttributeHeatmapHead(64, len(ATTRIBUTE_NAMES), attribute_names=ATTRIBUTE_NAMES)
            fits[name].append(fit_attribute_head(
                model, LAYER, head, world.images, world.labels, saliency=saliency,
                heatmap_weight=HEAT_WEIGHT, validation=(val.images, val.labels), epochs=epochs,
                seed=seed,
            ))
    return fits


def saliency_methods(sim: SiameseSimilarity, rise_masks: int) -> Dict[str, Callable]:
    return {
        "EmbeddingGradCAM": lambda x1, x2: EmbeddingGradCAM(sim, LAYER).attribute((x1, x2)),
        f"SimilarityRISE ({rise_masks} masks)": lambda x1, x2: SimilarityRISE(sim).attribute(
            (x1, x2), n_masks=rise_masks, seed=0
        ),
        "Captum IntegratedGradients": lambda x1, x2: IntegratedGradients(sim).attribute(
            (x1, x2), baselines=(0.5, 0.5), n_steps=32
        ),
    }


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--rise-masks", type=int, default=1000)
    parser.add_argument("--head-images", type=int, default=1000)
    parser.add_argument("--head-seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny run (a 40-step embedder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sane_attributes.md"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.rise_masks, args.head_images, args.head_seeds, args.epochs = 8, 40, 60, 1, 3
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    model, info = attribute_embedder(progress=True, steps=40 if args.smoke else None)
    sim = SiameseSimilarity(model)
    world = attribute_world(args.head_images, seed=10, identities=[i % len(IDENTITIES) for i in range(args.head_images)])
    val = attribute_world(300 if not args.smoke else 40, seed=11)
    fits = fit_heads(model, world, val, args.head_seeds, args.epochs)
    head = fits["with"][0].head

    pairs = attribute_world_pairs(args.pairs, seed=12, masks=True)
    x1, x2, truth = pairs.first.images, pairs.second.images, pairs.shared
    relevant = torch.tensor(RELEVANT)
    explainer = SalientAttributes(sim, LAYER, head)
    base = explainer.scores(x1, x2, saliency=torch.zeros(len(truth), 1, 8, 8))
    candidates = rank(base["confidence1"])[:, :4]  # x1's four most confident attributes
    removal = attribute_removal(sim, x1, x2, base["heatmaps1"], attributes=candidates,
                                fraction=REMOVAL_FRACTION, baselines="blur")
    oracle = removal.oracle
    truth_removal = whole_attribute_removal(sim, pairs)

    maps: Dict[str, Tuple[Tensor, Tensor]] = {}
    cost: Dict[str, float] = {}
    timed = slice(0, TIMED_PAIRS)
    unit = forward_backward(sim, x1[timed], x2[timed])
    for name, method in saliency_methods(sim, args.rise_masks).items():
        parts = [method(x1[i : i + 16], x2[i : i + 16]) for i in range(0, len(truth), 16)]
        maps[name] = tuple(torch.cat([p[side].detach() for p in parts]) for side in (0, 1))
        cost[name] = median_ratio(lambda: method(x1[timed], x2[timed]), unit, repeats=3)
    perfect = pairs.first.masks[torch.arange(len(truth)), truth][:, None].float()
    perfect2 = pairs.second.masks[torch.arange(len(truth)), truth][:, None].float()
    maps_with_perfect = dict(maps, **{"the shared object's mask (a perfect map)": (perfect, perfect2)})

    rows = []
    sweeps = {}
    for name, pair in maps_with_perfect.items():
        scores = explainer.scores(x1, x2, saliency=pair)
        table = {}
        for agreement in AGREEMENTS:
            for confidence in CONFIDENCES:
                s = explainer.scores(x1, x2, saliency=pair, agreement=agreement, confidence=confidence,
                                     attribute_weight=0.0)
                c = explainer.scores(x1, x2, saliency=pair, agreement=agreement, confidence=confidence,
                                     attribute_weight=1.0)
                for w in WEIGHTS:
                    ranking = rank(w * c["score"] + (1 - w) * s["score"])
                    table[(agreement, confidence, w)] = accuracy(ranking, truth)[0]
        sweeps[name] = table
        ranking = rank(scores["score"])
        rows.append((f"SalientAttributes + {name}", ranking, cost.get(name)))
    for confidence in CONFIDENCES:
        c = explainer.scores(x1, x2, saliency=maps["EmbeddingGradCAM"], confidence=confidence,
                             attribute_weight=1.0)["score"]
        rows.append((f"confidence alone ({confidence})", rank(c), None))
    g = torch.Generator().manual_seed(0)
    rows.append(("random ranking", torch.stack([torch.randperm(len(ATTRIBUTE_NAMES), generator=g)
                                                for _ in truth]), None))

    faith = {}
    for name, (a1, _) in maps.items():
        r = insertion_deletion(sim, x1, a1, x2, n_steps=51, baselines="blur")
        faith[name] = (mean_and_standard_error(100 * r.insertion_auc_normalized),
                       mean_and_standard_error(100 * r.deletion_auc_normalized))

    lines = _report(args, argv, info, fits, pairs, rows, truth, oracle, truth_removal, sweeps,
                    faith, cost, started, load)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _report(args, argv, info, fits, pairs, rows, truth, oracle, truth_removal, sweeps, faith, cost,
            started, load) -> List[str]:
    relevant = torch.tensor(RELEVANT)
    n = len(truth)
    shared_nuisance = pairs.shared_nuisance
    cfg = info["config"]
    lines = [
        f"Command: `{command_line(__file__, argv)}`. Machine: {machine()}; load average "
        f"{load:.1f} at the start. Total {time.perf_counter() - started:.0f} s.",
        "",
        f"Embedder: `attribute_embedder` (SimpleCNN, widths {cfg['widths']}, 64x64 input, "
        f"{cfg['steps']} steps of batch-hard triplet loss, margin {cfg['margin']}, on "
        f"{cfg['n_train']} attribute-world images; "
        f"{'loaded from cache' if info['loaded_from_cache'] else 'trained in this run'}"
        f"; training took {info['train_seconds']:.0f} s). On {cfg['n_test']} fresh images: "
        f"recall@1 {info['recall_at_1']:.3f}, mAP {info['mean_average_precision']:.3f}; mean "
        f"cosine similarity {info['similarity_same']:.2f} (same identity), "
        f"{info['similarity_share_one']:.2f} (identities sharing one object), "
        f"{info['similarity_share_none']:.2f} (sharing none).",
        "",
        f"Attribute head: `AttributeHeatmapHead(64, 13)` on `{LAYER}` (8x8), "
        f"`fit_attribute_head` on {args.head_images} images (seed 10), {args.epochs} epochs; "
        "validation: 300 fresh images (seed 11). The saliency term's training maps are "
        "EmbeddingGradCAM maps of each image against another image of its identity, weight "
        f"{HEAT_WEIGHT:g} (SANE's).",
        "",
        "### Attribute recognition: does the saliency term help?",
        "",
        "| head | mean AP (validation) | identity objects | distractors | backgrounds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    groups = {}
    for name, group in fits.items():
        aps = torch.stack([f.average_precision for f in group])
        groups[name] = [aps.mean(1), aps[:, :6].mean(1), aps[:, 6:9].mean(1), aps[:, 9:].mean(1)]
        lines.append(
            f"| {name} the saliency term | "
            + " | ".join(_estimate(mean_and_standard_error(p), 3) for p in groups[name]) + " |"
        )
    lines.append(
        "| difference (with - without, paired by seed) | "
        + " | ".join(_estimate(paired_difference(a, b), 3)
                     for a, b in zip(groups["with"], groups["without"])) + " |"
    )
    lines += [
        "",
        f"Mean ± standard error over {args.head_seeds} head seeds (initialisation, "
        "batch order; the same validation images).",
        "",
        "### Which attribute explains the match",
        "",
        f"{n} held-out pairs (seed 12) whose identities share exactly one object; in "
        f"{100 * shared_nuisance.float().mean():.0f}% of them the two images also share a nuisance "
        "attribute (distractor kind or background kind). Truth: the shared object. Removal "
        "oracle (SANE): of x1's four most confident attributes, the one whose heatmap's top "
        f"{100 * REMOVAL_FRACTION:g}% pixels, blurred (sigma 5 px), lower s(x1, x2) most. "
        f"The oracle agrees with the truth on {100 * (oracle == truth).float().mean():.0f}% of "
        "the pairs. Blurring the true pixels of each of x1's four attributes instead (the "
        "object; for the background, every pixel no object covers) lowers the similarity most "
        f"for the shared object on {100 * (truth_removal == truth).float().mean():.0f}% of the "
        "pairs: how often the model's similarity is in fact carried by the shared object.",
        "",
        f"SalientAttributes: defaults (attribute_weight {ATTRIBUTE_WEIGHT}, agreement "
        "'correlation', confidence 'pair'), head with the saliency term, both images' maps.",
        "",
        "| ranking | top-1 (truth) | top-3 (truth) | top-1 (oracle) | top-3 (oracle) | nuisance chosen | nuisance chosen, pairs sharing one | time (x fwd+bwd) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    hits = {}
    for name, ranking, seconds in rows:
        hits[name] = (ranking[:, 0] == truth).double()
        t1, t3 = accuracy(ranking, truth)
        o1, o3 = accuracy(ranking, oracle)
        nuisance = ~relevant[ranking[:, 0]]
        on_shared = nuisance[shared_nuisance].float().mean().item() if shared_nuisance.any() else float("nan")
        time_text = "" if seconds is None else f"{seconds:.1f}"
        lines.append(
            f"| {name} | {_estimate(mean_and_standard_error(hits[name]), 2)} | {t3:.2f} | "
            f"{o1:.2f} | {o3:.2f} | {nuisance.float().mean():.2f} | {on_shared:.2f} | {time_text} |"
        )
    default = f"SalientAttributes + {DEFAULT_SALIENCY}"
    comparisons = [
        f"{default} - {other}: {_estimate(paired_difference(hits[default], hits[other]), 2)}"
        for other in ("confidence alone (query)", "confidence alone (pair)", "random ranking")
    ]
    lines += [
        "",
        f"Expected top-1 of a random ranking: 1/{len(ATTRIBUTE_NAMES)} = "
        f"{1 / len(ATTRIBUTE_NAMES):.2f}. Top-1 (truth) ± its standard error over pairs. "
        "Paired differences of top-1 (truth) on the same pairs, ± standard error: "
        + "; ".join(comparisons) + ". Time: the saliency method's maps of both images of "
        f"{TIMED_PAIRS} pairs divided by one forward+backward pass of the similarity on the "
        "same pairs (median of 3 ratios timed back to back); the head and the ranking add one "
        "forward pass.",
        "",
        "### The trade-off: top-1 against the truth for each attribute_weight",
        "",
        "| saliency | agreement | confidence | " + " | ".join(f"w = {w:g}" for w in WEIGHTS) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in WEIGHTS) + " |",
    ]
    for name, table in sweeps.items():
        for agreement in AGREEMENTS:
            for confidence in CONFIDENCES:
                values = " | ".join(f"{table[(agreement, confidence, w)]:.2f}" for w in WEIGHTS)
                lines.append(f"| {name} | {agreement} | {confidence} | {values} |")
    lines += [
        "",
        "w = 1 is confidence alone (no map), w = 0 the map agreement alone.",
        "",
        "### Faithfulness of the saliency maps on these pairs",
        "",
        "| saliency | insertion AUC ↑ | deletion AUC ↓ |",
        "| --- | ---: | ---: |",
    ]
    for name, (ins, dele) in faith.items():
        lines.append(f"| {name} | {_estimate(ins, 1)} | {_estimate(dele, 1)} |")
    best_insertion = max(faith, key=lambda k: faith[k][0].mean)
    best_deletion = min(faith, key=lambda k: faith[k][1].mean)
    lines += [
        "",
        "x1's maps for s(., x2), 51 steps, removed pixels blurred (sigma 5 px); mean ± standard "
        "error over pairs of the min-max normalised areas x 100 (SANE). Most faithful: "
        f"{best_insertion} by insertion, {best_deletion} by deletion; the default saliency "
        f"method of SalientAttributes is {DEFAULT_SALIENCY}.",
    ]
    return lines


def _estimate(e, digits: int) -> str:
    if e.n < 2:
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f} ± {e.standard_error:.{digits}f}"


if __name__ == "__main__":
    main(sys.argv[1:])
