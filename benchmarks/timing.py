"""Timing helpers shared by the benchmark scripts: medians of repeated calls,
the forward+backward reference cost, a description of the machine and the
command that reproduces a run."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch

#: The repository root: commands are run from there.
ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rounds(cases: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median seconds of each case over ``repeats`` rounds after one warm-up call
    each, all cases timed back to back in every round (so that load from other
    processes that changes during the run affects them alike)."""
    times: Dict[str, list] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_backward(model: Callable, *inputs: torch.Tensor) -> Callable[[], None]:
    """A callable running one forward pass of ``model(*inputs)`` and one backward
    pass to the inputs (the unit every speed ratio is expressed in)."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]

    def run() -> None:
        out = model(*leaves)
        torch.autograd.grad(out.sum(), leaves)

    return run


def command_line(script: Union[str, Path], argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces a run from the repository root: ``python
    <script>`` (the script's file, e.g. ``__file__``, shown relative to the
    root) and its arguments (``argv``, or the process's own when None),
    shell-quoted, absolute paths inside the repository shown relative to it."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", _shown(script)] + [shlex.quote(_shown(a)) for a in args])


def _shown(path: Union[str, Path]) -> str:
    """``path`` relative to the repository root if it is an absolute path inside it."""
    text = str(path)
    if not Path(text).is_absolute():
        return text
    try:
        return Path(text).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return text


def machine() -> str:
    """One line describing where the numbers were measured."""
    gpu = (
        f", {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU)"
        if torch.cuda.is_available()
        else ""
    )
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{gpu}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, {datetime.date.today().isoformat()}"
    )


def median_ratio(
    fn: Callable[[], object], unit: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> float:
    """Median over ``repeats`` of ``time(fn) / time(unit)``, the two timed back to
    back each round, so that load from other processes that changes during the
    run affects both alike."""
    for _ in range(warmup):
        fn()
        unit()
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        unit()
        middle = time.perf_counter()
        fn()
        ratios.append((time.perf_counter() - middle) / (middle - start))
    return statistics.median(ratios)


def results_header(command: str) -> List[str]:
    """The first lines of a results file: the command that wrote it, the machine
    and its load when the run ended (timings on a shared machine are noisy)."""
    return [
        f"Command: `{command}`  ",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end (2 cores "
        "shared with other jobs: read the ratios, each timed back to back with its unit).",
    ]


def write_results(path: Path, lines: Sequence[str]) -> None:
    """Writes ``lines`` to ``path`` (creating its folder) and says so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
