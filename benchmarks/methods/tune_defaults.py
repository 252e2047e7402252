"""Choosing the registered methods' settings on dlib's face ResNet, on
training identities only (ORL s1..s30); the held-out identities (s31..s40)
are left for the faithfulness tables (``run_benchmarks.py --model dlib``).

Each candidate setting is a :class:`~captum_similarity.explainers.PairExplainer`
built here; all of them explain the same pairs in one ``explain-dataset``
run (:func:`captum_similarity.runs.explain_dataset`, resumable with
``--run-dir``) and are scored by insertion/deletion with both fills (the
network's input mean and a blur). The tables give, per setting, the
same-person insertion and deletion AUCs (mean ± standard error over pairs,
each pair's value the mean of its two images) and the paired difference to
the registered setting, so that "A beats B" is a measured statement:

- EmbeddingGradCAM: the layer (``layer2`` .. ``layer5``), the sign
  (ReLU or the signed map) and, for a model scored by the Euclidean distance,
  the similarity explained (the model's own, or the cosine of the
  descriptors with the pair weighting);
- LRPRelevancePairing: the composite, and the similarity explained (the
  negative Euclidean distance, whose per-dimension terms are all negative,
  so that its map ranks what separates the images; the same map negated;
  or the cosine of the descriptors); then the composites on the cosine, and
  their maps ranked by magnitude (``lrp-abs``) and summed over square
  patches (``lrp-pooled``);
- PAIR-X: the number of matches its map sums, and the layer;
- SimilarityRISE: the number of masks and the mask grid (on fewer pairs: it
  costs thousands of forward passes per pair), and stopping early once the
  map has converged (``stop_tolerance``).

Usage:
    python benchmarks/methods/tune_defaults.py --orl ../shared/data/orl_faces
    python benchmarks/methods/tune_defaults.py --orl ../shared/data/orl_faces --pairs 4 --rise-pairs 0  # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, machine  # noqa: E402

from captum_similarity import (  # noqa: E402
    EmbeddingGradCAM,
    LRPRelevancePairing,
    PairwiseIntermediateMatching,
    SiameseSimilarity,
    SimilarityRISE,
)
from captum_similarity._utils.patches import patch_sums  # noqa: E402
from captum_similarity.data import identity_split, load_orl_faces  # noqa: E402
from captum_similarity.data.pair_lists import ImagePair, select_pairs  # noqa: E402
from captum_similarity.explainers import PairExplainer  # noqa: E402
from captum_similarity.models import dlib_face_resnet, face_chips  # noqa: E402
from captum_similarity.models.loading import LoadedModel  # noqa: E402
from captum_similarity.runs import explain_dataset, read_table  # noqa: E402


def _cosine(model: SiameseSimilarity) -> SiameseSimilarity:
    return SiameseSimilarity(model.embedder, "cosine")


def gradcam(layer: str, relu: bool = True, cosine: bool = False) -> Callable:
    def fn(model, x1, x2, _layer):
        sim = _cosine(model) if cosine else model
        return EmbeddingGradCAM(sim, sim.embedder.get_submodule(layer)).attribute(
            (x1, x2), weighting="pair" if cosine else "similarity", relu_attributions=relu
        )
    return fn


def lrp(composite: str, similarity: str = "model", negate: bool = False, absolute: bool = False) -> Callable:
    def fn(model, x1, x2, _layer):
        sim = _cosine(model) if similarity == "cosine" else model
        a1, a2 = LRPRelevancePairing(sim, composite=composite).attribute((x1, x2))
        if absolute:  # rank by magnitude, sign dropped (as Saliency does with gradients)
            return a1.abs(), a2.abs()
        return (-a1, -a2) if negate else (a1, a2)
    return fn


def pairx(layer: str, k: int) -> Callable:
    def fn(model, x1, x2, _layer):
        matches = PairwiseIntermediateMatching(model, model.embedder.get_submodule(layer)).explain(
            x1, x2, k=k
        )
        return (torch.stack([m.pixel_relevance1.sum(0) for m in matches]),
                torch.stack([m.pixel_relevance2.sum(0) for m in matches]))
    return fn


#: Masks used per explained image by the early-stopping settings, this process's calls.
MASKS_USED: Dict[str, List[int]] = {}


def pooled(fn: Callable, side: int) -> Callable:
    """``fn``'s maps summed over ``side x side`` patches (channels summed): one
    value per patch, as BiLRP's marginals are."""
    def wrapped(model, x1, x2, layer):
        out = []
        for a in fn(model, x1, x2, layer):
            grid = [-(-d // side) for d in a.shape[-2:]]
            out.append(patch_sums(a.sum(1, keepdim=True), (side, side)).reshape(len(a), 1, *grid))
        return tuple(out)
    return wrapped


def rise(n_masks: int, cells: int, stop: Optional[float] = None, name: str = "") -> Callable:
    def fn(model, x1, x2, _layer):
        explainer = SimilarityRISE(model)
        maps = explainer.attribute(
            (x1, x2), n_masks=n_masks, mask_cells=cells, seed=0, stop_tolerance=stop
        )
        MASKS_USED.setdefault(name, []).extend(explainer.masks_used)
        return maps
    return fn


#: The reference setting of each family (what its table compares against): the
#: setting registered when the family was measured (for rise-stop, the one the
#: rise family chose).
REGISTERED = {
    "gradcam": "gradcam-relu-layer3",  # the runner's --layer layer3, ReLU, the similarity's gradient
    "lrp": "lrp-epsilon_plus",
    "pairx": "pairx-layer3-k10",
    "rise": "rise-2000-c8",
    "rise-stop": "rise-500-c6",
    "lrp-cosine": "lrp-epsilon_plus-cosine",
    "lrp-abs": "lrp-epsilon_plus-cosine",
    "lrp-pooled": "lrp-epsilon_plus-cosine",
}


def candidates(rise_too: bool) -> Dict[str, Dict[str, Callable]]:
    """``{family: {short name: fn}}``."""
    out: Dict[str, Dict[str, Callable]] = {
        "gradcam": {f"gradcam-relu-{layer}": gradcam(layer) for layer in ("layer2", "layer3", "layer4", "layer5")},
        "lrp": {f"lrp-{c}": lrp(c) for c in ("epsilon_plus", "epsilon", "gamma", "lrp0")},
        "pairx": {f"pairx-layer3-k{k}": pairx("layer3", k) for k in (5, 10, 20)},
    }
    out["gradcam"].update({
        "gradcam-signed-layer3": gradcam("layer3", relu=False),
        "gradcam-signed-layer4": gradcam("layer4", relu=False),
        "gradcam-cosine-layer3": gradcam("layer3", cosine=True),
        "gradcam-cosine-layer4": gradcam("layer4", cosine=True),
    })
    out["lrp"].update({
        "lrp-epsilon_plus-negated": lrp("epsilon_plus", negate=True),
        "lrp-epsilon_plus-cosine": lrp("epsilon_plus", "cosine"),
        "lrp-gamma-cosine": lrp("gamma", "cosine"),
    })
    out["pairx"]["pairx-layer4-k10"] = pairx("layer4", 10)
    # the composites on the cosine of the descriptors (the lrp family's choice)
    out["lrp-cosine"] = {f"lrp-{c}-cosine": lrp(c, "cosine") for c in ("epsilon_plus", "epsilon", "lrp0")}
    # the same maps ranked by magnitude: the sign-free relevance
    out["lrp-abs"] = {"lrp-epsilon_plus-cosine": lrp("epsilon_plus", "cosine")}
    out["lrp-abs"].update({f"lrp-{c}-cosine-abs": lrp(c, "cosine", absolute=True)
                           for c in ("epsilon", "gamma", "epsilon_plus")})
    # the maps summed over square patches (BiLRP's marginals are patch sums)
    out["lrp-pooled"] = {"lrp-epsilon_plus-cosine": lrp("epsilon_plus", "cosine")}
    out["lrp-pooled"].update({f"lrp-epsilon_plus-cosine-p{k}": pooled(lrp("epsilon_plus", "cosine"), k)
                              for k in (6, 12, 25)})
    out["lrp-pooled"]["lrp-epsilon-cosine-abs-p12"] = pooled(lrp("epsilon", "cosine", absolute=True), 12)
    if rise_too:
        out["rise"] = {f"rise-{n}-c{c}": rise(n, c) for n, c in
                       ((250, 8), (500, 8), (1000, 8), (2000, 8), (500, 6), (500, 12))}
        # early stops with up to 2000 masks, against 500 masks without a stop
        out["rise-stop"] = {"rise-500-c6": rise(500, 6)}
        out["rise-stop"].update({
            f"rise-2000-c6-stop{t:g}": rise(2000, 6, t, f"rise-2000-c6-stop{t:g}") for t in (0.3, 0.2)
        })
    return out


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orl", type=Path, default=ROOT.parent / "shared" / "data" / "orl_faces")
    parser.add_argument("--pairs", type=int, default=16, help="same-person training pairs")
    parser.add_argument("--impostor-pairs", type=int, default=8, help="different-person training pairs")
    parser.add_argument("--rise-pairs", type=int, default=8, help="same-person pairs of the RISE settings (0: none)")
    parser.add_argument("--n-steps", type=int, default=26, help="insertion/deletion steps")
    parser.add_argument(
        "--families", nargs="+", default=None,
        help="which families of settings (default: all): gradcam lrp pairx lrp-cosine lrp-abs "
        "lrp-pooled rise rise-stop",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="seed of the pair draw")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/tune-defaults"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tune_defaults.md")
    return parser.parse_args(argv)


def pair_values(rows, column_stem: str) -> Dict[str, Dict[int, float]]:
    """``{method: {pair: mean of the two images' column}}`` over ok rows."""
    out: Dict[str, Dict[int, float]] = {}
    for r in rows:
        if r["status"] == "ok":
            out.setdefault(r["method"], {})[r["pair"]] = (r[f"{column_stem}1"] + r[f"{column_stem}2"]) / 2
    return out


def table(rows, names: List[str], reference: str, fills: Sequence[str], label: str) -> List[str]:
    """Markdown rows: per setting and fill, insertion and deletion (x 100) and
    the paired difference to ``reference``."""
    mine = [r for r in rows if r["label"] == label]
    lines = ["| setting | fill | insertion ↑ | vs reference | deletion ↓ | vs reference | s per pair |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        for fill in fills:
            cells = []
            for stem in ("insertion", "deletion"):
                per = pair_values(mine, f"{fill}_{stem}")
                if name not in per:
                    cells += ["failed", ""]
                    continue
                vals = torch.tensor(list(per[name].values()), dtype=torch.float64) * 100
                se = float(vals.std() / len(vals) ** 0.5) if len(vals) > 1 else float("nan")
                cells.append(f"{float(vals.mean()):.1f} ± {se:.1f}")
                if name == reference:
                    cells.append("")
                    continue
                both = sorted(set(per[name]) & set(per.get(reference, {})))
                if len(both) < 2:
                    cells.append("n/a")
                    continue
                d = torch.tensor([per[name][p] - per[reference][p] for p in both], dtype=torch.float64) * 100
                cells.append(f"{float(d.mean()):+.1f} ± {float(d.std() / len(d) ** 0.5):.1f}")
            seconds = [r["seconds"] for r in mine if r["method"] == name and r["status"] == "ok"]
            cost = f"{sum(seconds) / len(seconds):.2f}" if seconds else ""
            lines.append(f"| {name} | {fill} | " + " | ".join(cells) + f" | {cost} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = dlib_face_resnet()
    train_set, _ = identity_split(load_orl_faces(args.orl), 30)  # s1..s30 only
    chips = face_chips(list(train_set.images[:, 0].numpy()), align="auto")
    mean = float((-model.normalize.bias / model.normalize.weight).mean())
    fills = {"mean": mean, "blur": "blur"}
    loaded = LoadedModel(model, "benchmark:dlib", "callable", "dlib's face ResNet", similarity="euclidean")
    families = candidates(args.rise_pairs > 0)
    sections = []
    for family, settings in families.items():
        if args.families is not None and family not in args.families:
            continue
        black_box = family.startswith("rise")
        n_same = args.rise_pairs if black_box else args.pairs
        n_other = 0 if black_box else args.impostor_pairs
        i, j, same = select_pairs(train_set.labels, n_same, n_other, args.seed)
        pairs = [ImagePair(f"train[{a}]", f"train[{b}]", str(a), str(b), "same" if s else "different")
                 for a, b, s in zip(i.tolist(), j.tolist(), same.tolist())]

        def images(chunk):
            return chips[[int(p.path1) for p in chunk]], chips[[int(p.path2) for p in chunk]]

        methods = {name: PairExplainer(name, fn, short=name.replace("_", "")) for name, fn in settings.items()}
        result = explain_dataset(
            pairs, loaded, methods, args.run_dir / family, fills=fills, steps=args.n_steps,
            blur_sigma=5.0, options={"tune": family, "pairs": [n_same, n_other, args.seed]},
            images=images, progress=False,
        )
        rows = read_table(result["table"])
        names = list(settings)
        for r in rows:  # the settings' names (the table's method column: the short names)
            r["method"] = r["method_name"]
        sections += [f"## {family} ({n_same} same-person pairs)", ""]
        sections += table(rows, names, REGISTERED[family], list(fills), "same") + [""]
        used = {n: v for n, v in MASKS_USED.items() if n in settings and v}
        if used:
            sections += ["Masks used per image (early stop; images explained by this process): "
                         + "; ".join(f"{n}: mean {sum(v) / len(v):.0f}, min {min(v)}, max {max(v)} "
                                     f"over {len(v)}" for n, v in used.items()), ""]
        if n_other:
            sections += [f"Different-person pairs ({n_other}):", ""]
            sections += table(rows, names, REGISTERED[family], list(fills), "different") + [""]
        print("\n".join(sections[-40:]), flush=True)
    text = "\n".join([
        "# Choosing the registered settings on training identities (dlib's face ResNet)",
        "",
        f"Command: `{command_line(__file__, argv)}`. Machine: {machine()}. Total "
        f"{time.perf_counter() - start:.0f} s.",
        "",
        "Pairs of ORL identities s1..s30 only (150x150 chips from `face_chips(align='auto')`), "
        f"drawn with seed {args.seed}; {args.n_steps} insertion/deletion steps; fills: `mean` "
        f"(the network's input mean, {mean:.3f}) and `blur` (Gaussian, sigma 5 px). Per setting: "
        "mean ± standard error over pairs of each pair's AUC (the mean of its two images, x 100), "
        "and the paired difference to the family's reference setting (the one registered when "
        "it was measured; for rise-stop the rise family's choice): "
        f"{', '.join(f'{k}: {v}' for k, v in REGISTERED.items())}. Seconds per pair: the method "
        "alone, 1 thread, on a shared machine.",
        "",
        *sections,
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}")
    return text


if __name__ == "__main__":
    main()
