"""Memory kept by one LRP pass for its backward passes (PAIR-X's rule pass).

For each model of ``bench_pairx.py`` (float32, random weights) and one pair
at 224x224, runs the engine's forward pass as PAIR-X does (both images in
one batch, the explained layer recorded) and adds up the storage of every
tensor that the autograd graph keeps (saved tensors of PyTorch's nodes, the
rules' factors and masks), each storage counted once. That memory is
touched afresh by every call, so on a CPU it costs page faults as well as
space (docs/lrp.md, "How the engine works").

Usage::

    python benchmarks/engine/pass_memory.py [--out benchmarks/results/pass_memory.md]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shared_models import PAIRX_LAYERS as LAYERS  # noqa: E402
from shared_models import PAIRX_MODELS as MODELS  # noqa: E402
from timing import command_line, machine  # noqa: E402

from captum_similarity.lrp.graph import function_class, topological  # noqa: E402
from captum_similarity.lrp import LRPEngine  # noqa: E402


def kept_by_graph(output: torch.Tensor) -> Dict[str, int]:
    """Bytes of the storages the graph below ``output`` keeps, by node kind."""
    seen = set()
    by_kind: Counter = Counter()
    for node in topological(output.grad_fn):
        tensors = [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
        if function_class(node) is not None:  # the rules' own autograd functions
            tensors += list(node.saved_tensors) + [getattr(node, "factor", None)]
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in seen:
                continue
            seen.add(storage.data_ptr())
            by_kind[node.name()] += storage.nbytes()
    return dict(by_kind)


def measure(name: str) -> Tuple[float, Dict[str, int]]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    g = torch.Generator().manual_seed(0)
    pair = torch.rand(2, 3, 224, 224, generator=g)
    run = LRPEngine(model).forward(pair, record=[LAYERS[name]])
    by_kind = kept_by_graph(run.output)
    return sum(by_kind.values()) / 1e6, by_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/pass_memory.md")
    args = parser.parse_args()
    lines = [
        f"Command: `{command_line(__file__)}`  ",
        f"Machine: {machine()}",
        "",
        "| model (layer) | kept by the graph | largest parts |",
        "|---|---|---|",
    ]
    for name in MODELS:
        total, by_kind = measure(name)
        parts = sorted(by_kind.items(), key=lambda kv: -kv[1])[:3]
        largest = ", ".join(f"{kind} {size / 1e6:.1f} MB" for kind, size in parts)
        lines.append(f"| {name} (`{LAYERS[name]}`) | {total:.1f} MB | {largest} |")
        print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
