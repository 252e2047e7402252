"""Which EmbeddingGradCAM weighting is most faithful: the benchmark runner on
each weighting, with and without ReLU, next to Captum's LayerGradCam.

The variants are registered here only (they would crowd the demo's figures),
then the runner scores them on held-out ORL pairs and writes its table to
benchmarks/results/gradcam_weighting.md and into docs/embedding-gradcam.md.

Usage: python benchmarks/methods/gradcam_weighting.py --orl ../shared/data/orl_faces
       [runner options]
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
    argv = sys.argv[1:] + [
        "--methods", *VARIANTS, "Captum LayerGradCam", "Random map (baseline)",
        "--out", str(ROOT / "benchmarks" / "results" / "gradcam_weighting.md"),
        "--docs", str(ROOT / "docs" / "embedding-gradcam.md"),
    ]
    main(argv, command=command_line(__file__))  # the command that reproduces the table
