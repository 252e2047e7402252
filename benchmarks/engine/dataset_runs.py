"""Throughput of ``captum-similarity explain-dataset``: 1 process x 2 threads
against 2 processes x 1 thread (``torchrun``), and the time spent outside
the methods.

For each method (Grad-CAM, cheap; RISE, the registry's 500 masked forward
passes per image; then several cheap methods in one run, ``--several``) the
same command runs on ORL pairs (dlib's face model unless ``--model``), in a
fresh run folder, once as one process with ``--threads 2`` and once under
``python -m torch.distributed.run --nproc-per-node 2`` with ``--threads 1``,
alternating, ``--repeats`` times (``--layouts``: other numbers of processes
and threads, e.g. ``1x1``, which leaves a core to the run's background
threads; ``--device cuda``: on GPUs; ``--compare``: check that every
layout's table has the first one's rows).
Throughput: pairs x methods per second of
the whole command (interpreter start, model loading, the run and the merge).
Outside the methods: 1 - (seconds inside the methods, summed over the
processes) / (seconds of ``explain_dataset``, summed over the processes),
read from the run folder's ``processes/rank-R.json``, and its parts (see the
text written with the table).

Usage:
    python benchmarks/engine/dataset_runs.py --orl ../shared/data/orl_faces --gradcam-pairs 128 --rise-pairs 4 --repeats 1
    python benchmarks/engine/dataset_runs.py --orl ../shared/data/orl_faces --gradcam-pairs 8 --rise-pairs 2 \
        --several-pairs 8 --repeats 1 --out /tmp/quick.md  # quick
    # no face alignment: torchvision's ResNet-18 with fixed random weights (every process loads them)
    python -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.resnet18().state_dict(), 'resnet18.pt')"
    python benchmarks/engine/dataset_runs.py --orl ../shared/data/orl_faces \
        --model torchvision.models:resnet18 --weights resnet18.pt --configs gradcam rise \
        --gradcam-pairs 256 --rise-pairs 4 --repeats 1 --out benchmarks/results/dataset_runs_plain.md
    # a core left free for the face alignment
    python benchmarks/engine/dataset_runs.py --orl ../shared/data/orl_faces --configs gradcam \
        --gradcam-pairs 128 --repeats 1 --layouts 1x2 2x1 1x1 --compare \
        --out benchmarks/results/dataset_runs_free_core.md
    # two threads preparing the images (dlib's alignment), with one or two threads for the methods
    python benchmarks/engine/dataset_runs.py --orl ../shared/data/orl_faces --configs gradcam \
        --gradcam-pairs 128 --repeats 2 --layouts 1x1 1x2 --image-threads 1 2 --compare \
        --out benchmarks/results/dataset_runs_image_threads.md
    # prepared images kept in a cache folder: none, an empty one (cold), one filled by an earlier run (warm)
    python benchmarks/engine/dataset_runs.py --orl ../shared/data/orl_faces --configs gradcam \
        --gradcam-pairs 1024 --repeats 1 --layouts 1x2 2x1 --image-threads 2 \
        --image-cache none cold warm --compare --out benchmarks/results/dataset_runs_image_cache.md
    # one GPU: a plain process against the same under torchrun (nccl), tables compared
    python benchmarks/engine/dataset_runs.py --orl ORL --model torchvision.models:resnet18 --weights resnet18.pt \
        --device cuda --layouts 1x8 L1x8 --compare --configs gradcam rise several --gradcam-pairs 256 \
        --rise-pairs 16 --repeats 1 --out benchmarks/results/dataset_runs_cuda.md
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line, machine  # noqa: E402


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orl", type=Path, default=ROOT.parent / "shared" / "data" / "orl_faces")
    parser.add_argument("--model", default="dlib-face", help="a --model specification")
    parser.add_argument(
        "--weights", type=Path, default=None,
        help="the model's weights (a state dict): every process must load the same model",
    )
    parser.add_argument("--gradcam-pairs", type=int, default=32, help="pairs for Grad-CAM")
    parser.add_argument("--rise-pairs", type=int, default=2, help="pairs for RISE")
    parser.add_argument(
        "--several", default="saliency,gradcam,lrp,pairx",
        help="the methods of the several-method run (one run, the images of each chunk "
        "prepared once per process)",
    )
    parser.add_argument("--several-pairs", type=int, default=64, help="pairs of that run")
    parser.add_argument(
        "--configs", nargs="+", choices=["gradcam", "rise", "several"],
        default=["gradcam", "rise", "several"], help="which runs to measure",
    )
    parser.add_argument(
        "--chunks", type=int, nargs=2, default=[4, 1], metavar=("GRADCAM", "RISE"),
        help="pairs per unit of each method (RISE: 1, so that few pairs make units for both "
        "processes)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    parser.add_argument(
        "--layouts", nargs="+", default=["1x2", "2x1"],
        help="processes x threads of each run: PxT (more than one process: under torchrun), "
        "LPxT (under torchrun also with one process, e.g. L1x16 for the nccl path on one GPU)",
    )
    parser.add_argument("--device", default="cpu", help="explain-dataset's --device")
    parser.add_argument(
        "--image-threads", type=int, nargs="+", default=[1], metavar="N",
        help="explain-dataset's --image-threads; several values: a row for each, per layout",
    )
    parser.add_argument(
        "--image-cache", nargs="+", choices=["none", "cold", "warm"], default=["none"],
        help="explain-dataset's --image-cache: none; cold (an empty cache folder, shared by the "
        "run's processes); warm (a cache filled by an unmeasured run of the same pairs first): "
        "a row for each",
    )
    parser.add_argument(
        "--compare", action="store_true",
        help="check that every layout's table has the rows of the first layout's (scores and "
        "map statistics to a relative 1e-4; exits with 1 otherwise)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "dataset_runs.md"
    )
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_layout(text: str) -> Tuple[int, int, bool]:
    """``(processes, threads, under torchrun)`` of ``PxT`` or ``LPxT``."""
    launched = text.startswith("L")
    processes, threads = (int(v) for v in text.lstrip("L").split("x"))
    return processes, threads, launched or processes > 1


def compare_tables(first: Path, other: Path) -> float:
    """The largest relative difference between two tables' scores and map
    statistics; raises when their rows (pair x method) or statuses differ."""
    import csv

    def rows(path: Path) -> List[Dict[str, str]]:
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))

    a, b = rows(first), rows(other)
    keys = [(r["pair"], r["method"], r["status"]) for r in a]
    if keys != [(r["pair"], r["method"], r["status"]) for r in b]:
        raise SystemExit(f"{other} has other rows than {first}")
    columns = [c for c in a[0] if c == "score" or c.startswith(("map1_", "map2_"))]
    worst = 0.0
    for x, y in zip(a, b):
        for c in columns:
            if x[c] == "" and y[c] == "":
                continue
            u, v = float(x[c]), float(y[c])
            worst = max(worst, abs(u - v) / max(abs(u), abs(v), 1e-12))
    return worst


def one_run(
    args, method: str, pairs: int, chunk: int, processes: int, threads: int, out: Path,
    launched: bool = False, image_threads: int = 1, cache: Optional[Path] = None,
) -> Dict[str, float]:
    """Runs the command once; its wall time and the processes' records."""
    same = pairs // 2
    command = [
        "-m", "captum_similarity", "explain-dataset", str(args.orl), "--pairs",
        f"same:{same},different:{pairs - same}", "--model", args.model, "--methods", method,
        "--threads", str(threads), "--chunk", str(chunk), "--device", args.device,
        "--image-threads", str(image_threads), "--out", str(out),
    ]
    if args.weights is not None:
        command += ["--weights", str(args.weights)]
    if cache is not None:
        command += ["--image-cache", str(cache)]
    if launched:
        command = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port())] + command
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    tick = time.perf_counter()
    done = subprocess.run([sys.executable] + command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(
            f"{method} with {processes} x {threads} failed:\n{done.stderr[-3000:]}"
        )
    records = [json.loads(p.read_text()) for p in sorted((out / "processes").glob("rank-*.json"))]
    assert len(records) == processes, records
    total = sum(r["seconds"]["total"] for r in records)
    part = {
        k: sum(r["seconds"][k] for r in records) / total
        for k in (
            "methods", "images", "scores", "setup", "model", "images_background",
            "writing_background", "waiting",
        )
    }
    return {
        "wall": wall,
        "throughput": pairs * len(method.split(",")) / wall,
        "outside": 1 - part["methods"],
        "outside_after_setup": 1 - part["methods"] / (1 - part["setup"]),
        "images": part["images"],
        "scores": part["scores"],
        "setup_share": part["setup"],
        "model_share": part["model"],
        "machinery": 1 - part["methods"] - part["images"] - part["scores"] - part["setup"]
        - part["waiting"],
        "waiting": part["waiting"],
        "background": part["images_background"],
        "writing": part["writing_background"],
        "prepared": sum(r["images_prepared"] for r in records),
        "loaded": sum((r.get("image_cache") or {}).get("loaded", 0) for r in records),
        "setup": max(r["seconds"]["setup"] for r in records),
        "merge": max(r["seconds"]["merge"] for r in records),
    }


def main(argv: Optional[Sequence[str]] = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    load = os.getloadavg()
    rows: List[str] = [
        "| method | pairs | pairs per unit | processes x threads | wall (s) | pairs x methods / s "
        "| outside the methods | of which: waiting for images | scores | setup (loading the model) "
        "| run machinery | waiting for the other processes | outside, after the setup "
        "| background threads: images, writing | images prepared, loaded | merge (s) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    compared: List[str] = []
    failed_compare = False
    with tempfile.TemporaryDirectory() as tmp:
        configs = {
            "gradcam": ("gradcam", args.gradcam_pairs, args.chunks[0]),
            "rise": ("rise", args.rise_pairs, args.chunks[1]),
            "several": (args.several, args.several_pairs, args.chunks[0]),
        }
        for method, pairs, chunk in (configs[c] for c in args.configs):
            layouts = [
                (*parse_layout(text), n, c)
                for text in args.layouts for n in args.image_threads for c in args.image_cache
            ]

            def label(layout) -> str:
                processes, threads, launched, image_threads, cache = layout
                return (f"{method.replace(',', '+')}-{'L' * launched}{processes}x{threads}"
                        f"-i{image_threads}-{cache}")

            warm = Path(tmp) / f"cache-{method.replace(',', '+')}-warm"
            if "warm" in args.image_cache:  # filled by a run of the same pairs, not measured
                one_run(args, method, pairs, chunk, 1, 2, Path(tmp) / "warm-up",
                        image_threads=max(args.image_threads), cache=warm)

            measured: Dict[tuple, List[Dict[str, float]]] = {layout: [] for layout in layouts}
            for k in range(args.repeats):  # alternating, so that a load change hits all
                for layout in layouts:
                    processes, threads, launched, image_threads, cache = layout
                    folder = {"none": None, "warm": warm,
                              "cold": Path(tmp) / f"cache-{label(layout)}-{k}"}[cache]
                    result = one_run(
                        args, method, pairs, chunk, processes, threads,
                        Path(tmp) / f"{label(layout)}-{k}", launched, image_threads, folder,
                    )
                    measured[layout].append(result)
                    print(method, layout, result, flush=True)
            if args.compare:
                for other in layouts[1:]:
                    names = [f"{label(layout)}-0" for layout in (layouts[0], other)]
                    worst = compare_tables(*(Path(tmp) / n / "table.csv" for n in names))
                    compared.append(f"{method}: {names[1]} against {names[0]}: largest relative "
                                    f"difference {worst:.1e}")
                    if worst > 1e-4:
                        failed_compare = True
            for layout in layouts:
                processes, threads, launched, image_threads, cache = layout
                runs = measured[layout]
                med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                rows.append(
                    f"| {method.replace(',', ', ')} | {pairs} | {chunk} | {processes} x {threads}"
                    f"{' (torchrun)' if launched and processes == 1 else ''}"
                    f"{f', {image_threads} image threads' if image_threads > 1 else ''}"
                    f"{f', {cache} image cache' if cache != 'none' else ''} | "
                    f"{med['wall']:.1f} | "
                    f"{med['throughput']:.3f} | {100 * med['outside']:.1f} % | "
                    f"{100 * med['images']:.1f} % | {100 * med['scores']:.1f} % | "
                    f"{100 * med['setup_share']:.1f} % ({100 * med['model_share']:.1f} %) | "
                    f"{100 * med['machinery']:.1f} % | {100 * med['waiting']:.1f} % | "
                    f"{100 * med['outside_after_setup']:.1f} % | "
                    f"{100 * med['background']:.1f} %, {100 * med['writing']:.1f} % | "
                    f"{med['prepared']:.0f}, {med['loaded']:.0f} | {med['merge']:.2f} |"
                )
    load_after = os.getloadavg()
    text = "\n".join(
        [
            "# explain-dataset: one process or two",
            "",
            f"Command: `{command_line(__file__, argv)}`. Machine: {machine()}. Load average "
            f"(1 min) {load[0]:.1f} before, {load_after[0]:.1f} after"
            + (
                " (other jobs shared the cores: throughputs are indicative, ratios between rows "
                "timed back to back)."
                if max(load[0], load_after[0]) > 1.5 * (os.cpu_count() or 1) / 2 + 1
                else "."
            ),
            "",
            f"Model `{args.model}` on ORL pairs (half same person, half different people), "
            "medians of "
            f"{args.repeats} alternating runs per row. Wall: the whole command (interpreter start, "
            "model loading, the run, the merge). Outside the methods: the share of the processes' "
            "time in `explain_dataset` (summed over the processes) not spent inside the methods, "
            "split into waiting for the images (a background thread reads and prepares the next "
            "chunk's images during the current unit, each file once per process; for `dlib-face` "
            "preparing is face detection and alignment), the model's scores of the pairs (forward "
            "passes run for them alone: where no method ran the wrapper on the unperturbed pairs, and "
            "once per method and process to check the embeddings a method computed), the setup "
            "(loading the model, in brackets: importing its code, building it, loading its weights; "
            "the configuration and its digests, listing finished units: a fixed cost per process), "
            "the run machinery (handing the units to the writing thread, progress, the merge, and what a "
            "process does once, as importing a method's modules on first use) and the waiting "
            "of the processes done first for the last unit and for the merge (at the barriers). "
            "Outside, after the setup: the same share of the time after the setup, which a longer "
            "run approaches. Background threads: the time of the thread that prepares the images and "
            "of the one that writes and checksums the units, as shares of the same total (they "
            "share the cores with the methods). Images prepared, loaded: summed over the processes, "
            "the images each prepared, and those loaded from the image cache (`--image-cache`: "
            "cold, an empty folder that the run's processes share; warm, one filled by an earlier "
            "run of the same pairs).",
            "",
            *rows,
            "",
            *(["Tables compared (scores and map statistics, relative):", ""]
              + [f"- {line}" for line in compared] + [""] if compared else []),
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    if failed_compare:
        raise SystemExit("the layouts' tables differ by more than 1e-4 (see above)")
    return text


if __name__ == "__main__":
    main()
