"""Paired differences between methods, from an ``explain-dataset`` run's table.

For each pair kind (same person, different people) and each fill, every
method's insertion and deletion AUC (x 100; a pair's value is the mean of its
two images, both explained against the other) as mean ± standard error over
pairs, and its paired difference (the same pairs) to the best method (highest
insertion, lowest deletion; baselines left out of the choice), to the best
black-box method (Captum Occlusion, SimilarityRISE) and to the random map:
"A beats B" becomes a difference whose standard error says how sure it is.

Usage:
    python benchmarks/methods/paired_differences.py --table RUN_DIR/table.csv [MORE/table.csv] \\
        [OTHER/table.csv@layer4] --out benchmarks/results/faithfulness-dlib-paired.md
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from timing import command_line  # noqa: E402

from captum_similarity.explainers import explainers  # noqa: E402
from captum_similarity.runs import read_table  # noqa: E402

#: What each fill prefix of the table's columns is, in words.
FILL_WORDS = {"mean": "the network's input mean", "blur": "the image blurred"}


def per_pair(rows, method: str, column: str, label: str) -> Dict[int, float]:
    """``{pair: mean of the two images' column}`` of a method's ok rows (x 100)."""
    return {
        r["pair"]: 50 * (r[f"{column}1"] + r[f"{column}2"])
        for r in rows
        if r["method_name"] == method and r["status"] == "ok" and r["label"] == label
    }


def mean_se(values: Sequence[float]) -> Tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
    return m, se


def paired(a: Dict[int, float], b: Dict[int, float]) -> Optional[Tuple[float, float, int]]:
    """Mean ± standard error of ``a - b`` over the pairs both have, and their number."""
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    m, se = mean_se([a[p] - b[p] for p in common])
    return m, se, len(common)


def fmt(d: Optional[Tuple[float, float, int]]) -> str:
    return "" if d is None else f"{d[0]:+.1f} ± {d[1]:.1f}"


def section(rows, methods: List[str], fill: str, label: str) -> List[str]:
    specs = explainers()
    values = {
        m: {c: per_pair(rows, m, f"{fill}_{c}", label) for c in ("insertion", "deletion")}
        for m in methods
    }
    values = {m: v for m, v in values.items() if len(v["insertion"]) > 1}
    if not values:
        return []
    means = {m: {c: mean_se(list(v[c].values())) for c in v} for m, v in values.items()}
    candidates = [m for m in values if not (m in specs and specs[m].baseline)]
    black_box = [m for m in candidates if m in specs and specs[m].black_box]
    best = {
        "insertion": max(candidates, key=lambda m: means[m]["insertion"][0]),
        "deletion": min(candidates, key=lambda m: means[m]["deletion"][0]),
    }
    best_bb = {
        "insertion": max(black_box, key=lambda m: means[m]["insertion"][0]) if black_box else None,
        "deletion": min(black_box, key=lambda m: means[m]["deletion"][0]) if black_box else None,
    }
    random = next((m for m in values if m in specs and specs[m].baseline), None)
    n = len(next(iter(values.values()))["insertion"])
    lines = [
        f"{label.capitalize()}-person pairs ({n}), removed pixels become "
        f"{FILL_WORDS.get(fill, fill)}. Best: insertion {best['insertion']}, deletion "
        f"{best['deletion']}; best black box: insertion {best_bb['insertion']}, deletion "
        f"{best_bb['deletion']}.",
        "",
        "| method | insertion ↑ | vs best | vs best black box | vs random | deletion ↓ | vs best "
        "| vs best black box | vs random |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in values:
        cells = []
        for c in ("insertion", "deletion"):
            mean, se = means[m][c]
            cells.append(f"{mean:.1f} ± {se:.1f}")
            for ref in (best[c], best_bb[c], random):
                cells.append("" if ref is None or ref == m else fmt(paired(values[m][c], values[ref][c])))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: Optional[Sequence[str]] = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--table", nargs="+", required=True,
        help="a run's table.csv; more tables of runs on the same pairs add their methods "
        "(a method in a later table replaces its rows of an earlier one); TABLE@LABEL adds "
        "' @LABEL' to that table's method names, so that a run of the same methods with "
        "another setting (e.g. --layer layer4) gets rows of its own",
    )
    parser.add_argument("--fills", nargs="+", default=["mean", "blur"])
    parser.add_argument("--out", type=Path, default=None, help="Markdown output (default: print)")
    args = parser.parse_args(argv)
    rows: List[dict] = []
    for item in args.table:
        path, _, label = item.partition("@")
        more = read_table(Path(path))
        if label:
            for r in more:
                r["method_name"] = f"{r['method_name']} @{label}"
        replaced = {r["method_name"] for r in more}
        rows = [r for r in rows if r["method_name"] not in replaced] + more
    methods = list(dict.fromkeys(r["method_name"] for r in rows))
    labels = [lab for lab in ("same", "different") if any(r["label"] == lab for r in rows)]
    text = [
        "# Paired differences between methods",
        "",
        f"Command: `{command_line(__file__, argv)}` on the runs' `table.csv`. A pair's AUC is "
        "the mean of its two images' (x 100); each cell is the mean ± standard error over "
        "pairs; \"vs\" columns are paired differences over the same pairs (positive: "
        "higher than the reference; for deletion lower is better).",
        "",
    ]
    for label in labels:
        for fill in args.fills:
            text += section(rows, methods, fill, label)
    out = "\n".join(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(out)
        print(f"wrote {args.out}")
    else:
        print(out)
    return out


if __name__ == "__main__":
    main()
