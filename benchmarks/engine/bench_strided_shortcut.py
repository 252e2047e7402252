"""Why the LRP rules run a strided 1x1 convolution on the subsampled input.

Measures, on one thread at 224x224 (float32, random weights):

- a ResNet shortcut alone (1x1 convolution, stride 2, 16 -> 32 channels, a
  batch of 2): its input-gradient backward pass through PyTorch's strided
  convolution and through the subsampled form, each as a ratio to the
  convolution's forward pass;
- one LRP backward pass of the ResNet-style reference model (5 stages, as in
  ``methods/bench_pairx.py``) from ``layer5`` to the pixels of 2 images, with
  the rules' convolutions run either way: as the engine runs them (the
  subsampled form), and with each strided 1x1 convolution given a z+ rule of
  our own (:class:`StridedZPlus`, the rule the default composite gives it,
  through the public rule interface) that runs PyTorch's strided convolution
  instead. The library is not patched.

Each number is the median of ``--repeats`` rounds, the variants timed back to
back in every round.

Usage::

    python benchmarks/engine/bench_strided_shortcut.py [--repeats 15]
        [--out benchmarks/results/strided_shortcut.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shared_models import PAIRX_MODELS  # noqa: E402
from timing import command_line, machine, rounds  # noqa: E402

from captum_similarity.lrp import LRPEngine  # noqa: E402
from captum_similarity.lrp.rules import ConvAdjoint, LinearOp, ZPlus

MODEL = "ResNet-style (5 stages, stride-1 stem)"


class StridedZPlus(ZPlus):
    """z+ with the convolution run as PyTorch's strided convolution, for a
    strided 1x1 convolution that the engine would run on its subsampled input
    (same values; the form the engine gives every other convolution)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride = tuple(conv.stride)
        self.groups = conv.groups

    def rewire(self, op: LinearOp, x: Tensor, trace: Any) -> Tensor:
        def strided(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
            return F.conv2d(x, weight, bias, stride=self.stride, groups=self.groups)

        adjoint = ConvAdjoint(self.stride, (0, 0), (1, 1), self.groups)
        return super().rewire(replace(op, forward=strided, adjoint=adjoint), x, trace)


def strided_pointwise(model: nn.Module) -> List[str]:
    """Names of the 1x1 convolutions of ``model`` with a stride and no padding
    (the ResNet shortcuts)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.dilation == (1, 1)
        and m.padding in ((0, 0), "valid")
        and any(s > 1 for s in m.stride)
    ]


def shortcut(repeats: int) -> Dict[str, float]:
    torch.manual_seed(0)
    x = torch.rand(2, 16, 224, 224, requires_grad=True)
    w = torch.randn(32, 16, 1, 1)
    strided = F.conv2d(x, w, stride=2)
    subsampled = F.conv2d(x[:, :, ::2, ::2], w)
    torch.testing.assert_close(strided, subsampled)
    g = torch.randn_like(strided)
    return rounds(
        {
            "forward": lambda: F.conv2d(x.detach(), w, stride=2),
            "strided backward": lambda: torch.autograd.grad(strided, x, g, retain_graph=True),
            "subsampled backward": lambda: torch.autograd.grad(subsampled, x, g, retain_graph=True),
        },
        repeats,
    )


def lrp_backward(repeats: int) -> Dict[str, float]:
    torch.manual_seed(0)
    model = PAIRX_MODELS[MODEL]().eval()
    x = torch.rand(2, 3, 224, 224)
    engines = {"subsampled": LRPEngine(model), "strided": LRPEngine(model)}
    shortcuts = strided_pointwise(model)
    assert shortcuts, "the model has no strided 1x1 convolution"
    given = {name: rule for name, _, rule in engines["strided"].composite.plan(model)}
    for name in shortcuts:
        assert repr(given[name]) == repr(ZPlus()), (name, given[name])  # like for like
        engines["strided"].set_rule(name, StridedZPlus(model.get_submodule(name)))
    passes = {}
    for name, engine in engines.items():
        run = engine.forward(x, record=["layer5"])
        seed = run.activation("layer5").detach()
        passes[name] = (run, seed)
    torch.testing.assert_close(
        passes["subsampled"][0].propagate(passes["subsampled"][1], source="layer5"),
        passes["strided"][0].propagate(passes["strided"][1], source="layer5"),
    )
    return rounds(
        {
            f"LRP backward, {name}": (lambda r=run, s=seed: r.propagate(s, source="layer5"))
            for name, (run, seed) in passes.items()
        },
        repeats,
    )


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "strided_shortcut.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    conv = shortcut(args.repeats)
    lrp = lrp_backward(args.repeats)
    command = command_line(__file__, argv)
    fwd = conv["forward"]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| measurement | median | ratio |",
        "|---|---|---|",
        f"| 1x1 stride-2 conv, 2x16x224x224 -> 32 ch, forward | {fwd * 1e3:.1f} ms | 1.00x |",
        f"| its input gradient, strided convolution backward | "
        f"{conv['strided backward'] * 1e3:.1f} ms | {conv['strided backward'] / fwd:.2f}x forward |",
        f"| its input gradient, subsampled form | "
        f"{conv['subsampled backward'] * 1e3:.1f} ms | {conv['subsampled backward'] / fwd:.2f}x forward |",
        f"| LRP backward layer5 -> pixels (ResNet-style, 2 images), strided shortcuts | "
        f"{lrp['LRP backward, strided'] * 1e3:.1f} ms | 1.00x |",
        f"| the same, subsampled shortcuts (the rules' form) | "
        f"{lrp['LRP backward, subsampled'] * 1e3:.1f} ms | "
        f"{lrp['LRP backward, subsampled'] / lrp['LRP backward, strided']:.2f}x |",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
