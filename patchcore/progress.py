"""Progress bars on stderr (rich), silenced when stderr is not a terminal unless forced."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``. Shows a bar when stderr is a TTY or PATCHCORE_PROGRESS=1."""
    show = os.environ.get("PATCHCORE_PROGRESS", "") == "1" or (
        sys.stderr.isatty() and os.environ.get("PATCHCORE_PROGRESS", "") != "0"
    )
    if not show:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    ) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)
