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
              "backbones.py"}
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
