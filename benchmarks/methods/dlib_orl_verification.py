"""Verification quality and speed of dlib's face ResNet in PyTorch on the ORL faces.

For each way of making 150x150 chips (dlib's 5-point alignment, edge padding
to a square + resize, plain resize) it embeds all 400 ORL images and reports
the same-vs-different AUROC over all 79,800 pairs (by Euclidean distance, the
metric the network was trained for, and by cosine similarity), leave-one-out
rank-1 accuracy and how many faces dlib's detector found. It then times the
torch module against dlib's own ``compute_face_descriptor`` on the same chips,
and one forward+backward pass.

Usage::

    python benchmarks/methods/dlib_orl_verification.py PATH/TO/orl_faces \
        [--out benchmarks/results/dlib_orl.md] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from captum_similarity.data import load_orl_faces  # noqa: E402
from captum_similarity.metrics import retrieval_metrics, verification_auroc  # noqa: E402
from captum_similarity.models import dlib_face_resnet, face_chips  # noqa: E402
from captum_similarity.models.dlib_resnet import dlib_model_path  # noqa: E402
from captum_similarity.models.face_preprocess import dlib_available  # noqa: E402
from timing import median_seconds  # noqa: E402


def verification(emb: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """AUROCs, leave-one-out rank-1 and the error rates at dlib's 0.6 threshold."""
    emb = emb.double()
    dist = torch.cdist(emb, emb)
    iu = torch.triu_indices(len(labels), len(labels), offset=1)
    same = labels[iu[0]] == labels[iu[1]]
    pair_dist = dist[iu[0], iu[1]]
    return {
        "auroc_euclidean": verification_auroc(emb, labels, "euclidean"),
        "auroc_cosine": verification_auroc(emb, labels, "cosine"),
        "rank1": retrieval_metrics(emb, labels, "euclidean")["recall_at_1"],
        "same_below_0.6": float((pair_dist[same] < 0.6).double().mean()),
        "different_below_0.6": float((pair_dist[~same] < 0.6).double().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("orl", type=Path, help="the orl_faces folder (s1 ... s40)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dlib_orl.md")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    faces = load_orl_faces(args.orl)
    images, labels = list(faces.images[:, 0].numpy()), faces.labels
    model = dlib_face_resnet()
    settings: List[tuple] = []
    if dlib_available():
        settings += [("dlib 5-point alignment (upsample auto: 2 on ORL)", "dlib", None),
                     ("dlib 5-point alignment, upsample 1", "dlib", 1)]
    settings += [("edge pad to square + resize", "pad_resize", None),
                 ("plain resize (aspect ratio changed)", "resize", None)]
    rows, chips_for_timing = [], None
    for name, align, upsample in settings:
        t = time.perf_counter()
        x, detected = face_chips(images, align=align, upsample=upsample, return_detected=True)
        prep = time.perf_counter() - t
        with torch.no_grad():
            emb = torch.cat([model(x[i : i + 50]) for i in range(0, len(x), 50)])
        found = f"{int(detected.sum())}/{len(images)}" if align == "dlib" else "-"
        rows.append((name, verification(emb, labels), found, prep / len(images) * 1e3))
        chips_for_timing = x if chips_for_timing is None else chips_for_timing
        print(name, rows[-1])

    batch = chips_for_timing[:16].contiguous()
    t_fwd1 = median_seconds(lambda: model(batch[:1]).detach(), args.repeats)
    with torch.no_grad():
        t_fwd16 = median_seconds(lambda: model(batch), args.repeats)

    def fwd_bwd():
        x = batch.clone().requires_grad_(True)
        model(x).sum().backward()

    t_fb16 = median_seconds(fwd_bwd, args.repeats)
    timing = [("torch forward, batch 1", t_fwd1), ("torch forward, batch 16", t_fwd16),
              ("torch forward+backward (input gradients), batch 16", t_fb16)]
    if dlib_available():
        import dlib

        rec = dlib.face_recognition_model_v1(str(dlib_model_path()))
        chips_u8 = [np.ascontiguousarray(c) for c in
                    (batch * 255).round().byte().permute(0, 2, 3, 1).numpy()]
        timing.append(("dlib compute_face_descriptor, batch 16",
                       median_seconds(lambda: rec.compute_face_descriptor(chips_u8), args.repeats)))
    for name, seconds in timing:
        print(f"{name}: {seconds * 1e3:.1f} ms")

    lines = [
        "# dlib's face ResNet in PyTorch on the ORL faces",
        "",
        "Command: `python benchmarks/methods/dlib_orl_verification.py "
        f"{args.orl} --threads {args.threads}`",
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); 2-core machine shared with other jobs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; timings are medians of {args.repeats}).",
        "",
        "400 images, 40 people; 79,800 pairs (1,800 same person). Embeddings by "
        "`dlib_face_resnet()`; chips by `face_chips(align=...)`.",
        "",
        "| chips | AUROC (Euclidean) | AUROC (cosine) | rank-1 (leave one out) | "
        "same pairs < 0.6 | different pairs < 0.6 | faces detected | chip time / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m, found, ms in rows:
        lines.append(
            f"| {name} | {m['auroc_euclidean']:.4f} | {m['auroc_cosine']:.4f} | "
            f"{m['rank1']:.4f} | {m['same_below_0.6']:.3f} | {m['different_below_0.6']:.4f} | "
            f"{found} | {ms:.1f} ms |"
        )
    lines += ["", "0.6 is dlib's distance threshold for \"same person\".", "",
              "| timing | ms | ratio to torch forward, batch 16 |", "|---|---|---|"]
    for name, seconds in timing:
        lines.append(f"| {name} | {seconds * 1e3:.1f} | {seconds / t_fwd16:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
