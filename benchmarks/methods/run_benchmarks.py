"""Faithfulness benchmark: every registered explainer on held-out ORL faces.

1. The model (``--model``):

   - ``dlib``: dlib's pretrained face-recognition ResNet
     (:func:`captum_similarity.models.dlib_face_resnet`, the ``faces`` extra)
     on 150x150 chips of the ORL faces (:func:`face_chips`, dlib alignment
     when dlib is installed), scored by the negative Euclidean distance it
     verifies with; the main real model;
   - ``orl`` (default): the small ORL embedder trained here (or loaded from
     the cache; :func:`captum_similarity.training.demo_models.orl_embedder`: 30
     identities, fixed seed), scored by cosine similarity.

   Both report held-out Recall@1 and mAP on identities s31..s40.
2. Explains held-out pairs of the same person (and, separately, of two
   different people) with every explainer registered in
   :mod:`captum_similarity.explainers` when it runs (methods of other modules
   plug in by registering there), and scores both images' maps with SANE's
   insertion/deletion protocol (:func:`captum_similarity.metrics.insertion_deletion`).
3. Times each method on the same batches, as a ratio to one forward+backward
   of the wrapper on that batch (``benchmarks/timing.py``).
4. Writes a Markdown table with the command, date and machine to
   ``benchmarks/results/`` and, for the full run, into ``docs/faithfulness.md``
   (between its ``benchmark`` markers).

Usage:
    python benchmarks/methods/run_benchmarks.py --orl ../shared/data/orl_faces --model dlib  # dlib
    python benchmarks/methods/run_benchmarks.py --orl ../shared/data/orl_faces          # ORL model
    python benchmarks/methods/run_benchmarks.py --orl ../shared/data/orl_faces --smoke  # tiny, CI
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, forward_backward, machine, median_seconds  # noqa: E402

from captum_similarity import SiameseSimilarity  # noqa: E402
from captum_similarity.data import identity_split, load_orl_faces  # noqa: E402
from captum_similarity.explainers import explain_pair, explainers  # noqa: E402
from captum_similarity.metrics import insertion_deletion, retrieval_metrics  # noqa: E402
from captum_similarity.models import dlib_face_resnet, face_chips  # noqa: E402
from captum_similarity.training.demo_models import orl_embedder  # noqa: E402

#: Configuration changes of the tiny smoke-mode embedder (see ``ORL_CONFIG``).
SMOKE_MODEL = {"size": [28, 23], "widths": [4, 8, 16], "embedding_dim": 16}
SMOKE_STEPS = 20
#: The docs block each model's table replaces (between these markers).
MARKERS = {
    "orl": ("<!-- benchmark:start -->", "<!-- benchmark:end -->"),
    "dlib": ("<!-- benchmark:dlib:start -->", "<!-- benchmark:dlib:end -->"),
    "near-identical": ("<!-- benchmark:near-identical:start -->", "<!-- benchmark:near-identical:end -->"),
    "near-identical-dlib": (
        "<!-- benchmark:near-identical-dlib:start -->",
        "<!-- benchmark:near-identical-dlib:end -->",
    ),
}
#: What ``--altered-copies`` does to an image: mirrored, then gamma (as the
#: astronaut pair of ``captum_similarity.data.astronaut_pair``, without the rotation).
COPY_GAMMA = 1.3


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--orl",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "orl_faces",
        help="ORL faces folder (s1..s40)",
    )
    parser.add_argument(
        "--model",
        choices=["orl", "dlib"],
        default="orl",
        help="orl: the small embedder trained on s1..s30; dlib: dlib's pretrained face ResNet",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny model ({SMOKE_STEPS} steps, {SMOKE_MODEL}), 2+1 pairs, 11 steps",
    )
    parser.add_argument(
        "--pairs", type=int, default=None, help="same-person pairs (default 12; smoke 2)"
    )
    parser.add_argument(
        "--impostor-pairs",
        type=int,
        default=None,
        help="different-person pairs (default 6; smoke 1)",
    )
    parser.add_argument(
        "--n-steps", type=int, default=None, help="insertion/deletion steps (default 101; smoke 11)"
    )
    parser.add_argument(
        "--fill",
        nargs="+",
        default=["mean", "blur"],
        help="what removed pixels become, one table each: 'mean' (the mean training "
        "pixel), 'blur' (Gaussian, --blur-sigma) or a number",
    )
    parser.add_argument(
        "--blur-sigma", type=float, default=5.0, help="blur in pixels for --fill blur"
    )
    parser.add_argument(
        "--train-steps", type=int, default=None, help="training steps (default: ORL_CONFIG)"
    )
    parser.add_argument(
        "--methods", nargs="*", default=None, help="explainers to run (default: all registered)"
    )
    parser.add_argument(
        "--altered-copies",
        action="store_true",
        help="explain near-identical pairs instead: each of --pairs held-out images against a "
        f"copy of itself, mirrored with gamma {COPY_GAMMA} (no different-person pairs)",
    )
    parser.add_argument(
        "--docs-block",
        choices=sorted(MARKERS),
        default=None,
        help="which benchmark block of --docs to replace (default: the model's)",
    )
    parser.add_argument("--layer", default="layer3", help="layer for layer methods (dotted name)")
    parser.add_argument("--batch", type=int, default=4, help="pairs per explanation call")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (timings use this many)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair selection")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="Markdown output (default benchmarks/results/faithfulness[-smoke].md)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="docs page whose benchmark block to replace (default docs/faithfulness.md; "
        "not in smoke mode)",
    )
    args = parser.parse_args(argv)
    for fill in args.fill:
        try:
            fill in ("mean", "blur") or float(fill)
        except ValueError:
            parser.error(f"--fill takes 'mean', 'blur' or a number, got {fill!r}")
    smoke = args.smoke
    args.pairs = args.pairs if args.pairs is not None else (2 if smoke else 12)
    args.impostor_pairs = (
        args.impostor_pairs if args.impostor_pairs is not None else (1 if smoke else 6)
    )
    if args.altered_copies:
        args.impostor_pairs = 0
    args.docs_block = args.docs_block or args.model
    args.n_steps = args.n_steps if args.n_steps is not None else (11 if smoke else 101)
    if args.train_steps is None and smoke:
        args.train_steps = SMOKE_STEPS
    if smoke and args.model != "orl":
        parser.error("--smoke runs the tiny ORL model only")
    suffix = "-smoke" if smoke else ("-dlib" if args.model == "dlib" else "")
    suffix += "-near-identical" if args.altered_copies else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"faithfulness{suffix}.md"
    if args.docs is None and not smoke:
        args.docs = ROOT / "docs" / "faithfulness.md"
    return args


def select_pairs(
    labels: Tensor, n_same: int, n_other: int, seed: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """Indices ``(i, j)`` of ``n_same`` same-identity pairs (spread over identities in
    turn) followed by ``n_other`` different-identity pairs, and whether each is same."""
    g = torch.Generator().manual_seed(seed)
    per_identity = []
    for ident in torch.unique(labels):
        idx = torch.nonzero(labels == ident).flatten()
        pairs = torch.combinations(idx, 2)
        per_identity.append(pairs[torch.randperm(len(pairs), generator=g)])
    per_identity = [
        per_identity[k] for k in torch.randperm(len(per_identity), generator=g).tolist()
    ]
    same = [per_identity[k % len(per_identity)][k // len(per_identity)] for k in range(n_same)]
    other = []
    while len(other) < n_other:
        i, j = torch.randint(len(labels), (2,), generator=g)
        if labels[i] != labels[j]:
            other.append(torch.stack([i, j]))
    pairs = torch.stack(same + other) if same or other else torch.empty(0, 2, dtype=torch.long)
    is_same = torch.tensor([True] * len(same) + [False] * len(other))
    return pairs[:, 0], pairs[:, 1], is_same


def altered_copy(x: Tensor) -> Tensor:
    """Images mirrored left-right, then raised to the power ``COPY_GAMMA``
    (values in [0, 1]): a near-identical view of the same image."""
    return x.flip(-1).clamp(0, 1) ** COPY_GAMMA


def explain_and_time(
    sim: SiameseSimilarity, x1: Tensor, x2: Tensor, layer, names: List[str], batch: int
) -> Dict[str, dict]:
    """Maps of both images for every method, with its time relative to forward+backward."""
    chunks = [slice(s, min(s + batch, len(x1))) for s in range(0, len(x1), batch)]
    units = {}
    for c in chunks:  # one forward+backward of each chunk: the unit of the time ratio
        units[c.stop - c.start] = median_seconds(forward_backward(sim, x1[c], x2[c]), repeats=5)
    results: Dict[str, dict] = {}
    bar = tqdm(total=len(names) * len(chunks), desc="explaining", unit="batch")
    for name in names:
        maps1, maps2, seconds, unit = [], [], 0.0, 0.0
        try:
            for c in chunks:
                bar.set_postfix_str(name)
                start = time.perf_counter()
                ((a1, a2),) = explain_pair(sim, x1[c], x2[c], layer=layer, methods=[name]).values()
                seconds += time.perf_counter() - start
                unit += units[c.stop - c.start]
                maps1.append(a1)
                maps2.append(a2)
                bar.update(1)
            results[name] = {
                "maps": (torch.cat(maps1), torch.cat(maps2)),
                "ratio": seconds / unit,
                "seconds": seconds,
            }
        except Exception as exc:  # a method that fails on this model is reported, not fatal
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            results[name] = {"error": message[:120].replace("|", "/")}
            bar.update(len(chunks) - len(maps1))
    bar.close()
    return results


def faithfulness(
    sim: SiameseSimilarity,
    x1: Tensor,
    x2: Tensor,
    maps: Tuple[Tensor, Tensor],
    fill,
    n_steps: int,
    blur_sigma: float,
) -> Dict[str, Tensor]:
    """Per-image AUCs of both sides' maps: ``x1`` against ``x2`` and ``x2`` against ``x1``."""
    sides = [
        insertion_deletion(
            sim,
            x,
            a,
            ref,
            n_steps=n_steps,
            baselines=fill,
            blur_sigma=blur_sigma,
            max_examples_per_batch=256,
        )
        for x, a, ref in ((x1, maps[0], x2), (x2, maps[1], x1))
    ]
    out = {}
    for key in (
        "insertion_auc_normalized",
        "deletion_auc_normalized",
        "insertion_auc",
        "deletion_auc",
    ):
        out[key] = torch.cat([getattr(r, key) for r in sides])
    return out


def _mean(values: Tensor) -> str:
    return f"{float(values.mean()):.3f}" if len(values) else "n/a"


def _mean_se(values: Tensor, scale: float = 1.0) -> str:
    v = values[torch.isfinite(values)].double() * scale
    if len(v) == 0:
        return "n/a"
    se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return (
        f"{float(v.mean()):.1f} ± {se:.1f}" if scale != 1.0 else f"{float(v.mean()):.3f} ± {se:.3f}"
    )


def results_table(
    results: Dict[str, dict], aucs: Dict[str, Dict[str, Tensor]], mask: Tensor
) -> List[str]:
    """One Markdown row per method: AUCs over the explained images in ``mask``, time ratio."""
    lines = [
        "| method | insertion AUC ↑ | deletion AUC ↓ | insertion AUC (raw) | deletion AUC (raw) "
        "| time (x fwd+bwd) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"| {name} | failed: {res['error']} | | | | |")
            continue
        a = {k: v[mask] for k, v in aucs[name].items()}
        lines.append(
            f"| {name} | {_mean_se(a['insertion_auc_normalized'], 100)} | "
            f"{_mean_se(a['deletion_auc_normalized'], 100)} | {_mean_se(a['insertion_auc'])} | "
            f"{_mean_se(a['deletion_auc'])} | {res['ratio']:.1f} |"
        )
    return lines


def write_docs_block(path: Path, text: str, model: str = "orl") -> None:
    """Replaces the text between ``model``'s benchmark markers in ``path``."""
    page = path.read_text()
    start, end = MARKERS[model]
    if start not in page or end not in page:
        raise ValueError(f"{path} has no {start} ... {end} block to replace")
    block = f"{start}\n{text}\n{end}"
    path.write_text(
        re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, page, flags=re.S)
    )


def fill_values(fills: Sequence[str], train_images: Tensor, blur_sigma: float) -> Dict[str, object]:
    """``{description: baselines argument of insertion_deletion}`` for each ``--fill``."""
    out: Dict[str, object] = {}
    for fill in fills:
        if fill == "mean":
            mean = float(train_images.mean())
            out[f"the constant {mean:.3f} (mean training pixel)"] = mean
        elif fill == "blur":
            out[f"the image blurred (Gaussian, sigma {blur_sigma:g} px)"] = "blur"
        else:
            out[f"the constant {float(fill):g}"] = float(fill)
    return out


def describe_orl(info: Dict[str, object]) -> str:
    config = info["config"]
    origin = "loaded from cache" if info["loaded_from_cache"] else "trained in this run"
    return (
        f"Embedder: `orl_embedder` ({config['arch']}, widths {config['widths']}, input "
        f"{config['size'][0]}x{config['size'][1]}, {config['steps']} steps, {origin}; training "
        f"took {info['train_seconds']:.0f} s), cosine similarity; held-out identities s31..s40: "
        f"Recall@1 {info['recall_at_1']:.2f}, mAP {info['mean_average_precision']:.2f}."
    )


def report(args, command: str, embedder: str, same: Tensor, scores: Tensor, results, aucs, seconds: float) -> str:
    """The Markdown text: command, machine, embedder, protocol, a table per fill and pair kind."""
    lines = [
        f"Command: `{command}`. Machine: {machine()}. Total {seconds:.0f} s.",
        "",
        embedder,
        "",
        (
            f"Protocol: {int(same.sum())} held-out images, each paired with a copy of itself "
            f"mirrored with gamma {COPY_GAMMA} (mean similarity {_mean(scores[same])}, min "
            f"{float(scores.min()):.4f}); both images"
            if args.altered_copies
            else f"Protocol: {int(same.sum())} same-person (mean similarity {_mean(scores[same])}) "
            f"and {int((~same).sum())} different-person (mean similarity {_mean(scores[~same])}) "
            "held-out pairs; both images"
        )
        + " of each pair explained (x1 for s(., x2), x2 for s(x1, .)) and scored "
        f"against the unperturbed other image; {args.n_steps} steps. Insertion/deletion AUC: mean "
        "± standard error over explained images of the area under each image's min-max normalised "
        "curve, x 100 (SANE); raw: area under the similarity curve. Time: seconds of the "
        f"method on batches of {args.batch} pairs divided by one forward+backward of the same "
        f"batch ({args.threads} thread{'s' if args.threads > 1 else ''}).",
        "",
    ]
    for label, per_method in aucs.items():
        kinds = (("Same-person", same), ("Different-person", ~same))
        if args.altered_copies:
            kinds = (("Image and altered copy", same),)
        for kind, mask in kinds:
            if mask.any():
                lines += [f"{kind} pairs, removed pixels become {label}:", ""]
                lines += results_table(results, per_method, torch.cat([mask, mask])) + [""]
    return "\n".join(lines).strip() + "\n"


def dlib_setup(root: Path):
    """dlib's face ResNet on the held-out ORL identities as chips: the wrapper,
    the network's input mean as a (1, 3, 1, 1) image (for the mean fill), the
    held-out set and an info dict (retrieval metrics and a description)."""
    model = dlib_face_resnet()
    _, test_set = identity_split(load_orl_faces(root), 30)
    chips, detected = face_chips(list(test_set.images[:, 0].numpy()), align="auto", return_detected=True)
    test_set.images = chips
    mean_image = (-model.normalize.bias / model.normalize.weight).view(1, -1, 1, 1)
    sim = SiameseSimilarity(model, "euclidean")
    with torch.no_grad():
        metrics = retrieval_metrics(sim.embed(chips, batch_size=50), test_set.labels, "euclidean")
    description = (
        "Embedder: dlib's pretrained face-recognition ResNet (`dlib_face_resnet()`, 128-d), on "
        f"150x150 chips from `face_chips(align='auto')` ({int(detected.sum())} of {len(detected)} "
        "held-out faces detected by dlib), negative Euclidean distance; held-out identities "
        f"s31..s40: Recall@1 {metrics['recall_at_1']:.2f}, mAP {metrics['mean_average_precision']:.2f}. "
        "The mean fill is the network's input mean (dlib's stored RGB mean)."
    )
    return sim, mean_image, test_set, dict(metrics, description=description)


def main(argv: Optional[Sequence[str]] = None, command: Optional[str] = None) -> Dict[str, object]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    names = list(explainers()) if args.methods is None else list(args.methods)
    unknown = [n for n in names if n not in explainers()]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; registered: {list(explainers())}")

    if args.model == "dlib":
        sim, train_images, test_set, info = dlib_setup(args.orl)
    else:
        overrides = SMOKE_MODEL if args.smoke else None
        model, info = orl_embedder(args.orl, progress=True, steps=args.train_steps, overrides=overrides)
        faces = load_orl_faces(args.orl, size=tuple(info["config"]["size"]))
        train_set, test_set = identity_split(faces, info["config"]["n_train"])
        sim, train_images = SiameseSimilarity(model, "cosine"), train_set.images
        info["description"] = describe_orl(info)
    model = sim.embedder
    idx1, idx2, same = select_pairs(test_set.labels, args.pairs, args.impostor_pairs, args.seed)
    x1, x2 = test_set.images[idx1], test_set.images[idx2]
    if args.altered_copies:
        x2 = altered_copy(x1)

    layer = model.get_submodule(args.layer)  # a dotted name, as model.named_modules() lists it
    results = explain_and_time(sim, x1, x2, layer, names, args.batch)
    done = [n for n in names if "error" not in results[n]]
    fills = fill_values(args.fill, train_images, args.blur_sigma)
    aucs: Dict[str, Dict[str, Dict[str, Tensor]]] = {label: {} for label in fills}
    bar = tqdm(total=len(done) * len(fills), desc="insertion/deletion", unit="method")
    for label, fill in fills.items():
        for name in done:
            maps = results[name]["maps"]
            aucs[label][name] = faithfulness(sim, x1, x2, maps, fill, args.n_steps, args.blur_sigma)
            bar.update(1)
    bar.close()
    with torch.no_grad():
        scores = sim(x1, x2)

    command = command or command_line(__file__, argv)
    text = report(args, command, info["description"], same, scores, results, aucs, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Faithfulness benchmark\n\n" + text)
    print(text)
    print(f"wrote {args.out}")
    if args.docs is not None:
        write_docs_block(args.docs, text, args.docs_block)
        print(f"updated {args.docs}")
    return {"embedder": info, "results": results, "aucs": aucs, "out": args.out, "text": text}


if __name__ == "__main__":
    main()
