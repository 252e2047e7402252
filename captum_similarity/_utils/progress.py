"""Progress of a long job on standard error: a bar per step on a terminal,
plain lines otherwise (logs, CI)."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

__all__ = ["Progress"]


class Progress:
    """Reports a job's steps (e.g. a method over its pairs) on standard error.

    Args:
        bars (bool, optional): tqdm bars (a terminal) or one plain line per
            advance.
            Default: None (bars when standard error is a terminal)
    """

    def __init__(self, bars: Optional[bool] = None) -> None:
        self.bars = sys.stderr.isatty() if bars is None else bars
        self._bar = None
        self.label, self.total, self.count = "", 0, 0

    def line(self, text: str) -> None:
        """Writes one line (closing a running bar first)."""
        self._close()
        print(text, file=sys.stderr, flush=True)

    def start(self, label: str, total: int, unit: str = "pair") -> None:
        """Starts a step of ``total`` items."""
        self._close()
        self.label, self.total, self.count, self.unit = label, total, 0, unit
        if self.bars and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=True)

    def advance(self, n: int = 1) -> None:
        """``n`` more items done."""
        first, self.count = self.count + 1, self.count + n
        if self._bar is not None:
            self._bar.update(n)
        elif not self.bars:
            which = f"{self.unit} {first}" if n == 1 else f"{self.unit}s {first}-{self.count}"
            print(f"{self.label}: {which} of {self.total}", file=sys.stderr, flush=True)

    def done(self, entries: List[Dict[str, Any]]) -> None:
        """Ends the step; off a terminal, prints its time (the ``"seconds"``
        of ``entries``) and its first error."""
        self._close()
        if not self.bars and entries:
            took = sum(e.get("seconds") or 0.0 for e in entries)
            failed = [e["error"] for e in entries if e.get("error")]
            print(
                f"{self.label}: {took:.1f} s" + (f" ({failed[0]})" if failed else ""),
                file=sys.stderr,
                flush=True,
            )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = None
