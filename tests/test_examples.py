"""The scripts in examples/ run with their smallest settings and write what they say.

Each script runs in a subprocess of this interpreter, with this checkout first
on ``PYTHONPATH`` and a temporary output folder. The ORL examples skip when
the ORL faces are absent; they use the trained ORL embedder as a user running
them does, from the model cache (``$CAPTUM_SIMILARITY_CACHE``, else
``~/.cache/captum_similarity``), so on a machine without it the first of them
trains it (about two CPU minutes here) and the others load it. All but the
inventory check are marked slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from conftest import ORL_DEFAULT

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Runs ``examples/<name>`` and returns its standard output; fails on a non-zero exit."""
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{output}"
    return result.stdout


def number_after(label: str, text: str) -> float:
    """The number printed right after ``label`` in ``text``."""
    match = re.search(re.escape(label) + r"\s*([-+]?[0-9.]+(?:e[-+]?[0-9]+)?)", text)
    assert match, f"{label!r} not in the output:\n{text}"
    return float(match.group(1))


def assert_images(*paths: Path) -> None:
    for path in paths:
        assert path.is_file() and path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def orl_or_none() -> Optional[Path]:
    root = Path(os.environ.get("CAPTUM_SIMILARITY_ORL", ORL_DEFAULT))
    return root if (root / "s1").is_dir() else None


def test_every_example_is_tested():
    tested = {"siamese_wrapper.py", "faithfulness.py", "embedding_gradcam.py",
              "face_verification.py", "lrp_orl_faces.py", "pairwise_matching_orl.py",
              "command_line.py", "captum_compositions.py", "reliability.py",
              "sanity_checks.py", "dataset_run.py", "salient_attributes.py", "backbones.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_siamese_wrapper(tmp_path):
    out = run_example("siamese_wrapper.py", "--out", str(tmp_path / "pair.png"), cwd=tmp_path)
    assert_images(tmp_path / "pair.png")
    assert "reference as an embedding gives the same: True" in out
    assert "equals the fixed-branch oracle: True" in out
    assert number_after("IG on both images: completeness error", out) < 1e-8
    assert number_after("summation error", out) < 1e-10
    assert number_after("|sum R1 - s| =", out) < 1e-5 and number_after("|sum R2 - s| =", out) < 1e-5


@pytest.mark.slow
def test_captum_compositions(tmp_path):
    out = run_example("captum_compositions.py", "--samples", "2", "--out", str(tmp_path / "sg.png"),
                      cwd=tmp_path)
    assert_images(tmp_path / "sg.png")
    assert "equals the mean over the same noisy inputs: True" in out
    assert "LayerConductance with an image reference: ValueError: LayerConductance cannot" in out
    assert out.count("per query:") == 2


@pytest.mark.slow
def test_reliability(tmp_path):
    out = run_example("reliability.py", "--threads", "3", "--calls", "2", cwd=tmp_path)
    assert out.count(": True") == 7 and ": False" not in out
    assert "a NaN pixel: ValueError: NaN or infinite values in inputs (row 1 of 2)" in out
    assert "float64 images on a float32 model: TypeError" in out
    assert "pass x[None]" in out


@pytest.mark.slow
def test_faithfulness(tmp_path):
    out = run_example(
        "faithfulness.py", "--masks", "50", "--out", str(tmp_path / "f.png"), cwd=tmp_path
    )
    assert_images(tmp_path / "f.png")
    rows: Dict[str, list] = {
        name: [float(v) for v in out.split(name, 1)[1].split()[:2]]
        for name in ("true map (centre)", "random map")
    }
    (true_ins, true_del), (rand_ins, rand_del) = rows["true map (centre)"], rows["random map"]
    assert true_ins > rand_ins and true_del < rand_del  # the known saliency beats chance


@pytest.mark.slow
def test_embedding_gradcam_reference_model_tour(tmp_path):
    out = run_example("embedding_gradcam.py", cwd=tmp_path)
    assert number_after("max difference to a loop of pairs:", out) < 1e-10
    assert number_after("|sum - s| =", out) < 1e-10
    assert number_after("|Grad-CAM(dot) - marginal| =", out) < 1e-10
    assert not list(tmp_path.iterdir())  # without --orl it writes nothing


@pytest.mark.slow
def test_embedding_gradcam_orl_figure(orl_root, tmp_path):
    out = run_example("embedding_gradcam.py", "--orl", str(orl_root),
                      "--out", str(tmp_path / "figs" / "eg.png"), cwd=tmp_path)
    assert_images(tmp_path / "figs" / "eg.png", tmp_path / "figs" / "eg_1.png")
    assert number_after("held-out recall@1", out) > 0.8


@pytest.mark.slow
def test_face_verification(tmp_path):
    pytest.importorskip("face_recognition_models", reason="needs the faces extra")
    orl = orl_or_none()
    args = ["--out", str(tmp_path / "faces")] + (["--orl", str(orl)] if orl else [])
    out = run_example("face_verification.py", *args, cwd=tmp_path)
    assert number_after("astronaut pair: distance", out) < 0.6  # dlib: the same person
    # the registered LRP explains the cosine: both images' relevance sums to it
    cosine = number_after("explained for the registered LRP: cosine,", out)
    line = next(t for t in out.splitlines() if t.startswith("LRPRelevancePairing (epsilon_plus)"))
    sums = [float(v) for v in line.split("sums ")[1].split(" and ")]
    assert all(abs(v - cosine) < 1e-3 * abs(cosine) for v in sums)
    patches = next(t for t in out.splitlines() if t.startswith("LRPRelevancePairing (patches)"))
    assert "map sizes (25, 25)" in patches
    patch_sums = [float(v) for v in patches.split("sums ")[1].split(" and ")]
    assert all(abs(a - b) < 1e-3 for a, b in zip(patch_sums, sums))
    names = ["face_astronaut_pair.png"]
    if orl:
        names += ["face_correct_match.png", "face_wrong_match.png"]
    assert_images(*(tmp_path / "faces" / name for name in names))


@pytest.mark.slow
def test_lrp_orl_faces(orl_root, tmp_path):
    out = run_example("lrp_orl_faces.py", "--orl", str(orl_root),
                      "--out", str(tmp_path / "lrp.png"), cwd=tmp_path)
    assert_images(tmp_path / "lrp.png")
    assert out.count("s - sum BiLRP =") == 2  # the matching and the non-matching pair


@pytest.mark.slow
def test_pairwise_matching_orl(orl_root, tmp_path):
    out = run_example("pairwise_matching_orl.py", "--orl", str(orl_root), "--k", "1",
                      "--out-dir", str(tmp_path / "figs"), cwd=tmp_path)
    names = ["pairx_orl_same.png", "pairx_orl_same_raw.png", "pairx_orl_different.png"]
    assert_images(*(tmp_path / "figs" / name for name in names))
    assert out.count("inlier ratio") == 2


@pytest.mark.slow
def test_salient_attributes(tmp_path):
    # a 100-step embedder (cached separately from the example's default) keeps this short
    out = run_example("salient_attributes.py", "--steps", "100", "--pairs", "12", "--images", "150",
                      "--out", str(tmp_path / "attributes.png"), cwd=tmp_path)
    assert_images(tmp_path / "attributes.png")
    for label in ("top-1 against the shared object:", "confidence alone:",
                  "top-1 against SANE's removal oracle:", "the oracle against the shared object:"):
        assert 0.0 <= number_after(label, out) <= 1.0
    assert out.count("explained by:") == 3


@pytest.mark.slow
def test_backbones(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("timm")
    out = run_example(
        "backbones.py", "--size", "64", "--k", "3", "--out", str(tmp_path / "pairx.png"), cwd=tmp_path
    )
    assert_images(tmp_path / "pairx.png")
    assert "default layer features.5 (Sequential), channels_last, cells (4, 4)" in out
    assert number_after("conservation error", out) < 1.0  # percent
    assert "3 explained" in out


@pytest.mark.slow
def test_command_line_gallery(tmp_path):
    pytest.importorskip("face_recognition_models", reason="needs the faces extra")
    import shutil

    shot = ["--screenshot", str(tmp_path / "shot.png")] if shutil.which("chromium") else []
    out = run_example("command_line.py", "--out", str(tmp_path / "ex"), "--methods", "gradcam",
                      *shot, cwd=tmp_path)
    ranks = re.findall(r"rank (\d): (\S+)\s+distance ([0-9.]+)", out)
    assert [r[0] for r in ranks] == ["1", "2", "3", "4"]
    assert ranks[0][1] == "astronaut-altered.png" and float(ranks[0][2]) < 0.6  # the same person
    assert all(float(r[2]) >= 0.6 for r in ranks[1:])  # the others are not
    assert (tmp_path / "ex" / "gallery_report" / "report.html").stat().st_size > 100_000
    if shot:
        assert_images(tmp_path / "shot.png")


@pytest.mark.slow
def test_sanity_checks(tmp_path):
    pytest.importorskip("face_recognition_models", reason="needs the faces extra")
    out = run_example("sanity_checks.py", "--out", str(tmp_path / "sanity.png"), cwd=tmp_path)
    assert_images(tmp_path / "sanity.png")
    assert "a fixed map (ignores the model): similarity as layers go random from the top: " \
        "1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00; survives: True" in out
    assert "EmbeddingGradCAM: similarity" in out and "Captum Saliency: similarity" in out
    assert out.count("survives: False") >= 2  # the gradient maps follow the weights


@pytest.mark.slow
def test_dataset_run(tmp_path):
    out = run_example("dataset_run.py", "--out", str(tmp_path / "ex"), "--pairs", "3", cwd=tmp_path)
    assert "computed again, the same rows: True" in out
    assert number_after("images of the resumed run:", out) > 0
    assert "from the cache, 0 prepared" in out
    assert "rows: 12 (6 pairs x 2 methods), failed: 0" in out
    assert number_after("paired over", out) == 6
    assert (tmp_path / "ex" / "run" / "table.csv").is_file()
