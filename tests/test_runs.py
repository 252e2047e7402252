"""``captum-similarity explain-dataset`` and :mod:`captum_similarity.runs`.

A tiny convolutional embedder (``captum_similarity.models:SimpleCNN`` with
saved weights) on 16x16 generated images, so every run takes seconds. The
oracles: the maps and scores of the registered methods called directly, one
pair at a time; the single-process table (sharded runs, resumed runs, runs
under ``torchrun`` must give the same rows); every pair x method exactly once.
The multi-process tests (``python -m torch.distributed.run``, loopback, gloo)
are marked slow: three launches of a few seconds each.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from torch import nn
from captum.attr import Saliency
from skimage import io

from captum_similarity._utils.hooks import OutputOnInputs, RowOutputsOnInputs
from captum_similarity.cli import main
from captum_similarity.data.files import read_image
from captum_similarity.data.pair_lists import (
    ImagePair,
    draw_identity_pairs,
    parse_pair_counts,
    read_pairs_csv,
    select_pairs,
)
from captum_similarity.data.prepare import ImagePreparation
from captum_similarity.explainers import PairExplainer, explainers, resolve_methods
from captum_similarity.job import UsageError
from captum_similarity.models import SimpleCNN
from captum_similarity.runs import (
    EXIT_AFTER_ENV,
    Launch,
    RunFolder,
    assign_units,
    compare_methods,
    explain_dataset,
    launch_from_env,
    make_units,
    read_table,
    summarize,
)
from captum_similarity.siamese import SiameseSimilarity

ROOT = Path(__file__).resolve().parents[1]
SPEC = "captum_similarity.models:SimpleCNN"
METHODS = "gradcam,lrp"
#: Columns that differ between launches (who computed a row, and when).
VOLATILE = {"rank", "host", "seconds"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three identities of three 20x20 images, one unreadable file, weights."""
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    for k in range(3):
        folder = root / "faces" / f"p{k + 1}"
        folder.mkdir(parents=True)
        for j in range(3):
            image = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
            io.imsave(folder / f"{j + 1}.png", image, check_contrast=False)
    torch.manual_seed(0)
    torch.save(SimpleCNN().state_dict(), root / "weights.pt")
    (root / "faces" / "broken.png").write_bytes(b"not an image")  # not in an identity folder
    pairs = [("faces/p1/1.png", "faces/p1/2.png", "same"), ("faces/p1/3.png", "faces/p2/1.png", "different"),
             ("faces/p2/2.png", "faces/broken.png", ""), ("faces/p3/1.png", "faces/p3/3.png", "same"),
             ("faces/p2/3.png", "faces/p3/2.png", "different")]
    with open(root / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image1", "image2", "label"])
        writer.writerows(pairs)
    return root


def run(dataset: Path, out: Path, methods: str = METHODS, **kwargs) -> Dict:
    chosen = resolve_methods(methods)
    kwargs.setdefault("size", (16, 16))
    return explain_dataset(
        read_pairs_csv(dataset / "pairs.csv"),
        SPEC,
        {n: explainers()[n] for n in chosen},
        out,
        weights=dataset / "weights.pt",
        progress=False,
        **kwargs,
    )


def rows_of(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_rows(a: List[Dict[str, str]], b: List[Dict[str, str]], tol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            if k in VOLATILE:
                continue
            try:
                assert abs(float(x[k]) - float(y[k])) <= tol or x[k] == y[k], (k, x, y)
            except ValueError:
                assert x[k] == y[k], (k, x[k], y[k])


def test_rows_equal_the_methods_run_one_pair_at_a_time(dataset, tmp_path):
    result = run(dataset, tmp_path / "run")
    rows = read_table(result["table"])
    # every pair x method exactly once, pair-major
    assert [(r["pair"], r["method"]) for r in rows] == [
        (p, m) for p in range(5) for m in ("gradcam", "lrp")
    ]
    broken = [r for r in rows if r["pair"] == 2]
    assert all(r["status"] == "failed" and "unreadable image" in r["error"] for r in broken)
    assert all(r["status"] == "ok" and r["error"] == "" for r in rows if r["pair"] != 2)

    model = SimpleCNN()
    model.load_state_dict(torch.load(dataset / "weights.pt"))
    sim = SiameseSimilarity(model.eval(), "cosine")
    layer = model.get_submodule(result["layer"]["layer"])
    pre = ImagePreparation((16, 16))
    pairs = read_pairs_csv(dataset / "pairs.csv")
    for r in rows:
        if r["status"] != "ok":
            continue
        pair = pairs[r["pair"]]
        x = pre([read_image(pair.path1), read_image(pair.path2)])[0]
        x1, x2 = x[:1], x[1:]
        with torch.no_grad():
            assert abs(r["score"] - float(sim(x1, x2))) < 1e-6
        torch.manual_seed(0)
        a1, a2 = explainers()[r["method_name"]].fn(sim, x1, x2, layer)
        with np.load(tmp_path / "run" / r["map_file"]) as maps:
            assert int(maps["pair"][r["map_row"]]) == r["pair"]
            np.testing.assert_allclose(maps["map1"][r["map_row"]], a1[0].detach().numpy(), atol=1e-6)
            np.testing.assert_allclose(maps["map2"][r["map_row"]], a2[0].detach().numpy(), atol=1e-6)
        assert r["map1_sum"] == pytest.approx(float(a1.double().sum()), abs=1e-6)
        assert r["map2_max"] == pytest.approx(float(a2.max()), abs=1e-6)
    # where the process spent its time: the parts add up to at most the whole
    record = json.loads((tmp_path / "run" / "processes" / "rank-0.json").read_text())
    parts = record["seconds"]
    assert record["units"] == 4 and parts["methods"] > 0 and parts["scores"] > 0
    assert parts["methods"] + parts["images"] + parts["scores"] + parts["setup"] <= parts["total"]


def test_methods_that_draw_from_torchs_generator_draw_what_they_would_after_manual_seed(
    dataset, tmp_path
):
    """The runner seeds the generators itself before every method call: a
    method that draws from torch's global generator (the registry's seed
    their own; a caller's may not) gives the maps of a direct call after
    ``torch.manual_seed(seed)``."""

    def noisy_saliency(model, x1, x2, layer):
        noise = [torch.randn_like(x) * 0.1 for x in (x1, x2)]
        return Saliency(model).attribute((x1 + noise[0], x2 + noise[1]))

    method = PairExplainer(name="noisy saliency", fn=noisy_saliency, short="noisy")
    pairs = read_pairs_csv(dataset / "pairs.csv")
    torch.manual_seed(123)  # the state before the run does not matter: every call is seeded
    result = explain_dataset(pairs, SPEC, {"noisy saliency": method}, tmp_path / "run",
                             weights=dataset / "weights.pt", size=(16, 16), chunk=1, seed=7,
                             progress=False)
    model = SimpleCNN()
    model.load_state_dict(torch.load(dataset / "weights.pt"))
    sim = SiameseSimilarity(model.eval(), "cosine")
    pre = ImagePreparation((16, 16))
    checked = 0
    for r in read_table(result["table"]):
        if r["status"] != "ok":
            continue
        pair = pairs[r["pair"]]
        x = pre([read_image(pair.path1), read_image(pair.path2)])[0]
        torch.manual_seed(7)
        a1, a2 = noisy_saliency(sim, x[:1], x[1:], None)
        torch.manual_seed(8)
        other, _ = noisy_saliency(sim, x[:1], x[1:], None)
        assert not torch.allclose(a1, other, rtol=0, atol=1e-6)  # the draws matter
        with np.load(tmp_path / "run" / r["map_file"]) as maps:
            np.testing.assert_allclose(maps["map1"][r["map_row"]], a1[0].detach().numpy(), atol=1e-6)
            np.testing.assert_allclose(maps["map2"][r["map_row"]], a2[0].detach().numpy(), atol=1e-6)
        checked += 1
    assert checked == 4


def test_scores_taken_from_the_methods_forward_pass_equal_a_pass_of_their_own(dataset, tmp_path):
    # Captum's Saliency runs the wrapper on exactly (x1, x2): its output is the
    # chunk's score, no pass of its own. EmbeddingGradCAM embeds the images
    # itself: the chunk's score is the model's similarity of those embeddings,
    # checked against one forward pass on the method's first chunk only
    saliency = run(dataset, tmp_path / "saliency", "saliency")
    gradcam = run(dataset, tmp_path / "gradcam", "gradcam")
    record = json.loads((tmp_path / "saliency" / "processes" / "rank-0.json").read_text())
    assert record["score_passes"] == 0 and record["scores_from_methods"] == 2
    assert record["scores_from_embeddings"] == 0 and record["seconds"]["scores"] == 0.0
    record = json.loads((tmp_path / "gradcam" / "processes" / "rank-0.json").read_text())
    assert record["score_passes"] == 0 and record["scores_from_methods"] == 0
    assert record["scores_from_embeddings"] == 2 and record["score_checks"] == 1
    a, b = read_table(saliency["table"]), read_table(gradcam["table"])
    assert [r["pair"] for r in a] == [r["pair"] for r in b]
    ok = [(x, y) for x, y in zip(a, b) if x["status"] == "ok"]
    assert len(ok) == 4
    for x, y in ok:
        assert abs(x["score"] - y["score"]) < 1e-6


def test_embeddings_that_are_not_the_models_are_caught_and_not_used_for_scores(dataset, tmp_path):
    """An explainer that embeds the unperturbed images with its weights changed
    (as a randomisation check would) gives embeddings that are not the
    model's: the check on its first chunk catches it, and every chunk is
    scored by a pass of the model instead."""

    def altered(model, x1, x2, layer):
        weight = next(model.embedder.parameters())
        with torch.no_grad():
            weight.mul_(1.5)
        try:
            with torch.no_grad():
                model.embedder(torch.cat([x1, x2]))
        finally:
            with torch.no_grad():
                weight.div_(1.5)
        return torch.ones_like(x1[:, :1]), torch.ones_like(x2[:, :1])

    spec = PairExplainer("altered embedder", altered)
    result = explain_dataset(
        read_pairs_csv(dataset / "pairs.csv"), SPEC, {spec.name: spec}, tmp_path / "run",
        weights=dataset / "weights.pt", size=(16, 16), progress=False,
    )
    record = json.loads((tmp_path / "run" / "processes" / "rank-0.json").read_text())
    assert record["score_passes"] == 2 and record["scores_from_embeddings"] == 0
    assert record["score_checks"] == 1  # the failed check's pass scored the first chunk
    reference = read_table(run(dataset, tmp_path / "saliency", "saliency")["table"])
    for x, y in zip(read_table(result["table"]), reference):
        if x["status"] == "ok":
            assert abs(x["score"] - y["score"]) < 1e-6


def test_row_outputs_are_found_wherever_the_rows_occur():
    torch.manual_seed(0)
    model = SimpleCNN().eval()
    x1, x2 = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    rows = torch.cat([x1, x2])
    with torch.no_grad():
        expected = model(rows)
    with RowOutputsOnInputs(model, rows) as watch, torch.no_grad():
        model(x1 * 0.5)  # perturbed rows: ignored
        model(torch.rand(3, 3, 8, 8))  # another shape: ignored
        model(torch.stack([x1, x2], dim=1).flatten(0, 1)[:3])  # interleaved, one row short
        assert watch.outputs() is None
        model(torch.cat([torch.rand(1, 3, 16, 16), x2[1:]]))  # the last row, among others
    torch.testing.assert_close(watch.outputs(), expected, rtol=0, atol=1e-6)
    assert not model._forward_hooks  # removed on exit
    with pytest.raises(RuntimeError, match="inside"):
        with RowOutputsOnInputs(model, rows):
            raise RuntimeError("inside")
    assert not model._forward_hooks
    with RowOutputsOnInputs(lambda x: x, rows) as watch:  # not a module: nothing watched
        pass
    assert watch.outputs() is None
    # the rows given as two tensors (not concatenated): the same outputs
    with RowOutputsOnInputs(model, (x1, x2)) as watch, torch.no_grad():
        model(torch.cat([x2, torch.rand(1, 3, 16, 16), x1]))
    torch.testing.assert_close(watch.outputs(), expected, rtol=0, atol=1e-6)
    # a row that differs from a watched one only in a value the keys do not sample is not taken
    long1, long2 = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
    altered = long1.clone()
    altered.view(-1)[1] += 0.25  # the keys sample every 4th of the 4800 values: not this one
    flat = nn.Sequential(nn.Flatten(), nn.Linear(4800, 2))
    with RowOutputsOnInputs(flat, (long1, long2)) as watch, torch.no_grad():
        flat(altered)
        flat(long2)
        assert watch.outputs() is None
        flat(torch.cat([long2, long1]))
    with torch.no_grad():
        torch.testing.assert_close(watch.outputs(), flat(torch.cat([long1, long2])), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one row shape"):
        RowOutputsOnInputs(model, (x1, torch.rand(2, 3, 8, 8)))


def test_output_on_inputs_keeps_the_first_call_on_exactly_those_inputs():
    torch.manual_seed(0)
    sim = SiameseSimilarity(SimpleCNN().eval(), "cosine")
    x1, x2 = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = sim(x1, x2)
    with OutputOnInputs(sim, (x1, x2)) as seen:
        sim(x1 * 0.5, x2)  # perturbed: ignored
        sim(x1[:1], x2[:1])  # another batch: ignored
        assert seen.output is None
        first = sim(x1.clone().requires_grad_(), x2)
        sim(x1, x2 + 0)
    assert torch.equal(seen.output, first.detach()) and not seen.output.requires_grad
    torch.testing.assert_close(seen.output, expected, rtol=0, atol=1e-6)
    assert not sim._forward_hooks  # removed on exit
    with pytest.raises(RuntimeError, match="inside"):
        with OutputOnInputs(sim, (x1, x2)):
            raise RuntimeError("inside")
    assert not sim._forward_hooks  # also when the block raises


def test_shards_resume_and_damaged_units(dataset, tmp_path):
    single = run(dataset, tmp_path / "single")
    reference = rows_of(single["table"])
    # two shards run one after the other, rank 1 first: rank 0 merges at its end
    out = tmp_path / "sharded"
    r1 = run(dataset, out, launch=Launch(rank=1, world=2))
    r0 = run(dataset, out, launch=Launch(rank=0, world=2))
    assert r1["table"] is None and r0["table"] is not None
    assert not set(r1["computed"]) & set(r0["computed"])
    assert len(r1["computed"]) + len(r0["computed"]) == single["units"] == 4
    assert_same_rows(reference, rows_of(r0["table"]))

    # damage: a unit file missing, one truncated, one unit's maps altered by one byte
    folder = RunFolder(out)
    folder.unit_path("gradcam-00000").unlink()
    text = folder.unit_path("lrp-00000").read_bytes()
    folder.unit_path("lrp-00000").write_bytes(text[: len(text) // 2])
    blob = bytearray((out / "maps" / "lrp-00001.npz").read_bytes())
    blob[-40] ^= 1
    (out / "maps" / "lrp-00001.npz").write_bytes(bytes(blob))
    again = run(dataset, out)
    assert sorted(again["computed"]) == ["gradcam-00000", "lrp-00000", "lrp-00001"]
    assert sorted(again["skipped"]) == ["gradcam-00001"]
    assert_same_rows(reference, rows_of(again["table"]))
    # nothing left to do: the same command reads every unit and writes the same table
    assert run(dataset, out)["computed"] == []


def test_images_read_in_the_background_and_prepared_once_per_file(dataset, tmp_path, monkeypatch):
    """Pairs that share images: each file is prepared once per process, the
    reading happens in the background thread (which is gone after the run),
    and the rows equal those of a run that keeps no prepared image."""
    import threading

    import captum_similarity.runs as runs

    names = ["p1/1", "p1/2", "p2/1", "p3/1"]
    with open(dataset / "shared.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image1", "image2"])
        for a, b in [(0, 1), (0, 2), (1, 2), (2, 3), (3, 0)]:
            writer.writerow([f"faces/{names[a]}.png", f"faces/{names[b]}.png"])
    pairs = read_pairs_csv(dataset / "shared.csv")
    readers = []
    read_source = runs.read_source

    def recorded(path):
        readers.append(threading.current_thread().name)
        return read_source(path)

    monkeypatch.setattr(runs, "read_source", recorded)

    def go(out):
        result = explain_dataset(
            pairs, SPEC, {n: explainers()[n] for n in resolve_methods(METHODS)}, out,
            weights=dataset / "weights.pt", size=(16, 16), chunk=2, progress=False,
        )
        record = json.loads((out / "processes" / "rank-0.json").read_text())
        return rows_of(result["table"]), record

    kept, record = go(tmp_path / "kept")
    # chunks of 2 pairs: files {0, 1, 2}, then {1, 2, 3}, then {3, 0}; each read and prepared
    # once, the later chunks take 2 + 2 of them from those kept
    assert record["images_prepared"] == len(readers) == 4
    assert record["images_reused"] == 4
    assert set(readers) and all(n.startswith("captum-similarity-images") for n in readers)
    # the reading and the writing threads are gone
    assert not [t for t in threading.enumerate() if t.name.startswith("captum-similarity-")]
    assert record["seconds"]["images_background"] > 0 and record["seconds"]["writing_background"] > 0

    # three threads, each a chunk ahead: the same rows, the threads gone after the run
    readers.clear()
    threaded = explain_dataset(
        pairs, SPEC, {n: explainers()[n] for n in resolve_methods(METHODS)}, tmp_path / "threads",
        weights=dataset / "weights.pt", size=(16, 16), chunk=2, progress=False, image_threads=3,
    )
    assert len({n for n in readers}) > 1  # more than one thread read
    assert not [t for t in threading.enumerate() if t.name.startswith("captum-similarity-")]
    assert_same_rows(rows_of(threaded["table"]), kept, tol=0.0)

    monkeypatch.setattr(runs, "IMAGE_CACHE_BYTES", 0)
    readers.clear()
    plain, record = go(tmp_path / "plain")
    assert record["images_prepared"] == len(readers) == 3 + 3 + 2  # once per chunk only
    assert record["images_reused"] == 0
    assert [r["status"] for r in kept] == ["ok"] * 10
    assert_same_rows(plain, kept, tol=0.0)


def test_an_image_cache_prepares_each_file_once_for_later_runs_with_the_same_rows(
    dataset, tmp_path, monkeypatch
):
    """With ``image_cache``, a later run (another folder, another method)
    loads every image instead of preparing it, and its rows are those of a
    run without the cache; a damaged stored image is prepared again; a run
    started without the cache is finished with it (not another configuration)."""
    prepared = []
    call = ImagePreparation.__call__

    def counted(self, images, display=True):
        prepared.extend(range(len(images)))
        return call(self, images, display)

    monkeypatch.setattr(ImagePreparation, "__call__", counted)
    cache = tmp_path / "cache"
    reference = rows_of(run(dataset, tmp_path / "plain", chunk=2)["table"])
    files = len(prepared)  # the readable files of the pairs, each once
    assert files == 9

    prepared.clear()
    first = run(dataset, tmp_path / "first", chunk=2, image_cache=cache)
    assert len(prepared) == files
    assert {k: first["image_cache"][k] for k in ("loaded", "stored", "rejected")} == {
        "loaded": 0, "stored": files, "rejected": 0}
    assert_same_rows(rows_of(first["table"]), reference, tol=0.0)

    prepared.clear()
    later = run(dataset, tmp_path / "later", chunk=2, image_cache=cache)
    assert prepared == [] and later["image_cache"]["loaded"] == files
    record = json.loads((tmp_path / "later" / "processes" / "rank-0.json").read_text())
    assert record["images_prepared"] == 0 and record["image_cache"]["loaded"] == files
    assert_same_rows(rows_of(later["table"]), reference, tol=0.0)
    other_method = run(dataset, tmp_path / "saliency", methods="saliency", chunk=2, image_cache=cache)
    assert prepared == [] and other_method["image_cache"]["loaded"] == files

    # a damaged stored image: not used, prepared and stored again, the same rows
    stored = sorted(Path(first["image_cache"]["folder"]).glob("*/*.npz"))
    stored[0].write_bytes(stored[0].read_bytes()[:100])
    damaged = run(dataset, tmp_path / "damaged", chunk=2, image_cache=cache)
    assert len(prepared) == 1
    assert {k: damaged["image_cache"][k] for k in ("loaded", "stored", "rejected")} == {
        "loaded": files - 1, "stored": 1, "rejected": 1}
    assert_same_rows(rows_of(damaged["table"]), reference, tol=0.0)

    # a run without the cache, resumed with it: the same configuration
    (tmp_path / "plain" / "units" / "gradcam-00000.json").unlink()
    resumed = run(dataset, tmp_path / "plain", chunk=2, image_cache=cache)
    assert resumed["computed"] == ["gradcam-00000"]
    assert_same_rows(rows_of(resumed["table"]), reference, tol=0.0)


def test_an_image_cache_with_an_images_callable_or_not_a_folder_is_refused(dataset, tmp_path):
    with pytest.raises(UsageError, match="image_cache keeps the images the run prepares"):
        run(dataset, tmp_path / "run", images=lambda pairs: None, image_cache=tmp_path / "cache")
    (tmp_path / "a file").write_text("not a folder")
    with pytest.raises(UsageError, match=r"image cache .*a file \(--image-cache\): cannot keep images there"):
        run(dataset, tmp_path / "run", image_cache=tmp_path / "a file")


def test_an_image_cache_that_cannot_be_written_is_reported_and_the_run_goes_on(
    dataset, tmp_path, monkeypatch, capsys
):
    import captum_similarity.data.image_store as image_store

    reference = rows_of(run(dataset, tmp_path / "plain")["table"])
    write_atomic = image_store.write_atomic

    def full(path, data, crash=False):
        if path.suffix == ".npz":
            raise OSError(28, "No space left on device")
        write_atomic(path, data, crash)

    monkeypatch.setattr(image_store, "write_atomic", full)
    result = run(dataset, tmp_path / "run", image_cache=tmp_path / "cache")
    assert_same_rows(rows_of(result["table"]), reference, tol=0.0)
    assert result["image_cache"]["stored"] == 0 and result["image_cache"]["failed"] == 9
    assert len(result["image_cache"]["errors"]) == 9
    err = capsys.readouterr().err
    assert "could not keep 9 prepared images in" in err and "No space left on device" in err


def test_a_failed_unit_write_stops_the_run_and_a_rerun_finishes_it(dataset, tmp_path, monkeypatch):
    """Units are written by a background thread: its error is raised in the
    run, not lost; the units written before it count on the next run."""
    calls = []
    write_unit = RunFolder.write_unit

    def failing(self, unit, *args, **kwargs):
        calls.append(unit.id)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return write_unit(self, unit, *args, **kwargs)

    monkeypatch.setattr(RunFolder, "write_unit", failing)
    with pytest.raises(OSError, match="No space left"):
        run(dataset, tmp_path / "run")
    monkeypatch.setattr(RunFolder, "write_unit", write_unit)
    again = run(dataset, tmp_path / "run")
    assert calls[0] in again["skipped"] and calls[1] in again["computed"]
    assert_same_rows(rows_of(run(dataset, tmp_path / "fresh")["table"]), rows_of(again["table"]))


def test_image_threads_below_one_are_refused(dataset, tmp_path):
    with pytest.raises(UsageError, match="--image-threads must be at least 1, got 0"):
        run(dataset, tmp_path / "run", image_threads=0)


def test_another_configuration_is_refused(dataset, tmp_path):
    run(dataset, tmp_path / "run", methods="gradcam")
    for change in ({"methods": "lrp"}, {"seed": 1}, {"size": (12, 12)}):
        with pytest.raises(UsageError, match="another configuration"):
            run(dataset, tmp_path / "run", **change)



def test_a_code_change_is_another_configuration(dataset, tmp_path, monkeypatch):
    """Units computed by other code are never mixed in, even within one version."""
    import captum_similarity.runs as runs

    run(dataset, tmp_path / "run", methods="gradcam")
    digest = runs.code_digest()
    assert digest == runs.code_digest() and len(digest) == 64
    monkeypatch.setattr(runs, "code_digest", lambda: "0" * 64)
    with pytest.raises(UsageError, match="changed: code"):
        run(dataset, tmp_path / "run", methods="gradcam")


def test_a_method_failing_on_one_pair_fails_that_row_only(dataset, tmp_path):
    def fragile(model, x1, x2, layer):
        # fails on pair 3 (an image of identity p3 first); its batch is retried pair by pair
        if (x1.mean(dim=(1, 2, 3)) - marker).abs().min() < 1e-7:
            raise RuntimeError("cannot explain this pair")
        return x1 * 2.0, x2 * 3.0

    pre = ImagePreparation((16, 16))
    marker = pre([read_image(dataset / "faces" / "p3" / "1.png")])[0].mean()
    spec = PairExplainer("fragile", fragile, short="fragile")
    result = explain_dataset(
        read_pairs_csv(dataset / "pairs.csv"), SPEC, {"fragile": spec}, tmp_path / "run",
        weights=dataset / "weights.pt", size=(16, 16), progress=False,
    )
    rows = read_table(result["table"])
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "ok"]
    assert "RuntimeError: cannot explain this pair" in rows[3]["error"]
    assert rows[3]["score"] == rows[3]["score"]  # scored even though the method failed
    for p, image in ((0, "p1/1.png"), (4, "p2/3.png")):  # from the retry, and from a whole batch
        with np.load(tmp_path / "run" / rows[p]["map_file"]) as maps:
            x = pre([read_image(dataset / "faces" / image)])[0]
            np.testing.assert_allclose(maps["map1"][rows[p]["map_row"]], 2.0 * x[0].numpy(), atol=1e-6)


def test_faithfulness_columns_and_summary(dataset, tmp_path):
    result = run(dataset, tmp_path / "run", fills={"blur": "blur", "0": 0.0}, steps=5)
    rows = read_table(result["table"])
    ok = [r for r in rows if r["status"] == "ok"]
    for fill in ("blur", "0"):
        for column in ("insertion1", "deletion2", "insertion1_raw"):
            assert all(np.isfinite(r[f"{fill}_{column}"]) for r in ok)
    summary = summarize(rows, "blur_insertion1")
    for method, estimate in summary.items():
        values = [r["blur_insertion1"] for r in ok if r["method"] == method]
        assert estimate.n == len(values) == 4
        assert estimate.mean == pytest.approx(np.mean(values))
        assert estimate.standard_error == pytest.approx(np.std(values, ddof=1) / 2)
    same = summarize(rows, "blur_insertion1", label="same")
    assert same["gradcam"].n == 2
    diff = compare_methods(rows, "blur_deletion2", "gradcam", "lrp")
    by = {(r["pair"], r["method"]): r["blur_deletion2"] for r in ok}
    expected = [by[(p, "gradcam")] - by[(p, "lrp")] for p in (0, 1, 3, 4)]
    assert diff.n == 4 and diff.mean == pytest.approx(np.mean(expected))
    # the documented promise: pandas reads the table in one call, with the same values
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(result["table"])
    assert list(frame.columns) == list(rows[0])
    assert len(frame) == len(rows)
    for column in frame.columns:
        if frame[column].dtype.kind in "fi":
            np.testing.assert_allclose(frame[column].to_numpy(float), [r[column] for r in rows])
        else:
            assert [("" if v != v else v) for v in frame[column]] == [r[column] for r in rows]


def test_the_chunks_read_ahead_are_the_next_ones():
    import captum_similarity.runs as runs

    mine = assign_units(make_units(10, {"A": "a", "B": "b"}, chunk=2), Launch())
    assert [u.chunk for u in mine] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [u.chunk for u in runs._next_chunks(mine, 0, 2)] == [1, 2]
    assert [u.chunk for u in runs._next_chunks(mine, 1, 3)] == [1, 2, 3]  # mine[1] is chunk 0
    assert [u.chunk for u in runs._next_chunks(mine, 7, 3)] == [4]
    assert runs._next_chunks(mine, 9, 3) == []


def test_units_are_spread_evenly_and_each_assigned_once():
    units = make_units(10, {"RISE": "rise", "Grad": "gradcam"}, chunk=2)
    assert len(units) == 10
    for world in (1, 2, 3):
        shares = [assign_units(units, Launch(r, world)) for r in range(world)]
        ids = [u.id for share in shares for u in share]
        assert sorted(ids) == sorted(u.id for u in units)
        for method in ("rise", "gradcam"):
            counts = [sum(u.short == method for u in share) for share in shares]
            assert max(counts) - min(counts) <= 1, (world, method, counts)
        for share in shares:  # by chunk (consecutive units share their images), then method
            assert share == sorted(share, key=lambda u: (u.chunk, units.index(u)))
    assert launch_from_env({}) == Launch()
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Launch(3, 4, 1, True)


def test_each_process_takes_its_own_gpu_and_too_many_processes_are_refused(monkeypatch):
    import captum_similarity.runs as runs

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = torch.device("cuda")
    assert runs._process_device(cuda, Launch(3, 4, 1, True)) == torch.device("cuda", 1)
    assert runs._process_device(cuda, Launch()) == cuda  # alone: the device as given
    assert runs._process_device(torch.device("cpu"), Launch(3, 4, 1, True)).type == "cpu"
    with pytest.raises(UsageError, match=r"LOCAL_RANK 2 but this machine has 2 CUDA device\(s\).*--nproc-per-node 2"):
        runs._process_device(cuda, Launch(2, 4, 2, True))


def test_the_process_group_is_nccl_on_the_process_gpu_and_gloo_on_cpu(monkeypatch):
    """The CUDA wiring, without a GPU: the process's device is made current
    before the process group starts (nccl's collectives run on it), the
    backend follows the device, and the group lives under the attempt's
    prefix of the launcher's store."""
    import torch.distributed as dist

    import captum_similarity.runs as runs

    made, current = [], []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "rendezvous", lambda url: iter([("store", 1, 4)]))
    monkeypatch.setattr(dist, "PrefixStore", lambda prefix, store: (prefix, store))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: made.append((kw, list(current))))
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    runs._init_distributed(Launch(1, 4, 1, True), torch.device("cuda", 1))
    runs._init_distributed(Launch(1, 4, 1, True), torch.device("cpu"))
    runs._init_distributed(Launch(), torch.device("cuda", 0))  # alone: no group
    (nccl, set_before), (gloo, _) = made
    assert nccl["backend"] == "nccl" and set_before == [torch.device("cuda", 1)]
    assert gloo["backend"] == "gloo" and current == [torch.device("cuda", 1)]
    assert nccl["store"] == ("captum-similarity/attempt-2", "store")
    assert (nccl["rank"], nccl["world_size"]) == (1, 4)
    assert nccl["timeout"] == runs.BARRIER_TIMEOUT


def test_pair_lists(dataset, tmp_path):
    pairs = read_pairs_csv(dataset / "pairs.csv")
    assert pairs[0] == ImagePair("faces/p1/1.png", "faces/p1/2.png",
                                 str(dataset / "faces/p1/1.png"), str(dataset / "faces/p1/2.png"), "same")
    drawn = draw_identity_pairs(dataset / "faces", 4, 3, seed=5)
    assert drawn == draw_identity_pairs(dataset / "faces", 4, 3, seed=5)
    assert [p.label for p in drawn] == ["same"] * 4 + ["different"] * 3
    assert all((p.image1.split("/")[0] == p.image2.split("/")[0]) == (p.label == "same") for p in drawn)
    i, j, same = select_pairs(torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]), 4, 3, 5)
    assert [drawn[k].path1 for k in range(7)] == [
        str(sorted((dataset / "faces").glob("p*/*.png"))[a]) for a in i.tolist()
    ]
    with pytest.raises(ValueError, match="same-identity pairs asked"):
        draw_identity_pairs(dataset / "faces", 10, 0)
    assert parse_pair_counts("same:3,different:2") == (3, 2)
    with pytest.raises(ValueError, match="same:N,different:M"):
        parse_pair_counts("3,2")
    (tmp_path / "bad.csv").write_text("first,second\na.png,b.png\n")
    with pytest.raises(ValueError, match="missing column"):
        read_pairs_csv(tmp_path / "bad.csv")


def test_command_line(dataset, tmp_path, capsys):
    args = ["explain-dataset", str(dataset / "faces"), "--pairs", "same:2,different:1", "--model",
            SPEC, "--weights", str(dataset / "weights.pt"), "--size", "16", "16", "--methods",
            "gradcam", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    assert "0 failed rows" in capsys.readouterr().out
    rows = rows_of(tmp_path / "run" / "table.csv")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["options"] == {"drawn": "same:2,different:1", "from": str(dataset / "faces")}
    # the same command with other pairs is refused in that folder; a folder needs --pairs
    assert main(args[:3] + ["same:1"] + args[4:]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main([a for a in args if a != "--pairs" and a != "same:2,different:1"]) == 2
    assert "give --pairs" in capsys.readouterr().err


def launch(args: List[str], out: Path, env: Dict[str, str], nproc: int = 0, restarts: int = 0,
           port: int = 0):
    """Runs the command line in a subprocess, under torch.distributed.run when ``nproc``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    prefix = [sys.executable]
    if nproc:
        prefix += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--max-restarts", str(restarts), "--master-addr", "127.0.0.1",
                   "--master-port", str(port)]
    return subprocess.run(
        prefix + ["-m", "captum_similarity", "explain-dataset", *args, "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )


def cli_args(dataset: Path) -> List[str]:
    return [str(dataset / "pairs.csv"), "--model", SPEC, "--weights", str(dataset / "weights.pt"),
            "--size", "16", "16", "--methods", METHODS, "--chunk", "2", "--faithfulness",
            "--steps", "5", "--threads", "1"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_gives_the_single_process_rows_also_after_a_worker_dies(dataset, tmp_path):
    single = launch(cli_args(dataset), tmp_path / "single", {})
    assert single.returncode == 0, single.stderr
    reference = rows_of(tmp_path / "single" / "table.csv")
    assert len(reference) == 10

    # two processes sharing an image cache: every readable file stored by one of them
    cached = cli_args(dataset) + ["--image-cache", str(tmp_path / "cache")]
    two = launch(cached, tmp_path / "two", {}, nproc=2, port=free_port())
    assert two.returncode == 0, two.stderr
    rows = rows_of(tmp_path / "two" / "table.csv")
    assert {r["rank"] for r in rows} == {"0", "1"}
    assert "[rank 1/2]" in two.stderr
    assert_same_rows(reference, rows)
    assert len(list((tmp_path / "cache").glob("*/*/*.npz"))) == 9

    # rank 1 dies after one unit, its next unit's file half written; torchrun restarts the
    # group; with the cache full, neither process prepares an image
    died = launch(cached, tmp_path / "died", {EXIT_AFTER_ENV: "1:1"}, nproc=2,
                  restarts=1, port=free_port())
    assert died.returncode == 0, died.stderr
    assert "exitcode: 17" in died.stderr
    assert_same_rows(reference, rows_of(tmp_path / "died" / "table.csv"))
    assert not list((tmp_path / "died").rglob("*.tmp"))
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    for rank in (0, 1):
        record = json.loads((tmp_path / "died" / "processes" / f"rank-{rank}.json").read_text())
        assert record["images_prepared"] == 0 and record["image_cache"]["loaded"] > 0


@pytest.mark.slow
def test_processes_with_other_weights_are_refused_not_merged(dataset, tmp_path):
    """Without --weights each process builds the callable's model with its own
    random initial weights: the processes disagree on the configuration and
    the run stops with the reason, instead of rank 0 recomputing the others'
    units at the merge."""
    args = [a for a in cli_args(dataset)]
    at = args.index("--weights")
    del args[at : at + 2]
    two = launch(args, tmp_path / "two", {}, nproc=2, port=free_port())
    assert two.returncode != 0
    assert "processes disagree on the run's weights" in two.stderr
    assert "pass --weights FILE" in two.stderr
    assert not (tmp_path / "two" / "table.csv").exists()


@pytest.mark.slow
def test_a_plain_rerun_completes_a_killed_run(dataset, tmp_path):
    killed = launch(cli_args(dataset), tmp_path / "run", {EXIT_AFTER_ENV: "0:3"})
    assert killed.returncode == 17
    assert not (tmp_path / "run" / "table.csv").exists()
    assert len(list((tmp_path / "run" / "units").glob("*.json"))) == 3
    assert len(list((tmp_path / "run" / "units").glob(".*.tmp"))) == 1  # the half-written one
    again = launch(cli_args(dataset), tmp_path / "run", {})
    assert again.returncode == 0, again.stderr
    assert "3 finished before" in again.stderr
    reference = launch(cli_args(dataset), tmp_path / "single", {})
    assert reference.returncode == 0
    assert_same_rows(rows_of(tmp_path / "single" / "table.csv"), rows_of(tmp_path / "run" / "table.csv"))
