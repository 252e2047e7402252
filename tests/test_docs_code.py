"""The Python code blocks of every docs page run, in order per page.

The convention (also stated in docs/getting-started.md, "Run the tests"):

- every ```` ```python ```` block of ``docs/*.md`` is executed; the blocks of
  one page run in order in one namespace, in a temporary working directory
  (blocks may write figures there);
- names that a page's prose hands to the reader instead of defining them in
  code ("`x` is a batch of queries, `ref` a reference image", "your
  embedder") come from :data:`CONTEXTS`: small reference models and random
  images of the shapes the page describes;
- a block that cannot run as written (pseudo-code, a long training) has the
  line ``<!-- not run: why -->`` right before its opening fence. It is still
  compiled, so a syntax error fails, but it is not executed, and later blocks
  of the page must not depend on it.

A runnable block that raises fails the page's test; :data:`CHECKS` then
asserts what the page says its code computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from captum.attr import (
    LRP,
    DeepLift,
    FeatureAblation,
    IntegratedGradients,
    LayerConductance,
    LayerGradCam,
    Saliency,
)
from matplotlib.figure import Figure

from captum_similarity import (
    BranchLayerAttribution,
    SiameseSimilarity,
    split_branches,
    to_visualizer_arrays,
)
from captum_similarity.data import astronaut_pair
from captum_similarity.models import ResNetEmbedder, ViTEmbedder
from captum_similarity.models.dlib_resnet import dlib_model_path
from conftest import make_reference_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: A python fence, optionally preceded by the not-run marker on the line before it.
FENCE = re.compile(
    r"(?:^<!-- not run: (?P<reason>[^\n]*?) -->\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M,
)
MARKER = re.compile(r"^<!--\s*not\s+run\b", re.I | re.M)  # at a line start, not in prose


@dataclass
class Block:
    """One ```` ```python ```` block of a page."""

    page: Path
    first_line: int  # the page's line number of the block's first code line
    code: str
    not_run: Optional[str]  # the marker's reason, None when the block runs


def blocks_of(page: Path) -> List[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("reason"))
        for m in FENCE.finditer(text)
    ]


PAGES = sorted(p for p in DOCS.glob("*.md") if blocks_of(p))


# -- what each page's prose gives the reader ----------------------------------


def _double_resnet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ResNetEmbedder().double().eval()


def _images(n: int, seed: int, dtype: torch.dtype = torch.float64, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def _getting_started() -> Dict[str, Any]:
    """"Your own model": any embedder, a batch of pairs and their baselines."""
    x1, x2 = _images(2, 0), _images(2, 1)
    return {"my_embedder": make_reference_model("cnn"), "x1": x1, "x2": x2,
            "b1": torch.full_like(x1, 0.5), "b2": torch.full_like(x2, 0.5)}


class _StagedCNN(torch.nn.Module):
    """A bias-free ReLU CNN with stages ``layer1`` .. ``layer4``: the page's
    recipes name ``layer3`` and ``layer4``, and Captum's LRP needs a rule for
    every leaf module (the ResNet's identity shortcuts have none)."""

    def __init__(self, widths: Tuple[int, ...] = (8, 16, 16, 32), embedding_dim: int = 16) -> None:
        super().__init__()
        prev = 3
        for i, width in enumerate(widths):
            conv = torch.nn.Conv2d(prev, width, 3, 2 if i else 1, 1, bias=False)
            self.add_module(f"layer{i + 1}", torch.nn.Sequential(conv, torch.nn.ReLU()))
            prev = width
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(prev, embedding_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return self.head(torch.flatten(self.pool(x), 1))


def _siamese_wrapper() -> Dict[str, Any]:
    """"`sim = SiameseSimilarity(model.eval(), "cosine")`, `x` a batch of
    queries, `ref` a reference image", and the recipes' other operands; the
    recipes use Captum's and the library's names without importing them."""
    torch.manual_seed(0)
    model = _StagedCNN().double()
    x1, x2 = _images(2, 0), _images(2, 1)
    cells = torch.arange(16).reshape(1, 1, 4, 4)
    return {
        "IntegratedGradients": IntegratedGradients, "Saliency": Saliency,
        "FeatureAblation": FeatureAblation, "LayerGradCam": LayerGradCam,
        "LayerConductance": LayerConductance, "DeepLift": DeepLift, "LRP": LRP,
        "BranchLayerAttribution": BranchLayerAttribution, "split_branches": split_branches,
        "to_visualizer_arrays": to_visualizer_arrays,
        "model": model, "sim": SiameseSimilarity(model.eval(), "cosine"),
        "x": x1, "ref": x2[:1], "b": torch.full_like(x1, 0.5),
        "x1": x1, "x2": x2, "b1": torch.full_like(x1, 0.5), "b2": torch.full_like(x2, 0.5),
        "query": _images(1, 2), "gallery": _images(5, 3), "G": 5,
        "mask": cells.repeat_interleave(8, 2).repeat_interleave(8, 3),  # 16 squares of 8x8
    }


def _embedding_gradcam() -> Dict[str, Any]:
    """An embedder with a ``layer3`` before GAP + linear, pairs, a triplet, a
    query and a gallery (as images and as embeddings), a cell of layer3."""
    embedder = _double_resnet()
    gallery = _images(4, 5)
    with torch.no_grad():
        gallery_embeddings = embedder(gallery)
    return {
        "embedder": embedder, "x1": _images(2, 0), "x2": _images(2, 1),
        "anchors": _images(2, 0), "positives": _images(2, 1), "negatives": _images(2, 2),
        "x": _images(2, 3), "reference": _images(1, 4),
        "query": _images(1, 6), "gallery_images": gallery, "gallery_embeddings": gallery_embeddings,
        "row": 3, "col": 5,
    }


def _face_verification() -> Dict[str, Any]:
    """Two face photos: scikit-image's astronaut and an altered copy of her."""
    try:
        dlib_model_path()
    except ImportError as error:
        pytest.skip(f"dlib's face weights are not installed: {error}")
    image_a, image_b = astronaut_pair()
    return {"image_a": image_a, "image_b": image_b}


def _faithfulness() -> Dict[str, Any]:
    """A model with ``layer3``; queries ``x`` against a reference ``ref``; one
    query against a gallery; pairs; ``C`` channels."""
    torch.manual_seed(0)
    x1, x2 = _images(2, 0, torch.float32), _images(2, 1, torch.float32)
    return {"model": ResNetEmbedder(widths=(8, 16, 16)), "x": x1, "ref": x2[:1], "x1": x1, "x2": x2,
            "query": _images(1, 2, torch.float32), "gallery": _images(3, 3, torch.float32), "C": 3}


def _visualization() -> Dict[str, Any]:
    """A pair, input attributions and layer maps of it, its score."""
    x1, x2 = _images(2, 0), _images(2, 1)
    g = torch.Generator().manual_seed(1)
    return {
        "x1": x1, "x2": x2, "a1": torch.randn(x1.shape, generator=g, dtype=x1.dtype),
        "a2": torch.randn(x2.shape, generator=g, dtype=x2.dtype),
        "m1": torch.rand(2, 1, 8, 8, generator=g), "m2": torch.rand(2, 1, 8, 8, generator=g),
        "score": 0.734, "layer_maps": torch.rand(2, 1, 8, 8, generator=g), "images": x1,
    }


def _backbones() -> Dict[str, Any]:
    """"`model` your backbone, `x1`, `x2` batches of images": the reference
    ViT (tokens with a class token, so the default layer needs a reshape)."""
    torch.manual_seed(0)
    return {"model": ViTEmbedder(image_size=32, depth=3).eval(),
            "x1": _images(2, 0, torch.float32), "x2": _images(2, 1, torch.float32)}


def _command_line() -> Dict[str, Any]:
    """In the working directory: a user's model file (a small CNN instead of
    the page's torchvision one), a query, a gallery folder and the worked
    example's output folder ``gallery_report`` (from the small model)."""
    import numpy as np
    from skimage import io

    from captum_similarity.cli import main

    Path("my_model.py").write_text(
        "import torch\nfrom captum_similarity.models import SimpleCNN\n\n\n"
        "def build():\n    torch.manual_seed(0)\n    return SimpleCNN()\n"
    )
    rng = np.random.default_rng(0)
    Path("gallery").mkdir()
    for name in ("query.png", "gallery/a.png", "gallery/b.png"):
        io.imsave(name, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), check_contrast=False)
    assert main(["explain", "query.png", "gallery", "--model", "my_model.py:build", "--size", "32",
                 "32", "--methods", "gradcam", "--out", "gallery_report"]) == 0
    return {}


#: Per page: the names its prose gives the reader (pages not listed define all they use).
CONTEXTS: Dict[str, Callable[[], Dict[str, Any]]] = {
    "getting-started.md": _getting_started,
    "siamese-wrapper.md": _siamese_wrapper,
    "embedding-gradcam.md": _embedding_gradcam,
    "face-verification.md": _face_verification,
    "faithfulness.md": _faithfulness,
    "visualization.md": _visualization,
    "backbones.md": _backbones,
    "command-line.md": _command_line,
}


# -- what each page says its code computes ------------------------------------


def _check_lrp(ns: Dict[str, Any], cwd: Path) -> None:
    assert ns["r_pixels"].shape == (5, 2, 3, 32, 32)
    torch.testing.assert_close(ns["r_each"], ns["r_pixels"])  # "same values"


def _check_pairwise(ns: Dict[str, Any], cwd: Path) -> None:
    assert ns["a1"].shape == (2, 3, 32, 32)
    assert ns["result"].layer_relevance1.shape == (4, 4)


def _check_embedding_gradcam(ns: Dict[str, Any], cwd: Path) -> None:
    s = SiameseSimilarity(ns["embedder"], "cosine")(ns["x1"], ns["x2"]).detach()
    torch.testing.assert_close(ns["P"].sum((1, 2)), s, atol=1e-12, rtol=0)  # exact split
    assert ns["q_maps"].shape == (4, 1, 8, 8) and ns["where"].shape == (2, 1, 8, 8)


def _check_faithfulness(ns: Dict[str, Any], cwd: Path) -> None:
    result = ns["result"]
    for auc in (result.insertion_auc_normalized, result.deletion_auc_normalized):
        assert auc.shape == (2,) and ((auc >= 0) & (auc <= 1)).all()
    assert ns["maps"].shape == (3, 3, 32, 32)  # one query against 3 gallery items
    assert ns["var"].shape == ns["attr"].shape == ns["x"].shape


def _check_writes_pair_png(ns: Dict[str, Any], cwd: Path) -> None:
    assert (cwd / "pair.png").stat().st_size > 10_000


def _check_face_verification(ns: Dict[str, Any], cwd: Path) -> None:
    assert ns["x"].shape == (2, 3, 150, 150)
    assert ns["distance"].shape == (1,) and float(ns["distance"]) < 0.6  # the same person
    _check_writes_pair_png(ns, cwd)


def _check_siamese_wrapper(ns: Dict[str, Any], cwd: Path) -> None:
    assert ns["a1"].shape == ns["x1"].shape and ns["r2"].shape == ns["x2"].shape
    assert ns["m1"].shape == ns["m2"].shape == (2, 1, 4, 4)  # layer4 of a 32x32 image
    assert ns["attr"].shape == (5, 3, 32, 32) and ns["scores"].shape == (5,)
    # "r1.sum() = r2.sum() = s for each pair" (bias-free ReLU network; epsilon = 1e-9)
    s = ns["sim"](ns["x1"], ns["x2"]).detach()
    for r in (ns["r1"], ns["r2"]):
        torch.testing.assert_close(r.sum((1, 2, 3)), s, atol=1e-8, rtol=1e-4)  # LRP-epsilon


def _check_backbones(ns: Dict[str, Any], cwd: Path) -> None:
    """Maps over the default layer's 4x4 grid of patches, one per image."""
    assert ns["m1"].shape == ns["m2"].shape == (2, 1, 4, 4)
    assert ns["view"].layer is ns["model"].blocks[1]  # the penultimate block


def _check_command_line(ns: Dict[str, Any], cwd: Path) -> None:
    assert ns["gradcam_query"].shape == (1, 8, 8)  # the 8x8 grid of SimpleCNN on 32x32 images
    assert ns["best"]["rank"] == 1
    assert (cwd / "out" / "results.json").is_file() and (cwd / "out" / "maps.npz").is_file()
    assert (cwd / "again.html").stat().st_size > 10_000


def _check_visualization(ns: Dict[str, Any], cwd: Path) -> None:
    assert isinstance(ns["fig"], Figure) and ns["attr_hwc"].shape == (32, 32, 1)
    _check_writes_pair_png(ns, cwd)


CHECKS: Dict[str, Callable[[Dict[str, Any], Path], None]] = {
    "lrp.md": _check_lrp,
    "pairwise-matching.md": _check_pairwise,
    "embedding-gradcam.md": _check_embedding_gradcam,
    "faithfulness.md": _check_faithfulness,
    "face-verification.md": _check_face_verification,
    "getting-started.md": _check_writes_pair_png,
    "siamese-wrapper.md": _check_siamese_wrapper,
    "visualization.md": _check_visualization,
    "backbones.md": _check_backbones,
    "command-line.md": _check_command_line,
}

#: Pages whose blocks take long (seconds of dlib's ResNet at 150x150).
SLOW_PAGES = {"face-verification.md"}


def _page_param(page: Path) -> Any:
    marks = [pytest.mark.slow] if page.name in SLOW_PAGES else []
    return pytest.param(page, id=page.name, marks=marks)


# -- the tests -----------------------------------------------------------------


def test_every_page_with_code_is_collected_and_known():
    assert {"lrp.md", "pairwise-matching.md", "siamese-wrapper.md"} <= {p.name for p in PAGES}
    names = {p.name for p in DOCS.glob("*.md")}
    assert set(CONTEXTS) <= names and set(CHECKS) <= names and SLOW_PAGES <= names


def test_markers_and_fences_follow_the_convention():
    """A typo must not silently skip or drop a block: every marker sits right
    before a python fence, and python code is fenced as ```` ```python ````."""
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        marked = sum(1 for b in blocks_of(page) if b.not_run is not None)
        assert len(MARKER.findall(text)) == marked, f"{page.name}: a not-run marker is misplaced"
        assert all(b.not_run for b in blocks_of(page) if b.not_run is not None), page.name
        infos = re.findall(r"^```([^\n`]*)$", text, re.M)
        odd = [info for info in infos if "py" in info.lower() and info != "python"]
        assert not odd, f"{page.name}: fence info strings {odd}, not python (the test skips them)"


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_code_blocks_run_in_order(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: Dict[str, Any] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    context = CONTEXTS.get(page.name)
    if context is not None:
        namespace.update(context())
    ran = 0
    for block in blocks_of(page):
        # padded so that a traceback names the page's line numbers
        padded = "\n" * (block.first_line - 1) + block.code
        code = compile(padded, f"docs/{page.name} (python block)", "exec")
        if block.not_run is None:
            exec(code, namespace)
            ran += 1
    assert ran > 0, f"{page.name}: no block runs"
    check = CHECKS.get(page.name)
    if check is not None:
        check(namespace, tmp_path)
