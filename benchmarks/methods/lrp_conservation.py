"""Conservation of LRPRelevancePairing on the reference models: s - sum R.

For each reference model (as built by the tests: float64, eval, non-trivial
BatchNorm statistics, random weights) and each preset composite, explains 8
random pairs with the dot and cosine similarities and reports the mean of
|s - sum R| over pairs and both images, next to the mean |s|. A second block
repeats this with every additive constant set to zero (biases, BatchNorm
means, the ViT's class and position tokens), where nothing but the input can
absorb relevance. A third block uses the trained ORL embedder
(``orl_embedder``, float32) on 20 pairs of held-out faces (10 of the same
person, 10 of different people), and a fourth dlib's trained face ResNet
(when its weights are installed) on 10 ORL pairs, on edge-padded chips and
on chips aligned by dlib (black padding), when the ORL folder is found.

Run from the repository root::

    python benchmarks/methods/lrp_conservation.py [--orl ../shared/data/orl_faces]
        [--out benchmarks/results/lrp_conservation.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import REFERENCE_KINDS, make_reference_model, zero_additive_constants  # noqa: E402

from captum_similarity import LRPRelevancePairing  # noqa: E402
from captum_similarity.data import identity_split, load_orl_faces  # noqa: E402
from captum_similarity.models import dlib_face_resnet, face_chips  # noqa: E402
from captum_similarity.training.demo_models import ORL_CONFIG, orl_embedder  # noqa: E402

COMPOSITES = ["lrp0", "epsilon", "epsilon_plus", "gamma"]


def row(name: str, model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, similarity: str) -> str:
    cells = []
    scores = None
    for composite in COMPOSITES:
        lrp = LRPRelevancePairing(model, similarity, composite=composite)
        (r1, _), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
        if scores is None:
            scores = (delta[:, 0] + r1.sum((1, 2, 3))).abs().mean()
        cells.append(f"{delta.abs().mean():.2e}")
    return f"| {name} | {similarity} | {scores:.3f} | " + " | ".join(cells) + " |"


def reference_rows(zeroed: bool) -> list:
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(8, 3, 32, 32, generator=g, dtype=torch.float64)
    x2 = torch.rand(8, 3, 32, 32, generator=g, dtype=torch.float64)
    rows = []
    for kind in REFERENCE_KINDS:
        model = make_reference_model(kind)
        if zeroed:
            zero_additive_constants(model)
        for similarity in ("dot", "cosine"):
            rows.append(row(kind, model, x1, x2, similarity))
            print(rows[-1], flush=True)
    return rows


def orl_rows(root: Path) -> list:
    model, info = orl_embedder(root)
    faces = load_orl_faces(root, size=tuple(ORL_CONFIG["size"]))
    _, held_out = identity_split(faces, ORL_CONFIG["n_train"])
    images = held_out.images.reshape(10, 10, *held_out.images.shape[1:])  # person, image
    same = (images[:, 0], images[:, 5])
    other = (images[:, 0], images[torch.arange(10).roll(1), 0])
    x1, x2 = torch.cat([same[0], other[0]]), torch.cat([same[1], other[1]])
    name = f"ORL ResNet (held-out recall@1 {info['recall_at_1']:.2f})"
    rows = []
    for similarity in ("dot", "cosine"):
        rows.append(row(name, model, x1, x2, similarity))
        print(rows[-1], flush=True)
    return rows


def dlib_rows(root: Path) -> list:
    """dlib's trained face ResNet on 10 ORL pairs (5 same person, 5 different),
    chips made by edge-padding to a square and resizing to 150x150, and (when
    dlib is installed) chips aligned as dlib makes them, whose black padding
    is exactly 0."""
    try:
        model = dlib_face_resnet()
    except Exception as err:  # the weights come from an optional package
        print(f"dlib face ResNet skipped: {err}")
        return []
    faces = load_orl_faces(root)
    images = faces.images.reshape(40, 10, *faces.images.shape[1:])[::8]  # s1, s9, ..., s33
    same = (images[:, 0], images[:, 5])
    other = (images[:, 0], images[torch.arange(5).roll(1), 0])
    first = torch.cat([same[0], other[0]])[:, 0].numpy()
    second = torch.cat([same[1], other[1]])[:, 0].numpy()
    rows = []
    for align in ("pad_resize", "dlib"):
        try:
            x1, x2 = (face_chips(list(images), align=align) for images in (first, second))
        except ImportError as err:
            print(f"{align} chips skipped: {err}")
            continue
        zeros = torch.cat([x1, x2]).eq(0).all(1).float().mean()
        name = f"dlib face ResNet (trained), {align} chips ({zeros:.1%} zero pixels)"
        for similarity in ("dot", "cosine"):
            rows.append(row(name, model, x1, x2, similarity))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_orl = os.environ.get(
        "CAPTUM_SIMILARITY_ORL", ROOT.parent / "shared" / "data" / "orl_faces"
    )
    parser.add_argument("--orl", type=Path, default=default_orl)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "lrp_conservation.md"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = "| model | similarity | mean abs(s) | " + " | ".join(COMPOSITES) + " |"
    rule = "|---|---|---|" + "---|" * len(COMPOSITES)
    lines = [
        "# LRPRelevancePairing conservation: mean |s - sum R|",
        "",
        "Command: `python benchmarks/methods/lrp_conservation.py` (reference models: 8 random "
        "32x32 pairs, float64).",
        "",
        "## Reference models as built by the tests (random weights, biases present)",
        "",
        header,
        rule,
        *reference_rows(zeroed=False),
        "",
        "## Same models with every additive constant set to zero",
        "",
        header,
        rule,
        *reference_rows(zeroed=True),
    ]
    if (args.orl / "s1").is_dir():
        lines += [
            "",
            "## Trained ORL embedder, 20 held-out pairs (10 same person, 10 different), float32",
            "",
            header,
            rule,
            *orl_rows(args.orl),
        ]
        dlib = dlib_rows(args.orl)
        if dlib:
            lines += [
                "",
                "## dlib's trained face ResNet, 10 ORL pairs (5 same person, 5 different), float32",
                "",
                header,
                rule,
                *dlib,
            ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
