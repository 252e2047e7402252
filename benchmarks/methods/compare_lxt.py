"""Our attention rules side by side with lxt, AttnLRP's own library.

lxt 2.1 (Achtibat et al.; ``pip install lxt``, not a dependency of this
library) explains torchvision's Vision Transformer with its CP-LRP patches:
query and key detached in ``nn.MultiheadAttention``, LayerNorm with the
standard deviation detached, GELU passed through, every other layer's plain
gradient (LRP-0). lxt patches torchvision's module classes for the whole
process, so its side runs in a subprocess, with the Python interpreter of an
environment where lxt is installed (``--lxt-python``). Our side uses the
``"epsilon"`` composite (LRP-epsilon with epsilon = 1e-6 on every Linear and
Conv layer: LRP-0 up to the stabiliser), the matching layer rules.

Model: torchvision ``vit_b_16`` for 64x64 inputs, random weights (its
zero-initialised head given N(0, 0.02) weights), the query and key rows of
each in-projection scaled by ``--sharpen`` factors (1: random init; 8:
attention as sharp as in trained models). Four images explained against one
reference (cosine, the reference's embedding fixed). Reported per factor:
the input relevance's sum over the score for each image (both sides), the
Pearson correlation of the two maps (over pixels and channels) and their
largest difference relative to the largest relevance.

Usage::

    python benchmarks/methods/compare_lxt.py --lxt-python /path/to/lxt-env/bin/python
        [--sharpen 1 8] [--out benchmarks/results/lxt_comparison.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, machine  # noqa: E402

SIZE = 64

#: What both sides run: the model, the images, and the relevance as lxt computes it.
SHARED = r'''
import torch, torchvision

def build(factor):
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=128, image_size=64)
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    with torch.no_grad():
        for layer in model.encoder.layers:
            weight = layer.self_attention.in_proj_weight
            weight[: 2 * weight.shape[1]] *= factor
    return model.eval()

def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)

def lxt_relevance(factor):
    from lxt.efficient import monkey_patch
    from torchvision.models import vision_transformer
    monkey_patch(vision_transformer)
    model = build(factor)
    x, ref = images()
    reference = model(ref).detach()
    xx = x.clone().requires_grad_(True)
    f = model(xx)
    seed = torch.nn.functional.normalize(f.detach(), dim=1) * torch.nn.functional.normalize(reference, dim=1)
    (grad,) = torch.autograd.grad(f, xx, seed / f.detach())
    return xx.detach() * grad
'''


def ours(factor: float) -> torch.Tensor:
    from captum_similarity import LRPRelevancePairing
    from captum_similarity.lrp.conservation import ConservationWarning

    namespace: dict = {}
    exec(SHARED, namespace)  # noqa: S102  (the benchmark's own code)
    model = namespace["build"](factor)
    x, ref = namespace["images"]()
    with torch.no_grad():
        reference = model(ref)
    lrp = LRPRelevancePairing(model, "cosine", composite="epsilon")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConservationWarning)
        return lrp.attribute(x, additional_forward_args=(reference,)), model, x, reference


def theirs(factor: float, python: str) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "relevance.pt"
        code = SHARED + f"\ntorch.save(lxt_relevance({factor!r}), {str(out)!r})\n"
        subprocess.run([python, "-c", code], check=True)
        return torch.load(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lxt-python", required=True)
    parser.add_argument("--sharpen", type=float, nargs="*", default=[1.0, 8.0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lxt_comparison.md")
    args = parser.parse_args(argv)
    version = subprocess.run(
        [args.lxt_python, "-c", "import importlib.metadata as m; print(m.version('lxt'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    rows = []
    for factor in args.sharpen:
        mine, model, x, reference = ours(factor)
        other = theirs(factor, args.lxt_python)
        with torch.no_grad():
            s = torch.nn.functional.cosine_similarity(model(x), reference.expand(len(x), -1))
        r = [float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]) for a, b in zip(mine, other)]
        rows.append({
            "factor": factor,
            "ours": (mine.flatten(1).sum(1) / s).tolist(),
            "lxt": (other.flatten(1).sum(1) / s).tolist(),
            "r": r,
            "difference": float((mine - other).abs().max() / other.abs().max()),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    shown = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(shown[:-1]):
        if arg == "--lxt-python":
            shown[i + 1] = "$LXT_PYTHON"  # the interpreter of an environment with lxt
    command = command_line(__file__, shown).replace("'$LXT_PYTHON'", '"$LXT_PYTHON"')
    lines = [
        f"Command: `{command}` (`$LXT_PYTHON`: the Python of an "
        f"environment with lxt {version} and this library's torch)  ",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}.",
        "",
        "torchvision `vit_b_16` for 64x64 inputs, random weights, query/key rows of the "
        "in-projections scaled by the factor; 4 images explained against one reference "
        "(cosine). Ours: `LRPRelevancePairing(composite=\"epsilon\")`; lxt: its CP-LRP "
        "patches for torchvision's ViT (`lxt.efficient.monkey_patch`), gradient x input.",
        "",
        "| sharpen | sum R / s, ours | sum R / s, lxt | correlation of the maps | largest difference / largest relevance |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        fmt = lambda v: ", ".join(f"{x:.3f}" for x in v)  # noqa: E731
        lines.append(
            f"| {row['factor']:g} | {fmt(row['ours'])} | {fmt(row['lxt'])} | "
            f"{', '.join(f'{x:.5f}' for x in row['r'])} | {row['difference']:.1e} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
