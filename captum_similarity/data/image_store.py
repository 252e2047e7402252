"""Prepared model inputs kept on disk, named by the bytes of their source files.

Preparing an image can be slow: dlib's face model takes faces found by a
detector and aligned on five landmarks. Without a store, every
process of a run prepares the images of its own pairs, and every later run
prepares them again. An :class:`ImageStore` keeps each prepared image in a
folder, so that the other processes and later runs load it instead.

- **Where.** ``ROOT/PREP/KE/KEY.npz``: ``PREP`` is a digest of how the
  images are prepared (whatever the caller puts in ``preparation``: the
  steps, the code and library versions that compute them) and of the input
  shape; ``KEY`` is the SHA-256 of the source file's lower-cased suffix and
  bytes (of the text of a ``sample:NAME``), ``KE`` its first two
  characters (so that no folder holds more than a 256th of the images). A
  changed or replaced file is another key; copies of one file (with one
  suffix) share theirs. ``ROOT/PREP/preparation.json`` records the
  preparation and the shape.
- **Exact.** An image whose values are all ``k / 255`` (dlib's face chips)
  is stored as uint8 and read back as ``uint8 / 255`` in float32 only after
  checking, when it is stored, that this gives back every value bit for bit
  (``-0.0`` included); any other image is stored as float32. A loaded image
  equals the one stored.
- **Whole or not at all.** Files are written to a temporary name and renamed
  (processes and threads storing the same image at once each write their
  own temporary file). Each file holds the SHA-256 of its array; a file
  that fails it, or is not the expected shape, is not used (it is counted in
  :attr:`ImageStore.rejected` and replaced by the next store of that image).
  A process killed while storing leaves a temporary file
  (``.KEY.npz.*.tmp``), never read; opening a store deletes those older
  than :data:`STALE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .._utils.files import write_atomic
from .files import SAMPLE_PREFIX

__all__ = ["ImageStore", "STORE_FORMAT", "STALE_SECONDS", "KEPT_ERRORS"]

#: Written in every store folder's ``preparation.json``; part of its digest.
STORE_FORMAT = "captum-similarity prepared images 1"

#: Temporary files older than this (seconds) are left by killed processes:
#: deleted when a store is opened (younger ones may be another process's
#: store in progress).
STALE_SECONDS = 3600.0

#: How many failed stores' reasons a store keeps (:attr:`ImageStore.errors`);
#: :attr:`ImageStore.failed` counts them all.
KEPT_ERRORS = 10

_FLOAT, _BYTES = 0, 1  # how an image is stored: float32 as is, or uint8 of value * 255


class ImageStore:
    r"""Prepared images ``(C, H, W)`` kept in a folder, by the content of their sources.

    It is safe to use from several threads and processes at once. It never
    changes a result: a loaded image equals the stored one bit for bit.

    Args:
        root (str or Path): The folder; created if missing. Several
            preparations can share one: each has its own sub-folder.
        preparation (mapping): What defines the prepared images, as
            JSON-able values: the steps and whatever could change their
            output (library versions, a digest of the code). Two stores
            with equal ``preparation`` and ``shape`` share their images.
        shape (sequence of int): ``(C, H, W)`` of every prepared image.

    Attributes:
        folder (Path): This preparation's sub-folder of ``root``.
        loaded (int): Images loaded so far.
        stored (int): Images stored so far.
        rejected (int): Files found damaged or of another shape (not used).
        failed (int): Stores that failed (e.g. a full disk); the images are
            then prepared again next time.
        errors (list of str): The reasons of the first :data:`KEPT_ERRORS`
            of them.

    Example::

        >>> store = ImageStore("prepared", {"steps": "resized to 224x224"}, (3, 224, 224))
        >>> key = store.key("photo.png")
        >>> image = store.load(key)   # None the first time
        >>> if image is None:
        ...     image = prepare(read("photo.png"))   # your preparation
        ...     store.save(key, image)
    """

    def __init__(
        self, root: Union[str, Path], preparation: Mapping[str, Any], shape: Sequence[int]
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be (C, H, W) of positive sizes, got {tuple(shape)}")
        identity = {"format": STORE_FORMAT, "preparation": dict(preparation), "shape": list(self.shape)}
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
        self.folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        about = self.folder / "preparation.json"
        if not about.is_file():
            write_atomic(about, (json.dumps(identity, indent=1, default=str) + "\n").encode())
        now = time.time()
        for stale in self.folder.glob("*/.*.tmp"):
            try:
                if now - stale.stat().st_mtime > STALE_SECONDS:
                    stale.unlink()
            except OSError:  # gone meanwhile (renamed by its writer, or deleted by another store)
                pass
        self._lock = threading.Lock()  # the counts
        self.loaded = self.stored = self.rejected = self.failed = 0
        self.errors: List[str] = []

    @staticmethod
    def key(source: Union[str, Path]) -> Optional[str]:
        """The SHA-256 (hex) of a file's lower-cased suffix and bytes (a
        reader may treat the same bytes differently by suffix), or of a
        ``sample:NAME``'s text; None when the file cannot be read (its
        reader then reports why)."""
        text = str(source)
        if text.startswith(SAMPLE_PREFIX):
            return hashlib.sha256(text.encode()).hexdigest()
        digest = hashlib.sha256(Path(text).suffix.lower().encode() + b"\0")
        try:
            with open(text, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return None
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        """The file of an image's key."""
        return self.folder / key[:2] / f"{key}.npz"

    def load(self, key: Optional[str]) -> Optional[Tensor]:
        """The stored image of ``key`` (float32 ``shape``), or None when it
        is not stored or its file fails its checks."""
        if key is None:
            return None
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        try:
            with np.load(io.BytesIO(data)) as stored:
                array, how, digest = stored["image"], int(stored["encoding"]), stored["sha256"]
            good = (
                array.shape == self.shape
                and (array.dtype, how) in ((np.dtype(np.float32), _FLOAT), (np.dtype(np.uint8), _BYTES))
                and hashlib.sha256(array.tobytes()).digest() == digest.tobytes()
            )
        except Exception:  # a truncated or foreign file: any of numpy's reading errors
            good = False
        if not good:
            with self._lock:
                self.rejected += 1
            return None
        image = torch.from_numpy(array)
        image = image.float().div(255.0) if how == _BYTES else image
        with self._lock:
            self.loaded += 1
        return image

    def save(self, key: Optional[str], image: Tensor) -> bool:
        """Stores a prepared image under ``key``; False when ``key`` is None
        or the file could not be written (counted in :attr:`failed`, the
        first reasons in :attr:`errors`).

        Raises:
            ValueError: ``image`` is not a float32 tensor of ``shape``.
        """
        if key is None:
            return False
        if image.dtype != torch.float32 or tuple(image.shape) != self.shape:
            raise ValueError(
                f"a stored image must be float32 of shape {self.shape}, got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        values = image.detach().cpu().contiguous()
        as_bytes = values.mul(255.0).round().clamp(0, 255).to(torch.uint8)
        back = as_bytes.float().div(255.0)
        if torch.equal(back.view(torch.int32), values.view(torch.int32)):  # bits, -0.0 too
            array, how = as_bytes.numpy(), _BYTES
        else:
            array, how = values.numpy(), _FLOAT
        buffer = io.BytesIO()
        np.savez(
            buffer, image=array, encoding=np.array(how),
            sha256=np.frombuffer(hashlib.sha256(array.tobytes()).digest(), dtype=np.uint8),
        )
        path = self.path(key)
        try:
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, buffer.getvalue())
        except OSError as err:
            with self._lock:
                self.failed += 1
                if len(self.errors) < KEPT_ERRORS:
                    self.errors.append(f"{path}: {err}")
            return False
        with self._lock:
            self.stored += 1
        return True
