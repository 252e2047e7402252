"""Explaining a face-verification model: dlib's face ResNet on real face pairs.

Loads dlib's pretrained network (the ``faces`` extra), wraps it in
``SiameseSimilarity`` with the negative Euclidean distance dlib verifies
with, and explains three pairs with Captum's Saliency, IntegratedGradients,
LayerGradCam (at a residual stage, both images in one pass, on the distance
and on the dot product) and LRP, and prints the total of every map; then the
registry's LRP maps of the astronaut pair (``lrp``, ``lrp-patches``,
``lrp-abs``), which explain the cosine of the descriptors:

- the astronaut of scikit-image against a mirrored, rotated, darker copy of
  herself (always available);
- on the ORL faces (``--orl``): a correct match (the same person, the pair at
  the median distance of all same-person pairs) and the most confident wrong
  match (the closest pair of two different people).

Usage::

    python examples/face_verification.py --out docs/figures \
        [--orl ../shared/data/orl_faces]
"""

from __future__ import annotations

import argparse
import io as io_bytes
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from captum.attr import LRP, IntegratedGradients, LayerGradCam, Saliency
from PIL import Image
from torch import Tensor

from captum_similarity import SiameseSimilarity, split_branches, visualize_pair
from captum_similarity.data import astronaut_pair, load_orl_faces, notable_pairs
from captum_similarity.explainers import explain_pair as registered_maps
from captum_similarity.explainers import resolve_methods, white_box_model
from captum_similarity.models import dlib_face_resnet, face_chips
from captum_similarity.models.loading import DLIB_FACE_LAYER

Pair = Tuple[Tensor, Tensor]

def explain_pair(
    sim: SiameseSimilarity, x1: Tensor, x2: Tensor, n_steps: int = 32
) -> Dict[str, Pair]:
    """Maps of both images by Captum's methods. ``x1``, ``x2``: (1, 3, 150, 150)."""
    model = sim.embedder
    # IG from the network's zero input (dlib's mean colour), one image at a
    # time with the other held fixed: it splits s(x1, x2) - s(mean, x2) over
    # the pixels of x1, and the same for x2.
    mean = (-model.normalize.bias / model.normalize.weight).detach()
    baseline = mean[None, :, None, None].expand_as(x1).contiguous()
    ig = IntegratedGradients(sim)
    ig1 = ig.attribute(x1, baselines=baseline, additional_forward_args=(x2,), n_steps=n_steps)
    ig2 = ig.attribute(x2, baselines=baseline, additional_forward_args=(x1,), n_steps=n_steps)
    # One pass of the encoder on both images; split_branches separates them.
    # On a distance (or cosine) plain Grad-CAM maps total about zero with an
    # arbitrary sign; on the dot product they total about the score.
    dot = SiameseSimilarity(model, "dot")
    cams = {
        name: split_branches(
            LayerGradCam(s, model.layer3).attribute(x1, additional_forward_args=(x2,))
        )
        for name, s in (("distance", sim), ("dot product", dot))
    }
    return {
        "Saliency": Saliency(sim).attribute((x1, x2), abs=True),
        "IG": (ig1, ig2),
        "GradCAM dist": cams["distance"],
        "GradCAM dot": cams["dot product"],
        "LRP": LRP(sim).attribute((x1, x2)),
    }


def save_pair_figure(
    sim: SiameseSimilarity, x1: Tensor, x2: Tensor, titles: Tuple[str, str], path: Path
) -> float:
    """Explains one pair, prints each map's total, writes a small PNG; returns the distance."""
    with torch.no_grad():
        distance = -float(sim(x1, x2))
        dot = float((sim.embedder(x1) * sim.embedder(x2)).sum())
    verdict = "same person" if distance < sim.embedder.distance_threshold else "different people"
    maps = explain_pair(sim, x1, x2)
    totals = ", ".join(
        f"{name} {float(a.detach().sum()):+.3f} / {float(b.detach().sum()):+.3f}"
        for name, (a, b) in maps.items()
    )
    print(f"  {path.name}: distance {distance:.3f}, dot product {dot:.3f}; map totals: {totals}")
    figure = visualize_pair(
        x1, x2, maps, titles=titles, sign="all", show_images=False, panel_size=2.3,
        suptitle=f"distance {distance:.3f}: dlib says {verdict} (< 0.6)",
    )
    buffer = io_bytes.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    Image.open(buffer).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return distance


def registered_methods(sim: SiameseSimilarity, x1: Tensor, x2: Tensor) -> None:
    """The registry's LRP maps of a distance model explain the cosine of its
    descriptors (``white_box_model``): each image's relevance sums to that
    cosine, not to the distance, and the patch map is the pixel map's sums."""
    explained = white_box_model(sim)
    with torch.no_grad():
        cosine = float(explained(x1, x2))
    layer = sim.embedder.get_submodule(DLIB_FACE_LAYER)
    maps = registered_maps(sim, x1, x2, layer, methods=resolve_methods("lrp,lrp-patches,lrp-abs"))
    print(f"explained for the registered LRP: {explained.similarity.name}, {cosine:.4f}")
    for name, (a1, a2) in maps.items():
        print(f"{name}: map sizes {tuple(a1.shape[-2:])}, sums {float(a1.sum()):.4f} and "
              f"{float(a2.sum()):.4f}")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Explain dlib's face ResNet on real face pairs.")
    parser.add_argument("--orl", type=Path, default=None, help="the orl_faces folder (optional)")
    parser.add_argument("--out", type=Path, default=Path("face_figures"))
    parser.add_argument(
        "--align", default="auto", help="face_chips alignment: auto, dlib, pad_resize"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    model = dlib_face_resnet()
    sim = SiameseSimilarity(model, "euclidean")
    start = time.perf_counter()
    x = face_chips(list(astronaut_pair()), align=args.align)
    d = save_pair_figure(sim, x[:1], x[1:], ("astronaut", "altered copy"),
                         args.out / "face_astronaut_pair.png")
    print(f"astronaut pair: distance {d:.3f}")
    registered_methods(sim, x[:1], x[1:])
    if args.orl is not None:
        faces = load_orl_faces(args.orl)
        images = list(faces.images[:, 0].numpy())
        chips, detected = face_chips(images, align=args.align, return_detected=True)
        print(f"ORL: {int(detected.sum())} of {len(images)} faces detected by dlib")
        with torch.no_grad():
            emb = torch.cat([model(chips[i : i + 50]) for i in range(0, len(chips), 50)])
        for name, (i, j) in notable_pairs(emb, faces.labels, "euclidean").items():
            titles = (faces.files[i].replace(".pgm", ""), faces.files[j].replace(".pgm", ""))
            d = save_pair_figure(sim, chips[i : i + 1], chips[j : j + 1], titles,
                                 args.out / f"face_{name}.png")
            print(f"{name}: {titles[0]} vs {titles[1]}, distance {d:.3f}")
    print(f"figures in {args.out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
