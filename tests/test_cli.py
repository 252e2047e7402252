"""``captum-similarity explain``: every --model form, galleries, bad input, the outputs.

A tiny convolutional embedder defined in a Python file (as a user's would be)
runs on 16x16 images, so each run takes a second; the maps the command saves
are compared with the library's methods run directly on the same model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import io

from captum_similarity import EmbeddingGradCAM, SiameseSimilarity
from captum_similarity.cli import main
from captum_similarity.report import load_results

ROOT = Path(__file__).resolve().parents[1]

MODEL_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(16, 8)

        def forward(self, x):
            return self.head(self.pool(self.features(x)).flatten(1))


    def build():
        torch.manual_seed(0)
        return Net()


    def not_a_model():
        return 42


    def needs_arguments(width):
        return Net()


    def pooled_map():
        return nn.Conv2d(3, 4, 3)
    """
)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with the model file, weights and 16x16 images; the working directory."""
    (tmp_path / "usermodels.py").write_text(MODEL_CODE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usermodels", None)
    import usermodels

    torch.manual_seed(1)
    trained = usermodels.Net()  # other weights than build()'s: loading them must change the scores
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    rng = np.random.default_rng(0)
    images = {}
    for name in ("query", "near", "far1", "far2", "far3"):
        images[name] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    images["near"] = np.clip(
        images["query"].astype(int) + rng.integers(-8, 9, (16, 16, 3)), 0, 255
    ).astype(np.uint8)
    (tmp_path / "gallery" / "sub").mkdir(parents=True)
    for name, img in images.items():
        io.imsave(tmp_path / f"{name}.png", img, check_contrast=False)
    for name in ("near", "far1", "far2"):
        io.imsave(tmp_path / "gallery" / f"{name}.png", images[name], check_contrast=False)
    io.imsave(tmp_path / "gallery" / "sub" / "far3.png", images["far3"], check_contrast=False)
    (tmp_path / "gallery" / "notes.txt").write_text("not an image")
    yield {"root": tmp_path, "trained": trained.eval(), "images": images, "module": usermodels}
    sys.modules.pop("usermodels", None)


def run(*args: str) -> int:
    return main([str(a) for a in args])


def gradcam(sim, x1, x2):
    """What ``--methods gradcam`` computes for a cosine model (docs/embedding-gradcam.md)."""
    return EmbeddingGradCAM(sim, "features").attribute(
        (x1, x2), weighting="pair", relu_attributions=True
    )


def as_input(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def test_python_file_model_with_weights_matches_the_methods_run_directly(workspace, capsys):
    out = workspace["root"] / "out"
    status = run(
        "explain",
        "query.png",
        "near.png",
        "far1.png",
        "--model",
        "usermodels.py:build",
        "--weights",
        "weights.pt",
        "--size",
        16,
        16,
        "--methods",
        "gradcam,saliency",
        "--out",
        out,
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert f"report: {(out / 'report.html').resolve()}" in printed.out
    results = load_results(out)
    model = workspace["trained"]
    sim = SiameseSimilarity(model, "cosine")
    q = as_input(workspace["images"]["query"])
    refs = {n: as_input(workspace["images"][n]) for n in ("near", "far1")}
    with torch.no_grad():
        expected = {f"{n}.png": float(sim(q, x)) for n, x in refs.items()}
    scores = {g["name"]: g["score"] for g in results["gallery"]}
    assert scores == pytest.approx(expected, abs=1e-5)  # the weights were loaded, not build()'s
    assert [p["reference"] for p in results["pairs"]] == sorted(
        expected, key=expected.get, reverse=True
    )
    assert results["model"]["layer"] == "features"  # the last block at stride <= 16
    assert "chosen by default" in results["model"]["layer_choice"]
    for pair in results["pairs"]:
        x2 = refs[pair["reference"][:-4]]
        m1, m2 = gradcam(sim, q, x2)
        got = pair["methods"]["gradcam"]["maps"]
        np.testing.assert_allclose(got[0], m1[0].numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got[1], m2[0].numpy(), rtol=1e-4, atol=1e-7)
        assert pair["methods"]["gradcam"]["seconds"] > 0
    document = json.loads((out / "results.json").read_text())
    assert document["command"].startswith("captum-similarity explain query.png near.png far1.png")
    assert document["versions"]["torch"] == torch.__version__
    with np.load(out / "maps.npz") as arrays:
        key = document["pairs"][0]["methods"]["gradcam"]["maps"][0]["npz"]
        assert key == "pairs/0/methods/gradcam/maps/0"
        np.testing.assert_array_equal(
            arrays[key], results["pairs"][0]["methods"]["gradcam"]["maps"][0]
        )


def test_checkpoint_and_dotted_module_forms(workspace, capsys):
    status = run(
        "explain",
        "query.png",
        "near.png",
        "--model",
        "usermodels:build",
        "--weights",
        "checkpoint.pt",
        "--size",
        16,
        16,
        "--methods",
        "gradcam",
        "--out",
        "out",
    )
    assert status == 0, capsys.readouterr().err
    results = load_results("out")
    with torch.no_grad():
        expected = float(
            SiameseSimilarity(workspace["trained"], "cosine")(
                as_input(workspace["images"]["query"]), as_input(workspace["images"]["near"])
            )
        )
    assert results["pairs"][0]["score"] == pytest.approx(expected, abs=1e-5)
    assert any("checkpoint's 'state_dict'" in n for n in results["model"]["notes"])


def test_torchscript_file_runs_gradient_methods_and_says_what_it_cannot(workspace, capsys):
    model = workspace["trained"]
    with pytest.warns(DeprecationWarning) if _jit_deprecated() else _nothing():
        torch.jit.script(model).save("model.ts")
    status = run(
        "explain", "query.png", "near.png", "--model", "model.ts", "--size", 16, 16, "--out", "out"
    )  # the default methods: the layer methods are skipped, not failed
    err = capsys.readouterr().err
    assert status == 0, err
    results = load_results("out")
    methods = results["pairs"][0]["methods"]
    assert methods["saliency"]["error"] is None
    assert "cannot be hooked" in methods["gradcam"]["error"]
    assert results["model"]["layer"] is None
    from captum.attr import Saliency

    q, x2 = as_input(workspace["images"]["query"]), as_input(workspace["images"]["near"])
    a1, a2 = Saliency(SiameseSimilarity(model, "cosine")).attribute((q, x2))
    np.testing.assert_allclose(methods["saliency"]["maps"][0], a1[0].numpy(), rtol=1e-4, atol=1e-7)
    # asked for by name, a method that cannot run is a failure
    assert (
        run(
            "explain",
            "query.png",
            "near.png",
            "--model",
            "model.ts",
            "--size",
            16,
            16,
            "--methods",
            "gradcam",
            "--out",
            "out2",
        )
        == 1
    )
    assert "gradcam" in capsys.readouterr().err


def _jit_deprecated() -> bool:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.script(torch.nn.Identity())
    return any(issubclass(w.category, DeprecationWarning) for w in caught)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_torch_export_program(workspace, capsys):
    model = workspace["trained"]
    x = torch.rand(2, 3, 16, 16)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, "model.pt2")
    status = run(
        "explain",
        "query.png",
        "near.png",
        "--model",
        "model.pt2",
        "--methods",
        "gradcam",
        "--out",
        "out",
    )
    assert status == 0, capsys.readouterr().err
    results = load_results("out")
    assert results["model"]["kind"] == "export" and results["model"]["layer"] == "features"
    assert "16x16" in " ".join(results["model"]["notes"])  # the size read off the program
    q, x2 = as_input(workspace["images"]["query"]), as_input(workspace["images"]["near"])
    m1, _ = gradcam(SiameseSimilarity(model, "cosine"), q, x2)
    np.testing.assert_allclose(
        results["pairs"][0]["methods"]["gradcam"]["maps"][0], m1[0].numpy(), rtol=1e-4, atol=1e-7
    )
    static = torch.export.export(model, (x[:1],))
    torch.export.save(static, "static.pt2")
    assert run("explain", "query.png", "near.png", "--model", "static.pt2", "--out", "o") == 2
    assert "dynamic batch dimension" in capsys.readouterr().err


def test_gallery_folder_is_ranked_and_the_top_k_explained(workspace, capsys):
    status = run(
        "explain",
        "query.png",
        "gallery",
        "--model",
        "usermodels.py:build",
        "--size",
        16,
        16,
        "--top-k",
        2,
        "--methods",
        "gradcam",
        "--out",
        "out",
    )
    assert status == 0, capsys.readouterr().err
    results = load_results("out")
    gallery = results["gallery"]
    assert sorted(g["name"] for g in gallery) == sorted(
        f"gallery/{n}" for n in ("near.png", "far1.png", "far2.png", "sub/far3.png")
    )
    ranked = sorted(gallery, key=lambda g: g["rank"])
    assert [g["rank"] for g in ranked] == [1, 2, 3, 4]
    assert all(a["score"] >= b["score"] for a, b in zip(ranked, ranked[1:]))
    assert [g["explained"] for g in ranked] == [True, True, False, False]
    assert [p["reference"] for p in results["pairs"]] == [g["name"] for g in ranked[:2]]
    assert results["gallery_folders"] == ["gallery"]
    page = Path("out/report.html").read_text()
    assert "Ranking" in page and page.count('<h2 id="pair-') == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nonsense"], "is not a file and has no ':'"),
        (["--model", "missing.pt"], "model file not found"),
        (["--model", "nosuchmodule:build"], "no module named 'nosuchmodule'"),
        (["--model", "usermodels.py:nothing"], "has no 'nothing'"),
        (["--model", "usermodels.py:not_a_model"], "returned a int, not a torch.nn.Module"),
        (["--model", "usermodels.py:needs_arguments"], "without arguments"),
        (["--model", "usermodels.py:build", "--weights", "nothere.pt"], "weights file not found"),
        (
            ["--model", "usermodels.py:pooled_map", "--weights", "weights.pt"],
            "do not fit the model",
        ),
        (["--model", "usermodels.py:build", "--weights", "usermodels.py"], "weights_only=True"),
        (["--model", "weights.pt"], "neither a TorchScript file nor a torch.export program"),
        (["--model", "usermodels.py:build", "--methods", "gradcam,nope"], "unknown method 'nope'"),
        (["--model", "usermodels.py:build", "--normalize", "0.5"], "--normalize must be"),
        (["--model", "usermodels.py:pooled_map"], "an embedder must return (N, D)"),
    ],
)
def test_bad_model_specs_and_options_get_one_line(workspace, capsys, args, message):
    status = run("explain", "query.png", "near.png", "--size", 16, 16, "--out", "out", *args)
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("captum-similarity: error:") and message in lines[-1], err
    assert "Traceback" not in err


def test_cuda_without_a_device_is_a_clear_error(workspace, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status = run(
        "explain",
        "query.png",
        "near.png",
        "--model",
        "usermodels.py:build",
        "--device",
        "cuda",
        "--out",
        "out",
    )
    assert status == 2 and "no CUDA device" in capsys.readouterr().err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "absent.png", "image file not found"),
        (lambda root: _write(root / "bad.png", "not a png"), "cannot read"),
        (lambda root: root / "gallery", "QUERY must be one image"),
        (lambda root: "sample:unknown", "unknown sample image"),
    ],
)
def test_bad_images_get_one_line(workspace, capsys, make, message):
    query = make(workspace["root"])
    status = run("explain", query, "near.png", "--model", "usermodels.py:build", "--out", "out")
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err, err


def test_empty_gallery_and_debug_traceback(workspace, capsys):
    (workspace["root"] / "empty").mkdir()
    assert run("explain", "query.png", "empty", "--model", "usermodels.py:build", "--out", "o") == 2
    assert "no image files" in capsys.readouterr().err
    assert run("explain", "query.png", "near.png", "--model", "nonsense", "--debug") == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch: seconds
def test_plain_progress_lines_off_a_terminal_and_python_m(workspace):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), str(workspace["root"])]),
        MPLBACKEND="Agg",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "captum_similarity",
            "explain",
            "query.png",
            "near.png",
            "far1.png",
            "--model",
            "usermodels.py:build",
            "--size",
            "16",
            "16",
            "--methods",
            "gradcam,lrp",
            "--out",
            "out",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=workspace["root"],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "gradcam: pairs 1-2 of 2" in result.stderr and "lrp: pairs 1-2 of 2" in result.stderr
    assert "\r" not in result.stderr  # no progress bar off a terminal
    assert (workspace["root"] / "out" / "report.html").is_file()


def test_help_lists_every_short_name(capsys):
    from captum_similarity.explainers import short_names

    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = capsys.readouterr().out
    for short in short_names():
        assert f"  {short} " in text
    assert "[default]" in text


def test_samples_command_writes_images(tmp_path, capsys):
    assert main(["samples", str(tmp_path), "--names", "astronaut-altered", "cameraman"]) == 0
    img = io.imread(tmp_path / "cameraman.png")
    assert img.shape == (160, 160, 3)
    assert "astronaut-altered.png" in capsys.readouterr().out


@pytest.mark.slow
def test_the_readmes_main_job(tmp_path, monkeypatch, capsys):
    """The README's first command, as written (its output folder in tmp_path)."""
    import shlex

    pytest.importorskip("face_recognition_models", reason="needs the faces extra")
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("## Run it on a fresh machine")
    )
    line = next(line for line in lines[start:] if line.startswith("python3 -m venv"))
    args = shlex.split(line.split(".venv/bin/captum-similarity ", 1)[1])
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0, capsys.readouterr().err
    out = tmp_path / args[args.index("--out") + 1]
    results = load_results(out)
    first, second = results["pairs"]
    assert (
        first["reference"] == "sample:astronaut-altered" and first["accepted"]
    )  # dlib: same person
    assert second["reference"] == "sample:cameraman" and not second["accepted"]
    for pair in results["pairs"]:
        for short in ("gradcam", "lrp", "pairx", "saliency"):
            assert pair["methods"][short]["error"] is None, short
        assert pair["methods"]["pairx"]["matches"]["count"] >= 3
    assert results["pairs"][0]["notes"]  # near-identical: the note is in the report
    assert (out / "report.html").stat().st_size > 500_000
    assert f"report: {(out / 'report.html').resolve()}" in capsys.readouterr().out


def test_a_loaded_model_from_python_is_left_as_found(tmp_path):
    from captum_similarity.cli import explain_images
    from captum_similarity.models.loading import LoadedModel
    from conftest import assert_unchanged, snapshot

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ).train()  # in train mode, as a user may hand it over
    net[0].weight.grad = torch.ones_like(net[0].weight)
    before = snapshot(net)
    rng = np.random.default_rng(0)
    for name in ("q", "r"):
        io.imsave(tmp_path / f"{name}.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8),
                  check_contrast=False)
    results = explain_images(tmp_path / "q.png", [tmp_path / "r.png"], LoadedModel(net, "net", "callable", "a net"),
                             size=(12, 12), methods="gradcam,lrp,saliency", progress=False)
    assert all(e["error"] is None for e in results["pairs"][0]["methods"].values())
    assert_unchanged(net, before)
    assert net.training
