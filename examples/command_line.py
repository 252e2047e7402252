"""The command line on a gallery: a query face against a folder of images.

In the folder --out, runs the two commands of docs/command-line.md through
the command line's Python entry point:

    captum-similarity samples gallery --names astronaut-altered cameraman chelsea coffee
    captum-similarity explain sample:astronaut gallery --model dlib-face --top-k 3 --out gallery_report

(the sample images that ship with the install: an altered copy of the
astronaut, another person's face and two photos without a face), prints the
ranking and where the report is, and with --screenshot takes a picture of
the report's top in headless Chromium (the one in docs/command-line.md).

Usage: python examples/command_line.py [--out DIR] [--methods M,...] [--screenshot PNG]
Needs the faces extra (dlib's weights).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from captum_similarity.cli import main as cli

GALLERY = ["astronaut-altered", "cameraman", "chelsea", "coffee"]


def screenshot(report: Path, path: Path, width: int = 1100, height: int = 1700) -> None:
    """The top of ``report`` as a PNG, drawn by headless Chromium."""
    browser = next(
        (
            shutil.which(b)
            for b in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(b)
        ),
        None,
    )
    if browser is None:
        raise SystemExit("--screenshot needs Chromium (Debian: apt-get install chromium)")
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={path}",
            report.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("command_line_example"), help="output folder"
    )
    parser.add_argument("--methods", default="default", help="--methods of the command")
    parser.add_argument("--screenshot", type=Path, default=None, help="PNG of the report's top")
    args = parser.parse_args(argv)
    shot = args.screenshot.resolve() if args.screenshot else None
    args.out.mkdir(parents=True, exist_ok=True)
    os.chdir(args.out)  # the commands as the docs write them, relative to the folder
    status = cli(["samples", "gallery", "--names", *GALLERY])
    methods = [] if args.methods == "default" else ["--methods", args.methods]
    status = status or cli(
        [
            "explain",
            "sample:astronaut",
            "gallery",
            "--model",
            "dlib-face",
            "--top-k",
            "3",
            *methods,
            "--out",
            "gallery_report",
        ]
    )
    if status:
        raise SystemExit(status)
    results = json.loads(Path("gallery_report/results.json").read_text())
    for item in sorted(results["gallery"], key=lambda g: g["rank"]):
        print(
            f"rank {item['rank']}: {Path(item['name']).name:<22} distance {-item['score']:.3f}  "
            f"{item['verdict']}{'  (explained)' if item['explained'] else ''}"
        )
    if shot is not None:
        shot.parent.mkdir(parents=True, exist_ok=True)
        screenshot(Path("gallery_report/report.html"), shot)
        print(f"wrote {shot}")


if __name__ == "__main__":
    run(sys.argv[1:])
