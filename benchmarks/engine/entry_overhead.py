"""What the guarded entry point of every method costs.

Every public method of the library's attribution classes runs inside one
guard (per-model locks, eval mode with the flags restored, autograd enabled,
inference tensors copied; docs/reliability.md). Its cost does not depend on
the inputs, only on the number of modules and parameters of the model, so it
is measured on a call that stops right after entering it: an
``EmbeddingGradCAM.attribute`` call with an unknown ``weighting``, which the
method refuses after reading its inputs, through the entry point and as the
function the entry point wraps (``attribute.__wrapped__.__wrapped__``), timed
back to back in each round. The difference is the guard's cost; it is
reported next to one forward+backward pass of ``sim(x, ref)`` (4 queries of
64x64 against one reference, random weights, float32, 1 thread), the unit.

Usage::

    python benchmarks/engine/entry_overhead.py [--repeats 200]
        [--out benchmarks/results/entry_overhead.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, List

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shared_models import LRP_MODELS  # noqa: E402
from timing import command_line, forward_backward, machine, rounds  # noqa: E402

from captum_similarity import EmbeddingGradCAM, SiameseSimilarity  # noqa: E402

#: The layer Grad-CAM explains in each reference model.
LAYERS = {"cnn": "features.4", "resnet": "layer2", "efficientnet": "blocks.2", "vit": "blocks.1"}


def measure(kind: str, repeats: int) -> List[str]:
    torch.manual_seed(0)
    model = LRP_MODELS[kind](64).eval()
    sim = SiameseSimilarity(model, "cosine")
    x, ref = torch.rand(4, 3, 64, 64), torch.rand(1, 3, 64, 64)
    cam = EmbeddingGradCAM(sim, LAYERS[kind])
    bare = cam.attribute.__wrapped__.__wrapped__  # the function the entry point guards

    def refused(call: Callable[..., object], *args: object) -> Callable[[], None]:
        def run() -> None:
            try:
                call(*args, x, additional_forward_args=(ref,), weighting="unknown")
            except ValueError:
                return
            raise AssertionError("the call was expected to stop at its weighting")

        return run

    unit = rounds({"unit": forward_backward(sim, x, ref)}, max(5, repeats // 20))["unit"]
    t = rounds({"guarded": refused(cam.attribute), "bare": refused(bare, cam)}, repeats)
    cost = t["guarded"] - t["bare"]
    modules = sum(1 for _ in model.modules())
    return [
        kind, str(modules), f"{1e3 * unit:.1f} ms", f"{1e6 * t['guarded']:.0f} us",
        f"{1e6 * t['bare']:.0f} us", f"{1e6 * cost:.0f} us ({cost / unit:.4f} units)",
    ]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--models", nargs="+", default=list(LAYERS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "entry_overhead.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [measure(kind, args.repeats) for kind in args.models]
    table = [
        "| model | modules | forward+backward (unit) | refused call, guarded | the same, bare "
        "| guard's cost |",
        "|---|---|---|---|---|---|",
    ] + ["| " + " | ".join(r) + " |" for r in rows]
    load = os.getloadavg()[0]
    text = (
        f"Command: `{command_line(__file__, argv)}`  \n"
        f"Machine: {machine()}; load average {load:.1f} at the end.\n\n"
        + "\n".join(table) + "\n"
    )
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
