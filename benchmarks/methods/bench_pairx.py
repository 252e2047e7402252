"""Speed of PairwiseIntermediateMatching (PAIR-X) at 224x224, as ratios to one
forward+backward pass of the pair.

Models (random weights, float32, eval mode; 224x224 RGB):

- EfficientNet-style: ``EfficientNetEmbedder`` with EfficientNet-B0's stage
  layout up to stride 32 (widths 16/24/40/80/112/192, 1/2/2/3/3/4 MBConv
  blocks with squeeze-excitation, head 512, embedding 128), explained at
  ``blocks.7``, the end of the first stride-16 stage (14x14 cells), the
  counterpart of the reference's ``blocks.3`` of EfficientNetV2;
- ResNet-style: ``ResNetEmbedder`` with five stages (widths
  16/32/64/128/256, one BasicBlock each; its stem has stride 1, so the first
  stage runs at full resolution), explained at ``layer5``, the stride-16
  stage (14x14 cells).

Measured, each as the median over rounds of the ratio to one
forward+backward of the pair through ``SiameseSimilarity`` (input gradients
and parameter gradients, ``benchmarks/timing.py``), the two timed back to back:

- ``explain(x1, x2, k=10)`` for one pair: matches, ranking and 10 per-match
  maps per image, each map's backward pass computed only on the match's
  receptive field, all matches at once (the default: the windowed pass; the
  engine runs the EfficientNet channels-last, for its depthwise
  convolutions, and the ResNet on the layout given);
- the same with the model run channels-last and on the layout given
  (``engine.channels_last`` True and False);
- one forward+backward of the model on the pair laid out channels-last: what
  the unit would cost a user who runs the model that way;
- the same with dense backward passes instead, matches whose receptive
  fields do not overlap sharing one, issued one after another or vmapped
  (``batching="packed"`` and ``"vmap"``); the number of passes is reported,
  as the packing of the explained matches' seeds
  (``captum_similarity.lrp.seeds.pack``) plans it;
- the same with one dense backward pass per match rank (``batching="each"``,
  what the engine does when the receptive field is unknown);
- ``explain(..., k=0)``: matches and ranking only;
- ``attribute((x1, x2), k=10)``: the sum of the 10 maps of each image;
- a naive loop of our own with the reference implementation's structure,
  built from the same engine: each image embedded on its own, one relevance
  pass per image down to the layer, then per image a pass with one backward
  per match (2 plain forwards, 4 rule forwards and 2k + 2 backward passes);
- one plain autograd backward from the layer to the pixels of both images
  (no rules, graph built once): the least one dense per-match map can cost;
- a batch of 16 pairs with ``k=10``, all at once and in chunks of 2 pairs
  (``internal_batch_size=2``): time per pair (ratio to one pair's
  forward+backward) and pairs per second.

The reference implementation (github pairx-explains/pairx) needs zennit,
timm, torchvision and OpenCV, none of which import here, so it is not run
side by side; its measured cost on this machine (DESIGN.md) is 11.6 s per pair
with 10 per-match maps against 0.9 s for one forward+backward on
EfficientNetV2-rw-m at 224x224, about 13x.

With ``--backbones``, the torchvision and timm backbones of
``captum_similarity.models.backbones.BACKBONES`` are measured instead
(random weights, calibrated BatchNorm statistics, a 128-d head), each at its
default layer (``captum_similarity.default_layer``), on a batch of 2 pairs
of 224x224 images: ``explain(k=10)`` and ``explain(k=0)``, the number of
dense backward passes the per-match maps take, and one plain autograd
backward pass from the layer to the pixels (what one dense per-match pass
costs at least); written to ``benchmarks/results/pairx_backbones.md``.

Usage::

    python benchmarks/methods/bench_pairx.py [--repeats 3] [--threads 1]
        [--out benchmarks/results/pairx_speed.md]
    python benchmarks/methods/bench_pairx.py --backbones [--models timm/resnet50d ...]
        [--repeats 3] [--threads 1] [--out benchmarks/results/pairx_backbones.md]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from shared_models import PAIRX_LAYERS as LAYERS  # noqa: E402
from shared_models import PAIRX_MODELS as MODELS  # noqa: E402
from timing import (  # noqa: E402
    command_line,
    forward_backward,
    median_ratio,
    median_seconds,
    results_header,
    write_results,
)

from captum_similarity import PairwiseIntermediateMatching, SiameseSimilarity  # noqa: E402
from captum_similarity.lrp.conservation import ConservationWarning  # noqa: E402
from captum_similarity.models.backbones import BACKBONES, backbone, held_out_images  # noqa: E402
from captum_similarity.lrp import LRPEngine  # noqa: E402
from captum_similarity.lrp.seeds import pack  # noqa: E402
from captum_similarity.pairwise_matching import mutual_nearest_neighbours  # noqa: E402

SIZE = 224
K = 10


def naive_loop(model: nn.Module, layer: str, x1: Tensor, x2: Tensor, k: int) -> List[Tensor]:
    """PAIR-X with the reference implementation's structure, on our engine."""
    features, embeddings = [], []
    for x in (x1, x2):  # each image embedded on its own, as the reference does
        with torch.no_grad():
            embedding, feature = with_layer_output(model, layer, x)
        embeddings.append(embedding)
        features.append(feature)
    f1, f2 = embeddings
    seed = F.normalize(f1, dim=1) * F.normalize(f2, dim=1)
    engine = LRPEngine(model, "epsilon_plus")
    relevance = []
    for x in (x1, x2):  # one relevance pass per image down to the layer
        run = engine.forward(x, record=[layer])
        relevance.append(run.propagate(seed, target=layer).sum(1).abs().flatten(1))
    d1, d2 = (f.flatten(2).transpose(1, 2) for f in features)
    mutual, nearest, _ = mutual_nearest_neighbours(d1, d2)
    rank = torch.where(mutual, relevance[0] * relevance[1].gather(1, nearest), torch.tensor(-1.0))
    cells1 = rank[0].argsort(descending=True)[:k]
    cells = (cells1, nearest[0, cells1])
    maps = []
    for x, chosen in zip((x1, x2), cells):  # per image: one pass, one backward per match
        run = engine.forward(x, record=[layer])
        a = run.activation(layer).detach()
        for cell in chosen.tolist():
            seed = torch.zeros_like(a)
            seed.flatten(2)[:, :, cell] = a.flatten(2)[:, :, cell]
            maps.append(run.propagate(seed, source=layer))
    return maps


def measure(name: str, repeats: int) -> Dict[str, float]:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    layer = LAYERS[name]
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.rand(1, 3, SIZE, SIZE, generator=g) for _ in range(2))
    unit = forward_backward(SiameseSimilarity(model), x1, x2)
    pairx = PairwiseIntermediateMatching(model, layer)
    dense = {
        batching: PairwiseIntermediateMatching(model, layer, batching=batching)
        for batching in ("packed", "vmap", "each")
    }
    layouts = {flag: PairwiseIntermediateMatching(model, layer) for flag in (True, False)}
    for flag, explainer in layouts.items():
        explainer.engine.channels_last = flag
    pair = torch.cat([x1, x2]).contiguous(memory_format=torch.channels_last)
    out = {"fwd+bwd (ms)": median_seconds(unit, repeats) * 1e3}
    cases = {
        "fwd+bwd, channels-last": forward_backward(model, pair),
        "explain k=10": lambda: pairx.explain(x1, x2, k=K),
        "explain k=10, channels_last=True": lambda: layouts[True].explain(x1, x2, k=K),
        "explain k=10, channels_last=False": lambda: layouts[False].explain(x1, x2, k=K),
        "explain k=10, packed dense passes": lambda: dense["packed"].explain(x1, x2, k=K),
        "explain k=10, one backward per match": lambda: dense["each"].explain(x1, x2, k=K),
        "explain k=10, packed dense passes vmapped": lambda: dense["vmap"].explain(x1, x2, k=K),
        "explain k=0": lambda: pairx.explain(x1, x2, k=0),
        "attribute k=10": lambda: pairx.attribute((x1, x2), k=K),
        "naive loop k=10": lambda: naive_loop(model, layer, x1, x2, K),
    }
    cases["one plain backward layer -> pixels"] = plain_backward(model, layer, x1, x2)
    out["dense passes for k=10"] = packed_passes(pairx, layer, x1, x2, K)
    print(f"{name}: {out['dense passes for k=10']} packed dense passes for k={K}", flush=True)
    for case, fn in cases.items():
        out[case] = median_ratio(fn, unit, repeats=repeats)
        print(f"{name}: {case} {out[case]:.2f}x", flush=True)
    b1, b2 = (torch.rand(16, 3, SIZE, SIZE, generator=g) for _ in range(2))
    for chunk in (None, 2):
        key = f"batch of 16{' at once' if chunk is None else f', internal_batch_size={chunk}'}"
        start = time.perf_counter()
        unit_seconds = median_seconds(unit, repeats)
        batch_seconds = median_seconds(
            lambda chunk=chunk: pairx.explain(b1, b2, k=K, internal_batch_size=chunk),
            repeats=1,
            warmup=0,
        )
        unit_seconds = (unit_seconds + median_seconds(unit, repeats)) / 2  # before and after
        out[f"{key}, per pair"] = batch_seconds / 16 / unit_seconds
        out[f"{key}, pairs/s"] = 16 / batch_seconds
        print(
            f"{name}: {key} {out[f'{key}, per pair']:.2f}x per pair, "
            f"{out[f'{key}, pairs/s']:.2f} pairs/s ({time.perf_counter() - start:.0f} s)"
        )
    return out


def packed_passes(
    pairx: PairwiseIntermediateMatching, layer: str, x1: Tensor, x2: Tensor, k: int
) -> int:
    """Dense backward passes from the layer to the pixels that ``batching="packed"``
    runs for the ``k`` per-match maps of the pair ``(x1, x2)``: the seeds of
    the matches ``explain`` returns (each match's cell activation, all
    channels, in the image's row of one pass over both images), packed by
    their receptive fields as the engine packs them."""
    match = pairx.explain(x1, x2, k=k)[0]
    run = pairx.engine.forward(torch.cat([x1, x2]), record=[layer])
    a = run.activation(layer).detach()  # (2, C, h, w)
    top = match.pixel_relevance1.shape[0]  # min(k, matches)
    seeds = a.new_zeros((top, *a.shape))
    for row, cells in enumerate((match.cells1[:top], match.cells2[:top])):
        for rank, (i, j) in enumerate(cells.tolist()):
            seeds[rank, row, :, i, j] = a[row, :, i, j]
    return pack(seeds, run.receptive_field(layer)).passes


def with_layer_output(model: nn.Module, layer: str, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``model(x)`` and the output of its submodule ``layer`` in that call."""
    outputs: List[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda module, inputs, output: outputs.append(output)
    )
    try:
        result = model(x)
    finally:
        handle.remove()
    return result, outputs[-1]


def plain_backward(model: nn.Module, layer: str, x1: Tensor, x2: Tensor) -> Callable[[], None]:
    """One plain autograd backward from the layer's output to the pixels of both
    images (no LRP rule), through a graph built once: the least a dense per-match
    map can cost."""
    x = torch.cat([x1, x2]).requires_grad_(True)
    with torch.enable_grad():
        _, a = with_layer_output(model, layer, x)
    seed = torch.ones_like(a)
    return lambda: torch.autograd.grad(a, x, seed, retain_graph=True)


def measure_backbone(name: str, repeats: int) -> Dict[str, Any]:
    """PAIR-X on a batch of 2 pairs of one backbone, at its default layer."""
    model = backbone(name, image_size=SIZE)
    x1 = held_out_images(SIZE)  # 2 pairs: each image against a shifted copy of itself
    x2 = torch.roll(x1, shifts=(8, 16), dims=(-2, -1))
    unit = forward_backward(SiameseSimilarity(model), x1, x2)
    pairx = PairwiseIntermediateMatching(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConservationWarning)
        maps = min(m.pixel_relevance1.shape[0] for m in pairx.explain(x1, x2, k=K))
        layer = pairx.layer
        name_of = {m: n for n, m in model.named_modules()}
        out: Dict[str, Any] = {
            "layer": name_of[layer],
            "fwd+bwd (ms)": median_seconds(unit, repeats) * 1e3,
            "maps": maps,
        }
        out["explain k=10"] = median_ratio(lambda: pairx.explain(x1, x2, k=K), unit, repeats=repeats)
        out["explain k=0"] = median_ratio(lambda: pairx.explain(x1, x2, k=0), unit, repeats=repeats)
        out["dense passes"] = dense_passes(pairx, x1, x2, K)
    plain = plain_backward(model, out["layer"], x1, x2)
    out["one plain backward layer -> pixels"] = median_ratio(plain, unit, repeats=repeats)
    print(f"{name}: {out}", flush=True)
    return out


def dense_passes(pairx: PairwiseIntermediateMatching, x1: Tensor, x2: Tensor, k: int) -> int:
    """Backward passes from the layer to the pixels the k per-match maps take:
    k when the receptive field is not local, else as ``packed_passes``."""
    run = pairx.engine.forward(torch.cat([x1, x2]), record=[pairx.layer])
    if run.receptive_field(pairx.layer) is None:
        return k
    name = next(n for n, m in pairx.engine.model.named_modules() if m is pairx.layer)
    return packed_passes(pairx, name, x1[:1], x2[:1], k)


def backbone_main(args: argparse.Namespace, argv: Optional[Sequence[str]]) -> None:
    results = {name: measure_backbone(name, args.repeats) for name in args.models}
    columns = ["explain k=10", "explain k=0", "one plain backward layer -> pixels"]
    lines = results_header(command_line(__file__, argv)) + [
        "",
        "Ratios to one forward+backward pass of a batch of 2 pairs of 224x224 images (the "
        "bundled held-out images, each against a copy shifted by (8, 16) pixels) through "
        "SiameseSimilarity (random weights, calibrated BatchNorm statistics, float32); "
        f"k = {K} per-match maps per image (fewer where a pair has fewer matches: the "
        "column says how many), at the default layer. Target: explain k=10 <= 3x.",
        "",
        "| model | default layer | fwd+bwd | maps per image | dense passes | "
        + " | ".join(columns)
        + " |",
        "|---" * (len(columns) + 5) + "|",
    ]
    for name, r in results.items():
        cells = " | ".join(f"{r[c]:.2f}x" for c in columns)
        lines.append(
            f"| {name} | `{r['layer']}` | {r['fwd+bwd (ms)']:.0f} ms | {r['maps']} | "
            f"{r['dense passes']} | {cells} |"
        )
    write_results(args.out or ROOT / "benchmarks" / "results" / "pairx_backbones.md", lines)


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--backbones", action="store_true")
    parser.add_argument("--models", nargs="*", default=list(BACKBONES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.backbones:
        backbone_main(args, argv)
        return
    args.out = args.out or ROOT / "benchmarks" / "results" / "pairx_speed.md"
    results = {name: measure(name, args.repeats) for name in MODELS}
    command = command_line(__file__, argv)
    columns = [
        "fwd+bwd, channels-last",
        "explain k=10",
        "explain k=10, channels_last=True",
        "explain k=10, channels_last=False",
        "explain k=10, packed dense passes",
        "explain k=10, packed dense passes vmapped",
        "explain k=10, one backward per match",
        "explain k=0",
        "attribute k=10",
        "naive loop k=10",
        "one plain backward layer -> pixels",
        "batch of 16 at once, per pair",
        "batch of 16, internal_batch_size=2, per pair",
    ]
    lines = results_header(command) + [
        "",
        "Ratios to one forward+backward pass of the pair (one pair, float32, random weights); "
        f"k = {K} per-match maps per image. Reference implementation: about 13x (11.6 s vs "
        "0.9 s on EfficientNetV2-rw-m, DESIGN.md; not runnable here).",
        "",
        "| model (layer) | fwd+bwd | packed dense passes (k=10) | "
        + " | ".join(columns)
        + " | pairs/s (batch of 16, internal_batch_size=2) |",
        "|---" * (len(columns) + 4) + "|",
    ]
    for name, r in results.items():
        cells = " | ".join(f"{r[c]:.2f}x" for c in columns)
        lines.append(
            f"| {name} (`{LAYERS[name]}`) | {r['fwd+bwd (ms)']:.0f} ms | "
            f"{r['dense passes for k=10']} | {cells} | "
            f"{r['batch of 16, internal_batch_size=2, pairs/s']:.2f} |"
        )
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
