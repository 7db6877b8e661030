"""The live status line on stderr: files (or frames) per second, queue length, last verdict.

On a terminal it is one line redrawn in place (rich ``Live``); when stderr is a file or a pipe
(a service log) it becomes one log line per batch instead, so logs stay readable.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Sequence

from rich.live import Live
from rich.text import Text

from ..line.messages import err

_STYLE = {"ok": "green", "ng": "bold red", "error": "magenta", None: "white"}


class StatusLine:
    def __init__(self, unit: str = "files", window_s: float = 10.0, live: bool | None = None):
        self.unit = unit
        self.window_s = window_s
        self.live_mode = err.is_terminal if live is None else live
        self.done: collections.deque[tuple[float, int]] = collections.deque()
        self.totals = {"ok": 0, "ng": 0, "error": 0}
        self.total = 0
        self.last: tuple[str | None, str, float | None] | None = None
        self.queue = 0
        self.settling = 0
        self.extra = ""
        self.notes: Callable[[], str] | None = None  # more words at the end (the result sinks' state)
        self._live: Live | None = None
        self.started = time.monotonic()

    def __enter__(self) -> "StatusLine":
        if self.live_mode:
            self._live = Live(self._render(), console=err, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def rate(self) -> float:
        """Items per second over the last ``window_s`` seconds (or since the start)."""
        now = time.monotonic()
        while self.done and now - self.done[0][0] > self.window_s:
            self.done.popleft()
        span = min(self.window_s, now - self.started)
        return sum(n for _, n in self.done) / max(span, 1e-3)

    def _render(self) -> Text:
        t = Text()
        t.append(f"{self.rate():6.1f} {self.unit}/s  ", style="cyan")
        t.append(f"queue {self.queue}")
        if self.settling:
            t.append(f" (+{self.settling} settling)")
        t.append(f"  done {self.total} (")
        t.append(f"{self.totals['ok']} ok", style="green")
        t.append(", ")
        t.append(f"{self.totals['ng']} ng", style="red")
        t.append(f", {self.totals['error']} error)")
        if self.last:
            verdict, name, score = self.last
            t.append("  last: ")
            t.append(f"{verdict or '-'}", style=_STYLE.get(verdict, "white"))
            t.append(f" {name}" + (f" {score:.3f}" if score is not None else ""))
        if self.extra:
            t.append(f"  {self.extra}")
        notes = self.notes() if self.notes is not None else ""
        if notes:
            t.append(f"  {notes}", style="yellow")
        return t

    def batch(self, outcomes: Sequence, queue: int, settling: int = 0) -> None:
        self.queue, self.settling = queue, settling
        if outcomes:
            self.done.append((time.monotonic(), len(outcomes)))
            for o in outcomes:
                self.total += 1
                if o.verdict in self.totals:
                    self.totals[o.verdict] += 1
            o = outcomes[-1]
            self.last = (o.verdict, o.item.name, o.normalised if o.normalised is not None else o.score)
        if self._live is not None:
            self._live.update(self._render())
        elif outcomes:
            err.print(self._render(), highlight=False)

    def idle(self, queue: int, settling: int = 0) -> None:
        self.queue, self.settling = queue, settling
        if self._live is not None:
            self._live.update(self._render())

    def log(self, message: str) -> None:
        """A message above the status line (or a plain log line)."""
        err.print(message, highlight=False, markup=False)
