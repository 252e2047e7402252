"""A dataset-scale run: explain-dataset on an identity folder, resumed, summarised.

In the folder --out:

1. writes a small identity folder (one sub-folder per "identity": a sample
   image that ships with the install, and altered copies of it: mirrored,
   darker, shifted) and a tiny convolutional embedder's weights;
2. runs, through the command line's Python entry point,

       captum-similarity explain-dataset faces --pairs same:6,different:6 --seed 0 \\
           --model captum_similarity.models:SimpleCNN --weights weights.pt --size 32 32 \\
           --methods gradcam,lrp --faithfulness --steps 21 --image-cache prepared --out run

   (under torchrun the same line runs sharded: docs/running-at-scale.md);
   the prepared images are kept in the folder ``prepared``;
3. deletes one finished unit and runs the same command again: only that unit
   is computed, from images loaded from ``prepared`` (none prepared again),
   and the table has the same rows (apart from the times);
4. prints each method's mean insertion AUC with its standard error, and the
   paired difference of the two methods on the same pairs.

Usage: python examples/dataset_run.py [--out DIR] [--pairs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from skimage import io, transform

from captum_similarity.cli import main as cli
from captum_similarity.data.files import sample_image
from captum_similarity.models import SimpleCNN
from captum_similarity.runs import compare_methods, read_table, summarize

IDENTITIES = ("astronaut", "cameraman", "chelsea", "coffee")


def identity_folder(root: Path, side: int = 48) -> None:
    """Four identities of four images each: the sample image and three altered copies."""
    for name in IDENTITIES:
        base = transform.resize(sample_image(name), (side, side), anti_aliasing=True)
        variants = [base, base[:, ::-1], base**1.5, np.roll(base, 3, axis=(0, 1))]
        (root / name).mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(variants):
            io.imsave(root / name / f"{k}.png", (image * 255).round().astype(np.uint8),
                      check_contrast=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dataset_run"))
    parser.add_argument("--pairs", type=int, default=6, help="same-person and different pairs each")
    args = parser.parse_args()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    identity_folder(out / "faces")
    torch.manual_seed(0)
    torch.save(SimpleCNN().state_dict(), out / "weights.pt")

    command = [
        "explain-dataset", str(out / "faces"), "--pairs",
        f"same:{args.pairs},different:{args.pairs}", "--seed", "0", "--model",
        "captum_similarity.models:SimpleCNN", "--weights", str(out / "weights.pt"),
        "--size", "32", "32", "--methods", "gradcam,lrp", "--faithfulness", "--steps", "21",
        "--image-cache", str(out / "prepared"), "--out", str(out / "run"),
    ]
    assert cli(command) == 0
    table = out / "run" / "table.csv"
    first = out / "table-first.csv"
    shutil.copy(table, first)

    units = sorted((out / "run" / "units").glob("*.json"))
    units[0].unlink()  # as if the job had been killed before this unit
    assert cli(command) == 0
    def values(path):  # every column but the method's time
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_table(path)]

    same = str(values(first)) == str(values(table))  # str: NaN equals NaN
    print(f"resumed: {units[0].stem} computed again, the same rows: {same}")
    record = json.loads((out / "run" / "processes" / "rank-0.json").read_text())
    print(f"images of the resumed run: {record['image_cache']['loaded']} loaded from the cache, "
          f"{record['images_prepared']} prepared")

    rows = read_table(table)
    print(f"rows: {len(rows)} ({2 * args.pairs} pairs x 2 methods), "
          f"failed: {sum(r['status'] != 'ok' for r in rows)}")
    for label in ("same", "different"):
        for method, estimate in summarize(rows, "blur_insertion1", label=label).items():
            print(f"{label} pairs, {method}: insertion AUC (x 100) "
                  f"{100 * estimate.mean:.1f} ± {100 * estimate.standard_error:.1f} (n={estimate.n})")
    diff = compare_methods(rows, "blur_insertion1", "gradcam", "lrp")
    print(f"gradcam - lrp, paired over {diff.n} pairs: {100 * diff.mean:.1f} ± "
          f"{100 * diff.standard_error:.1f}")


if __name__ == "__main__":
    main()
