"""The faithfulness benchmark runner, in smoke mode (tiny model, three pairs)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from captum_similarity import explainers as registry

RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "methods" / "run_benchmarks.py"


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_benchmarks", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _centre_map(model, x1, x2, layer):
    """A method registered by another module: a fixed bump in the image centre."""
    h, w = x1.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    bump = -((ys - h / 2) ** 2 + (xs - w / 2) ** 2).to(x1.dtype)
    return bump.expand(x1.shape[0], 1, h, w), bump.expand(x2.shape[0], 1, h, w)


def test_pairs_are_same_then_different_identity():
    runner = _load_runner()
    labels = torch.arange(10).repeat_interleave(10)
    i, j, same = runner.select_pairs(labels, 12, 5, seed=0)
    assert same.tolist() == [True] * 12 + [False] * 5
    assert (labels[i] == labels[j]).tolist() == same.tolist() and (i != j).all()
    assert len({int(labels[k]) for k in i[:10]}) == 10  # spread over the identities
    again = runner.select_pairs(labels, 12, 5, seed=0)
    assert torch.equal(again[0], i) and torch.equal(again[1], j)


@pytest.mark.slow
def test_smoke_run_scores_every_registered_method(orl_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_SIMILARITY_CACHE", str(tmp_path / "cache"))
    extra = registry.PairExplainer("Centre bump (test)", _centre_map)
    monkeypatch.setitem(registry._REGISTRY, extra.name, extra)
    docs = tmp_path / "page.md"
    docs.write_text("intro\n<!-- benchmark:start -->\nold table\n<!-- benchmark:end -->\noutro\n")
    out = tmp_path / "results.md"
    report = _load_runner().main(
        ["--orl", str(orl_root), "--smoke", "--out", str(out), "--docs", str(docs)]
    )
    text = out.read_text()
    assert "Recall@1" in text and "--smoke" in text
    fills = report["aucs"]
    assert len(fills) == 2  # the mean pixel and the blurred image
    for name in registry.explainers():
        assert text.count(f"| {name} |") == 4, name  # 2 fills x (same, different person)
    for name, res in report["results"].items():
        if "error" in res:
            continue
        assert res["ratio"] > 0, name
        for per_method in fills.values():
            for key, values in per_method[name].items():
                assert values.shape == (6,) and torch.isfinite(values).all(), (name, key)
                if key.endswith("normalized"):
                    assert ((values >= 0) & (values <= 1)).all(), (name, key)
    page = docs.read_text()
    assert page.startswith("intro\n<!-- benchmark:start -->\nCommand:")
    assert page.endswith("<!-- benchmark:end -->\noutro\n")
    assert "old table" not in page and "| Centre bump (test) |" in page
    assert 0 <= report["embedder"]["recall_at_1"] <= 1
    # the tables summarise an explain-dataset run: one row per pair x method
    assert report["run"]["units"] == len(registry.explainers())  # 3 pairs: one chunk each
    assert report["run"]["failed"] == sum(3 for r in report["results"].values() if "error" in r)


@pytest.mark.slow
def test_dlib_model_writes_its_own_docs_block(orl_root, tmp_path):
    """``--model dlib``: the pretrained face ResNet on held-out ORL chips."""
    pytest.importorskip("face_recognition_models", reason="needs the faces extra")
    docs = tmp_path / "page.md"
    docs.write_text(
        "<!-- benchmark:start -->\norl\n<!-- benchmark:end -->\n"
        "<!-- benchmark:dlib:start -->\nold\n<!-- benchmark:dlib:end -->\n"
    )
    out = tmp_path / "dlib.md"
    report = _load_runner().main(
        ["--orl", str(orl_root), "--model", "dlib", "--pairs", "1", "--impostor-pairs", "1",
         "--n-steps", "3", "--fill", "mean", "--methods", "Captum Saliency",
         "--out", str(out), "--docs", str(docs)]
    )
    assert report["embedder"]["recall_at_1"] > 0.9  # the pretrained model on held-out faces
    page = docs.read_text()
    assert "\norl\n" in page and "old" not in page  # only the dlib block was replaced
    assert "dlib's pretrained face-recognition ResNet" in out.read_text()
    assert "| Captum Saliency |" in page


@pytest.mark.slow
def test_entry_overhead_smoke_run(tmp_path):
    """benchmarks/engine/entry_overhead.py runs and writes its table."""
    import subprocess
    import sys

    script = RUNNER.parents[1] / "engine" / "entry_overhead.py"
    out = tmp_path / "entry_overhead.md"
    result = subprocess.run(
        [sys.executable, str(script), "--models", "cnn", "--repeats", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "Command: `python benchmarks/engine/entry_overhead.py --models cnn" in text
    assert "| cnn | 12 |" in text


def test_paired_differences_against_a_hand_computation(tmp_path):
    path = RUNNER.parent / "paired_differences.py"
    spec = importlib.util.spec_from_file_location("paired_differences", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # three methods on four same-person pairs: per image AUCs in [0, 1]
    values = {  # method: per pair (insertion1, insertion2, deletion1, deletion2)
        "Captum Occlusion": [(0.8, 0.6, 0.2, 0.4), (0.7, 0.7, 0.3, 0.3), (0.9, 0.5, 0.1, 0.1), (0.6, 0.6, 0.4, 0.2)],
        "EmbeddingGradCAM": [(0.7, 0.5, 0.3, 0.5), (0.7, 0.5, 0.4, 0.2), (0.8, 0.4, 0.2, 0.2), (0.5, 0.5, 0.5, 0.1)],
        "Random map (baseline)": [(0.5, 0.5, 0.5, 0.5)] * 4,
    }
    header = "pair,label,method,method_name,status,mean_insertion1,mean_insertion2,mean_deletion1,mean_deletion2"
    lines = [header] + [
        f"{p},same,m{k},{name},ok,{i1},{i2},{d1},{d2}"
        for k, (name, rows) in enumerate(values.items()) for p, (i1, i2, d1, d2) in enumerate(rows)
    ]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    text = module.main(["--table", str(tmp_path / "table.csv"), "--fills", "mean"])
    # by hand: a pair's value is the mean of its two images, x 100
    occ = [70.0, 70.0, 70.0, 60.0]
    cam = [60.0, 60.0, 60.0, 50.0]
    diffs = [c - o for c, o in zip(cam, occ)]  # -10, -10, -10, -10: standard error 0
    assert "Best: insertion Captum Occlusion" in text
    row = next(line for line in text.splitlines() if line.startswith("| EmbeddingGradCAM |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "57.5 ± 2.5"  # mean of 60, 60, 60, 50; sd 5 / sqrt(4)
    assert cells[2] == f"{sum(diffs) / 4:+.1f} ± 0.0" and cells[3] == cells[2]  # vs best = best black box
    assert cells[4] == "+7.5 ± 2.5"  # against the random map's constant 50
    # deletion: cam per pair 40, 30, 20, 30; occlusion 30, 30, 10, 30: differences 10, 0, 10, 0
    assert cells[5] == "30.0 ± 4.1" and cells[6] == "+5.0 ± 2.9"
    # a second run of the same method with another setting, labelled: rows of its own
    other = [line.replace(",0.7,0.5,0.3,0.5", ",0.9,0.9,0.1,0.1")
             for line in lines if line == header or ",EmbeddingGradCAM," in line]
    (tmp_path / "other.csv").write_text("\n".join(other) + "\n")
    text = module.main(["--table", str(tmp_path / "table.csv"), f"{tmp_path / 'other.csv'}@layer4",
                        "--fills", "mean"])
    again = next(line for line in text.splitlines() if line.startswith("| EmbeddingGradCAM |"))
    assert again.split("|")[2] == row.split("|")[2]  # its own rows kept
    labelled = next(line for line in text.splitlines() if line.startswith("| EmbeddingGradCAM @layer4 |"))
    # its first pair now 90 instead of 60: insertion 60, 60, 60, 50 -> 90, 60, 60, 50
    assert [c.strip() for c in labelled.strip("|").split("|")][1] == "65.0 ± 8.7"
