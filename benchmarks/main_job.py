"""Times the README's main job as a new user runs it: a clean clone, a fresh
virtual environment, the README's exact line.

The line (the first ``python3 -m venv`` line under "Run it on a fresh
machine") is split at the command it installs for: the install part
(virtual environment, ``pip install``) and the main job (``captum-similarity
explain ...``) are timed separately, the main job three times: first with an
empty matplotlib cache, as on a new machine, then again, then with
``--threads 1`` (torch's threads against the machine's other jobs). The
machine's load average is recorded before and after, since other jobs share
it.

Usage: python benchmarks/main_job.py [--repeats N] [--out benchmarks/results/main_job.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from timing import command_line, machine  # noqa: E402

#: The command the README's main-job line installs for.
JOB_START = " && .venv/bin/captum-similarity "


def readme_line(readme: Path) -> str:
    """The README's main-job line: the first ``python3 -m venv`` line after
    the heading "Run it on a fresh machine"."""
    lines = readme.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.startswith("## Run it on a fresh machine")
    )
    return next(line for line in lines[start:] if line.startswith("python3 -m venv"))


def timed(command: str, cwd: Path, env: dict, log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"`{command}` exited {result.returncode}; see {log}")
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="clean clones to time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "main_job.md")
    args = parser.parse_args(argv)
    line = readme_line(ROOT / "README.md")
    if JOB_START not in line:
        raise SystemExit(f"the README's main-job line does not run captum-similarity: {line}")
    install, job = line.split(JOB_START, 1)
    job = JOB_START.removeprefix(" && ") + job
    rows = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            clone = Path(tmp) / "clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            env = dict(os.environ, MPLCONFIGDIR=str(Path(tmp) / "mpl"))  # no matplotlib cache yet
            load_before = os.getloadavg()[0]
            t_install = timed(install, clone, env, Path(tmp) / "install.log")
            t_first = timed(job, clone, env, Path(tmp) / "job1.log")
            t_again = timed(job, clone, env, Path(tmp) / "job2.log")
            t_one = timed(job + " --threads 1", clone, env, Path(tmp) / "job3.log")
            load_after = os.getloadavg()[0]
            report = (clone / "report" / "report.html").is_file()
            rows.append((t_install, t_first, t_again, t_one, load_before, load_after, report))
            print(
                f"clone {r + 1}: install {t_install:.1f} s, main job {t_first:.1f} s (first run), "
                f"{t_again:.1f} s (again), {t_one:.1f} s (--threads 1); load average "
                f"{load_before:.1f} -> {load_after:.1f}"
            )
    text = [
        "# The README's main job from a clean clone",
        "",
        f"Command: `{command_line(__file__, argv)}`. Machine: {machine()}.",
        "",
        f"The line: `{line}`",
        "",
        "Each row: a clean `git clone` of the checkout, then the line's install part (fresh "
        "virtual environment, `pip install`, with pip's own download cache) and its main job "
        "(`captum-similarity explain ...`, the first run with an empty matplotlib cache), timed "
        "apart; the main job run once more, then once with `--threads 1` added. Load average: "
        "the machine's 1-minute load before and after (2 cores; other jobs share the machine).",
        "",
        "| clone | install (s) | main job, first run (s) | main job, again (s) "
        "| main job, --threads 1 (s) | whole line (s) | load average | report written |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r, (a, b, c, d, l0, l1, ok) in enumerate(rows, 1):
        text.append(
            f"| {r} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} | {a + b:.1f} | {l0:.1f} -> {l1:.1f} "
            f"| {'yes' if ok else 'no'} |"
        )
    args.out.write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
