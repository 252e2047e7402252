"""Conservation of LRPRelevancePairing on the reference models: s - sum R.

For each reference model (as built by the tests: float64, eval, non-trivial
BatchNorm statistics, random weights) and each preset composite, explains 8
random pairs with the dot and cosine similarities and reports the mean of
|s - sum R| over pairs and both images, next to the mean |s|. A second block
repeats this with every additive constant set to zero (biases, BatchNorm
means, the ViT's class and position tokens), where nothing but the input can
absorb relevance.

Run from the repository root::

    python benchmarks/lrp_conservation.py     # writes benchmarks/results/lrp_conservation.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import REFERENCE_KINDS, make_reference_model  # noqa: E402

from captum_similarity import LRPRelevancePairing  # noqa: E402

COMPOSITES = ["lrp0", "epsilon", "epsilon_plus", "gamma"]


def zero_additive_constants(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
        for name in ("cls_token", "pos_embed"):
            if hasattr(model, name):
                getattr(model, name).zero_()
    return model


def row(kind: str, similarity: str, zeroed: bool) -> str:
    model = make_reference_model(kind)
    if zeroed:
        zero_additive_constants(model)
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(8, 3, 32, 32, generator=g, dtype=torch.float64)
    x2 = torch.rand(8, 3, 32, 32, generator=g, dtype=torch.float64)
    cells = []
    scores = None
    for composite in COMPOSITES:
        lrp = LRPRelevancePairing(model, similarity, composite=composite)
        (r1, _), delta = lrp.attribute((x1, x2), return_convergence_delta=True)
        if scores is None:
            scores = (delta[:, 0] + r1.sum((1, 2, 3))).abs().mean()
        cells.append(f"{delta.abs().mean():.2e}")
    return f"| {kind} | {similarity} | {scores:.3f} | " + " | ".join(cells) + " |"


def main() -> None:
    torch.set_num_threads(1)
    header = "| model | similarity | mean abs(s) | " + " | ".join(COMPOSITES) + " |"
    rule = "|---|---|---|" + "---|" * len(COMPOSITES)
    lines = [
        "# LRPRelevancePairing conservation: mean |s - sum R|",
        "",
        "Command: `python benchmarks/lrp_conservation.py` (8 random 32x32 pairs, float64).",
        "",
        "## Reference models as built by the tests (random weights, biases present)",
        "",
        header,
        rule,
    ]
    for kind in REFERENCE_KINDS:
        for similarity in ("dot", "cosine"):
            lines.append(row(kind, similarity, zeroed=False))
            print(lines[-1], flush=True)
    lines += ["", "## Same models with every additive constant set to zero", "", header, rule]
    for kind in REFERENCE_KINDS:
        for similarity in ("dot", "cosine"):
            lines.append(row(kind, similarity, zeroed=True))
            print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "lrp_conservation.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
