"""Which EmbeddingGradCAM weighting is most faithful: the benchmark runner on
each weighting, with and without ReLU, next to Captum's LayerGradCam.

The variants are registered here only (they would crowd the demo's figures),
then the runner scores them on held-out ORL pairs and writes its table to
benchmarks/results/gradcam_weighting.md and into docs/embedding-gradcam.md.
With --near-identical, the pairs are each image and an altered copy of itself
(the runner's --altered-copies), where the cosine's gradient nearly vanishes;
the table goes to benchmarks/results/gradcam_near_identical.md and the
page's near-identical block.

Usage: python benchmarks/methods/gradcam_weighting.py --orl ../shared/data/orl_faces
       [--near-identical] [runner options]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(Path(__file__).resolve().parent)]

from captum_similarity import EmbeddingGradCAM  # noqa: E402
from captum_similarity.explainers import register  # noqa: E402
from run_benchmarks import main  # noqa: E402
from timing import command_line  # noqa: E402

VARIANTS = {
    f"EmbeddingGradCAM ({weighting}{', ReLU' if relu else ''})": (weighting, relu)
    for weighting in ("pair", "similarity")
    for relu in (False, True)
}


def _variant(weighting: str, relu: bool):
    def explain(model, x1, x2, layer):
        return EmbeddingGradCAM(model, layer).attribute(
            (x1, x2), weighting=weighting, relu_attributions=relu
        )

    return explain


for name, (weighting, relu) in VARIANTS.items():
    register(name, needs_layer=True)(_variant(weighting, relu))

if __name__ == "__main__":
    given = sys.argv[1:]
    near = "--near-identical" in given
    dlib = any(a == "dlib" and b == "--model" for b, a in zip(given, given[1:]))
    name = ("gradcam_near_identical" if near else "gradcam_weighting") + ("-dlib" if dlib else "")
    argv = [a for a in given if a != "--near-identical"] + [
        "--methods", *VARIANTS, "Captum LayerGradCam", "Random map (baseline)",
        "--out", str(ROOT / "benchmarks" / "results" / f"{name}.md"),
        "--docs", str(ROOT / "docs" / "embedding-gradcam.md"),
    ]
    if near:
        argv += ["--altered-copies", "--docs-block", "near-identical" + ("-dlib" if dlib else "")]
    main(argv, command=command_line(__file__))  # the command that reproduces the table
