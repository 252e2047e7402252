"""``captum_similarity.data.image_store``: prepared images kept on disk.

Oracles: a loaded image equals the stored one bit for bit (``torch.equal``);
keys follow the files' bytes; a damaged file is never used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time

import numpy as np
import pytest
import torch

import captum_similarity.data.image_store as image_store
from captum_similarity.data.image_store import ImageStore

SHAPE = (3, 6, 5)


def chip(seed: int = 0) -> torch.Tensor:
    """Values k / 255, as face chips are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, SHAPE, generator=g).to(torch.uint8).float().div(255.0)


def test_loaded_images_equal_the_stored_ones_bytes_where_exact_else_float(tmp_path):
    store = ImageStore(tmp_path, {"steps": "test"}, SHAPE)
    exact, other = chip(), torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    normalised = (chip(2) - 0.45) / 0.225  # what a mean/std normalisation gives: not k / 255
    for key, image, dtype in (("a", exact, np.uint8), ("b", other, np.float32),
                              ("c", normalised, np.float32)):
        assert store.load(key) is None
        assert store.save(key, image)
        with np.load(store.path(key)) as stored:
            assert stored["image"].dtype == dtype
        loaded = store.load(key)
        assert loaded.dtype == torch.float32 and torch.equal(loaded, image)
    assert (store.stored, store.loaded, store.rejected, store.errors) == (3, 3, 0, [])
    # a view of a larger batch, as a run stores its images
    batch = torch.stack([chip(3), chip(4)])
    assert store.save("d", batch[1]) and torch.equal(store.load("d"), batch[1])


def test_keys_follow_the_files_bytes(tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    a.write_bytes(b"one image")
    b.write_bytes(b"one image")
    c.write_bytes(b"another image")
    assert ImageStore.key(a) == ImageStore.key(str(b)) != ImageStore.key(c)
    assert len(ImageStore.key(a)) == 64
    before = ImageStore.key(a)
    a.write_bytes(b"one image, edited")
    assert ImageStore.key(a) != before
    assert ImageStore.key(tmp_path / "missing.png") is None
    assert ImageStore.key("sample:astronaut") == ImageStore.key("sample:astronaut")
    assert ImageStore.key("sample:astronaut") != ImageStore.key("sample:camera")
    store = ImageStore(tmp_path / "store", {"steps": "test"}, SHAPE)
    assert store.load(None) is None and not store.save(None, chip())


def test_damaged_files_are_not_used_and_are_replaced(tmp_path):
    store = ImageStore(tmp_path, {"steps": "test"}, SHAPE)
    image = chip()
    store.save("k", image)
    data = store.path("k").read_bytes()
    store.path("k").write_bytes(data[: len(data) // 2])  # cut short
    assert store.load("k") is None
    # one value changed (the stored checksum no longer matches)
    with np.load(io.BytesIO(data)) as f:
        arrays = {n: f[n] for n in f.files}
    arrays["image"] = arrays["image"].copy()
    arrays["image"][0, 0, 0] ^= 1
    np.savez(store.path("k"), **arrays)
    assert store.load("k") is None
    # a file of another shape under that name
    arrays = {"image": np.zeros((3, 2, 2), np.uint8), "encoding": np.array(1),
              "sha256": np.frombuffer(hashlib.sha256(bytes(12)).digest(), np.uint8)}
    np.savez(store.path("k"), **arrays)
    assert store.load("k") is None
    store.path("k").write_bytes(b"not an npz file")
    assert store.load("k") is None
    assert store.rejected == 4 and store.loaded == 0
    assert store.save("k", image) and torch.equal(store.load("k"), image)


def test_each_preparation_has_its_own_folder(tmp_path):
    one = ImageStore(tmp_path, {"steps": "resized", "versions": {"torch": "1"}}, SHAPE)
    same = ImageStore(tmp_path, {"versions": {"torch": "1"}, "steps": "resized"}, SHAPE)
    other = ImageStore(tmp_path, {"steps": "resized", "versions": {"torch": "2"}}, SHAPE)
    wider = ImageStore(tmp_path, {"steps": "resized", "versions": {"torch": "1"}}, (3, 6, 6))
    assert one.folder == same.folder
    assert len({one.folder, other.folder, wider.folder}) == 3
    about = json.loads((one.folder / "preparation.json").read_text())
    assert about["preparation"]["steps"] == "resized" and about["shape"] == list(SHAPE)
    one.save("k", chip())
    assert other.load("k") is None and torch.equal(same.load("k"), chip())


def test_threads_storing_the_same_image_at_once(tmp_path):
    store = ImageStore(tmp_path, {"steps": "test"}, SHAPE)
    image, start = chip(), threading.Barrier(8)

    def save():
        start.wait()
        for _ in range(20):
            assert store.save("k", image)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.stored == 160 and torch.equal(store.load("k"), image)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_store_is_reported_not_raised_and_bad_images_are_refused(tmp_path, monkeypatch):
    store = ImageStore(tmp_path, {"steps": "test"}, SHAPE)

    def full(path, data, crash=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_store, "write_atomic", full)
    assert not store.save("k", chip())
    assert store.stored == 0 and store.failed == 1 and "No space left on device" in store.errors[0]
    assert store.load("k") is None
    for k in range(image_store.KEPT_ERRORS + 2):
        store.save(f"k{k}", chip())
    assert store.failed == image_store.KEPT_ERRORS + 3 and len(store.errors) == image_store.KEPT_ERRORS
    with pytest.raises(ValueError, match=r"float32 of shape \(3, 6, 5\)"):
        store.save("k", chip().double())
    with pytest.raises(ValueError, match=r"float32 of shape \(3, 6, 5\)"):
        store.save("k", chip()[:, :3])
    with pytest.raises(ValueError, match="shape must be"):
        ImageStore(tmp_path, {}, (6, 5))


def test_temporary_files_of_killed_processes_are_deleted_when_old(tmp_path):
    store = ImageStore(tmp_path, {"steps": "test"}, SHAPE)
    store.save("ab12", chip())
    shard = store.path("ab12").parent
    old, fresh = shard / ".ab12.npz.1-2-x.tmp", shard / ".ab12.npz.3-4-y.tmp"
    for path in (old, fresh):
        path.write_bytes(b"half a file")
    hours_ago = time.time() - image_store.STALE_SECONDS - 60
    os.utime(old, (hours_ago, hours_ago))
    again = ImageStore(tmp_path, {"steps": "test"}, SHAPE)
    assert again.folder == store.folder
    assert not old.exists() and fresh.exists()  # a younger one may be a store in progress
    assert torch.equal(again.load("ab12"), chip())


def test_negative_zero_is_kept_and_suffixes_are_part_of_the_key(tmp_path):
    store = ImageStore(tmp_path, {"steps": "test"}, SHAPE)
    image = chip()
    image[0, 0, 0] = -0.0  # equal to 0.0, but not bit for bit: not stored as bytes
    store.save("k", image)
    with np.load(store.path("k")) as stored:
        assert stored["image"].dtype == np.float32
    loaded = store.load("k")
    assert torch.equal(loaded.view(torch.int32), image.view(torch.int32))
    assert torch.signbit(loaded[0, 0, 0])
    (tmp_path / "a.gif").write_bytes(b"same bytes")
    (tmp_path / "a.png").write_bytes(b"same bytes")
    (tmp_path / "b.PNG").write_bytes(b"same bytes")
    assert ImageStore.key(tmp_path / "a.gif") != ImageStore.key(tmp_path / "a.png")
    assert ImageStore.key(tmp_path / "a.png") == ImageStore.key(tmp_path / "b.PNG")


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path):
    from captum_similarity._utils.files import write_atomic

    (tmp_path / "taken").mkdir()  # renaming a file over a folder fails
    with pytest.raises(OSError):
        write_atomic(tmp_path / "taken", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    write_atomic(tmp_path / "file", b"data")
    assert (tmp_path / "file").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken"]
