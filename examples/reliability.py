"""The reliability guarantees of docs/reliability.md, shown on a model with
BatchNorm and Dropout left in train mode: threads, train mode, no_grad and
inference mode, NaN and wrong dtypes. Each line prints the fact it checks.

Usage: python examples/reliability.py [--threads 4] [--calls 3]
"""

import argparse
import threading

import torch
from torch import nn

from captum_similarity import EmbeddingGradCAM, LRPRelevancePairing, SiameseSimilarity
from captum_similarity.models import ResNetEmbedder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3, help="calls per thread")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ResNetEmbedder(widths=(8, 16, 16)).train()  # BatchNorm in train mode
    model.layer3.add_module("dropout", nn.Dropout(0.3))
    sim = SiameseSimilarity(model, "cosine")
    x, ref = torch.rand(2, 3, 32, 32), torch.rand(1, 3, 32, 32)
    bn = model.stem[1]
    stats = (bn.running_mean.clone(), bn.num_batches_tracked.clone())

    cam = EmbeddingGradCAM(sim, "layer2")
    first = cam.attribute(x, additional_forward_args=(ref,))
    second = cam.attribute(x, additional_forward_args=(ref,))
    print(f"train-mode model: two calls give the same maps: {torch.equal(first, second)}")
    unchanged = all(torch.equal(a, b) for a, b in zip(stats, (bn.running_mean, bn.num_batches_tracked)))
    print(f"  BatchNorm statistics unchanged: {unchanged}; "
          f"model still in train mode: {model.training}")

    lrp = LRPRelevancePairing(sim)
    single = lrp.attribute(x, additional_forward_args=(ref,))
    results = []

    def work() -> None:
        for _ in range(args.calls):
            results.append(lrp.attribute(x, additional_forward_args=(ref,)))

    pool = [threading.Thread(target=work) for _ in range(args.threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    same = len(results) == args.threads * args.calls and all(torch.equal(r, single) for r in results)
    print(f"{args.threads} threads x {args.calls} calls on one model equal the single-threaded "
          f"result: {same}; model still in train mode: {model.training}")

    with torch.no_grad():
        print(f"inside torch.no_grad(): same maps: {torch.equal(cam.attribute(x, (ref,)), first)}")
    with torch.inference_mode():
        maps = cam.attribute(x.clone(), (ref.clone(),))
    print(f"inside torch.inference_mode(): same maps: {torch.equal(maps, first)}")

    broken = x.clone()
    broken[1, 0, 5, 5] = float("nan")
    try:
        cam.attribute(broken, additional_forward_args=(ref,))
    except ValueError as error:
        print(f"a NaN pixel: ValueError: {str(error).split(':')[0]}")
    try:
        cam.attribute(x.double(), additional_forward_args=(ref,))
    except TypeError as error:
        print(f"float64 images on a float32 model: TypeError: {str(error).split(':')[0]}")
    try:
        cam.attribute(x[0], additional_forward_args=(ref,))
    except ValueError as error:
        print(f"one image without a batch dimension: ValueError: ...{str(error)[-64:]}")


if __name__ == "__main__":
    main()
